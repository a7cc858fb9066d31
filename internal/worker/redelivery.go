package worker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
)

// DefaultMaxRedeliveries is the worker command's default for Config.MaxRedeliveries.
const DefaultMaxRedeliveries = 5

// RedeliveryCounter counts, for the whole fleet, how often a task's message came back to a
// worker (a delivery flagged redelivered) because the worker holding it died or lost its
// broker connection. The worker that died cannot count, so the count lives outside any
// worker process: dlq.RedisRedeliveries keeps it in Redis. Methods must be safe for
// concurrent use.
type RedeliveryCounter interface {
	// Redelivered records one more redelivery of the task and returns the count so far.
	Redelivered(ctx context.Context, taskID string) (int64, error)
	// HandedBack records that a worker is handing the task's message back on purpose
	// (shutdown, a rejected or unrecordable outcome): its next redelivery is not counted.
	HandedBack(ctx context.Context, taskID string) error
	// Forget drops the count once the task's outcome is recorded.
	Forget(ctx context.Context, taskID string) error
}

// RedeliveryLimit is Config.MaxRedeliveries as a command-line value (it implements
// pflag.Value): a whole number, at least 0.
type RedeliveryLimit int

// String implements pflag.Value.
func (l *RedeliveryLimit) String() string { return strconv.Itoa(int(*l)) }

// Set implements pflag.Value.
func (l *RedeliveryLimit) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return fmt.Errorf("want a whole number of redeliveries, 0 or more (0: no limit), got %q", s)
	}
	*l = RedeliveryLimit(n)
	return nil
}

// Type implements pflag.Value.
func (l *RedeliveryLimit) Type() string { return "int" }

// redeliveryTimeout bounds one call to the RedeliveryCounter that decides whether a task
// runs; bookkeeping calls (hand-backs, forgetting) get bookkeepingTimeout, and after one of
// them failed the others are skipped for counterBackoff, so that an unreachable Redis does
// not hold up a shutdown handing back many messages one after the other.
const (
	redeliveryTimeout  = 5 * time.Second
	bookkeepingTimeout = 2 * time.Second
	counterBackoff     = 10 * time.Second
)

// counterUsable reports whether bookkeeping calls may go to the counter now.
func (w *Worker) counterUsable() bool {
	failed := w.counterFailedAt.Load()
	return failed == 0 || time.Since(time.Unix(0, failed)) > counterBackoff
}

// countingRedeliveries reports whether the worker enforces MaxRedeliveries: a limit is set
// and there is a counter to enforce it with.
func (w *Worker) countingRedeliveries() bool {
	return w.cfg.MaxRedeliveries > 0 && w.cfg.Redeliveries != nil
}

// redeliveryMode describes how redeliveries are counted, for the start-up log line.
func (w *Worker) redeliveryMode() string {
	switch {
	case w.cfg.MaxRedeliveries <= 0:
		return "off"
	case w.cfg.Redeliveries != nil:
		return "fleet-wide"
	default:
		return "not counted (no counter: no Redis)"
	}
}

// checkRedeliveries counts a redelivered job and, once it came back more than
// MaxRedeliveries times, fails it with WorkerLostError and dead-letters it with reason
// worker_lost instead of running it again. It reports whether the job was taken care of.
// When the count cannot be read the job runs (at-least-once wins over the limit).
func (w *Worker) checkRedeliveries(j *job) bool {
	n, err := w.redeliveryCount(j)
	log := w.taskLog("task_id", j.t.ID, "task", j.t.Name, "queue", j.d.Queue)
	if err != nil {
		log.Warn("could not count the redelivery; running the task", "error", err)
		return false
	}
	if n <= int64(w.cfg.MaxRedeliveries) {
		log.Debug("redelivered message", "redeliveries", n, "max_redeliveries", w.cfg.MaxRedeliveries)
		return false
	}
	if !j.claim(stateFinishing) {
		return true // settled by someone else meanwhile (revoked, handed back)
	}
	j.markGone()
	log.Warn("message redelivered too often (its workers kept dying): dead-lettering",
		"redeliveries", n, "max_redeliveries", w.cfg.MaxRedeliveries, "dlq", dlq.QueueName(j.d.Queue), "reason", dlq.ReasonWorkerLost)
	msg := fmt.Sprintf("Worker exited prematurely: the message was redelivered %d times (max_redeliveries %d); dead-lettered as %s",
		n, w.cfg.MaxRedeliveries, dlq.ReasonWorkerLost)
	exc := result.WorkerLost(msg)
	tb := traceback(j.t, w.cfg.Hostname, "billiard.exceptions.WorkerLostError: "+msg)
	w.fail(j, j.info(w.cfg.Hostname), exc, tb, dlq.ReasonWorkerLost, log)
	return true
}

// redeliveryCount counts one more redelivery of j with the fleet-wide counter and returns
// the count; j.counted is then set, so that the count is dropped with the outcome.
func (w *Worker) redeliveryCount(j *job) (int64, error) {
	ctx, cancel := context.WithTimeout(w.runCtx, redeliveryTimeout)
	defer cancel()
	n, err := w.cfg.Redeliveries.Redelivered(ctx, j.t.ID)
	if err != nil {
		return 0, fmt.Errorf("worker: count redelivery of %s: %w", j.t.ID, err)
	}
	j.counted.Store(true)
	return n, nil
}

// excuseHandBack tells the counter that d is handed back on purpose, so that its next
// redelivery does not count against MaxRedeliveries.
func (w *Worker) excuseHandBack(d *broker.Delivery) {
	if !w.countingRedeliveries() {
		return
	}
	id := deliveryTaskID(d)
	if id == "" {
		return
	}
	if !w.counterUsable() {
		w.log.Debug("redelivery counter failed recently; hand-back not recorded", "task_id", id)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), bookkeepingTimeout)
	defer cancel()
	if err := w.cfg.Redeliveries.HandedBack(ctx, id); err != nil {
		w.counterFailedAt.Store(time.Now().UnixNano())
		w.log.Warn("could not record a hand-back with the redelivery counter; its next delivery counts as a redelivery",
			"task_id", id, "queue", d.Queue, "error", err)
	}
}

// forgetRedeliveries drops the count of a job whose outcome is recorded.
func (w *Worker) forgetRedeliveries(j *job) {
	if !j.counted.Load() || w.cfg.Redeliveries == nil || !w.counterUsable() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), bookkeepingTimeout)
	defer cancel()
	if err := w.cfg.Redeliveries.Forget(ctx, j.t.ID); err != nil {
		w.counterFailedAt.Store(time.Now().UnixNano())
		w.log.Warn("could not drop the redelivery count of a finished task (it expires by itself)", "task_id", j.t.ID, "error", err)
	}
}

// deliveryTaskID is the task id of a delivery: the protocol v2 id header, otherwise the
// decoded message's; "" when it cannot be told.
func deliveryTaskID(d *broker.Delivery) string {
	if d.Message == nil {
		return ""
	}
	if id, ok := d.Message.Headers["id"].(string); ok && id != "" {
		return id
	}
	t, err := protocol.Decode(d.Message)
	if err != nil {
		return ""
	}
	return t.ID
}
