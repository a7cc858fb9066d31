package events

import "sync/atomic"

// Clock is kombu's Lamport clock (kombu/clocks.py): Forward for every event sent and
// control message handled, Adjust with the clock value another node sent. The zero value
// is ready to use and safe for concurrent use.
type Clock struct {
	v atomic.Int64
}

// Forward advances the clock by one and returns the new value.
func (c *Clock) Forward() int64 { return c.v.Add(1) }

// Adjust sets the clock to max(own, other) + 1 and returns the new value.
func (c *Clock) Adjust(other int64) int64 {
	for {
		cur := c.v.Load()
		next := max(cur, other) + 1
		if c.v.CompareAndSwap(cur, next) {
			return next
		}
	}
}

// Value is the current value.
func (c *Clock) Value() int64 { return c.v.Load() }
