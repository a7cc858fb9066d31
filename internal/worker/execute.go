package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
)

// outcome is what a handler returned.
type outcome struct {
	value any
	err   error
}

// execute runs one due task in a slot and records its outcome before settling the
// delivery. release frees the slot: it is called as soon as the handler has returned (or
// was abandoned) and a recording place is free, so that the next task runs while this
// one's outcome is recorded and its delivery settled; the delivery still counts against
// the prefetch until it is settled.
func (w *Worker) execute(j *job, release func()) {
	t, d, tc := j.t, j.d, j.tc
	log := w.taskLog("task_id", t.ID, "task", t.Name, "queue", d.Queue, "retries", t.Retries)

	// Just before running, the revoked and expired check runs again (Celery does too).
	if reason := w.revokedReason(w.runCtx, j); reason != "" {
		if j.claim(stateFinishing) {
			w.finishRevoked(j, reason, false)
		}
		return
	}
	taskCtx, cancel := context.WithCancelCause(w.runCtx)
	defer cancel(context.Canceled)
	j.mu.Lock()
	if j.state.Load() != stateOpen {
		j.mu.Unlock()
		return
	}
	j.started = time.Now()
	j.terminate = make(chan struct{})
	j.phase.Store(phaseActive)
	j.mu.Unlock()

	storeResult := !(tc.IgnoreResult || t.IgnoreResult)
	if tc.TrackStarted && storeResult {
		started := map[string]any{"pid": w.pid, "hostname": w.cfg.Hostname}
		if err := w.store(w.record(j, protocol.StateStarted, started, "", nil)); err != nil {
			log.Warn("could not record STARTED", "error", err)
		}
	}
	if !tc.AcksLate {
		// Early ack (acks_late: false): the message leaves the broker before the handler runs.
		if !j.claim(stateFinishing) {
			return
		}
		w.ack(d)
		j.mu.Lock()
		j.acked = true
		j.mu.Unlock()
	}
	info := w.infoFor(j)
	w.obs.started(info)

	w.active.Add(1)
	hard, soft := w.timeLimits(j)
	if soft > 0 {
		st := time.AfterFunc(soft, func() { cancel(tasks.ErrSoftTimeLimitExceeded) })
		defer st.Stop()
	}
	var hardC <-chan time.Time
	if hard > 0 {
		ht := time.NewTimer(hard)
		defer ht.Stop()
		hardC = ht.C
	}
	done := make(chan outcome, 1)
	w.goPooled(func() { w.runHandler(taskCtx, j, done, log) })

	var o outcome
	var stopped error // tasks.ErrTimeLimitExceeded or tasks.ErrTerminated
	select {
	case o = <-done:
	case <-hardC:
		stopped = tasks.ErrTimeLimitExceeded
	case <-j.terminate:
		stopped = tasks.ErrTerminated
	}
	if stopped != nil {
		// Give up on the handler unless it has just finished; only then cancel its context
		// (with the reason as cause), so its reaction cannot race the decision.
		if j.handler.CompareAndSwap(handlerRunning, handlerAbandoned) {
			w.counters.abandonedNow.Add(1)
			w.counters.abandonedTotal.Add(1)
			cancel(stopped)
		} else {
			o, stopped = <-done, nil
		}
	}
	runtime := time.Since(j.started)
	w.active.Add(-1)
	w.runners.recording <- struct{}{} // bounded: the slot is kept until a place is free
	defer func() { <-w.runners.recording }()
	release()
	w.processed.Add(1)
	w.mu.Lock()
	w.totals[t.Name]++
	w.mu.Unlock()

	if !j.acked && !j.claim(stateFinishing) {
		// Shutdown handed the delivery back while the handler ran; another worker runs it
		// again, so this outcome is not recorded.
		log.Warn("outcome dropped: delivery was handed back at shutdown", "runtime_s", runtime.Seconds())
		return
	}

	switch {
	case errors.Is(stopped, tasks.ErrTimeLimitExceeded):
		w.counters.timeLimited.Add(1)
		limit := hard.Seconds()
		log.Error("hard time limit exceeded: task abandoned", "time_limit_s", limit)
		exc := result.TimeLimitExceeded(limit)
		tb := traceback(t, w.cfg.Hostname, fmt.Sprintf("billiard.exceptions.TimeLimitExceeded: %s", formatSeconds(limit)))
		w.fail(j, info, exc, tb, deadLetterIf(tc.DeadLetterOnFailure, dlq.ReasonTimeLimit), log)
	case errors.Is(stopped, tasks.ErrTerminated):
		log.Info("task terminated by revoke: abandoned")
		w.finishRevoked(j, result.RevokedReasonTerminated, true)
	default:
		w.finish(j, info, o, runtime, log)
	}
}

// runHandler runs the handler and delivers its outcome; an abandoned handler's outcome is
// logged and dropped.
func (w *Worker) runHandler(ctx context.Context, j *job, done chan<- outcome, log *taskLog) {
	v, err := w.run(ctx, j)
	done <- outcome{v, err}
	if !j.handler.CompareAndSwap(handlerRunning, handlerDone) {
		w.counters.abandonedNow.Add(-1)
		log.Warn("abandoned task returned; its outcome is dropped", "error", errString(err))
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// timeLimits returns the hard and soft limits: the message's timelimit header [hard,
// soft], each absent element taken from the task's configuration.
func (w *Worker) timeLimits(j *job) (hard, soft time.Duration) {
	hard, soft = w.taskTimeLimits(j) // a time_limit override, else the task's settings
	if p := j.t.TimeLimit[0]; p != nil && *p > 0 {
		hard = time.Duration(*p * float64(time.Second))
	}
	if p := j.t.TimeLimit[1]; p != nil && *p > 0 {
		soft = time.Duration(*p * float64(time.Second))
	}
	return hard, soft
}

// run calls the handler, turning a panic into a failure with the stack as traceback.
func (w *Worker) run(ctx context.Context, j *job) (value any, err error) {
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
	return j.h.ServeTask(ctx, req)
}

type panicError struct {
	value any
	stack string
}

func (p *panicError) Error() string { return fmt.Sprintf("task panicked: %v", p.value) }

// finish records a handler's outcome: success, retry, rejection or failure.
func (w *Worker) finish(j *job, info *TaskInfo, o outcome, runtime time.Duration, log *taskLog) {
	t, tc := j.t, j.tc
	var retry *tasks.RetryError
	var reject *tasks.RejectError
	switch {
	case o.err == nil:
		w.succeed(j, info, o.value, runtime, log)
	case errors.As(o.err, &retry):
		w.retry(j, info, retry, log)
	case errors.As(o.err, &reject):
		w.reject(j, info, reject, log)
	default:
		exc, tb := exceptionOf(o.err, t, w.cfg.Hostname)
		reason, forced := tasks.DeadLetterReason(o.err)
		if !forced && len(tc.AutoretryFor) > 0 && !tasks.IsPermanent(o.err) && tasks.Match(tc.AutoretryFor, exc.Type, exc.Module) {
			// autoretry_for: retry(exc=exc, countdown=<backoff or default_retry_delay>)
			d := tasks.RetryDelay(tc, t.Retries, jitter)
			w.retry(j, info, tasks.Retry(o.err, tasks.Countdown(d)), log)
			return
		}
		if !forced {
			reason = deadLetterIf(tc.DeadLetterOnFailure, dlq.ReasonTaskFailed)
		}
		log.Info("task failed", "runtime_s", runtime.Seconds(), "error", o.err.Error())
		w.fail(j, info, exc, tb, reason, log)
	}
}

func deadLetterIf(on bool, reason string) string {
	if on {
		return reason
	}
	return ""
}

// succeed publishes the callbacks and the next chain step, stores SUCCESS, counts the
// chord part and acks (Celery's trace order).
func (w *Worker) succeed(j *job, info *TaskInfo, value any, runtime time.Duration, log *taskLog) {
	t := j.t
	encoded, err := protocol.MarshalJSON(value)
	var retval any
	if err == nil {
		retval, err = protocol.ParseJSON(encoded)
	}
	if err != nil {
		exc := result.Exception("EncodeError", "kombu.exceptions",
			fmt.Sprintf("result of %s is not JSON-serialisable: %v", t.Name, err))
		w.fail(j, info, exc, traceback(t, w.cfg.Hostname, "kombu.exceptions.EncodeError: "+err.Error()),
			deadLetterIf(j.tc.DeadLetterOnFailure, dlq.ReasonTaskFailed), log)
		return
	}
	children, err := w.publishSuccessors(j, retval)
	if err != nil {
		log.Error("task succeeded but its callbacks or next chain step could not be sent", "error", err)
		exc := result.Exception("OperationalError", "kombu.exceptions", err.Error())
		w.fail(j, info, exc, traceback(t, w.cfg.Hostname, "kombu.exceptions.OperationalError: "+err.Error()),
			deadLetterIf(j.tc.DeadLetterOnFailure, dlq.ReasonTaskFailed), log)
		return
	}
	if !w.storeOutcome(j, protocol.StateSuccess, json.RawMessage(encoded), "", children, log) {
		return
	}
	w.chordPart(j, protocol.StateSuccess, retval, log)
	w.settle(j)
	w.counters.succeeded.Add(1)
	log.Debug("task succeeded", "runtime_s", runtime.Seconds())
	w.obs.succeeded(info, runtime, retval)
}

// storeOutcome records a final state unless the task ignores results. When it cannot be
// recorded the message of an acks_late task is handed back (at-least-once) and false is
// returned: the caller stops there.
func (w *Worker) storeOutcome(j *job, status string, res any, tb string, children []any, log *taskLog) bool {
	if j.tc.IgnoreResult || j.t.IgnoreResult {
		return true
	}
	if err := w.storeWithRetry(w.record(j, status, res, tb, children), log); err != nil {
		if !j.acked {
			log.Error("could not record outcome; handing the message back", "status", status, "error", err)
			w.requeue(j.d, "outcome not recorded")
		} else {
			log.Error("could not record outcome (acks_late off: message already acked)", "status", status, "error", err)
		}
		w.forget(j)
		return false
	}
	return true
}

// settle acks the delivery (unless it was acked before running) and forgets the job.
func (w *Worker) settle(j *job) {
	if !j.acked {
		w.ack(j.d)
	}
	w.forgetRedeliveries(j)
	w.forget(j)
}

// fail records FAILURE, counts the chord part, marks the pending chain steps failed, sends
// the errbacks, and then dead-letters (reason != "") or acks the message.
func (w *Worker) fail(j *job, info *TaskInfo, exc protocol.ExceptionInfo, tb, reason string, log *taskLog) {
	t := j.t
	if !w.storeOutcome(j, protocol.StateFailure, exc, tb, nil, log) {
		return
	}
	w.chordPart(j, protocol.StateFailure, exc, log)
	w.failChain(j, exc, tb, log)
	if len(t.Embed.Errbacks) > 0 {
		if _, err := w.applyGroupOf(j, t.Embed.Errbacks, []any{t.ID}, map[string]any{
			"parent_id": t.ID, "root_id": rootOf(t)}); err != nil {
			log.Error("could not send the errbacks", "error", err)
		}
	}
	w.counters.failed.Add(1)
	w.obs.failed(info, exc, tb)
	if reason != "" && !j.acked {
		w.deadLetter(j, info, reason, result.ExceptionRepr(exc))
		w.forget(j)
		return
	}
	w.settle(j)
}

// failChain is the chain part of Celery's mark_as_failure: every pending chain step with
// a frozen id is marked FAILURE too (so a waiting chain result does not stall), and a step
// that belongs to a chord counts as a failed part of it.
func (w *Worker) failChain(j *job, exc protocol.ExceptionInfo, tb string, log *taskLog) {
	for _, step := range j.t.Embed.Chain {
		id := step.ID()
		if id == "" {
			continue
		}
		gid, _ := step.Options["group_id"].(string)
		reply, _ := step.Options["reply_to"].(string)
		rec := result.Record{TaskID: id, Status: protocol.StateFailure, Result: exc, Traceback: tb,
			GroupID: gid, ReplyTo: reply, CorrelationID: id}
		if w.results != nil {
			if err := w.storeWithRetry(rec, log); err != nil {
				log.Error("could not mark a pending chain step failed", "step_id", id, "error", err)
			}
		}
		if chordV, ok := step.Options["chord"]; ok && chordV != nil {
			body, err := protocol.SignatureFromValue(chordV)
			if err != nil {
				log.Error("pending chain step has a bad chord", "step_id", id, "error", err)
				continue
			}
			w.chordPartFor(j, chordPart{id: id, group: gid, index: optInt(step.Options["group_index"]),
				body: body}, protocol.StateFailure, exc, log)
		}
	}
}

func optInt(v any) *int {
	switch n := v.(type) {
	case json.Number:
		if i, err := n.Int64(); err == nil {
			x := int(i)
			return &x
		}
	case int:
		return &n
	case float64:
		x := int(n)
		return &x
	}
	return nil
}

// retry publishes the task again as Celery's Task.retry does (same id, retries+1, eta,
// parent_id, stamps and custom headers kept), confirmed, records RETRY and acks; once the
// retries are used up the task fails instead.
func (w *Worker) retry(j *job, info *TaskInfo, r *tasks.RetryError, log *taskLog) {
	t, tc := j.t, j.tc
	retries := t.Retries + 1
	maxRetries := tc.MaxRetries
	if r.MaxRetries != nil {
		maxRetries = *r.MaxRetries
	}
	if maxRetries >= 0 && retries > maxRetries {
		msg := tasks.MaxRetriesMessage(t.Name, t.ID, protocol.ReprArgs(t.Args), protocol.ReprKwargs(t.Kwargs))
		var exc protocol.ExceptionInfo
		var tb string
		reason := ""
		if r.Cause != nil {
			// Celery re-raises the cause (retry(exc=...)): that is what get() raises.
			exc, tb = exceptionOf(r.Cause, t, w.cfg.Hostname)
			tb += "\nThe task could not be retried again:\ncelery.exceptions.MaxRetriesExceededError: " + msg + "\n"
			if fr, ok := tasks.DeadLetterReason(r.Cause); ok {
				reason = fr
			}
		} else {
			exc = result.MaxRetriesExceeded(msg)
			tb = traceback(t, w.cfg.Hostname, "celery.exceptions.MaxRetriesExceededError: "+msg)
		}
		if reason == "" {
			reason = deadLetterIf(tc.DeadLetterOnFailure, dlq.ReasonMaxRetriesExceeded)
		}
		log.Info("task failed: retries exhausted", "max_retries", maxRetries)
		w.fail(j, info, exc, tb, reason, log)
		return
	}

	now := time.Now()
	eta := r.ETA
	if eta.IsZero() {
		d := tc.DefaultRetryDelay
		if r.Countdown != nil {
			d = *r.Countdown
		}
		eta = now.Add(d)
	}
	msg, err := w.retryMessage(t, retries, eta.UTC())
	if err == nil {
		ctx, cancel := context.WithTimeout(w.runCtx, 30*time.Second)
		err = w.publishWithRetry(ctx, w.retryRoute(j.d), msg, log)
		cancel()
	}
	if err != nil {
		// Celery turns this into Reject(requeue=False); at-least-once, the original goes
		// back to the queue instead and runs again.
		log.Error("could not publish the retry; handing the message back", "error", err)
		if !j.acked {
			w.requeue(j.d, "retry not published")
		}
		w.forget(j)
		return
	}

	var stored any
	exc := result.Exception("Retry", result.ModuleCeleryExceptions, "Retry "+r.When(tc.DefaultRetryDelay))
	tb := traceback(t, w.cfg.Hostname, "celery.exceptions.Retry: Retry "+r.When(tc.DefaultRetryDelay))
	if r.Cause != nil {
		exc, tb = exceptionOf(r.Cause, t, w.cfg.Hostname)
		stored = exc
	}
	children := []any{[]any{[]any{t.ID, nil}, nil}}
	if !w.storeOutcome(j, protocol.StateRetry, stored, tb, children, log) {
		return
	}
	w.settle(j)
	w.counters.retried.Add(1)
	log.Info("task retried", "eta", eta.UTC(), "next_retries", retries, "cause", errString(r.Cause))
	w.obs.retried(info, exc, tb)
}

// retryMessage is the message Celery's retry() sends: signature_from_request with
// retries+1 and the new eta, parent_id the task's own id when it had none (the running task
// sends it), origin this process; args, kwargs and embed byte for byte, stamps and custom
// headers kept, the expiration property recomputed from expires.
func (w *Worker) retryMessage(t *protocol.Task, retries int, eta time.Time) (*protocol.Message, error) {
	rt := *t
	rt.Retries = retries
	rt.ETA = &eta
	if rt.ParentID == "" {
		rt.ParentID = t.ID
	}
	rt.Origin = w.origin
	rt.Headers = make(map[string]any, len(t.Headers))
	for k, v := range t.Headers {
		if !strings.HasPrefix(k, "x-fleet-dlq-") {
			rt.Headers[k] = v
		}
	}
	m, err := protocol.EncodeTask(&rt)
	if err != nil {
		return nil, fmt.Errorf("worker: retry message: %w", err)
	}
	return m, nil
}

// retryRoute is where a retry goes: the anonymous exchange with the queue as routing key
// when the task came that way, otherwise its exchange and routing key
// (signature_from_request).
func (w *Worker) retryRoute(d *broker.Delivery) broker.Publishing {
	if d.Exchange != "" {
		return broker.Publishing{Exchange: d.Exchange, RoutingKey: d.RoutingKey}
	}
	q := d.RoutingKey
	if q == "" {
		q = d.Queue
	}
	return broker.Publishing{RoutingKey: q}
}

// reject settles a message the handler rejected: requeued, or dead-lettered with reason
// rejected (never dropped). Nothing is stored.
func (w *Worker) reject(j *job, info *TaskInfo, r *tasks.RejectError, log *taskLog) {
	w.counters.rejected.Add(1)
	log.Info("task rejected its message", "requeue", r.Requeue, "reason", errString(r.Reason))
	w.obs.rejected(info, r.Requeue)
	switch {
	case j.acked:
		w.forget(j)
	case r.Requeue:
		w.requeue(j.d, "rejected by the task")
		w.forget(j)
	default:
		w.deadLetter(j, info, dlq.ReasonRejected, errString(r))
		w.forget(j)
	}
}

// finishRevoked handles a task that must not run (revoked or expired) or was terminated:
// REVOKED stored (TaskRevokedError(reason)), counted as a chord part, message acked.
func (w *Worker) finishRevoked(j *job, reason string, terminated bool) {
	log := w.taskLog("task_id", j.t.ID, "task", j.t.Name, "queue", j.d.Queue)
	exc := result.Revoked(reason)
	if reason == result.RevokedReasonExpired {
		w.counters.expired.Add(1)
		log.Info("task expired: not run", "expires", j.t.Expires)
	} else {
		w.counters.revoked.Add(1)
		log.Info("task revoked", "reason", reason)
	}
	if !w.storeOutcome(j, protocol.StateRevoked, exc, "", nil, log) {
		return
	}
	w.chordPart(j, protocol.StateRevoked, exc, log)
	w.settle(j)
	w.obs.revoked(w.infoFor(j), terminated, reason == result.RevokedReasonExpired)
}

// discard is finishRevoked for a job that has not started.
func (w *Worker) discard(j *job, reason string) {
	if j.claim(stateFinishing) {
		j.markGone()
		w.finishRevoked(j, reason, false)
	}
}

// exceptionOf encodes err the way Celery's JSON result serializer encodes an exception, with
// a traceback text.
func exceptionOf(err error, t *protocol.Task, hostname string) (protocol.ExceptionInfo, string) {
	var pe *panicError
	if errors.As(err, &pe) {
		exc := protocol.ExceptionInfo{Type: "WorkerPanicError", Module: "fleet.errors", Message: []any{pe.Error()}}
		return exc, fmt.Sprintf("Traceback (most recent call last):\n  Go task %s[%s] on %s\n%s\nWorkerPanicError: %s\n",
			t.Name, t.ID, hostname, strings.TrimRight(pe.stack, "\n"), pe.Error())
	}
	var te *tasks.Error
	if !errors.As(err, &te) && errors.Is(err, tasks.ErrSoftTimeLimitExceeded) {
		exc := result.Exception("SoftTimeLimitExceeded", result.ModuleBilliardExceptions)
		return exc, traceback(t, hostname, "billiard.exceptions.SoftTimeLimitExceeded: "+err.Error())
	}
	te = tasks.AsError(err)
	args := te.Args
	if args == nil {
		args = []any{}
	}
	exc := protocol.ExceptionInfo{Type: te.Type, Module: te.Module, Message: args}
	return exc, traceback(t, hostname, te.Type+": "+err.Error())
}

func traceback(t *protocol.Task, hostname, last string) string {
	return fmt.Sprintf("Traceback (most recent call last):\n  Go task %s[%s] on %s\n%s\n", t.Name, t.ID, hostname, last)
}

func formatSeconds(s float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.6f", s), "0"), ".")
}

func rootOf(t *protocol.Task) string {
	if t.RootID != "" {
		return t.RootID
	}
	return t.ID
}

func (w *Worker) record(j *job, status string, res any, tb string, children []any) result.Record {
	t := j.t
	return result.Record{
		TaskID: t.ID, Status: status, Result: res, Traceback: tb, Children: children,
		GroupID: t.Group, ParentID: t.ParentID,
		ReplyTo: t.ReplyTo, CorrelationID: firstNonEmpty(j.d.Message.Properties.CorrelationID, t.ID),
	}
}

func (w *Worker) store(rec result.Record) error {
	if w.results == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(w.runCtx, 10*time.Second)
	defer cancel()
	return w.results.Store(ctx, rec)
}

// storeWithRetry records a state, retrying a failing backend with backoff for up to about
// 30 s (or until the worker stops waiting).
func (w *Worker) storeWithRetry(rec result.Record, log *taskLog) error {
	return retryFor(w.runCtx, 30*time.Second, log, "result backend write", func() error { return w.store(rec) })
}

// retryFor calls f until it succeeds, budget passes or ctx ends, with backoff.
func retryFor(ctx context.Context, budget time.Duration, log *taskLog, what string, f func() error) error {
	backoff := 100 * time.Millisecond
	deadline := time.Now().Add(budget)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		log.Warn(what+" failed; retrying", "backoff", backoff, "error", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
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
func (w *Worker) rejectUnknown(j *job) {
	if !j.claim(stateFinishing) {
		return
	}
	defer w.forget(j)
	t := j.t
	log := w.taskLog("task_id", t.ID, "task", t.Name, "queue", j.d.Queue)
	log.Warn("unknown task: dead-lettering", "dlq", dlq.QueueName(j.d.Queue))
	exc := result.NotRegistered(t.Name)
	tb := fmt.Sprintf("Traceback (most recent call last):\n  Go worker %s\ncelery.exceptions.NotRegistered: %q\n", w.cfg.Hostname, t.Name)
	if err := w.storeWithRetry(w.record(j, protocol.StateFailure, exc, tb, nil), log); err != nil {
		log.Error("could not record NotRegistered; dead-lettering anyway", "error", err)
	}
	info := j.info(w.cfg.Hostname)
	w.counters.failed.Add(1)
	w.obs.failed(info, exc, tb)
	w.deadLetter(j, info, dlq.ReasonUnknownTask, result.ExceptionRepr(exc))
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
	log := w.taskLog("queue", d.Queue, "reason", reason)
	t := &protocol.Task{ReplyTo: d.Message.Properties.ReplyTo}
	if de != nil {
		t.ID, t.Name = de.TaskID, de.TaskName
	}
	j := &job{d: d, t: t, tc: tasks.DefaultTaskConfig, gone: make(chan struct{})}
	if t.ID != "" {
		log = log.With("task_id", t.ID, "task", t.Name)
		exc := protocol.ExceptionInfo{Type: excType, Module: module, Message: []any{err.Error()}}
		if serr := w.storeWithRetry(w.record(j, protocol.StateFailure, exc, "", nil), log); serr != nil {
			log.Error("could not record FAILURE for undecodable message", "error", serr)
		}
	}
	log.Warn("undecodable message: dead-lettering", "error", err.Error(), "dlq", dlq.QueueName(d.Queue))
	w.deadLetter(j, &TaskInfo{ID: t.ID, Name: t.Name, Queue: d.Queue, Exchange: d.Exchange,
		RoutingKey: d.RoutingKey, Hostname: w.cfg.Hostname}, reason, err.Error())
}

// deadLetter moves the message to its queue's dead-letter queue. The AMQP expiration
// property is dropped from the copy: a dead letter must not silently expire.
func (w *Worker) deadLetter(j *job, info *TaskInfo, reason, errText string) {
	d := j.d
	if d.Message != nil && d.Message.Properties.Expiration != "" {
		c := *d
		c.Message = d.Message.Clone()
		c.Message.Properties.Expiration = ""
		d = &c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dlq.Move(ctx, w.broker, d, reason, errText, w.cfg.Hostname); err != nil {
		w.settleError("dead-letter", d, err)
		return
	}
	w.forgetRedeliveries(j)
	w.counters.deadLettered.Add(1)
	w.obs.deadLettered(info, dlq.QueueName(d.Queue), reason)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
