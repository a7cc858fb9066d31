package telemetry

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// tracedBroker writes the current task's trace context on every message the worker
// publishes through it.
type tracedBroker struct {
	broker.Broker
	tr *Tracker
}

// WrapBroker returns b with Publish and DeadLetter writing traceparent/tracestate into the
// message headers: from the span in ctx when there is one, else from the task the message
// belongs to (its parent_id header for callbacks and chain steps, its id for retries and
// dead letters, its correlation id for rpc:// results). Other messages go out unchanged.
// Only the broker.Broker methods are wrapped; use the original value for optional
// interfaces (broker.Fanout, …).
func WrapBroker(b broker.Broker, tr *Tracker) broker.Broker {
	return &tracedBroker{Broker: b, tr: tr}
}

// Unwrap returns the wrapped broker (broker.As finds the transport's optional interfaces).
func (b *tracedBroker) Unwrap() broker.Broker { return b.Broker }

func (b *tracedBroker) spanContext(ctx context.Context, m *protocol.Message) (trace.SpanContext, bool) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc, true
	}
	for _, id := range []string{str(m.Headers["parent_id"]), str(m.Headers["id"]), m.Properties.CorrelationID} {
		if sc, ok := b.tr.SpanContext(id); ok && sc.IsValid() {
			return sc, true
		}
	}
	return trace.SpanContext{}, false
}

func (b *tracedBroker) traced(ctx context.Context, m *protocol.Message) *protocol.Message {
	if m == nil {
		return m
	}
	sc, ok := b.spanContext(ctx, m)
	if !ok {
		return m
	}
	c := m.Clone()
	delete(c.Headers, "tracestate")
	b.tr.t.Inject(sc, c.Headers)
	return c
}

// Publish publishes p with the trace context written on its message.
func (b *tracedBroker) Publish(ctx context.Context, p broker.Publishing) error {
	p.Message = b.traced(ctx, p.Message)
	return b.Broker.Publish(ctx, p)
}

// DeadLetter dead-letters with the trace context written on the dead letter.
func (b *tracedBroker) DeadLetter(ctx context.Context, d *broker.Delivery, dlq string, m *protocol.Message) error {
	return b.Broker.DeadLetter(ctx, d, dlq, b.traced(ctx, m))
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
