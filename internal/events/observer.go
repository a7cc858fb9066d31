package events

import (
	"syscall"
	"time"

	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/worker"
)

// resultReprMax is Celery's resultrepr_maxsize.
const resultReprMax = 1024

// TaskObserver turns the worker's task events into Celery task-* events (§8.4). Every
// event also carries `queue` (and `name`), which Celery's receivers copy onto the task, so
// celery-exporter and Flower label tasks by queue even when producers send no task-sent.
type TaskObserver struct {
	d *Dispatcher
}

var _ worker.Observer = TaskObserver{}

// Observer returns the worker.Observer that publishes through d.
func (d *Dispatcher) Observer() TaskObserver { return TaskObserver{d: d} }

func (o TaskObserver) send(typ string, i *worker.TaskInfo, extra ...field) {
	if !o.d.taskOn.Load() {
		return
	}
	var arr [16]field
	fs := append(arr[:0], field{"uuid", i.ID}, field{"name", i.DisplayName()}, field{"queue", i.Queue})
	o.d.taskEvent(typ, append(fs, extra...))
}

// TaskReceived sends task-received with Celery's fields: name, args and kwargs as repr
// strings, root_id, parent_id, retries, eta and expires in ISO 8601 (or null).
func (o TaskObserver) TaskReceived(i *worker.TaskInfo) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-received", i,
		field{"args", i.ArgsRepr}, field{"kwargs", i.KwargsRepr},
		field{"root_id", nullable(i.RootID)}, field{"parent_id", nullable(i.ParentID)}, field{"retries", i.Retries},
		field{"eta", isoformat(i.ETA)}, field{"expires", isoformat(i.Expires)},
		field{"exchange", i.Exchange}, field{"routing_key", i.RoutingKey})
}

// TaskStarted sends task-started (its pid is the worker's, as Celery's is the main
// process's).
func (o TaskObserver) TaskStarted(i *worker.TaskInfo) {
	o.send("task-started", i)
}

// TaskSucceeded sends task-succeeded with the result's repr and the runtime in seconds.
func (o TaskObserver) TaskSucceeded(i *worker.TaskInfo, runtime time.Duration, result any) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-succeeded", i,
		field{"result", protocol.SafeRepr(result, resultReprMax)}, field{"runtime", runtime.Seconds()})
}

// TaskFailed sends task-failed with the exception's repr and the traceback.
func (o TaskObserver) TaskFailed(i *worker.TaskInfo, exc protocol.ExceptionInfo, tb string) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-failed", i, field{"exception", excRepr(exc)}, field{"traceback", tb})
}

// TaskRetried sends task-retried with the exception's repr and the traceback.
func (o TaskObserver) TaskRetried(i *worker.TaskInfo, exc protocol.ExceptionInfo, tb string) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-retried", i, field{"exception", excRepr(exc)}, field{"traceback", tb})
}

// TaskRejected sends task-rejected.
func (o TaskObserver) TaskRejected(i *worker.TaskInfo, requeue bool) {
	o.send("task-rejected", i, field{"requeue", requeue})
}

// TaskRevoked sends task-revoked; a terminated task reports signum 15 (SIGTERM, what
// Celery's revoke --terminate sends by default).
func (o TaskObserver) TaskRevoked(i *worker.TaskInfo, terminated, expired bool) {
	var signum any
	if terminated {
		signum = int(syscall.SIGTERM)
	}
	o.send("task-revoked", i, field{"terminated", terminated}, field{"signum", signum}, field{"expired", expired})
}

// TaskDeadLettered sends nothing: Celery has no such event (the failure or rejection
// that led to it has its own).
func (o TaskObserver) TaskDeadLettered(*worker.TaskInfo, string, string) {}

func excRepr(exc protocol.ExceptionInfo) string { return ExceptionRepr(exc.Type, exc.Message) }

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// isoformat is Python's datetime.isoformat() of an aware datetime, or nil.
func isoformat(t *time.Time) any {
	if t == nil {
		return nil
	}
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05-07:00")
	}
	return t.Format("2006-01-02T15:04:05.000000-07:00")
}
