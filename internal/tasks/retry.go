package tasks

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// RetryError is what a handler returns to ask the worker for a retry, as Celery's
// Task.retry() raises celery.exceptions.Retry: the worker publishes the task again (same
// id, retries+1, eta = now + countdown) and records the RETRY state; once the retries are
// used up the task fails instead (with Cause, or MaxRetriesExceededError without one).
// Build it with Retry.
type RetryError struct {
	// Countdown is the delay before the retry runs; used when ETA is zero. Nil means the
	// task's default_retry_delay.
	Countdown *time.Duration
	// ETA is when the retry runs; it wins over Countdown.
	ETA time.Time
	// MaxRetries overrides the task's max_retries for this call; nil keeps it.
	MaxRetries *int
	// Cause is the exception being retried (Celery's retry(exc=...)): it is stored with
	// the RETRY state and becomes the failure once the retries are used up. May be nil.
	Cause error
}

// RetryOption sets a field of a RetryError.
type RetryOption func(*RetryError)

// Countdown retries after d (Celery's countdown=).
func Countdown(d time.Duration) RetryOption {
	return func(r *RetryError) { r.Countdown = &d }
}

// At retries at t (Celery's eta=).
func At(t time.Time) RetryOption {
	return func(r *RetryError) { r.ETA = t }
}

// MaxRetries overrides the task's max_retries for this retry (Celery's max_retries=).
func MaxRetries(n int) RetryOption {
	return func(r *RetryError) { r.MaxRetries = &n }
}

// Retry returns the error a handler returns to be retried, e.g.
//
//	return nil, tasks.Retry(err, tasks.Countdown(30*time.Second))
//
// cause may be nil.
func Retry(cause error, opts ...RetryOption) *RetryError {
	r := &RetryError{Cause: cause}
	for _, o := range opts {
		o(r)
	}
	return r
}

// When describes the retry time the way Celery's Retry.humanize does: "in 0.1s" or
// "at <time>"; defaultDelay is used when neither countdown nor eta was given.
func (r *RetryError) When(defaultDelay time.Duration) string {
	if !r.ETA.IsZero() {
		return "at " + r.ETA.UTC().Format(time.RFC3339Nano)
	}
	d := defaultDelay
	if r.Countdown != nil {
		d = *r.Countdown
	}
	return "in " + strconv.FormatFloat(d.Seconds(), 'g', -1, 64) + "s"
}

func (r *RetryError) Error() string {
	var b strings.Builder
	b.WriteString("Retry")
	switch {
	case !r.ETA.IsZero():
		b.WriteString(" at " + r.ETA.UTC().Format(time.RFC3339Nano))
	case r.Countdown != nil:
		b.WriteString(" in " + strconv.FormatFloat(r.Countdown.Seconds(), 'g', -1, 64) + "s")
	}
	if r.Cause != nil {
		b.WriteString(": " + r.Cause.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (r *RetryError) Unwrap() error { return r.Cause }

// RejectError is what a handler returns to reject its message (Celery's
// celery.exceptions.Reject): nothing is stored; with Requeue the message goes back to its
// queue, otherwise to its dead-letter queue with reason "rejected". It applies to acks_late
// tasks only; an early-acked message is already gone. Build it with Reject.
type RejectError struct {
	Requeue bool
	Reason  error
}

// Reject returns the error a handler returns to reject its message.
func Reject(requeue bool, reason error) *RejectError {
	return &RejectError{Requeue: requeue, Reason: reason}
}

func (r *RejectError) Error() string {
	msg := "Reject"
	if r.Requeue {
		msg += " (requeue)"
	}
	if r.Reason != nil {
		msg += ": " + r.Reason.Error()
	}
	return msg
}

// Unwrap returns the reason.
func (r *RejectError) Unwrap() error { return r.Reason }

// Causes of a cancelled handler context (context.Cause(ctx)). Handlers that wrap the cause
// (fmt.Errorf("...: %w", context.Cause(ctx))) let the worker report the matching Python
// exception.
var (
	// ErrSoftTimeLimitExceeded: the task's soft time limit passed. The handler may still
	// return a value; an error wrapping this cause is stored as
	// billiard.exceptions.SoftTimeLimitExceeded, as Celery does.
	ErrSoftTimeLimitExceeded = errors.New("SoftTimeLimitExceeded: soft time limit exceeded")
	// ErrTimeLimitExceeded: the hard time limit passed. The worker has already recorded
	// FAILURE (TimeLimitExceeded) and moved on; whatever the handler does next is dropped.
	// Handlers running subprocesses must kill their whole process group.
	ErrTimeLimitExceeded = errors.New("TimeLimitExceeded: hard time limit exceeded")
	// ErrTerminated: the task was revoked with terminate=True. The worker has recorded
	// REVOKED (terminated) and moved on.
	//lint:ignore ST1005 the message starts with the Celery exception's name
	ErrTerminated = errors.New("Terminated: task revoked with terminate")
)

// Match reports whether an exception of the given Python type and module is one of the
// kinds named in an autoretry_for list. An entry names a class ("TimeoutError"), a
// qualified class ("builtins.TimeoutError"), or "Exception" (every exception, as Python's
// autoretry_for=(Exception,) catches all).
func Match(kinds []string, excType, module string) bool {
	for _, k := range kinds {
		switch {
		case k == "Exception" || k == "builtins.Exception":
			return true
		case k == excType:
			return true
		case module != "" && k == module+"."+excType:
			return true
		}
	}
	return false
}

// RetryDelay computes the countdown of an automatic retry as Celery's autoretry does
// (celery.utils.time.get_exponential_backoff_interval): with retry_backoff on, factor ×
// 2^retries seconds, at most backoffMax, then with jitter a random whole number of seconds
// in [0, countdown] (rnd(n) returns a value in [0, n)); without backoff, defaultDelay.
func RetryDelay(tc TaskConfig, retries int, rnd func(n int64) int64) time.Duration {
	if tc.RetryBackoff <= 0 {
		return tc.DefaultRetryDelay
	}
	maxSecs := float64(tc.RetryBackoffMax / time.Second)
	countdown := int64(math.Min(maxSecs, float64(tc.RetryBackoff)*math.Pow(2, float64(retries))))
	if tc.RetryJitter && countdown >= 0 {
		countdown = rnd(countdown + 1)
	}
	return time.Duration(max(countdown, 0)) * time.Second
}

// MaxRetriesMessage is the message of the MaxRetriesExceededError Celery raises when a task
// asks to retry once too often: "Can't retry name[id] args:(...) kwargs:{...}".
func MaxRetriesMessage(name, id, argsRepr, kwargsRepr string) string {
	return fmt.Sprintf("Can't retry %s[%s] args:%s kwargs:%s", name, id, argsRepr, kwargsRepr)
}
