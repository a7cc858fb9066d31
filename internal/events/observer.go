package events

import (
	"strconv"
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

// send buffers a task event of i: uuid, name and queue, then the fields write appends.
func (o TaskObserver) send(typ string, i *worker.TaskInfo, write func([]byte) []byte) {
	o.d.taskEventWith(typ, func(b []byte) []byte {
		b = appendString(append(b, `, "uuid": `...), i.ID)
		b = appendString(append(b, `, "name": `...), i.DisplayName())
		b = appendString(append(b, `, "queue": `...), i.Queue)
		if write != nil {
			b = write(b)
		}
		return b
	})
}

// TaskReceived sends task-received with Celery's fields: name, args and kwargs as repr
// strings, root_id, parent_id, retries, eta and expires in ISO 8601 (or null).
func (o TaskObserver) TaskReceived(i *worker.TaskInfo) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-received", i, func(b []byte) []byte {
		b = appendString(append(b, `, "args": `...), i.ArgsRepr)
		b = appendString(append(b, `, "kwargs": `...), i.KwargsRepr)
		b = appendOptString(append(b, `, "root_id": `...), i.RootID)
		b = appendOptString(append(b, `, "parent_id": `...), i.ParentID)
		b = strconv.AppendInt(append(b, `, "retries": `...), int64(i.Retries), 10)
		b = appendISO(append(b, `, "eta": `...), i.ETA)
		b = appendISO(append(b, `, "expires": `...), i.Expires)
		b = appendString(append(b, `, "exchange": `...), i.Exchange)
		return appendString(append(b, `, "routing_key": `...), i.RoutingKey)
	})
}

// TaskStarted sends task-started (its pid is the worker's, as Celery's is the main
// process's).
func (o TaskObserver) TaskStarted(i *worker.TaskInfo) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-started", i, nil)
}

// TaskSucceeded sends task-succeeded with the result's repr and the runtime in seconds.
func (o TaskObserver) TaskSucceeded(i *worker.TaskInfo, runtime time.Duration, result any) {
	if !o.d.taskOn.Load() {
		return
	}
	repr := protocol.SafeRepr(result, resultReprMax)
	o.send("task-succeeded", i, func(b []byte) []byte {
		b = appendString(append(b, `, "result": `...), repr)
		return appendFloat(append(b, `, "runtime": `...), runtime.Seconds())
	})
}

// TaskFailed sends task-failed with the exception's repr and the traceback.
func (o TaskObserver) TaskFailed(i *worker.TaskInfo, exc protocol.ExceptionInfo, tb string) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-failed", i, excFields(exc, tb))
}

// TaskRetried sends task-retried with the exception's repr and the traceback.
func (o TaskObserver) TaskRetried(i *worker.TaskInfo, exc protocol.ExceptionInfo, tb string) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-retried", i, excFields(exc, tb))
}

func excFields(exc protocol.ExceptionInfo, tb string) func([]byte) []byte {
	repr := excRepr(exc)
	return func(b []byte) []byte {
		b = appendString(append(b, `, "exception": `...), repr)
		return appendString(append(b, `, "traceback": `...), tb)
	}
}

// TaskRejected sends task-rejected.
func (o TaskObserver) TaskRejected(i *worker.TaskInfo, requeue bool) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-rejected", i, func(b []byte) []byte {
		return strconv.AppendBool(append(b, `, "requeue": `...), requeue)
	})
}

// TaskRevoked sends task-revoked; a terminated task reports signum 15 (SIGTERM, what
// Celery's revoke --terminate sends by default).
func (o TaskObserver) TaskRevoked(i *worker.TaskInfo, terminated, expired bool) {
	if !o.d.taskOn.Load() {
		return
	}
	o.send("task-revoked", i, func(b []byte) []byte {
		b = strconv.AppendBool(append(b, `, "terminated": `...), terminated)
		b = append(b, `, "signum": `...)
		if terminated {
			b = strconv.AppendInt(b, int64(syscall.SIGTERM), 10)
		} else {
			b = append(b, "null"...)
		}
		return strconv.AppendBool(append(b, `, "expired": `...), expired)
	})
}

// appendOptString writes s, or null when it is empty.
func appendOptString(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return appendString(b, s)
}

// appendISO writes isoformat(t) as a JSON string, or null.
func appendISO(b []byte, t *time.Time) []byte {
	if s, ok := isoformat(t).(string); ok {
		return appendString(b, s)
	}
	return append(b, "null"...)
}

// TaskDeadLettered sends nothing: Celery has no such event (the failure or rejection
// that led to it has its own).
func (o TaskObserver) TaskDeadLettered(*worker.TaskInfo, string, string) {}

func excRepr(exc protocol.ExceptionInfo) string { return ExceptionRepr(exc.Type, exc.Message) }

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
