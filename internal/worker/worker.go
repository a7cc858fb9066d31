// Package worker owns the lifecycle of one Celery-compatible worker process: it consumes
// deliveries from a broker, turns each into a task run on a bounded pool of goroutines,
// records the outcome in the result backend and only then settles the delivery (ack,
// requeue or dead-letter). It also owns graceful shutdown.
//
// Components and shutdown order (senders before receivers, as asynq does):
//
//  1. fetcher    stops at once: the broker consumer is cancelled, no new deliveries.
//  2. reserved   prefetched but unstarted deliveries (and ETA-held ones) are handed back
//     to the broker at once (AMQP nack-requeue, Redis restore).
//  3. executor   running tasks finish, up to ShutdownTimeout (or until Abort).
//  4. hand-back  whatever is still running then is handed back; its late outcome is dropped.
//
// The caller closes the result backend and then the broker after Run returns.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
)

// Config is the worker's configuration; zero values take Celery's defaults.
type Config struct {
	Hostname           string        // node name, e.g. fleet@host
	Queues             []string      // queues to consume (default: celery)
	Concurrency        int           // tasks run at once (default 8)
	PrefetchMultiplier int           // unsettled deliveries = Concurrency × this (default 4)
	ShutdownTimeout    time.Duration // grace for running tasks at shutdown (default 25s)
	Tasks              *tasks.Config // per-task settings (nil: defaults)
	Logger             *slog.Logger
}

func (c *Config) setDefaults() {
	if len(c.Queues) == 0 {
		c.Queues = []string{"celery"}
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.PrefetchMultiplier <= 0 {
		c.PrefetchMultiplier = 4
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 25 * time.Second
	}
	if c.Hostname == "" {
		h, _ := os.Hostname()
		c.Hostname = "fleet@" + h
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Worker runs tasks from a broker. Create it with New and call Run once.
type Worker struct {
	cfg      Config
	broker   broker.Broker
	results  result.Backend // nil: results disabled
	registry *tasks.Registry
	log      *slog.Logger
	pid      int

	slots   chan struct{} // one token per concurrency slot
	aborted chan struct{} // closed by Abort
	abortMu sync.Once

	// runCtx is the context task handlers and outcome recording run under; it is cancelled
	// when the shutdown grace ends or on Abort.
	runCtx    context.Context
	runCancel context.CancelCauseFunc

	wg       sync.WaitGroup // every job goroutine (held, running, settling)
	mu       sync.Mutex
	inflight map[*job]struct{} // jobs not yet settled

	processed atomic.Int64
	active    atomic.Int64
}

// ErrShutdown is the cause of a task context cancelled because the worker stopped waiting.
var ErrShutdown = errors.New("worker shutting down")

// New returns a worker; results may be nil (results disabled).
func New(cfg Config, b broker.Broker, results result.Backend, reg *tasks.Registry) *Worker {
	cfg.setDefaults()
	w := &Worker{
		cfg:      cfg,
		broker:   b,
		results:  results,
		registry: reg,
		log:      cfg.Logger.With("hostname", cfg.Hostname),
		pid:      os.Getpid(),
		slots:    make(chan struct{}, cfg.Concurrency),
		aborted:  make(chan struct{}),
		inflight: make(map[*job]struct{}),
	}
	w.runCtx, w.runCancel = context.WithCancelCause(context.Background())
	return w
}

// Hostname is the worker's node name.
func (w *Worker) Hostname() string { return w.cfg.Hostname }

// Processed is the number of tasks run to an outcome since start.
func (w *Worker) Processed() int64 { return w.processed.Load() }

// Active is the number of tasks running now.
func (w *Worker) Active() int64 { return w.active.Load() }

// Abort ends a graceful shutdown early (a second signal): running tasks are cancelled and
// handed back to the broker at once.
func (w *Worker) Abort() {
	w.abortMu.Do(func() { close(w.aborted) })
}

// Run consumes and runs tasks until ctx is done, then shuts down gracefully (see the package
// doc for the order). It returns an error only when consuming could not start.
func (w *Worker) Run(ctx context.Context) error {
	fetchCtx, stopFetching := context.WithCancel(context.Background())
	defer stopFetching()
	prefetch := w.cfg.Concurrency * w.cfg.PrefetchMultiplier
	deliveries, err := w.broker.Consume(fetchCtx, w.cfg.Queues, prefetch)
	if err != nil {
		return fmt.Errorf("worker: consume %v: %w", w.cfg.Queues, err)
	}
	w.log.Info("worker ready", "queues", w.cfg.Queues, "concurrency", w.cfg.Concurrency,
		"prefetch", prefetch, "results", w.results != nil)

	w.dispatch(ctx, deliveries)

	// 1. fetcher: stop at once; 2. reserved: hand back what was fetched but not started.
	stopFetching()
	handedBack := 0
drain:
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				break drain
			}
			w.requeue(d, "shutdown: not started")
			handedBack++
		case <-w.aborted:
			// The transport did not close its channel; what it still holds it hands back
			// itself when the broker is closed.
			break drain
		}
	}
	w.log.Info("worker stopping: fetching stopped", "handed_back", handedBack,
		"running", w.active.Load(), "grace", w.cfg.ShutdownTimeout)

	// 3. executor: let running tasks finish within the grace period.
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	timer := time.NewTimer(w.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		w.log.Warn("shutdown timeout: handing back unfinished tasks", "running", w.active.Load())
	case <-w.aborted:
		w.log.Warn("shutdown aborted: handing back unfinished tasks", "running", w.active.Load())
	}
	// 4. hand back whatever is still unsettled; its handler sees ctx cancelled.
	w.runCancel(ErrShutdown)
	w.mu.Lock()
	left := make([]*job, 0, len(w.inflight))
	for j := range w.inflight {
		left = append(left, j)
	}
	w.mu.Unlock()
	for _, j := range left {
		if j.claim(stateHandedBack) {
			w.requeue(j.d, "shutdown: unfinished")
			w.forget(j)
		}
	}
	// Give the settling goroutines a moment to notice the cancelled context.
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	w.log.Info("worker stopped", "processed", w.processed.Load(), "handed_back_running", len(left))
	return nil
}

// dispatch reads deliveries until ctx is done or the channel closes.
func (w *Worker) dispatch(ctx context.Context, deliveries <-chan *broker.Delivery) {
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			w.accept(ctx, d)
		}
	}
}

// accept decodes one delivery and starts its job. It blocks while every slot is busy,
// which is what bounds the work in progress (the broker bounds the prefetch).
func (w *Worker) accept(ctx context.Context, d *broker.Delivery) {
	t, err := protocol.Decode(d.Message)
	if err != nil {
		w.track(func() { w.rejectUndecodable(d, err) })
		return
	}
	j := &job{d: d, t: t}
	w.mu.Lock()
	w.inflight[j] = struct{}{}
	w.mu.Unlock()

	if t.ETA != nil && time.Until(*t.ETA) > 0 {
		w.track(func() { w.holdThenRun(ctx, j) })
		return
	}
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		w.handBack(j, "shutdown: not started")
		return
	}
	w.track(func() {
		defer func() { <-w.slots }()
		w.execute(j)
	})
}

// holdThenRun keeps an ETA task (unacked) until it is due, then runs it in a slot.
func (w *Worker) holdThenRun(ctx context.Context, j *job) {
	timer := time.NewTimer(time.Until(*j.t.ETA))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		w.handBack(j, "shutdown: eta not reached")
		return
	}
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		w.handBack(j, "shutdown: not started")
		return
	}
	defer func() { <-w.slots }()
	w.execute(j)
}

func (w *Worker) track(f func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		f()
	}()
}

// handBack requeues a job nobody started.
func (w *Worker) handBack(j *job, why string) {
	if j.claim(stateHandedBack) {
		w.requeue(j.d, why)
		w.forget(j)
	}
}

func (w *Worker) forget(j *job) {
	w.mu.Lock()
	delete(w.inflight, j)
	w.mu.Unlock()
}

func (w *Worker) requeue(d *broker.Delivery, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.broker.Requeue(ctx, d); err != nil {
		w.settleError("requeue", d, err)
		return
	}
	w.log.Debug("delivery handed back", "queue", d.Queue, "reason", why)
}

func (w *Worker) settleError(op string, d *broker.Delivery, err error) {
	if errors.Is(err, broker.ErrStaleDelivery) {
		w.log.Info("delivery's connection is gone; the broker redelivers it", "op", op, "queue", d.Queue)
		return
	}
	w.log.Error("settling delivery failed; the broker will redeliver it", "op", op, "queue", d.Queue, "error", err)
}

// job is one accepted delivery. Its state makes sure exactly one party settles it: the task
// goroutine recording the outcome, or shutdown handing it back.
type job struct {
	d     *broker.Delivery
	t     *protocol.Task
	state atomic.Int32
}

const (
	stateOpen int32 = iota
	stateFinishing
	stateHandedBack
)

func (j *job) claim(s int32) bool { return j.state.CompareAndSwap(stateOpen, s) }
