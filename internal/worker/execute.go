package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
)

// execute runs one due task in a slot and records its outcome before settling the delivery.
func (w *Worker) execute(j *job) {
	t, d := j.t, j.d
	log := w.log.With("task_id", t.ID, "task", t.Name, "queue", d.Queue, "retries", t.Retries)

	h, ok := w.registry.Lookup(t.Name)
	if !ok {
		w.rejectUnknown(j, log)
		return
	}
	if t.Expires != nil && time.Now().After(*t.Expires) {
		w.revokeExpired(j, log)
		return
	}

	tc := w.cfg.Tasks.For(t.Name)
	storeResult := !(tc.IgnoreResult || t.IgnoreResult)
	if tc.TrackStarted && storeResult {
		started := map[string]any{"pid": w.pid, "hostname": w.cfg.Hostname}
		if err := w.store(j, protocol.StateStarted, started, ""); err != nil {
			log.Warn("could not record STARTED", "error", err)
		}
	}
	if !tc.AcksLate {
		// Early ack (acks_late: false): the message leaves the broker before the handler runs.
		if !j.claim(stateFinishing) {
			return
		}
		w.ack(d)
		w.forget(j)
	}

	w.active.Add(1)
	start := time.Now()
	value, runErr := w.run(h, j)
	runtime := time.Since(start)
	w.active.Add(-1)
	w.processed.Add(1)

	if tc.AcksLate && !j.claim(stateFinishing) {
		// Shutdown handed the delivery back while the handler ran; another worker runs it
		// again, so this outcome is not recorded.
		log.Warn("outcome dropped: delivery was handed back at shutdown", "runtime_s", runtime.Seconds())
		return
	}

	status, res, tb := protocol.StateSuccess, any(nil), ""
	if runErr == nil {
		encoded, err := protocol.MarshalJSON(value)
		if err != nil {
			runErr = &tasks.Error{Type: "EncodeError", Module: "kombu.exceptions",
				Args: []any{fmt.Sprintf("result of %s is not JSON-serialisable: %v", t.Name, err)}, Cause: err}
		} else {
			res = json.RawMessage(encoded)
		}
	}
	if runErr != nil {
		status = protocol.StateFailure
		res, tb = exceptionOf(runErr, t, w.cfg.Hostname)
		log.Info("task failed", "runtime_s", runtime.Seconds(), "error", runErr.Error())
	} else {
		log.Debug("task succeeded", "runtime_s", runtime.Seconds())
	}

	if storeResult {
		if err := w.storeWithRetry(j, status, res, tb, log); err != nil {
			if tc.AcksLate {
				// The outcome is not recorded: give the message back rather than lose it.
				log.Error("could not record outcome; handing the message back", "status", status, "error", err)
				w.requeue(d, "outcome not recorded")
			} else {
				log.Error("could not record outcome (acks_late off: message already acked)", "status", status, "error", err)
			}
			w.forget(j)
			return
		}
	}
	if tc.AcksLate {
		w.ack(d)
		w.forget(j)
	}
}

// run calls the handler, turning a panic into a failure with the stack as traceback.
func (w *Worker) run(h tasks.Handler, j *job) (value any, err error) {
	t, d := j.t, j.d
	req := &tasks.Request{
		ID: t.ID, Name: t.Name, Args: t.Args, Kwargs: t.Kwargs, Retries: t.Retries,
		ETA: t.ETA, Expires: t.Expires, RootID: t.RootID, ParentID: t.ParentID, GroupID: t.Group,
		Headers: t.Headers, Hostname: w.cfg.Hostname,
		Delivery: tasks.DeliveryInfo{Queue: d.Queue, Exchange: d.Exchange, RoutingKey: d.RoutingKey,
			Priority: int(d.Message.Properties.Priority), Redelivered: d.Redelivered},
	}
	if req.Args == nil {
		req.Args = []any{}
	}
	if req.Kwargs == nil {
		req.Kwargs = map[string]any{}
	}
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p, stack: string(debug.Stack())}
		}
	}()
	return h.ServeTask(w.runCtx, req)
}

type panicError struct {
	value any
	stack string
}

func (p *panicError) Error() string { return fmt.Sprintf("task panicked: %v", p.value) }

// exceptionOf encodes err the way Celery's JSON result serializer encodes an exception, with
// a traceback text.
func exceptionOf(err error, t *protocol.Task, hostname string) (protocol.ExceptionInfo, string) {
	var pe *panicError
	if errors.As(err, &pe) {
		exc := protocol.ExceptionInfo{Type: "WorkerPanicError", Module: "fleet.errors", Message: []any{pe.Error()}}
		return exc, fmt.Sprintf("Traceback (most recent call last):\n  Go task %s[%s] on %s\n%s\nWorkerPanicError: %s\n",
			t.Name, t.ID, hostname, strings.TrimRight(pe.stack, "\n"), pe.Error())
	}
	te := tasks.AsError(err)
	args := te.Args
	if args == nil {
		args = []any{}
	}
	exc := protocol.ExceptionInfo{Type: te.Type, Module: te.Module, Message: args}
	return exc, fmt.Sprintf("Traceback (most recent call last):\n  Go task %s[%s] on %s\n%s: %s\n",
		t.Name, t.ID, hostname, te.Type, err.Error())
}

func (w *Worker) record(j *job, status string, res any, tb string) result.Record {
	t := j.t
	return result.Record{
		TaskID: t.ID, Status: status, Result: res, Traceback: tb,
		GroupID: t.Group, ParentID: t.ParentID,
		ReplyTo: t.ReplyTo, CorrelationID: firstNonEmpty(j.d.Message.Properties.CorrelationID, t.ID),
	}
}

func (w *Worker) store(j *job, status string, res any, tb string) error {
	if w.results == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(w.runCtx, 10*time.Second)
	defer cancel()
	return w.results.Store(ctx, w.record(j, status, res, tb))
}

// storeWithRetry records a final state, retrying a failing backend with backoff for up to
// about 30 s (or until the worker stops waiting).
func (w *Worker) storeWithRetry(j *job, status string, res any, tb string, log *slog.Logger) error {
	backoff := 100 * time.Millisecond
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := w.store(j, status, res, tb)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || w.runCtx.Err() != nil {
			return err
		}
		log.Warn("result backend write failed; retrying", "status", status, "backoff", backoff, "error", err)
		select {
		case <-time.After(backoff):
		case <-w.runCtx.Done():
			return err
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (w *Worker) ack(d *broker.Delivery) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.broker.Ack(ctx, d); err != nil {
		w.settleError("ack", d, err)
	}
}

// rejectUnknown handles a task name nobody registered: FAILURE NotRegistered (so Python's
// get() raises it) and the message goes to the dead-letter queue; never requeued in a loop.
func (w *Worker) rejectUnknown(j *job, log *slog.Logger) {
	if !j.claim(stateFinishing) {
		return
	}
	defer w.forget(j)
	t := j.t
	log.Warn("unknown task: dead-lettering", "dlq", dlq.QueueName(j.d.Queue))
	exc := protocol.ExceptionInfo{Type: "NotRegistered", Module: "celery.exceptions", Message: []any{t.Name}}
	tb := fmt.Sprintf("Traceback (most recent call last):\n  Go worker %s\ncelery.exceptions.NotRegistered: %q\n", w.cfg.Hostname, t.Name)
	if err := w.storeWithRetry(j, protocol.StateFailure, exc, tb, log); err != nil {
		log.Error("could not record NotRegistered; dead-lettering anyway", "error", err)
	}
	w.deadLetter(j.d, dlq.ReasonUnknownTask, fmt.Sprintf("NotRegistered(%q)", t.Name))
}

// revokeExpired handles a task received after its expiry: REVOKED, acked, never run.
func (w *Worker) revokeExpired(j *job, log *slog.Logger) {
	if !j.claim(stateFinishing) {
		return
	}
	defer w.forget(j)
	log.Info("task expired: not run", "expires", j.t.Expires)
	exc := protocol.ExceptionInfo{Type: "TaskRevokedError", Module: "celery.exceptions", Message: []any{"expired"}}
	if !j.t.IgnoreResult && !w.cfg.Tasks.For(j.t.Name).IgnoreResult {
		if err := w.storeWithRetry(j, protocol.StateRevoked, exc, "", log); err != nil {
			log.Error("could not record REVOKED; handing the message back", "error", err)
			w.requeue(j.d, "outcome not recorded")
			return
		}
	}
	w.ack(j.d)
}

// rejectUndecodable sends a message we cannot decode to the dead-letter queue with the
// reason, storing a FAILURE first when the task id could be recovered.
func (w *Worker) rejectUndecodable(d *broker.Delivery, err error) {
	reason := dlq.ReasonDecodeError
	var de *protocol.DecodeError
	excType, module := "DecodeError", "kombu.exceptions"
	if errors.As(err, &de) {
		reason = de.Reason
		if reason == protocol.ReasonUnsupportedContent {
			excType = "ContentDisallowed"
		}
	}
	log := w.log.With("queue", d.Queue, "reason", reason)
	if de != nil && de.TaskID != "" {
		log = log.With("task_id", de.TaskID, "task", de.TaskName)
		j := &job{d: d, t: &protocol.Task{ID: de.TaskID, Name: de.TaskName,
			ReplyTo: d.Message.Properties.ReplyTo}}
		exc := protocol.ExceptionInfo{Type: excType, Module: module, Message: []any{err.Error()}}
		if serr := w.storeWithRetry(j, protocol.StateFailure, exc, "", log); serr != nil {
			log.Error("could not record FAILURE for undecodable message", "error", serr)
		}
	}
	log.Warn("undecodable message: dead-lettering", "error", err.Error(), "dlq", dlq.QueueName(d.Queue))
	w.deadLetter(d, reason, err.Error())
}

func (w *Worker) deadLetter(d *broker.Delivery, reason, errText string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dlq.Move(ctx, w.broker, d, reason, errText, w.cfg.Hostname); err != nil {
		w.settleError("dead-letter", d, err)
	}
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
