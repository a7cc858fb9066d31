package sim

import "time"

// evKind says what an event does. The frequent events (arrivals, completions, pods
// becoming ready, grace periods running out) are plain values, so that a run allocates
// nothing per event; everything else is a function.
type evKind uint8

const (
	evFunc evKind = iota
	evArrival
	evComplete
	evPodReady
	evGrace
)

// event is one scheduled action's payload.
type event struct {
	at   time.Duration
	kind evKind
	gen  int
	i    int
	t    *task
	p    *pod
	fn   func()
}

// key orders the heap: events at the same time run in the order they were scheduled (seq),
// which keeps a run deterministic. Keys hold no pointers, so sifting them is cheap.
type key struct {
	at  time.Duration
	seq uint64
	idx int32 // into clock.ev
}

// clock is the discrete-event engine: a time and a binary min-heap of future events.
type clock struct {
	now  time.Duration
	q    []key
	ev   []event
	free []int32
	seq  uint64
}

func (c *clock) less(i, j int) bool {
	a, b := c.q[i], c.q[j]
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}

// push schedules e (not before now).
func (c *clock) push(e event) {
	if e.at < c.now {
		e.at = c.now
	}
	var idx int32
	if n := len(c.free); n > 0 {
		idx = c.free[n-1]
		c.free = c.free[:n-1]
		c.ev[idx] = e
	} else {
		idx = int32(len(c.ev))
		c.ev = append(c.ev, e)
	}
	c.seq++
	c.q = append(c.q, key{at: e.at, seq: c.seq, idx: idx})
	i := len(c.q) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !c.less(i, parent) {
			break
		}
		c.q[i], c.q[parent] = c.q[parent], c.q[i]
		i = parent
	}
}

// pending reports whether an event is due before end.
func (c *clock) pending(end time.Duration) bool { return len(c.q) > 0 && c.q[0].at < end }

// pop removes and returns the earliest event.
func (c *clock) pop() event {
	k := c.q[0]
	last := len(c.q) - 1
	c.q[0] = c.q[last]
	c.q = c.q[:last]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < last && c.less(l, m) {
			m = l
		}
		if r < last && c.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		c.q[i], c.q[m] = c.q[m], c.q[i]
		i = m
	}
	e := c.ev[k.idx]
	c.ev[k.idx] = event{}
	c.free = append(c.free, k.idx)
	return e
}

// at schedules fn at t.
func (c *clock) at(t time.Duration, fn func()) { c.push(event{at: t, kind: evFunc, fn: fn}) }

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
