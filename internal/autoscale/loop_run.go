package autoscale

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// Heartbeat records when a loop last completed a reconcile (for /healthz).
type Heartbeat struct{ ns atomic.Int64 }

// Beat records t.
func (h *Heartbeat) Beat(t time.Time) { h.ns.Store(t.UnixNano()) }

// Last returns the last beat (zero before the first).
func (h *Heartbeat) Last() time.Time {
	n := h.ns.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// RunWoken is Run with a wake channel: a receive on wake runs a reconcile at once (a flag
// change, so that an emergency stop does not wait for the tick), and every reconcile,
// successful or not, beats hb (may be nil).
func (l *Loop) RunWoken(ctx context.Context, wake <-chan struct{}, hb *Heartbeat) error {
	if l.Policy == nil {
		return errors.New("autoscale: loop needs a policy")
	}
	t := time.NewTicker(l.Policy.Config().Interval)
	defer t.Stop()
	for {
		_, _ = l.Step(ctx)
		if hb != nil {
			hb.Beat(time.Now())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-wake:
			t.Reset(l.Policy.Config().Interval)
		}
	}
}
