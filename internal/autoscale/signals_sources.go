package autoscale

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/flags"
)

// LazyInspector opens its QueueInspector on first use and retries the opening on later
// calls while it fails (at most every RetryEvery, default 5 s), so that an autoscaler
// started while the broker is down fails static instead of exiting.
type LazyInspector struct {
	Open       func(ctx context.Context) (QueueInspector, error)
	RetryEvery time.Duration

	mu      sync.Mutex
	in      QueueInspector
	lastErr error
	lastAt  time.Time
}

// QueueStats implements QueueInspector.
func (l *LazyInspector) QueueStats(ctx context.Context, queue string) (broker.QueueStats, error) {
	in, err := l.get(ctx)
	if err != nil {
		return broker.QueueStats{}, err
	}
	return in.QueueStats(ctx, queue)
}

func (l *LazyInspector) get(ctx context.Context) (QueueInspector, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.in != nil {
		return l.in, nil
	}
	every := l.RetryEvery
	if every <= 0 {
		every = 5 * time.Second
	}
	if l.lastErr != nil && time.Since(l.lastAt) < every {
		return nil, l.lastErr
	}
	in, err := l.Open(ctx)
	if err != nil {
		l.lastErr, l.lastAt = fmt.Errorf("broker unreachable: %w", err), time.Now()
		return nil, l.lastErr
	}
	l.in = in
	return in, nil
}

// Close closes the inspector if it was opened and can be closed.
func (l *LazyInspector) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.in.(io.Closer); ok {
		l.in = nil
		return c.Close()
	}
	return nil
}

// RedisWorkers lists the workers' heartbeat records (fleet:worker:<hostname>, indexed by
// the fleet:workers sorted set; internal/events) under an optional key prefix.
type RedisWorkers struct {
	Client goredis.UniversalClient
	Prefix string
}

// ListWorkers implements WorkerLister.
func (r RedisWorkers) ListWorkers(ctx context.Context) ([]events.WorkerStatus, error) {
	return events.ListWorkers(ctx, r.Client, r.Prefix)
}

// FleetFlags reads the policy's flags from the fleet's flag store: FLEET_EMERGENCY_STOP, and
// ASYNC_ENABLED. ASYNC_ENABLED counts as off only when some source (environment, file or
// the Redis store) sets it to false; left unset — its built-in default — it is not taken as
// off, because "off" lets the policy drop its step headroom and go to its minimum without a
// stabilisation window, which must be a decision someone made, not the absence of one.
type FleetFlags struct {
	Flags *flags.Flags
}

// PolicyFlags implements FlagReader.
func (f FleetFlags) PolicyFlags() Flags {
	out := Flags{EmergencyStop: f.Flags.Bool(flags.EmergencyStop)}
	if st, ok := f.Flags.Get(flags.AsyncEnabled); ok && st.Source != flags.SourceDefault {
		out.AsyncOff = !st.Bool()
	}
	return out
}
