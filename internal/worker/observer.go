package worker

import (
	"time"

	"denis.io/fleet/internal/protocol"
)

// TaskInfo describes one request the way Celery's task events and `inspect` replies do.
// Args and Kwargs are the decoded values; they are shared and must not be modified.
type TaskInfo struct {
	ID         string
	Name       string // the task name; Shadow, when set, is what Celery reports instead
	Shadow     string
	ArgsRepr   string // Celery's argsrepr (repr of the args, at most 1024 characters)
	KwargsRepr string
	Args       []any
	Kwargs     map[string]any
	RootID     string
	ParentID   string
	GroupID    string
	Retries    int
	ETA        *time.Time
	Expires    *time.Time
	// Delivery info: where the message came from.
	Queue       string
	Exchange    string
	RoutingKey  string
	Priority    int
	Redelivered bool
	// Hostname is the node name of this worker.
	Hostname string
	// Received is when this worker got the message.
	Received time.Time
}

// DisplayName is the name Celery shows for the request: the shadow name if any.
func (i *TaskInfo) DisplayName() string {
	if i.Shadow != "" {
		return i.Shadow
	}
	return i.Name
}

// Observer is told about every task event, one method per Celery task event
// (task-received, -started, -succeeded, -failed, -retried, -rejected, -revoked) plus
// dead-lettering. Methods are called synchronously on the worker's paths, possibly from
// many goroutines at once: they must be safe for concurrent use and must not block (queue
// the event and send it elsewhere). Embed NopObserver to implement only some of them.
type Observer interface {
	// TaskReceived: the message was accepted (after the revoked/expired check).
	TaskReceived(info *TaskInfo)
	// TaskStarted: the handler is about to run.
	TaskStarted(info *TaskInfo)
	// TaskSucceeded: the outcome is recorded; result is the JSON value returned.
	TaskSucceeded(info *TaskInfo, runtime time.Duration, result any)
	// TaskFailed: the FAILURE is recorded (handler error, hard time limit, unknown task).
	// ExceptionRepr(exc) is what Celery puts in the event's exception field.
	TaskFailed(info *TaskInfo, exc protocol.ExceptionInfo, traceback string)
	// TaskRetried: the retry was published and RETRY recorded.
	TaskRetried(info *TaskInfo, exc protocol.ExceptionInfo, traceback string)
	// TaskRejected: the handler rejected its message (requeued or dead-lettered).
	TaskRejected(info *TaskInfo, requeue bool)
	// TaskRevoked: the task will not run (revoked or expired), or was terminated while
	// running; REVOKED is recorded.
	TaskRevoked(info *TaskInfo, terminated, expired bool)
	// TaskDeadLettered: the message was moved to dead-letter queue queue for reason.
	// info may carry only an id and a name (undecodable messages).
	TaskDeadLettered(info *TaskInfo, queue, reason string)
}

// NopObserver ignores every event; embed it to implement part of Observer.
type NopObserver struct{}

func (NopObserver) TaskReceived(*TaskInfo)                                {}
func (NopObserver) TaskStarted(*TaskInfo)                                 {}
func (NopObserver) TaskSucceeded(*TaskInfo, time.Duration, any)           {}
func (NopObserver) TaskFailed(*TaskInfo, protocol.ExceptionInfo, string)  {}
func (NopObserver) TaskRetried(*TaskInfo, protocol.ExceptionInfo, string) {}
func (NopObserver) TaskRejected(*TaskInfo, bool)                          {}
func (NopObserver) TaskRevoked(*TaskInfo, bool, bool)                     {}
func (NopObserver) TaskDeadLettered(*TaskInfo, string, string)            {}

var _ Observer = NopObserver{}

// observers fans events out to every configured observer.
type observers []Observer

func (os observers) received(i *TaskInfo) {
	for _, o := range os {
		o.TaskReceived(i)
	}
}

func (os observers) started(i *TaskInfo) {
	for _, o := range os {
		o.TaskStarted(i)
	}
}

func (os observers) succeeded(i *TaskInfo, rt time.Duration, v any) {
	for _, o := range os {
		o.TaskSucceeded(i, rt, v)
	}
}

func (os observers) failed(i *TaskInfo, exc protocol.ExceptionInfo, tb string) {
	for _, o := range os {
		o.TaskFailed(i, exc, tb)
	}
}

func (os observers) retried(i *TaskInfo, exc protocol.ExceptionInfo, tb string) {
	for _, o := range os {
		o.TaskRetried(i, exc, tb)
	}
}

func (os observers) rejected(i *TaskInfo, requeue bool) {
	for _, o := range os {
		o.TaskRejected(i, requeue)
	}
}

func (os observers) revoked(i *TaskInfo, terminated, expired bool) {
	for _, o := range os {
		o.TaskRevoked(i, terminated, expired)
	}
}

func (os observers) deadLettered(i *TaskInfo, queue, reason string) {
	for _, o := range os {
		o.TaskDeadLettered(i, queue, reason)
	}
}
