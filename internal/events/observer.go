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

func (o TaskObserver) send(typ string, i *worker.TaskInfo, fields map[string]any) {
	if !o.d.taskOn.Load() {
		return
	}
	fields["uuid"] = i.ID
	fields["name"] = i.DisplayName()
	fields["queue"] = i.Queue
	o.d.Task(typ, fields)
}

// TaskReceived sends task-received with Celery's fields: name, args and kwargs as repr
// strings, root_id, parent_id, retries, eta and expires in ISO 8601 (or null).
func (o TaskObserver) TaskReceived(i *worker.TaskInfo) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-received", i, map[string]any{
		"args": i.ArgsRepr, "kwargs": i.KwargsRepr,
		"root_id": nullable(i.RootID), "parent_id": nullable(i.ParentID), "retries": i.Retries,
		"eta": isoformat(i.ETA), "expires": isoformat(i.Expires),
		"exchange": i.Exchange, "routing_key": i.RoutingKey,
	})
}

// TaskStarted sends task-started (its pid is the worker's, as Celery's is the main
// process's).
func (o TaskObserver) TaskStarted(i *worker.TaskInfo) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-started", i, map[string]any{})
}

// TaskSucceeded sends task-succeeded with the result's repr and the runtime in seconds.
func (o TaskObserver) TaskSucceeded(i *worker.TaskInfo, runtime time.Duration, result any) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-succeeded", i, map[string]any{
		"result": protocol.SafeRepr(result, resultReprMax), "runtime": runtime.Seconds(),
	})
}

// TaskFailed sends task-failed with the exception's repr and the traceback.
func (o TaskObserver) TaskFailed(i *worker.TaskInfo, exc protocol.ExceptionInfo, tb string) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-failed", i, map[string]any{"exception": excRepr(exc), "traceback": tb})
}

// TaskRetried sends task-retried with the exception's repr and the traceback.
func (o TaskObserver) TaskRetried(i *worker.TaskInfo, exc protocol.ExceptionInfo, tb string) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-retried", i, map[string]any{"exception": excRepr(exc), "traceback": tb})
}

// TaskRejected sends task-rejected.
func (o TaskObserver) TaskRejected(i *worker.TaskInfo, requeue bool) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-rejected", i, map[string]any{"requeue": requeue})
}

// TaskRevoked sends task-revoked; a terminated task reports signum 15 (SIGTERM, what
// Celery's revoke --terminate sends by default).
func (o TaskObserver) TaskRevoked(i *worker.TaskInfo, terminated, expired bool) {
	if !o.d.taskOn.Load() {
		return
	}
	var signum any
	if terminated {
		signum = int(syscall.SIGTERM)
	}
	o.send("task-revoked", i, map[string]any{"terminated": terminated, "signum": signum, "expired": expired})
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
