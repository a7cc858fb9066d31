package run

import (
	"sync"
	"time"

	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/loadtest/mix"
	"denis.io/fleet/loadtest/observe"
)

// Category is where a published task ended up.
type Category string

// Categories of the final accounting. Every published task is in exactly one.
const (
	Succeeded    Category = "succeeded"
	Failed       Category = "failed"
	DeadLettered Category = "dead_lettered"
	Revoked      Category = "revoked"
	Queued       Category = "queued"    // still waiting in its queue
	InFlight     Category = "in_flight" // started (or waiting to retry) but not finished
	Missing      Category = "missing"   // nowhere to be found: lost
)

// Final is what the end of the run knows about one task.
type Final struct {
	Outcome observe.Outcome // Status "" when the backend has no result
	InQueue bool            // found waiting in its queue
	InDLQ   bool            // found in its queue's dead-letter queue
}

// Classify puts a task in its category. A success wins over anything else (a copy of the
// message elsewhere is then a duplicate, counted apart); a dead letter wins over the
// FAILURE the worker also records for it; a message back in its queue (redelivered after
// a worker died, or waiting for its retry) is queued whatever state was last written.
func Classify(f Final) Category {
	switch {
	case f.Outcome.Status == protocol.StateSuccess:
		return Succeeded
	case f.InDLQ:
		return DeadLettered
	case f.Outcome.Status == protocol.StateFailure:
		return Failed
	case f.Outcome.Status == protocol.StateRevoked:
		return Revoked
	case f.InQueue:
		return Queued
	case f.Outcome.Status == protocol.StateStarted || f.Outcome.Status == protocol.StateRetry:
		return InFlight
	}
	return Missing
}

// record is one scheduled message.
type record struct {
	id       string
	class    *mix.Class
	task     string
	queue    string
	injected string
	nominal  float64 // seconds; < 0 when unknown

	due       time.Time // scheduled send time (latency is measured from here)
	sent      time.Time // when the publish started (the x-fleet-sent-at header)
	published bool

	outcome observe.Outcome
	starts  int // STARTED states written (runs begun)
	retries int // RETRY states written
	ready   int // ready states written (SUCCESS/FAILURE/REVOKED notices)
	final   Category
}

// duplicate reports whether the task ran more often than its own retries explain, or had
// its outcome written more than once.
func (r *record) duplicate() bool {
	return r.starts > 1+r.retries || r.ready > 1
}

// tracker holds every record; safe for concurrent use.
type tracker struct {
	mu      sync.Mutex
	byID    map[string]*record
	order   []*record
	pending map[string]*record // published, not ready
}

func newTracker() *tracker {
	return &tracker{byID: map[string]*record{}, pending: map[string]*record{}}
}

func (t *tracker) add(r *record) {
	t.mu.Lock()
	t.byID[r.id] = r
	t.order = append(t.order, r)
	t.mu.Unlock()
}

func (t *tracker) markPublished(r *record, sent time.Time) {
	t.mu.Lock()
	r.sent, r.published = sent, true
	if !r.outcome.Ready() {
		t.pending[r.id] = r
	}
	t.mu.Unlock()
}

// notice counts a state written for a task (from the results' PUBLISH).
func (t *tracker) notice(n observe.Notice) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.byID[n.TaskID]
	if !ok {
		return
	}
	switch n.Status {
	case protocol.StateStarted:
		r.starts++
	case protocol.StateRetry:
		r.retries++
	case protocol.StateSuccess, protocol.StateFailure, protocol.StateRevoked:
		r.ready++
	}
}

// pendingIDs lists the published tasks without a ready outcome.
func (t *tracker) pendingIDs() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.pending))
	for id := range t.pending {
		out = append(out, id)
	}
	return out
}

// setOutcomes stores fetched outcomes; ready ones leave the pending set. It returns the
// records that became ready.
func (t *tracker) setOutcomes(got map[string]observe.Outcome) []*record {
	t.mu.Lock()
	defer t.mu.Unlock()
	var done []*record
	for id, o := range got {
		r, ok := t.byID[id]
		if !ok {
			continue
		}
		wasReady := r.outcome.Ready()
		r.outcome = o
		if o.Ready() {
			delete(t.pending, id)
			if !wasReady {
				done = append(done, r)
			}
		}
	}
	return done
}

type counts struct {
	scheduled, published, pending int
}

func (t *tracker) counts() counts {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := counts{scheduled: len(t.order), pending: len(t.pending)}
	for _, r := range t.order {
		if r.published {
			c.published++
		}
	}
	return c
}

// snapshot returns the records (shared: read them only once the run has stopped writing).
func (t *tracker) snapshot() []*record {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*record(nil), t.order...)
}
