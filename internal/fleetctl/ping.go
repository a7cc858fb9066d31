package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/control"
	"denis.io/fleet/internal/logging"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
)

const pingUsage = `Usage: fleetctl ping [options]

Sends one diag.echo task (Celery protocol v2, as Python's send_task) to a queue and waits for a
worker's result in the result backend: proof that the broker, a worker consuming the queue and
the result backend work end to end. Prints the worker's reply and the round trip. The task
expires after --timeout, so a ping nobody answered never runs later.

Exit status: 0 the worker answered; 1 no answer within --timeout, or the task failed; 64 bad
command line; 69 the broker or the result backend is unreachable.

The workers must register the diag tasks (the default; not with --no-diag-tasks). Result
backends: redis://, rediss:// (the worker's --result-backend) and rpc:// (the reply comes
through the broker).
`

// pingCmd holds the options of `fleetctl ping`.
type pingCmd struct {
	g             *globals
	std           IO
	log           *slog.Logger
	queue         string
	resultBackend string
	timeout       time.Duration
}

// pingReply is what `fleetctl ping` reports.
type pingReply struct {
	TaskID      string  `json:"task_id"`
	Task        string  `json:"task"`
	Queue       string  `json:"queue"`
	Status      string  `json:"status"`
	Result      any     `json:"result"`
	Traceback   string  `json:"traceback,omitempty"`
	RoundTripMS float64 `json:"round_trip_ms"`
}

// outcome is a task's ready state as a result backend reports it.
type outcome struct {
	status    string
	result    any
	traceback string
}

// replyWaiter waits for the ready state of a task in one kind of result backend.
type replyWaiter interface {
	// replyTo is the reply_to property the task must carry ("" when the backend needs none).
	replyTo() string
	// wait blocks until taskID has a ready state, or ctx ends.
	wait(ctx context.Context, taskID string) (outcome, error)
	close()
}

func runPing(ctx context.Context, g *globals, args []string, std IO) error {
	env := g.env(std)
	c := &pingCmd{g: g, std: std, queue: "celery", timeout: 30 * time.Second}
	if qs := strings.Split(env["FLEET_QUEUES"], ","); strings.TrimSpace(qs[0]) != "" {
		c.queue = strings.TrimSpace(qs[0])
	}
	for _, n := range []string{"FLEET_RESULT_BACKEND", "CELERY_RESULT_BACKEND"} {
		if v := env[n]; v != "" {
			c.resultBackend = v
			break
		}
	}
	fs := pflag.NewFlagSet("fleetctl ping", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.StringVarP(&c.queue, "queue", "Q", c.queue, "queue to send the ping to (default: the first of $FLEET_QUEUES, else celery)")
	fs.StringVar(&c.resultBackend, "result-backend", c.resultBackend, "the workers' result backend: redis://, rediss:// or rpc:// (env FLEET_RESULT_BACKEND, CELERY_RESULT_BACKEND)")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "how long to wait for the result")
	g.addTo(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(std.Out, "%s\nOptions:\n%s", pingUsage, fs.FlagUsages())
			return err
		}
		return usagef("ping: %v", err)
	}
	switch {
	case fs.NArg() > 0:
		return usagef("ping: unexpected argument %q", fs.Arg(0))
	case c.queue == "":
		return usagef("ping: --queue must name a queue")
	case c.timeout <= 0:
		return usagef("ping: --timeout must be positive")
	case c.resultBackend == "":
		return usagef("ping: no result backend: give --result-backend (or set CELERY_RESULT_BACKEND) as the workers have it")
	}
	if err := g.validate(); err != nil {
		return usageError{err.Error()}
	}
	if err := connect.CheckResultURL(c.resultBackend); err != nil {
		return usageError{err.Error()}
	}
	log, err := logging.New(std.Err, g.logLevel, "text")
	if err != nil {
		return usageError{err.Error()}
	}
	c.log = log
	return c.run(ctx)
}

func (c *pingCmd) run(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	b, err := connect.Broker(cctx, c.g.broker, connect.BrokerOptions{Logger: quietTransport(c.log)})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return unavailableError{err}
	}
	defer func() {
		if err := b.Close(); err != nil {
			c.log.Warn("closing the broker connection", "err", err)
		}
	}()
	// On RabbitMQ a queue nobody declared drops what is published to it: say so at once.
	if br, ok := b.(broker.Browser); ok {
		if _, err := br.Depth(ctx, c.queue); errors.Is(err, broker.ErrQueueNotFound) {
			return fmt.Errorf("ping: queue %q does not exist on the broker: no worker has consumed it yet", c.queue)
		}
	}
	w, err := c.waiter(ctx, b)
	if err != nil {
		return err
	}
	defer w.close()

	nonce := protocol.NewUUID()
	host, _ := os.Hostname()
	payload := map[string]any{"ping": nonce, "from": "fleetctl@" + host}
	t := protocol.NewTask(tasks.DiagEcho, []any{payload}, nil)
	t.ReplyTo = w.replyTo()
	expires := time.Now().Add(c.timeout)
	t.Expires = &expires
	m, err := protocol.EncodeTask(t)
	if err != nil {
		return fmt.Errorf("ping: encode the task: %w", err)
	}

	wctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	if err := b.Publish(wctx, broker.Publishing{RoutingKey: c.queue, Message: m}); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("ping: publish to %q: %w", c.queue, err)
	}
	c.log.Debug("ping sent", "task_id", t.ID, "queue", c.queue)
	out, err := w.wait(wctx, t.ID)
	rtt := time.Since(start)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			c.withdraw(ctx, b, t.ID)
			return fmt.Errorf("ping: no reply within %v%s (is a worker with the diag tasks consuming %q, with this result backend?)",
				c.timeout, c.queueState(ctx, b), c.queue)
		}
		return fmt.Errorf("ping: %w", err)
	}
	rep := pingReply{TaskID: t.ID, Task: t.Name, Queue: c.queue, Status: out.status, Result: out.result,
		Traceback: out.traceback, RoundTripMS: float64(rtt.Microseconds()) / 1000}
	if c.g.output == "json" {
		if err := writeJSON(c.std.Out, []pingReply{rep}); err != nil {
			return err
		}
	} else {
		body, err := protocol.MarshalJSON(out.result)
		if err != nil {
			body = []byte(result.ValueRepr(out.status, out.result))
		}
		fmt.Fprintf(c.std.Out, "%s from queue %s: %s in %.1f ms, reply %s\n", t.Name, c.queue, out.status, rep.RoundTripMS, body)
	}
	if out.status != protocol.StateSuccess {
		return fmt.Errorf("ping: the task ended %s: %s", out.status, result.ValueRepr(out.status, out.result))
	}
	if got, ok := out.result.(map[string]any); !ok || got["ping"] != nonce {
		return fmt.Errorf("ping: the reply is not the echo of the ping (%s)", result.ValueRepr(out.status, out.result))
	}
	return nil
}

// withdrawMax bounds the queue length withdraw walks through.
const withdrawMax = 10000

// withdraw removes the unanswered ping from the queue where the broker keeps it (Redis: a
// message's expiry only makes the worker that finally takes it discard it; RabbitMQ drops it
// by itself at its expiration). A long backlog is left alone: walking it costs more than the
// one expired message a worker discards later.
func (c *pingCmd) withdraw(ctx context.Context, b broker.Broker, id string) {
	br, ok := b.(broker.Browser)
	if !ok || isAMQPBroker(b) {
		return
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if n, err := br.Depth(wctx, c.queue); err != nil || n > withdrawMax {
		return
	}
	err := br.Walk(wctx, c.queue, func(s *broker.Stored) (broker.Decision, error) {
		if t, err := protocol.Decode(s.Message); err == nil && t.ID == id {
			return broker.Decision{Verdict: broker.Remove}, broker.ErrStopWalk
		}
		return broker.Decision{Verdict: broker.Keep}, nil
	}, func(*broker.Stored, broker.Decision) {
		c.log.Debug("unanswered ping removed from the queue", "task_id", id)
	})
	if err != nil {
		c.log.Warn("removing the unanswered ping from the queue", "queue", c.queue, "err", err)
	}
}

// queueState describes the queue for a timeout message: ready messages and consumers, where
// the broker tells.
func (c *pingCmd) queueState(ctx context.Context, b broker.Broker) string {
	in, ok := b.(broker.Inspector)
	if !ok {
		return ""
	}
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	st, err := in.QueueStats(qctx, c.queue)
	if err != nil {
		return ""
	}
	if st.Consumers >= 0 {
		return fmt.Sprintf("; queue %s holds %d ready messages and has %d consumers", c.queue, st.Ready, st.Consumers)
	}
	return fmt.Sprintf("; queue %s holds %d ready messages", c.queue, st.Ready)
}

// waiter opens the result backend the ping's result comes from.
func (c *pingCmd) waiter(ctx context.Context, b broker.Broker) (replyWaiter, error) {
	if strings.HasPrefix(c.resultBackend, "rpc://") {
		return newRPCWaiter(ctx, b, c.timeout)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rb, err := result.OpenRedis(cctx, c.resultBackend, result.Options{Logger: quietTransport(c.log)})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailableError{err}
	}
	return redisWaiter{rb}, nil
}

// redisWaiter reads celery-task-meta-<id> from the Redis result backend.
type redisWaiter struct{ b *result.RedisBackend }

func (redisWaiter) replyTo() string { return "" }

func (w redisWaiter) close() { _ = w.b.Close() }

// wait polls the result key: every 5 ms at first, backing off to 100 ms, so a fast worker's
// round trip is measured closely without hammering Redis during a long wait.
func (w redisWaiter) wait(ctx context.Context, taskID string) (outcome, error) {
	delay := 5 * time.Millisecond
	for {
		doc, err := w.b.Get(ctx, taskID)
		if err != nil && ctx.Err() == nil {
			return outcome{}, fmt.Errorf("read the result: %w", err)
		}
		if doc != nil {
			if o, ok := readyOutcome(doc); ok {
				return o, nil
			}
		}
		select {
		case <-ctx.Done():
			return outcome{}, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// readyOutcome returns the outcome in a result document (Redis meta or rpc:// reply body)
// when its state is ready.
func readyOutcome(doc map[string]any) (outcome, bool) {
	st, _ := doc["status"].(string)
	if !protocol.IsReady(st) {
		return outcome{}, false
	}
	tb, _ := doc["traceback"].(string)
	return outcome{status: st, result: doc["result"], traceback: tb}, true
}

// newRPCWaiter prepares the reply queue of the rpc:// backend: the worker publishes the
// state to the default exchange with the task's reply_to as routing key.
func newRPCWaiter(ctx context.Context, b broker.Broker, timeout time.Duration) (replyWaiter, error) {
	q := protocol.NewUUID()
	if br, ok := b.(broker.Browser); ok && !isAMQPBroker(b) {
		// Redis: the reply is pushed onto the list named q; reading it with the browser
		// leaves nothing behind (no kombu binding, no lease).
		return &listWaiter{br: br, queue: q}, nil
	}
	fo, ok := b.(broker.Fanout)
	if !ok {
		return nil, fmt.Errorf("ping: the %T transport cannot receive rpc:// replies", b)
	}
	// RabbitMQ: an exclusive-use, auto-delete reply queue, as Celery's rpc:// client
	// declares. Every queue is bound to the default exchange under its own name, which is
	// where the worker publishes; the binding to Celery's reply exchange (direct, keyed by
	// the queue's own random name) only satisfies the subscription API and routes nothing
	// else. x-expires removes the queue even if this process dies before consuming.
	msgs, cancel, err := subscribeReply(ctx, fo, q, timeout)
	if err != nil {
		return nil, err
	}
	return &subWaiter{queue: q, msgs: msgs, cancel: cancel}, nil
}

func subscribeReply(ctx context.Context, fo broker.Fanout, q string, timeout time.Duration) (<-chan *protocol.Message, context.CancelFunc, error) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	msgs, err := fo.Subscribe(sctx, broker.Binding{Exchange: control.ReplyExchange, Queue: q, Key: q, Expires: timeout + time.Minute})
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("ping: reply queue: %w", err)
	}
	return msgs, cancel, nil
}

// subWaiter reads the rpc:// reply from a subscribed AMQP queue.
type subWaiter struct {
	queue  string
	msgs   <-chan *protocol.Message
	cancel context.CancelFunc
}

func (w *subWaiter) replyTo() string { return w.queue }

func (w *subWaiter) close() { w.cancel() }

func (w *subWaiter) wait(ctx context.Context, taskID string) (outcome, error) {
	for {
		select {
		case <-ctx.Done():
			return outcome{}, ctx.Err()
		case m, ok := <-w.msgs:
			if !ok {
				return outcome{}, errors.New("the reply queue subscription ended")
			}
			if o, ok := rpcOutcome(m, taskID); ok {
				return o, nil
			}
		}
	}
}

// listWaiter reads the rpc:// reply from a Redis list with the queue browser.
type listWaiter struct {
	br    broker.Browser
	queue string
}

func (w *listWaiter) replyTo() string { return w.queue }

func (w *listWaiter) close() {
	// Replies that came after the wait ended (none normally) are removed with the list.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = w.br.Purge(ctx, w.queue)
}

func (w *listWaiter) wait(ctx context.Context, taskID string) (outcome, error) {
	delay := 5 * time.Millisecond
	for {
		var got *outcome
		err := w.br.Walk(ctx, w.queue, func(s *broker.Stored) (broker.Decision, error) {
			if o, ok := rpcOutcome(s.Message, taskID); ok {
				got = &o
				return broker.Decision{Verdict: broker.Remove}, broker.ErrStopWalk
			}
			return broker.Decision{Verdict: broker.Remove}, nil // a non-ready state of the ping
		}, nil)
		if got != nil {
			return *got, nil
		}
		if err != nil && ctx.Err() == nil {
			return outcome{}, fmt.Errorf("read the reply queue: %w", err)
		}
		select {
		case <-ctx.Done():
			return outcome{}, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// rpcOutcome decodes an rpc:// reply ({"task_id", "status", "result", "traceback",
// "children"}) and returns its outcome when it is taskID's and ready.
func rpcOutcome(m *protocol.Message, taskID string) (outcome, bool) {
	if m == nil {
		return outcome{}, false
	}
	v, err := protocol.ParseJSON(m.Body)
	if err != nil {
		return outcome{}, false
	}
	doc, ok := v.(map[string]any)
	if !ok {
		return outcome{}, false
	}
	if id, _ := doc["task_id"].(string); id != taskID && m.Properties.CorrelationID != taskID {
		return outcome{}, false
	}
	return readyOutcome(doc)
}

func isAMQPBroker(b broker.Broker) bool {
	_, ok := b.(*amqp.Broker)
	return ok
}
