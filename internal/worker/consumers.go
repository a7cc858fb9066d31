package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/ratelimit"
)

// runtimeControl is what remote control changes while the worker runs: the consumed
// queues (add_consumer, cancel_consumer) and per-task time limits (time_limit). Rate
// limits live in the worker's ratelimit.Limiter.
type runtimeControl struct {
	opMu sync.Mutex // serializes AddConsumer and CancelConsumer

	mu     sync.Mutex
	queues []broker.QueueSpec // the consumed queues; nil until first used (Config.Queues)

	// cancelled are the queues whose consumer was cancelled: a delivery of one that still
	// arrives is handed back at once. Guarded by Worker.mu (receive checks it together
	// with registering the job).
	cancelled map[string]bool

	timeLimits atomic.Pointer[map[string]timeLimit] // replaced whole, never modified
}

// timeLimit is a time_limit override: it replaces the task's configured limits (0: none).
type timeLimit struct{ soft, hard time.Duration }

// queueSpecsLocked returns the consumed queues; rc.mu must be held.
func (w *Worker) queueSpecsLocked() []broker.QueueSpec {
	rc := &w.rc
	if rc.queues == nil {
		rc.queues = make([]broker.QueueSpec, 0, len(w.cfg.Queues))
		for _, q := range w.cfg.Queues {
			if !slices.ContainsFunc(rc.queues, func(s broker.QueueSpec) bool { return s.Name == q }) {
				rc.queues = append(rc.queues, broker.TaskQueue(q))
			}
		}
	}
	return rc.queues
}

// ActiveQueues returns the queues the worker consumes now, with the exchange and routing
// key each was declared with (`celery inspect active_queues`).
func (w *Worker) ActiveQueues() []broker.QueueSpec {
	w.rc.mu.Lock()
	defer w.rc.mu.Unlock()
	return slices.Clone(w.queueSpecsLocked())
}

// queueNames returns the names of the queues the worker consumes now.
func (w *Worker) queueNames() []string {
	w.rc.mu.Lock()
	defer w.rc.mu.Unlock()
	specs := w.queueSpecsLocked()
	out := make([]string, len(specs))
	for i, q := range specs {
		out[i] = q.Name
	}
	return out
}

func (w *Worker) consumes(queue string) bool {
	w.rc.mu.Lock()
	defer w.rc.mu.Unlock()
	return slices.ContainsFunc(w.queueSpecsLocked(), func(s broker.QueueSpec) bool { return s.Name == queue })
}

// consumerCancelledLocked reports whether deliveries of queue are to be handed back on
// arrival; w.mu must be held.
func (w *Worker) consumerCancelledLocked(queue string) bool { return w.rc.cancelled[queue] }

func (w *Worker) controller() (broker.ConsumerController, error) {
	cc, ok := broker.As[broker.ConsumerController](w.broker)
	if !ok {
		return nil, errors.New("the broker transport cannot change its queues at run time")
	}
	if w.started.Load() == 0 {
		return nil, errors.New("the worker is not consuming yet")
	}
	return cc, nil
}

// AddConsumer starts consuming q while the worker runs (Celery's add_consumer): the
// transport declares it (exchange, type and routing key as given; broker.TaskQueue for
// Celery's defaults) and delivers its messages under the same prefetch. Adding a queue
// already consumed does nothing.
func (w *Worker) AddConsumer(ctx context.Context, q broker.QueueSpec) error {
	if q.Name == "" {
		return errors.New("worker: add consumer: no queue name")
	}
	cc, err := w.controller()
	if err != nil {
		return fmt.Errorf("worker: add consumer %s: %w", q.Name, err)
	}
	w.rc.opMu.Lock()
	defer w.rc.opMu.Unlock()
	if w.consumes(q.Name) {
		return nil
	}
	w.mu.Lock()
	wasCancelled := w.rc.cancelled[q.Name]
	delete(w.rc.cancelled, q.Name)
	w.mu.Unlock()
	if err := cc.AddQueue(ctx, q); err != nil {
		if wasCancelled {
			w.mu.Lock()
			w.rc.cancelled[q.Name] = true
			w.mu.Unlock()
		}
		return fmt.Errorf("worker: add consumer %s: %w", q.Name, err)
	}
	w.rc.mu.Lock()
	w.rc.queues = append(w.queueSpecsLocked(), q)
	w.rc.mu.Unlock()
	w.log.Info("started consuming from queue", "queue", q.Name, "exchange", q.Exchange,
		"exchange_type", q.ExchangeType, "routing_key", q.RoutingKey)
	return nil
}

// CancelConsumer stops consuming queue while the worker runs (Celery's cancel_consumer):
// the transport stops fetching from it, and the queue's deliveries the worker holds but
// has not started (reserved, rate-limited or held for their ETA) are handed back to the
// broker at once. Running tasks of the queue finish and settle as usual. Cancelling a
// queue not consumed does nothing.
func (w *Worker) CancelConsumer(ctx context.Context, queue string) error {
	cc, err := w.controller()
	if err != nil {
		return fmt.Errorf("worker: cancel consumer %s: %w", queue, err)
	}
	w.rc.opMu.Lock()
	defer w.rc.opMu.Unlock()
	if !w.consumes(queue) {
		return nil
	}
	w.mu.Lock()
	if w.rc.cancelled == nil {
		w.rc.cancelled = make(map[string]bool)
	}
	w.rc.cancelled[queue] = true
	w.mu.Unlock()
	if err := cc.CancelQueue(ctx, queue); err != nil {
		w.mu.Lock()
		delete(w.rc.cancelled, queue)
		w.mu.Unlock()
		return fmt.Errorf("worker: cancel consumer %s: %w", queue, err)
	}
	w.rc.mu.Lock()
	w.rc.queues = slices.DeleteFunc(w.queueSpecsLocked(), func(s broker.QueueSpec) bool { return s.Name == queue })
	w.rc.mu.Unlock()
	n := w.handBackQueue(queue)
	w.log.Info("stopped consuming from queue", "queue", queue, "handed_back", n)
	return nil
}

// handBackQueue hands back every job of queue that has not started, and returns how many.
// A job is either claimed here before execute marks it active (execute then sees it
// handed back and does not run it) or left to run: both happen under the job's mutex.
func (w *Worker) handBackQueue(queue string) int {
	w.mu.Lock()
	var jobs []*job
	for j := range w.inflight {
		if j.d.Queue == queue && j.h != nil {
			jobs = append(jobs, j)
		}
	}
	w.mu.Unlock()
	n := 0
	for _, j := range jobs {
		j.mu.Lock()
		claimed := j.phase.Load() != phaseActive && j.claim(stateHandedBack)
		j.mu.Unlock()
		if !claimed {
			continue
		}
		j.markGone()
		w.requeue(j.d, "consumer cancelled")
		w.forget(j)
		n++
	}
	return n
}

// SetRateLimit changes the task's rate limit (Celery's rate syntax: "10/s", "100/m",
// "2/h", "5"; "" or "0" removes it), applied from the task's next message on.
func (w *Worker) SetRateLimit(task, rate string) error {
	r, err := ratelimit.ParseRate(rate)
	if err != nil {
		return fmt.Errorf("worker: rate limit of %s: %w", task, err)
	}
	if w.limiter == nil {
		return errors.New("worker: rate limits are unavailable on this worker")
	}
	w.limiter.SetRate(task, r)
	return nil
}

// SetTimeLimit replaces the task's configured soft and hard time limits (0: none), as
// Celery's time_limit sets the task's soft_time_limit and time_limit. A message's own
// timelimit header still wins; tasks already running keep their limits.
func (w *Worker) SetTimeLimit(task string, soft, hard time.Duration) error {
	if soft < 0 || hard < 0 {
		return fmt.Errorf("worker: time limits of %s: negative limit (soft %s, hard %s)", task, soft, hard)
	}
	w.rc.mu.Lock()
	defer w.rc.mu.Unlock()
	m := map[string]timeLimit{}
	if old := w.rc.timeLimits.Load(); old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	m[task] = timeLimit{soft: soft, hard: hard}
	w.rc.timeLimits.Store(&m)
	w.log.Info("time limits changed", "task", task, "soft_s", soft.Seconds(), "hard_s", hard.Seconds())
	return nil
}

// taskTimeLimits are the task's hard and soft limits before the message's header: a
// time_limit override, else its configuration.
func (w *Worker) taskTimeLimits(j *job) (hard, soft time.Duration) {
	if m := w.rc.timeLimits.Load(); m != nil {
		if tl, ok := (*m)[j.t.Name]; ok {
			return tl.hard, tl.soft
		}
	}
	return j.tc.TimeLimit, j.tc.SoftTimeLimit
}
