package result

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// RPCBackend is Celery's rpc:// result backend (celery/backends/rpc.py), worker side: every
// state is a transient message to the client's reply queue.
type RPCBackend struct {
	pub Publisher
	log *slog.Logger
}

// NewRPC returns an rpc:// backend publishing through pub. Options.Expires does not apply
// (results live in the client's queue).
func NewRPC(pub Publisher, o Options) *RPCBackend {
	o = o.withDefaults()
	return &RPCBackend{pub: pub, log: o.Logger}
}

// Store publishes r to the default exchange with routing key r.ReplyTo, correlation_id
// r.CorrelationID (r.TaskID when empty), content type application/json, delivery mode 1 and
// no headers; the body is {"task_id", "status", "result", "traceback", "children"}. A record
// without ReplyTo has nowhere to go and is skipped.
func (b *RPCBackend) Store(ctx context.Context, r Record) error {
	if r.TaskID == "" {
		return errors.New("result: rpc: store: empty task id")
	}
	if r.ReplyTo == "" {
		b.log.DebugContext(ctx, "result: rpc: task has no reply_to, state not sent",
			"task_id", r.TaskID, "status", r.Status)
		return nil
	}
	m, err := RPCMessage(r)
	if err != nil {
		return err
	}
	if err := b.pub.Publish(ctx, broker.Publishing{Exchange: "", RoutingKey: r.ReplyTo, Message: m}); err != nil {
		return fmt.Errorf("result: rpc: publish %s (%s) to %s: %w", r.TaskID, r.Status, r.ReplyTo, err)
	}
	return nil
}

// RPCMessage builds the reply message the rpc:// backend publishes for r.
func RPCMessage(r Record) (*protocol.Message, error) {
	body, err := r.Meta(time.Time{}).RPCBody()
	if err != nil {
		return nil, fmt.Errorf("result: rpc: store %s: %w", r.TaskID, err)
	}
	corr := r.CorrelationID
	if corr == "" {
		corr = r.TaskID
	}
	return &protocol.Message{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties:      protocol.Properties{CorrelationID: corr, DeliveryMode: 1},
		Headers:         map[string]any{},
		Body:            body,
	}, nil
}

// Close does nothing: the broker belongs to the worker.
func (b *RPCBackend) Close() error { return nil }
