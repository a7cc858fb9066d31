package worker

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
)

// taskLog is a task-scoped logger that is made only when something is logged: building
// one with slog.Logger.With formats its attributes at once, which would cost every task
// several allocations although most tasks log nothing at the default level. It is safe
// for concurrent use.
type taskLog struct {
	base  *slog.Logger
	attrs []any
	l     atomic.Pointer[slog.Logger]
}

// taskLog returns the worker's logger with attrs (key-value pairs, as for With).
func (w *Worker) taskLog(attrs ...any) *taskLog {
	return &taskLog{base: w.log, attrs: attrs}
}

func (t *taskLog) logger() *slog.Logger {
	if l := t.l.Load(); l != nil {
		return l
	}
	l := t.base.With(t.attrs...)
	if t.l.CompareAndSwap(nil, l) {
		return l
	}
	return t.l.Load()
}

// With returns a task logger with args added.
func (t *taskLog) With(args ...any) *taskLog {
	return &taskLog{base: t.base, attrs: append(slices.Clip(t.attrs), args...)}
}

func (t *taskLog) log(level slog.Level, msg string, args ...any) {
	if !t.base.Enabled(context.Background(), level) {
		return
	}
	t.logger().Log(context.Background(), level, msg, args...)
}

func (t *taskLog) Debug(msg string, args ...any) { t.log(slog.LevelDebug, msg, args...) }
func (t *taskLog) Info(msg string, args ...any)  { t.log(slog.LevelInfo, msg, args...) }
func (t *taskLog) Warn(msg string, args ...any)  { t.log(slog.LevelWarn, msg, args...) }
func (t *taskLog) Error(msg string, args ...any) { t.log(slog.LevelError, msg, args...) }
