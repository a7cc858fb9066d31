// Package result owns the result backends a Python Celery client reads task states from:
// the Redis backend (`celery-task-meta-<id>` keys written with SETEX and PUBLISH, exactly as
// Celery's worker does) and the rpc:// backend (state messages published to the client's
// reply queue through the worker's broker). It also builds the exception documents Python's
// AsyncResult.get() re-raises.
package result

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Record is one task state to store.
type Record struct {
	TaskID string
	Status string // protocol.State*
	// Result is a JSON value, or a protocol.ExceptionInfo for FAILURE, RETRY and REVOKED.
	Result    any
	Traceback string
	// Children are the result tuples of subtasks the task sent (nil is stored as []).
	Children []any
	GroupID  string
	ParentID string

	// ReplyTo and CorrelationID are the task message's reply_to and correlation_id
	// properties: where the rpc:// backend sends the state. Unused by Redis.
	ReplyTo       string
	CorrelationID string

	// The result_extended fields (Redis only); each is stored only when set. A worker
	// configured with result_extended fills all of them.
	Name    string
	Args    []any
	Kwargs  map[string]any
	Worker  string
	Retries *int
	Queue   string
}

// Meta returns the result document for r, with date_done = doneAt (ignored for states that
// are not ready).
func (r Record) Meta(doneAt time.Time) *protocol.ResultMeta {
	return &protocol.ResultMeta{
		Status:    r.Status,
		Result:    r.Result,
		Traceback: r.Traceback,
		Children:  r.Children,
		DateDone:  doneAt,
		GroupID:   r.GroupID,
		ParentID:  r.ParentID,
		TaskID:    r.TaskID,
		Name:      r.Name,
		Args:      r.Args,
		Kwargs:    r.Kwargs,
		Worker:    r.Worker,
		Retries:   r.Retries,
		Queue:     r.Queue,
	}
}

// Backend stores task states where Python clients read them.
type Backend interface {
	// Store records r. An error means it was not recorded (for example the store is
	// unreachable); the caller decides whether to retry or hand the message back.
	Store(ctx context.Context, r Record) error
	// Close releases the backend's connections.
	Close() error
}

// Publisher publishes a message through the worker's broker and returns once it is confirmed
// (broker.Broker has it). The rpc:// backend sends states through it.
type Publisher interface {
	Publish(ctx context.Context, p broker.Publishing) error
}

// DefaultExpires is Celery's default result_expires.
const DefaultExpires = 24 * time.Hour

// Options configure a backend.
type Options struct {
	// Expires is result_expires: the TTL of stored results. Zero means DefaultExpires;
	// negative means no TTL (Celery's result_expires=None).
	Expires time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Expires == 0 {
		o.Expires = DefaultExpires
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Open returns the backend for a Celery result_backend URL:
//
//   - redis://[[user]:password@]host[:port][/db][?query] and rediss://… → the Redis
//     backend (the connection is checked before Open returns);
//   - rpc:// → the rpc:// backend, publishing through pub;
//   - "" → (nil, nil): results are disabled.
//
// Any other scheme is an error naming it.
func Open(ctx context.Context, rawURL string, pub Publisher, o Options) (Backend, error) {
	if strings.TrimSpace(rawURL) == "" {
		return nil, nil
	}
	o = o.withDefaults()
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("result: backend URL %q has no scheme (want redis://, rediss:// or rpc://)", redactURL(rawURL))
	}
	switch strings.ToLower(scheme) {
	case "redis", "rediss":
		return OpenRedis(ctx, rawURL, o)
	case "rpc":
		if pub == nil {
			return nil, fmt.Errorf("result: rpc:// backend needs a broker to publish through")
		}
		return NewRPC(pub, o), nil
	default:
		return nil, fmt.Errorf("result: unsupported result backend scheme %q (supported: redis, rediss, rpc)", scheme)
	}
}

// redactURL hides a password in u for error messages.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "<unparsable URL>"
	}
	return p.Redacted()
}
