package telemetry

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/worker"
)

// Attribute keys beyond the messaging conventions; the celery.* ones are those of
// opentelemetry-instrumentation-celery, so Go and Python task spans query alike.
const (
	AttrTaskName = attribute.Key("celery.task_name")
	AttrAction   = attribute.Key("celery.action")
	AttrRetries  = attribute.Key("celery.retries")
	AttrHostname = attribute.Key("celery.hostname")
	AttrOutcome  = attribute.Key("fleet.outcome")
)

// endedGrace is how long a task's span context stays known after its span ended, for the
// publishes and log lines that follow the outcome (result, dead letter, ack); maxEnded
// bounds how many are kept, so that memory does not grow with the task rate (those
// publishes and lines come right after the outcome, on the task's own goroutine, and a
// worker records at most 512 outcomes at once).
const (
	endedGrace = 30 * time.Second
	maxEnded   = 1024
)

// Tracker owns the consumer span of every task in the worker. Its Middleware starts the
// span when the handler starts (continuing the producer's trace from the message headers)
// and makes it current in the handler's context; as a worker.Observer it ends the span at
// the task's outcome. It also maps task ids to span contexts for WrapBroker and
// LogHandler, which see a task id but no context: the open spans, and for endedGrace after
// the end (result, dead letter and ack follow the outcome; the last maxEnded at most) only
// their span context. A span
// whose outcome never comes (the delivery was handed back at shutdown) is not exported.
type Tracker struct {
	t        *Telemetry
	hostname string

	mu    sync.Mutex
	open  map[string]openSpan          // tasks whose span is running
	ended map[string]trace.SpanContext // span contexts kept endedGrace after the end
	queue []endedEntry                 // ended, oldest first
	head  int
}

// openSpan is a running task's span: an SDK span when spans are recorded, else only a
// span context (see Middleware).
type openSpan struct {
	span trace.Span // nil: nothing records
	sc   trace.SpanContext
}

type endedEntry struct {
	id string
	at time.Time
}

var _ worker.Observer = (*Tracker)(nil)

// NewTracker returns the tracker of a worker named hostname.
func (t *Telemetry) NewTracker(hostname string) *Tracker {
	return &Tracker{t: t, hostname: hostname, open: map[string]openSpan{}, ended: map[string]trace.SpanContext{}}
}

// headerCarrier reads and writes W3C headers in Celery message headers.
type headerCarrier map[string]any

var _ propagation.TextMapCarrier = headerCarrier(nil)

func (c headerCarrier) Get(key string) string {
	if s, ok := c[key].(string); ok {
		return s
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { c[key] = value }

func (c headerCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// Extract returns ctx with the remote span context found in Celery message headers.
func (t *Telemetry) Extract(ctx context.Context, headers map[string]any) context.Context {
	if headers == nil {
		return ctx
	}
	return t.propagator.Extract(ctx, headerCarrier(headers))
}

// Inject writes traceparent (and tracestate) of sc into headers.
func (t *Telemetry) Inject(sc trace.SpanContext, headers map[string]any) {
	if !sc.IsValid() {
		return
	}
	t.propagator.Inject(trace.ContextWithSpanContext(context.Background(), sc), headerCarrier(headers))
}

// Middleware runs the handler inside the task's consumer span, named "run/<task>" as
// opentelemetry-instrumentation-celery names its worker spans, with the messaging
// attributes (system, destination = the queue, operation process, message id) and the
// task's name and retries. While nothing would record the span (no exporter, or tracing
// switched off) no span is made: the handler's context carries only a span context (the
// producer's trace id, a new span id, the sampler's decision), which is what logs and
// published messages need, at the cost of two random numbers per task.
func (tr *Tracker) Middleware(next tasks.Handler) tasks.Handler {
	return tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
		o := tr.start(ctx, r)
		if o.span == nil {
			return next.ServeTask(trace.ContextWithSpanContext(ctx, o.sc), r)
		}
		ctx = trace.ContextWithSpan(ctx, o.span)
		v, err := next.ServeTask(ctx, r)
		var retry *tasks.RetryError
		if err != nil && !errors.As(err, &retry) {
			o.span.RecordError(err)
		}
		return v, err
	})
}

func (tr *Tracker) start(ctx context.Context, r *tasks.Request) openSpan {
	tr.mu.Lock()
	if o, ok := tr.open[r.ID]; ok {
		tr.mu.Unlock()
		return o
	}
	tr.mu.Unlock()
	pctx := tr.t.Extract(ctx, r.Headers)
	var o openSpan
	if tr.t.exporting && tr.t.Enabled() {
		o.span = tr.startSpan(pctx, r)
		o.sc = o.span.SpanContext()
	} else {
		o.sc = tr.t.spanContext(pctx, "run/"+r.Name)
	}
	tr.mu.Lock()
	tr.open[r.ID] = o
	tr.mu.Unlock()
	return o
}

func (tr *Tracker) startSpan(pctx context.Context, r *tasks.Request) trace.Span {
	attrs := make([]attribute.KeyValue, 0, 10)
	attrs = append(attrs,
		semconv.MessagingSystemKey.String(tr.t.cfg.System),
		semconv.MessagingDestinationName(r.Delivery.Queue),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("run"),
		semconv.MessagingMessageID(r.ID),
		AttrTaskName.String(r.Name),
		AttrAction.String("run"),
		AttrRetries.Int(r.Retries),
		AttrHostname.String(tr.hostname),
	)
	if r.Delivery.RoutingKey != "" && tr.t.cfg.System == "rabbitmq" {
		attrs = append(attrs, semconv.MessagingRabbitMQDestinationRoutingKey(r.Delivery.RoutingKey))
	}
	_, span := tr.t.tracer.Start(pctx, "run/"+r.Name, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
	return span
}

// expireLocked forgets the span contexts of tasks that ended more than endedGrace ago, and
// the oldest beyond maxEnded.
func (tr *Tracker) expireLocked(now time.Time) {
	for tr.head < len(tr.queue) && (now.Sub(tr.queue[tr.head].at) > endedGrace || len(tr.queue)-tr.head > maxEnded) {
		e := tr.queue[tr.head]
		if _, open := tr.open[e.id]; !open {
			delete(tr.ended, e.id)
		}
		tr.queue[tr.head] = endedEntry{}
		tr.head++
	}
	if tr.head > 1024 && tr.head*2 > len(tr.queue) {
		tr.queue = append(tr.queue[:0], tr.queue[tr.head:]...)
		tr.head = 0
	}
}

// SpanContext returns the span context of the task with id, while known.
func (tr *Tracker) SpanContext(id string) (trace.SpanContext, bool) {
	if id == "" {
		return trace.SpanContext{}, false
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if o, ok := tr.open[id]; ok {
		return o.sc, true
	}
	sc, ok := tr.ended[id]
	return sc, ok
}

// end closes the task's span with its outcome.
func (tr *Tracker) end(id, outcome string, fail func(trace.Span)) {
	now := time.Now()
	tr.mu.Lock()
	o, ok := tr.open[id]
	if ok {
		delete(tr.open, id)
		tr.ended[id] = o.sc
		tr.queue = append(tr.queue, endedEntry{id: id, at: now})
	}
	tr.expireLocked(now)
	tr.mu.Unlock()
	if !ok || o.span == nil {
		return
	}
	span := o.span
	span.SetAttributes(AttrOutcome.String(outcome))
	if fail != nil {
		fail(span)
	}
	span.End()
}

// Open is the number of task spans not yet ended (tests, metrics).
func (tr *Tracker) Open() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.open)
}

// TaskReceived does nothing: the span starts with the handler.
func (tr *Tracker) TaskReceived(*worker.TaskInfo) {}

// TaskStarted does nothing: the span starts with the handler.
func (tr *Tracker) TaskStarted(*worker.TaskInfo) {}

// TaskSucceeded ends the span with outcome success.
func (tr *Tracker) TaskSucceeded(i *worker.TaskInfo, _ time.Duration, _ any) {
	tr.end(i.ID, "success", func(s trace.Span) { s.SetStatus(codes.Ok, "") })
}

// TaskFailed ends the span with an error status.
func (tr *Tracker) TaskFailed(i *worker.TaskInfo, exc protocol.ExceptionInfo, _ string) {
	tr.end(i.ID, "failure", func(s trace.Span) {
		s.SetAttributes(semconv.ErrorTypeKey.String(exc.Type))
		s.SetStatus(codes.Error, exc.Type)
	})
}

// TaskRetried ends the span with outcome retry.
func (tr *Tracker) TaskRetried(i *worker.TaskInfo, exc protocol.ExceptionInfo, _ string) {
	tr.end(i.ID, "retry", func(s trace.Span) { s.SetAttributes(attribute.String("celery.retry.reason", exc.Type)) })
}

// TaskRejected ends the span with outcome rejected.
func (tr *Tracker) TaskRejected(i *worker.TaskInfo, _ bool) { tr.end(i.ID, "rejected", nil) }

// TaskRevoked ends the span with outcome revoked (or expired).
func (tr *Tracker) TaskRevoked(i *worker.TaskInfo, terminated, expired bool) {
	o := "revoked"
	if expired {
		o = "expired"
	}
	tr.end(i.ID, o, func(s trace.Span) {
		if terminated {
			s.SetAttributes(attribute.String("celery.revoked.reason", "terminated"))
		}
	})
}

// TaskDeadLettered ends the span if still open, with outcome dead_lettered.
func (tr *Tracker) TaskDeadLettered(i *worker.TaskInfo, _ string, reason string) {
	tr.end(i.ID, "dead_lettered", func(s trace.Span) { s.SetAttributes(attribute.String("fleet.dlq.reason", reason)) })
}
