package telemetry

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys of the trace context.
const (
	LogTraceID = "trace_id"
	LogSpanID  = "span_id"
)

// logHandler adds trace_id and span_id to task-scoped log lines.
type logHandler struct {
	next    slog.Handler
	tr      *Tracker
	taskID  string // bound with Logger.With("task_id", …) before any group
	grouped bool
}

// LogHandler wraps next so that every line logged for a task carries trace_id and
// span_id: taken from the span in the context (the *Context logging calls), else from the
// task the line names with a task_id attribute.
func LogHandler(next slog.Handler, tr *Tracker) slog.Handler {
	return &logHandler{next: next, tr: tr}
}

func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		id := h.taskID
		if id == "" {
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == "task_id" {
					id = a.Value.String()
					return false
				}
				return true
			})
		}
		if id != "" {
			sc, _ = h.tr.SpanContext(id)
		}
	}
	if sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String(LogTraceID, sc.TraceID().String()), slog.String(LogSpanID, sc.SpanID().String()))
	}
	return h.next.Handle(ctx, r)
}

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	if !h.grouped {
		for _, a := range attrs {
			if a.Key == "task_id" {
				c.taskID = a.Value.String()
			}
		}
	}
	return &c
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.next = h.next.WithGroup(name)
	c.grouped = true
	return &c
}
