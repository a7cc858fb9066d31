package worker

import (
	"sort"
	"time"
)

// RequestSnapshot is one request as `celery inspect active/reserved` shows it.
type RequestSnapshot struct {
	TaskInfo
	// TimeStart is when the handler started (zero unless active).
	TimeStart time.Time
	// Acknowledged: the message was acked before the task ran (acks_late off).
	Acknowledged bool
	// WorkerPID is the process running it.
	WorkerPID int
}

// ScheduledSnapshot is one request held for its ETA (`celery inspect scheduled`).
type ScheduledSnapshot struct {
	ETA time.Time
	// Priority is the timer priority Celery reports (6 for ETA tasks), not the message
	// priority, which is Request.Priority.
	Priority int
	Request  RequestSnapshot
}

// celeryETATimerPriority is the priority Celery's worker gives ETA timer entries.
const celeryETATimerPriority = 6

// Counters are the worker's running totals since start.
type Counters struct {
	Succeeded    int64
	Failed       int64 // includes hard time limits and unknown tasks
	Retried      int64
	Revoked      int64 // revoked (including terminated), not expired
	Expired      int64
	Rejected     int64
	DeadLettered int64
	TimeLimited  int64 // hard time limits
	// AbandonedRunning is the number of handler goroutines still running after their task
	// was given up (hard time limit, terminate); AbandonedTotal counts every one.
	AbandonedRunning int64
	AbandonedTotal   int64
}

// Snapshot is the worker's state for `celery inspect active/reserved/scheduled/stats`.
type Snapshot struct {
	Hostname    string
	PID         int
	Started     time.Time
	Queues      []string
	Concurrency int
	// Prefetch is the prefetch limit in force (base plus one per held ETA task).
	Prefetch int
	// Active are the running requests, Reserved the prefetched ones not started yet
	// (waiting for a slot or a rate-limit turn), Scheduled those held for their ETA.
	Active    []RequestSnapshot
	Reserved  []RequestSnapshot
	Scheduled []ScheduledSnapshot
	// Totals counts the tasks run to an outcome, by task name (stats' "total").
	Totals    map[string]int64
	Processed int64
	// RateLimitWaiting is the number of requests waiting for a rate-limit turn.
	RateLimitWaiting int64
	Counters         Counters
}

func startedAt(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Snapshot returns the worker's current requests and totals. Each list is ordered by
// receipt time.
func (w *Worker) Snapshot() Snapshot {
	s := Snapshot{
		Hostname:         w.cfg.Hostname,
		PID:              w.pid,
		Started:          startedAt(w.started.Load()),
		Queues:           w.queueNames(),
		Concurrency:      w.cfg.Concurrency,
		Prefetch:         int(w.prefetchNow.Load()),
		Processed:        w.processed.Load(),
		RateLimitWaiting: w.limiter.Waiting(),
		Totals:           map[string]int64{},
		Counters: Counters{
			Succeeded:        w.counters.succeeded.Load(),
			Failed:           w.counters.failed.Load(),
			Retried:          w.counters.retried.Load(),
			Revoked:          w.counters.revoked.Load(),
			Expired:          w.counters.expired.Load(),
			Rejected:         w.counters.rejected.Load(),
			DeadLettered:     w.counters.deadLettered.Load(),
			TimeLimited:      w.counters.timeLimited.Load(),
			AbandonedRunning: w.counters.abandonedNow.Load(),
			AbandonedTotal:   w.counters.abandonedTotal.Load(),
		},
	}
	w.mu.Lock()
	jobs := make([]*job, 0, len(w.inflight))
	for j := range w.inflight {
		jobs = append(jobs, j)
	}
	for k, v := range w.totals {
		s.Totals[k] = v
	}
	w.mu.Unlock()
	sort.Slice(jobs, func(a, b int) bool { return jobs[a].received.Before(jobs[b].received) })
	for _, j := range jobs {
		phase, st := j.phase.Load(), j.state.Load()
		if j.h == nil || st == stateHandedBack || (st != stateOpen && phase != phaseActive) {
			continue // never runnable (unknown task), handed back, or being settled
		}
		rs := RequestSnapshot{TaskInfo: *j.info(w.cfg.Hostname), WorkerPID: w.pid}
		switch phase {
		case phaseActive:
			j.mu.Lock()
			rs.TimeStart, rs.Acknowledged = j.started, j.acked
			j.mu.Unlock()
			s.Active = append(s.Active, rs)
		case phaseScheduled:
			s.Scheduled = append(s.Scheduled, ScheduledSnapshot{ETA: *j.t.ETA, Priority: celeryETATimerPriority, Request: rs})
		default:
			s.Reserved = append(s.Reserved, rs)
		}
	}
	return s
}
