// Package control is the worker's side of Celery's remote control, the pidbox
// (celery-protocol.md §9): it listens on `<hostname>.celery.pidbox` (AMQP: a non-durable
// auto-delete queue bound to the `celery.pidbox` fanout; Redis: PSUBSCRIBE plus the
// binding-set member), runs the commands addressed to this node (destination list, or
// glob/pcre pattern), and replies in Celery's format to `reply.celery.pidbox` with the
// request's ticket and the node's Lamport clock. `celery inspect`, `celery control`,
// `celery status`, Flower and celery-exporter see a Go worker as a Python one.
//
// It also holds the fleet-wide revoked set in Redis (revoked.go), so a restarted worker
// still honours revocations.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/protocol"
)

// Celery's pidbox entities (§3.1, §9.1).
var (
	// Exchange is the request exchange, control_exchange + ".pidbox".
	Exchange = broker.Exchange{Name: "celery.pidbox", Kind: broker.KindFanout}
	// ReplyExchange is where replies go unless the request names another.
	ReplyExchange = broker.Exchange{Name: "reply.celery.pidbox", Kind: broker.KindDirect}
)

// Queue settings of the node's pidbox queue (kombu Mailbox queue_ttl / queue_expires as
// Celery sets them).
const (
	queueTTL     = 300 * time.Second
	queueExpires = 10 * time.Second
	replyTimeout = 5 * time.Second
)

// QueueName is the node's pidbox queue.
func QueueName(hostname string) string { return hostname + "." + Exchange.Name }

// Request is one decoded control request.
type Request struct {
	Method      string
	Arguments   map[string]any
	Destination []string
	Pattern     string
	Matcher     string
	Ticket      string
	ReplyTo     *ReplyTo
	Clock       int64   // the `clock` header
	Expires     float64 // the `expires` header: epoch seconds, 0 for none
}

// ReplyTo is where a request wants its reply.
type ReplyTo struct {
	Exchange   string
	RoutingKey string
}

// Handler runs one command; its result is the reply value under the node's name. An
// error becomes {"error": "..."}.
type Handler func(ctx context.Context, args map[string]any) (any, error)

// Server answers pidbox requests for one node.
type Server struct {
	hostname string
	fan      broker.Fanout
	clock    *events.Clock
	log      *slog.Logger

	mu       sync.RWMutex
	handlers map[string]Handler
}

// NewServer returns a server for hostname with no commands; Handle adds them (Commands
// registers Celery's set).
func NewServer(hostname string, fan broker.Fanout, clock *events.Clock, log *slog.Logger) *Server {
	if clock == nil {
		clock = &events.Clock{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Server{hostname: hostname, fan: fan, clock: clock, log: log.With("component", "pidbox"),
		handlers: map[string]Handler{}}
}

// Handle registers (or replaces) the handler of method.
func (s *Server) Handle(method string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[method] = h
}

// Methods lists the registered commands, sorted.
func (s *Server) Methods() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.handlers))
	for m := range s.handlers {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// Listen subscribes to the node's pidbox; the subscription is up when it returns. Serve
// then handles requests until ctx ends.
func (s *Server) Listen(ctx context.Context) (<-chan *protocol.Message, error) {
	msgs, err := s.fan.Subscribe(ctx, broker.Binding{Exchange: Exchange, Queue: QueueName(s.hostname),
		MessageTTL: queueTTL, Expires: queueExpires})
	if err != nil {
		return nil, fmt.Errorf("control: listen on %s: %w", QueueName(s.hostname), err)
	}
	s.log.Info("remote control ready", "queue", QueueName(s.hostname), "commands", len(s.Methods()))
	return msgs, nil
}

// Serve handles the requests of msgs, one at a time in arrival order, until msgs closes.
func (s *Server) Serve(ctx context.Context, msgs <-chan *protocol.Message) {
	for m := range msgs {
		s.HandleMessage(ctx, m)
	}
}

// HandleMessage runs one request if it is addressed to this node and not expired, and
// replies when it asks for a reply.
func (s *Server) HandleMessage(ctx context.Context, m *protocol.Message) {
	s.clock.Forward() // as Celery's Pidbox.on_message: clients seldom send a useful clock
	req, err := ParseRequest(m)
	if err != nil {
		s.log.Warn("ignored a malformed control request", "err", err)
		return
	}
	if req.Clock > 0 {
		s.clock.Adjust(req.Clock)
	}
	if req.Expires > 0 && float64(time.Now().UnixMicro())/1e6 > req.Expires {
		s.log.Debug("ignored an expired control request", "method", req.Method)
		return
	}
	if !s.Matches(req) {
		return
	}
	reply := s.dispatch(ctx, req)
	if req.ReplyTo == nil {
		return
	}
	if err := s.Reply(ctx, req, reply); err != nil {
		s.log.Warn("control reply failed", "method", req.Method, "err", err)
	}
}

func (s *Server) dispatch(ctx context.Context, req *Request) (reply any) {
	s.mu.RLock()
	h, ok := s.handlers[req.Method]
	s.mu.RUnlock()
	if !ok {
		s.log.Warn("no such control command", "method", req.Method)
		return map[string]any{"error": fmt.Sprintf("KeyError(%s)", protocol.Repr(req.Method))}
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("control command panicked", "method", req.Method, "panic", p)
			reply = map[string]any{"error": fmt.Sprintf("RuntimeError(%s)", protocol.Repr(fmt.Sprint(p)))}
		}
	}()
	s.log.Debug("control command", "method", req.Method, "arguments", req.Arguments)
	v, err := h(ctx, req.Arguments)
	if err != nil {
		s.log.Warn("control command failed", "method", req.Method, "err", err)
		return map[string]any{"error": err.Error()}
	}
	return v
}

// Reply sends {hostname: value} to the request's reply_to with the ticket and clock
// headers, transient, as kombu's Node.reply does.
func (s *Server) Reply(ctx context.Context, req *Request, value any) error {
	body, err := protocol.MarshalJSON(map[string]any{s.hostname: value})
	if err != nil {
		return fmt.Errorf("control: encode reply to %s: %w", req.Method, err)
	}
	headers := map[string]any{"clock": s.clock.Forward()}
	if req.Ticket != "" {
		headers["ticket"] = req.Ticket
	}
	m := &protocol.Message{
		ContentType: "application/json", ContentEncoding: "utf-8",
		Properties: protocol.Properties{DeliveryMode: 1},
		Headers:    headers,
		Body:       body,
	}
	ex := ReplyExchange
	if req.ReplyTo.Exchange != "" {
		ex.Name = req.ReplyTo.Exchange
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replyTimeout)
	defer cancel()
	if err := s.fan.Broadcast(rctx, ex, req.ReplyTo.RoutingKey, m); err != nil {
		return fmt.Errorf("control: reply to %s: %w", req.Method, err)
	}
	return nil
}

// Matches applies kombu's targeting: a non-empty destination list must name this node;
// otherwise a pattern with a matcher (glob or pcre) must match it; otherwise every node
// acts.
func (s *Server) Matches(req *Request) bool {
	switch {
	case len(req.Destination) > 0:
		return slices.Contains(req.Destination, s.hostname)
	case req.Pattern != "" && req.Matcher != "":
		return match(s.hostname, req.Pattern, req.Matcher)
	}
	return true
}

// match is kombu.matcher.match: "glob" is fnmatch, "pcre" a regular expression search.
func match(hostname, pattern, matcher string) bool {
	switch matcher {
	case "glob":
		ok, err := path.Match(pattern, hostname)
		return err == nil && ok
	case "pcre":
		re, err := regexp.Compile(pattern)
		return err == nil && re.MatchString(hostname)
	}
	return false
}

// ParseRequest decodes a pidbox request message (§9.2).
func ParseRequest(m *protocol.Message) (*Request, error) {
	if m.ContentType != "" && m.ContentType != "application/json" {
		return nil, fmt.Errorf("content type %q: only JSON is accepted", m.ContentType)
	}
	v, err := protocol.ParseJSON(m.Body)
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	body, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("body is not an object")
	}
	req := &Request{}
	if req.Method, ok = body["method"].(string); !ok || req.Method == "" {
		return nil, errors.New("no method")
	}
	req.Arguments, _ = body["arguments"].(map[string]any)
	if req.Arguments == nil {
		req.Arguments = map[string]any{}
	}
	switch d := body["destination"].(type) {
	case []any:
		for _, x := range d {
			if s, ok := x.(string); ok {
				req.Destination = append(req.Destination, s)
			}
		}
	case string:
		req.Destination = []string{d}
	}
	req.Pattern, _ = body["pattern"].(string)
	req.Matcher, _ = body["matcher"].(string)
	req.Ticket, _ = body["ticket"].(string)
	if rt, ok := body["reply_to"].(map[string]any); ok {
		req.ReplyTo = &ReplyTo{}
		req.ReplyTo.Exchange, _ = rt["exchange"].(string)
		req.ReplyTo.RoutingKey, _ = rt["routing_key"].(string)
	}
	req.Clock = int64(number(m.Headers["clock"]))
	req.Expires = number(m.Headers["expires"])
	return req, nil
}

// number reads a JSON-ish number (json.Number, float64, int, decimal string).
func number(v any) float64 {
	switch x := v.(type) {
	case json.Number:
		f, _ := x.Float64()
		return f
	case float64:
		return x
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case string:
		f, _ := strconv.ParseFloat(x, 64)
		return f
	}
	return 0
}
