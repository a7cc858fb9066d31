package worker

import (
	"context"
	"time"
)

// readyQueue holds the due jobs waiting for a concurrency slot, first in first out, and
// counts the free slots. A job gets a goroutine only once it has a slot (start), so the
// prefetched backlog costs no goroutines, and tasks start in the order they became due.
// Guarded by Worker.readyMu.
type readyQueue struct {
	free   int    // slots not held by a running job
	jobs   []*job // waiting, oldest at head
	head   int
	closed bool // shutdown: arrivals are handed back at once
}

// runReady queues a due task for a slot, after its rate-limit turn (waited for in a
// goroutine of its own, holding no slot).
func (w *Worker) runReady(ctx context.Context, j *job) {
	if j.state.Load() != stateOpen {
		return
	}
	if w.limiter.Limited(j.t.Name) {
		w.track(func() {
			if w.rateLimitTurn(ctx, j) {
				w.enqueueReady(j)
			}
		})
		return
	}
	w.enqueueReady(j)
}

// rateLimitTurn waits for j's rate-limit turn; false when j was handed back (shutdown)
// or settled by someone else meanwhile.
func (w *Worker) rateLimitTurn(ctx context.Context, j *job) bool {
	wait, err := w.limiter.Reserve(ctx, j.t.Name)
	if err != nil {
		w.handBack(j, "shutdown: waiting for its rate limit")
		return false
	}
	if wait <= 0 {
		return true
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		w.handBack(j, "shutdown: waiting for its rate limit")
	case <-j.gone:
	}
	return false
}

// enqueueReady starts j if a slot is free and nobody waits, else queues it.
func (w *Worker) enqueueReady(j *job) {
	w.readyMu.Lock()
	q := &w.ready
	switch {
	case q.closed:
		w.readyMu.Unlock()
		w.handBack(j, "shutdown: not started")
		return
	case q.free > 0 && q.head == len(q.jobs):
		q.free--
		w.readyMu.Unlock()
		w.start(j)
		return
	}
	q.jobs = append(q.jobs, j)
	w.readyMu.Unlock()
}

// start runs j in the slot it was given, on a goroutine of its own; the slot passes to
// the next waiting job once j's handler has returned (execute calls release) or j turns
// out to be settled already.
func (w *Worker) start(j *job) {
	w.wg.Add(1)
	w.goPooled(func() {
		defer w.wg.Done()
		released := false
		release := func() {
			if !released {
				released = true
				w.releaseSlot()
			}
		}
		defer release()
		if j.state.Load() != stateOpen {
			return
		}
		w.execute(j, release)
	})
}

// releaseSlot gives a freed slot to the oldest waiting job still open (jobs revoked or
// handed back while waiting are dropped from the queue), or marks it free.
func (w *Worker) releaseSlot() {
	w.readyMu.Lock()
	q := &w.ready
	for q.head < len(q.jobs) && !q.closed {
		j := q.jobs[q.head]
		q.jobs[q.head] = nil
		q.head++
		q.compact()
		if j.state.Load() == stateOpen {
			w.readyMu.Unlock()
			w.start(j)
			return
		}
	}
	q.free++
	w.readyMu.Unlock()
}

// compact drops the consumed head of the queue once it is the larger part.
func (q *readyQueue) compact() {
	if q.head == len(q.jobs) {
		q.jobs, q.head = q.jobs[:0], 0
		return
	}
	if q.head >= 256 && q.head*2 >= len(q.jobs) {
		n := copy(q.jobs, q.jobs[q.head:])
		clear(q.jobs[n:])
		q.jobs, q.head = q.jobs[:n], 0
	}
}

// closeReady starts the shutdown of the queue: every waiting job is handed back at once,
// and jobs that become due later are handed back on arrival. It returns how many jobs it
// handed back.
func (w *Worker) closeReady() int {
	w.readyMu.Lock()
	q := &w.ready
	q.closed = true
	waiting := append([]*job(nil), q.jobs[q.head:]...)
	clear(q.jobs)
	q.jobs, q.head = nil, 0
	w.readyMu.Unlock()
	for _, j := range waiting {
		w.track(func() { w.handBack(j, "shutdown: not started") })
	}
	return len(waiting)
}

// runnerIdle is how long a pooled goroutine waits for more work before it exits.
const runnerIdle = 5 * time.Second

// runners is a pool of goroutines that run one function after another: a task's goroutine
// grows its stack on the way through the handler, the result backend and the broker,
// and a new goroutine per task would grow (copy) it again every time.
type runners struct {
	work chan func()   // unbuffered: a hand-over to an idle runner
	stop chan struct{} // closed when the worker's Run ends: idle runners exit
	// recording bounds the tasks whose handler has returned and whose outcome is being
	// recorded (see execute): their slots are free for the next tasks meanwhile.
	recording chan struct{}
}

// recordingPerSlot is how many tasks per concurrency slot may be recording their outcome
// at once (at least minRecording, at most maxRecording): enough for the result writes and
// acks of a busy worker to share round trips, few enough to bound its goroutines.
const (
	recordingPerSlot = 16
	minRecording     = 64
	maxRecording     = 512
)

func newRunners(concurrency int) runners {
	return runners{work: make(chan func()), stop: make(chan struct{}),
		recording: make(chan struct{}, min(max(recordingPerSlot*concurrency, minRecording), maxRecording))}
}

// goPooled runs f on an idle runner, or on a new one.
func (w *Worker) goPooled(f func()) {
	select {
	case w.runners.work <- f:
	default:
		go w.runner(f)
	}
}

func (w *Worker) runner(f func()) {
	f()
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	for {
		select {
		case f := <-w.runners.work:
			f()
			idle.Reset(runnerIdle)
		case <-idle.C:
			return
		case <-w.runners.stop:
			return
		}
	}
}
