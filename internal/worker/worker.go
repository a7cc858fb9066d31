// Package worker owns the lifecycle of one Celery-compatible worker process: it consumes
// deliveries from a broker, turns each into a task run on a bounded pool of goroutines,
// records the outcome in the result backend and only then settles the delivery (ack,
// requeue or dead-letter). It implements Celery's task semantics: ETA/countdown messages
// held unacknowledged until due (raising the prefetch while held), expires and revocation,
// soft and hard time limits, per-task rate limits, retries (published as Celery does),
// link/link_error callbacks, chains, groups and chords (counted in Redis exactly as
// Celery's Redis backend does). It also owns graceful shutdown.
//
// Life of a delivery:
//
//	received → revoked/expired? → REVOKED, acked
//	         → ETA in the future? → scheduled (held, prefetch +1) until due
//	         → reserved: waits for its rate-limit turn, then for a free slot (no slot is
//	           held while rate-limited)
//	         → active: the handler runs (soft limit cancels its context; hard limit
//	           records FAILURE and abandons it) → outcome recorded → settled
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
//
// Seams for events, metrics and remote control: Config.Observers (one call per task
// event), Snapshot (active, reserved and scheduled requests, totals, counters), Revoke
// (with a pluggable RevokedStore), SetFleetWideRateLimits, and the run-time changes of
// consumers.go: AddConsumer, CancelConsumer, SetRateLimit, SetTimeLimit.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/ratelimit"
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

	// DefaultQueue is where the worker publishes signatures (callbacks, chain steps,
	// chord bodies, errbacks) whose options and task settings name no queue: Celery's
	// task_default_queue (default "celery").
	DefaultQueue string
	// MaxETATasks bounds the ETA/countdown messages held in memory, each raising the
	// prefetch by one (default 1000). Past it a message is handed back to the broker; one
	// that comes straight back is held within the ordinary prefetch instead.
	MaxETATasks int
	// RateLimiter applies per-task rate limits; nil builds a per-worker one from Tasks.
	RateLimiter *ratelimit.Limiter
	// Revoked is the revoked-id store; nil means a MemoryRevoked (Celery's LimitedSet).
	Revoked RevokedStore
	// Observers are told about every task event.
	Observers []Observer

	// MaxRedeliveries is how many times a message may come back redelivered (its worker
	// died or lost the broker while holding it) before it is dead-lettered with reason
	// worker_lost instead of run again; 0 switches the limit off (the worker command
	// defaults to DefaultMaxRedeliveries). Messages a worker hands back on purpose
	// (shutdown, rejected with requeue, an outcome it could not record) do not count.
	MaxRedeliveries int
	// Redeliveries counts redeliveries fleet-wide (dlq.RedisRedeliveries); without it
	// redeliveries are not counted and MaxRedeliveries has no effect.
	Redeliveries RedeliveryCounter
}

// DefaultMaxETATasks is the default bound on held ETA messages.
const DefaultMaxETATasks = 1000

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
	if c.DefaultQueue == "" {
		c.DefaultQueue = "celery"
	}
	if c.MaxETATasks <= 0 {
		c.MaxETATasks = DefaultMaxETATasks
	}
}

// Worker runs tasks from a broker. Create it with New and call Run once.
type Worker struct {
	cfg      Config
	broker   broker.Broker
	results  result.Backend      // nil: results disabled
	chords   result.ChordBackend // nil: the backend cannot count chords
	registry *tasks.Registry
	log      *slog.Logger
	pid      int
	origin   string // origin header of the messages the worker sends
	limiter  *ratelimit.Limiter
	revoked  RevokedStore
	obs      observers
	started  atomic.Int64 // UnixNano when consuming began; 0 before
	// dispatching is the UnixNano of the dispatch loop's last turn (it turns at least every
	// dispatchTick); 0 while it does not run.
	dispatching atomic.Int64

	readyMu sync.Mutex
	ready   readyQueue    // due jobs waiting for a concurrency slot (ready.go)
	runners runners       // pooled goroutines of task runs (ready.go)
	aborted chan struct{} // closed by Abort
	abortMu sync.Once

	// runCtx is the context task handlers and outcome recording run under; it is cancelled
	// when the shutdown grace ends or on Abort.
	runCtx    context.Context
	runCancel context.CancelCauseFunc

	wg       sync.WaitGroup // every job goroutine (held, waiting, running, settling)
	mu       sync.Mutex
	inflight map[*job]struct{}    // jobs not yet settled
	totals   map[string]int64     // tasks run to an outcome, by name
	held     int                  // scheduled jobs raising the prefetch
	bounced  map[string]time.Time // ETA messages handed back at the bound, by id

	basePrefetch int
	prefetchKick chan struct{}
	prefetchNow  atomic.Int64

	processed atomic.Int64
	active    atomic.Int64
	counters  counters

	rc runtimeControl // queues and limits changed by remote control (consumers.go)

	onDelivery      []func(*broker.Delivery) // set before Run (OnDelivery)
	counterFailedAt atomic.Int64             // UnixNano of the last failed counter bookkeeping call
}

// counters are the worker's running totals (see Snapshot).
type counters struct {
	succeeded, failed, retried, revoked, expired, rejected, deadLettered,
	timeLimited, abandonedNow, abandonedTotal atomic.Int64
}

// ErrShutdown is the cause of a task context cancelled because the worker stopped waiting.
var ErrShutdown = errors.New("worker shutting down")

// New returns a worker; results may be nil (results disabled).
func New(cfg Config, b broker.Broker, results result.Backend, reg *tasks.Registry) *Worker {
	cfg.setDefaults()
	w := &Worker{
		cfg:          cfg,
		broker:       b,
		results:      results,
		registry:     reg,
		log:          cfg.Logger.With("hostname", cfg.Hostname),
		pid:          os.Getpid(),
		origin:       protocol.AnonNodeName(),
		limiter:      cfg.RateLimiter,
		revoked:      cfg.Revoked,
		obs:          observers(cfg.Observers),
		ready:        readyQueue{free: cfg.Concurrency},
		runners:      newRunners(cfg.Concurrency),
		aborted:      make(chan struct{}),
		inflight:     make(map[*job]struct{}),
		totals:       make(map[string]int64),
		bounced:      make(map[string]time.Time),
		basePrefetch: cfg.Concurrency * cfg.PrefetchMultiplier,
		prefetchKick: make(chan struct{}, 1),
	}
	if cb, ok := results.(result.ChordBackend); ok {
		w.chords = cb
	}
	if w.revoked == nil {
		w.revoked = NewMemoryRevoked(0, 0)
	}
	if w.limiter == nil {
		l, err := ratelimit.New(cfg.Tasks.RateLimits(), nil, cfg.Logger)
		if err != nil {
			// The configuration loader validated every rate; keep going without limits
			// rather than refuse to run.
			w.log.Error("rate limits ignored", "error", err)
		}
		w.limiter = l
	}
	w.runCtx, w.runCancel = context.WithCancelCause(context.Background())
	w.prefetchNow.Store(int64(w.basePrefetch))
	return w
}

// Hostname is the worker's node name.
func (w *Worker) Hostname() string { return w.cfg.Hostname }

// Processed is the number of tasks run to an outcome since start.
func (w *Worker) Processed() int64 { return w.processed.Load() }

// Active is the number of tasks running now.
func (w *Worker) Active() int64 { return w.active.Load() }

// OnDelivery registers f to be called with every delivery the worker receives, before it
// is decoded, on the worker's dispatch path (so f must not block): for example
// dlq.Collector.ObserveDelivery, which counts replayed dead letters. Call it before Run.
func (w *Worker) OnDelivery(f func(*broker.Delivery)) {
	w.onDelivery = append(w.onDelivery, f)
}

// SetFleetWideRateLimits switches rate limits between per worker (false, Celery's
// behaviour) and shared by the fleet through Redis (true); see package ratelimit.
func (w *Worker) SetFleetWideRateLimits(on bool) {
	if w.limiter != nil {
		w.limiter.SetFleetWide(on)
	}
}

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
	deliveries, err := w.broker.Consume(fetchCtx, w.cfg.Queues, w.basePrefetch)
	if err != nil {
		return fmt.Errorf("worker: consume %v: %w", w.cfg.Queues, err)
	}
	w.started.Store(time.Now().UnixNano())
	defer close(w.runners.stop)
	prefetchCtx, stopPrefetch := context.WithCancel(context.Background())
	prefetchDone := make(chan struct{})
	go func() {
		defer close(prefetchDone)
		w.prefetchLoop(prefetchCtx)
	}()
	defer func() {
		stopPrefetch()
		<-prefetchDone
	}()
	w.log.Info("worker ready", "queues", w.cfg.Queues, "concurrency", w.cfg.Concurrency,
		"prefetch", w.basePrefetch, "results", w.results != nil, "chords", w.chords != nil,
		"max_redeliveries", w.cfg.MaxRedeliveries, "redelivery_counting", w.redeliveryMode())

	w.dispatch(ctx, deliveries)

	// 1. fetcher: stop at once; 2. reserved: hand back what was fetched but not started.
	stopFetching()
	handedBack := w.closeReady()
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
	w.log.Info("worker stopped", "processed", w.processed.Load(), "handed_back_running", len(left),
		"abandoned_running", w.counters.abandonedNow.Load())
	return nil
}

// dispatchTick is how often the dispatch loop proves it turns while no delivery comes.
const dispatchTick = time.Second

// dispatch reads deliveries until ctx is done or the channel closes. It never blocks on a
// slot: the broker's prefetch bounds what is in progress.
func (w *Worker) dispatch(ctx context.Context, deliveries <-chan *broker.Delivery) {
	tick := time.NewTicker(dispatchTick)
	defer tick.Stop()
	w.dispatching.Store(time.Now().UnixNano())
	defer w.dispatching.Store(0)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			w.dispatching.Store(now.UnixNano())
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			w.receive(ctx, d)
		}
	}
}

// ConsumerAlive is the last time the worker's consumer showed it was working (the
// /readyz check): the older of its dispatch loop's last turn (at least every second,
// with or without deliveries) and, when the transport can tell (broker.ConsumerProbe),
// the transport's own answer: its fetch loop turning or its consuming channel open. A
// stalled fetch loop, a channel lost and not consumed again, or a stuck dispatch loop
// make it fall behind the clock. The zero time before consuming starts and once the
// dispatch loop ended (shutdown).
func (w *Worker) ConsumerAlive() time.Time {
	d := w.dispatching.Load()
	if d == 0 {
		return time.Time{}
	}
	at := time.Unix(0, d)
	if p, ok := broker.As[broker.ConsumerProbe](w.broker); ok {
		if t := p.ConsumerAlive(); t.Before(at) {
			at = t // older, or zero: the transport does not consume
		}
	}
	return at
}

// receive decodes one delivery and routes it: dead-lettered, revoked, scheduled or
// reserved (Celery's worker/strategy.py).
func (w *Worker) receive(ctx context.Context, d *broker.Delivery) {
	for _, f := range w.onDelivery {
		f(d)
	}
	t, err := protocol.Decode(d.Message)
	if err != nil {
		w.track(func() { w.rejectUndecodable(d, err) })
		return
	}
	h, known := w.registry.Lookup(t.Name)
	j := &job{d: d, t: t, tc: w.cfg.Tasks.For(t.Name), h: h, received: time.Now(), gone: make(chan struct{})}
	w.mu.Lock()
	if w.consumerCancelledLocked(d.Queue) {
		w.mu.Unlock()
		w.track(func() { w.requeue(d, "consumer cancelled") })
		return
	}
	w.inflight[j] = struct{}{}
	w.mu.Unlock()
	if !known {
		w.track(func() { w.rejectUnknown(j) })
		return
	}
	if reason := w.revokedReason(ctx, j); reason != "" {
		w.track(func() { w.discard(j, reason) })
		return
	}
	if d.Redelivered && w.countingRedeliveries() {
		// Counting may take a round trip to Redis: off the dispatch path.
		w.track(func() {
			if !w.checkRedeliveries(j) {
				w.accept(ctx, j)
			}
		})
		return
	}
	w.accept(ctx, j)
}

// accept takes a job that may run: scheduled when it has an ETA in the future, reserved
// otherwise.
func (w *Worker) accept(ctx context.Context, j *job) {
	t := j.t
	if len(w.obs) > 0 {
		w.obs.received(j.info(w.cfg.Hostname))
	}
	if t.ETA != nil && time.Until(*t.ETA) > 0 {
		w.schedule(ctx, j)
		return
	}
	w.runReady(ctx, j)
}

// revokedReason is "expired" or "revoked" for a task that must not run, "" otherwise.
func (w *Worker) revokedReason(ctx context.Context, j *job) string {
	if j.t.Expires != nil && time.Now().After(*j.t.Expires) {
		return result.RevokedReasonExpired
	}
	revoked, err := w.revoked.Contains(ctx, j.t.ID)
	if err != nil {
		w.log.Warn("revoked-id store failed; treating the task as not revoked", "task_id", j.t.ID, "error", err)
		return ""
	}
	if revoked {
		return result.RevokedReasonRevoked
	}
	return ""
}

// bounceMemory is how long an ETA message handed back at the bound is remembered: if it
// comes back within it, it is held anyway (within the ordinary prefetch) rather than
// bounced in a loop.
const bounceMemory = time.Minute

// schedule holds an ETA task (unacked) until it is due. Each held message raises the
// prefetch by one so that it does not take the place of a runnable one, up to
// MaxETATasks.
func (w *Worker) schedule(ctx context.Context, j *job) {
	now := time.Now()
	w.mu.Lock()
	raise := w.held < w.cfg.MaxETATasks
	if raise {
		w.held++
	} else {
		at, seen := w.bounced[j.t.ID]
		if !seen || now.Sub(at) > bounceMemory {
			w.bounced[j.t.ID] = now
			if len(w.bounced) > 4*w.cfg.MaxETATasks {
				for id, t := range w.bounced {
					if now.Sub(t) > bounceMemory {
						delete(w.bounced, id)
					}
				}
			}
			w.mu.Unlock()
			w.log.Info("ETA limit reached: handing the message back", "task_id", j.t.ID, "task", j.t.Name,
				"eta", j.t.ETA, "held", w.cfg.MaxETATasks)
			w.handBack(j, "eta limit reached")
			return
		}
		delete(w.bounced, j.t.ID)
	}
	j.raised = raise
	j.phase.Store(phaseScheduled)
	w.mu.Unlock()
	if raise {
		w.kickPrefetch()
	}
	w.track(func() { w.hold(ctx, j) })
}

// hold waits for the task's ETA, then hands it to runReady.
func (w *Worker) hold(ctx context.Context, j *job) {
	timer := time.NewTimer(time.Until(*j.t.ETA))
	defer timer.Stop()
	var due bool
	select {
	case <-timer.C:
		due = true
	case <-ctx.Done():
	case <-j.gone:
	}
	w.unhold(j)
	switch {
	case due:
		j.phase.Store(phaseReserved)
		w.runReady(ctx, j)
	case ctx.Err() != nil:
		w.handBack(j, "shutdown: eta not reached")
	}
}

func (w *Worker) unhold(j *job) {
	w.mu.Lock()
	lower := j.raised
	if lower {
		j.raised = false
		w.held--
	}
	w.mu.Unlock()
	if lower {
		w.kickPrefetch()
	}
}

// kickPrefetch asks the prefetch loop to apply base + held.
func (w *Worker) kickPrefetch() {
	select {
	case w.prefetchKick <- struct{}{}:
	default:
	}
}

// prefetchLoop applies prefetch changes one at a time, coalescing bursts (Celery's
// qos.increment_eventually / decrement_eventually).
func (w *Worker) prefetchLoop(ctx context.Context) {
	applied := w.basePrefetch
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.prefetchKick:
		}
		w.mu.Lock()
		want := w.basePrefetch + w.held
		w.mu.Unlock()
		if want == applied {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.broker.SetPrefetch(sctx, want)
		cancel()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, broker.ErrClosed) {
				w.log.Warn("could not change the prefetch; will retry", "prefetch", want, "error", err)
				time.AfterFunc(time.Second, w.kickPrefetch)
			}
			continue
		}
		applied = want
		w.prefetchNow.Store(int64(want))
		w.log.Debug("prefetch changed", "prefetch", want, "eta_held", want-w.basePrefetch)
	}
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
		j.markGone()
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
	w.excuseHandBack(d)
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

// Revoke marks task ids as revoked (Celery's `revoke` control command). Revoked tasks that
// have not started are discarded at once (REVOKED stored, message acked); those still to
// arrive are discarded when they do. With terminate, running ones are stopped: their
// context is cancelled with cause tasks.ErrTerminated, REVOKED ("terminated") is recorded
// and their slot freed.
func (w *Worker) Revoke(ctx context.Context, ids []string, terminate bool) error {
	err := w.revoked.Add(ctx, ids...)
	if err != nil {
		err = fmt.Errorf("worker: revoke %v: %w", ids, err)
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	w.mu.Lock()
	var hit []*job
	for j := range w.inflight {
		if want[j.t.ID] {
			hit = append(hit, j)
		}
	}
	w.mu.Unlock()
	for _, j := range hit {
		j.mu.Lock()
		switch {
		case j.phase.Load() == phaseActive:
			if terminate && j.terminate != nil {
				j.terminateOnce.Do(func() { close(j.terminate) })
			}
		case j.claim(stateFinishing):
			j.markGone()
			w.track(func() { w.finishRevoked(j, result.RevokedReasonRevoked, false) })
		}
		j.mu.Unlock()
	}
	return err
}

// job is one accepted delivery. Its state makes sure exactly one party settles it: the task
// goroutine recording the outcome, revocation, or shutdown handing it back.
type job struct {
	d        *broker.Delivery
	t        *protocol.Task
	tc       tasks.TaskConfig
	h        tasks.Handler
	received time.Time
	state    atomic.Int32
	phase    atomic.Int32
	raised   bool        // counted in the prefetch raise; guarded by Worker.mu
	counted  atomic.Bool // its redelivery was counted by Config.Redeliveries

	ti atomic.Pointer[TaskInfo] // info, made once

	gone     chan struct{} // closed once the job was settled by someone else before it ran
	goneOnce sync.Once

	mu            sync.Mutex // orders Revoke against the start of the run
	started       time.Time
	acked         bool          // acknowledged before running (acks_late off)
	terminate     chan struct{} // closed by Revoke(terminate) while active
	terminateOnce sync.Once
	handler       atomic.Int32 // handlerRunning → handlerDone | handlerAbandoned
}

const (
	stateOpen int32 = iota
	stateFinishing
	stateHandedBack
)

// Phases of a job, for Snapshot.
const (
	phaseReserved int32 = iota
	phaseScheduled
	phaseActive
)

const (
	handlerRunning int32 = iota
	handlerDone
	handlerAbandoned
)

func (j *job) claim(s int32) bool { return j.state.CompareAndSwap(stateOpen, s) }

func (j *job) markGone() { j.goneOnce.Do(func() { close(j.gone) }) }

// infoFor describes the job for the observers; nil when there are none (the info is only
// ever handed to them).
func (w *Worker) infoFor(j *job) *TaskInfo {
	if len(w.obs) == 0 {
		return nil
	}
	return j.info(w.cfg.Hostname)
}

// info describes the job for observers and snapshots; it is made once per job (its
// receivers only read it).
func (j *job) info(hostname string) *TaskInfo {
	if ti := j.ti.Load(); ti != nil {
		return ti
	}
	ti := j.makeInfo(hostname)
	if !j.ti.CompareAndSwap(nil, ti) {
		return j.ti.Load()
	}
	return ti
}

func (j *job) makeInfo(hostname string) *TaskInfo {
	t, d := j.t, j.d
	ar, kr := t.ArgsRepr, t.KwargsRepr
	if ar == "" {
		ar = protocol.ReprArgs(t.Args)
	}
	if kr == "" {
		kr = protocol.ReprKwargs(t.Kwargs)
	}
	return &TaskInfo{
		ID: t.ID, Name: t.Name, Shadow: t.Shadow, ArgsRepr: ar, KwargsRepr: kr,
		Args: t.Args, Kwargs: t.Kwargs, RootID: t.RootID, ParentID: t.ParentID, GroupID: t.Group,
		Retries: t.Retries, ETA: t.ETA, Expires: t.Expires,
		Queue: d.Queue, Exchange: d.Exchange, RoutingKey: d.RoutingKey,
		Priority: int(d.Message.Properties.Priority), Redelivered: d.Redelivered,
		Hostname: hostname, Received: j.received,
	}
}

// jitter is rand.Int64N for the retry backoff.
func jitter(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return rand.Int64N(n)
}
