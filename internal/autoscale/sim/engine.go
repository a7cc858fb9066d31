package sim

import (
	"container/heap"
	"time"
)

// event is one scheduled action. Events at the same time run in the order they were
// scheduled (seq), which keeps a run deterministic.
type event struct {
	at  time.Duration
	seq uint64
	fn  func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return e
}

// clock is the discrete-event engine: a time and a queue of future events.
type clock struct {
	now time.Duration
	q   eventQueue
	seq uint64
}

// at schedules fn at t (not before now).
func (c *clock) at(t time.Duration, fn func()) {
	if t < c.now {
		t = c.now
	}
	c.seq++
	heap.Push(&c.q, &event{at: t, seq: c.seq, fn: fn})
}

// every runs fn at start, start+period, … while the time is before end.
func (c *clock) every(start, period, end time.Duration, fn func()) {
	var tick func()
	next := start
	tick = func() {
		fn()
		next += period
		if next < end {
			c.at(next, tick)
		}
	}
	if start < end {
		c.at(start, tick)
	}
}

// runUntil processes events in order until the queue is empty or the next one is at or
// after end; the clock then reads end.
func (c *clock) runUntil(end time.Duration) {
	for len(c.q) > 0 && c.q[0].at < end {
		e := heap.Pop(&c.q).(*event)
		c.now = e.at
		e.fn()
	}
	c.now = end
}
