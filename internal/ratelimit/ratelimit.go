// Package ratelimit enforces Celery's per-task rate_limit.
//
// By default each worker keeps its own token bucket per task name, exactly as Celery's
// worker does (kombu TokenBucket with capacity 1, refilled at the rate): the first task runs
// at once and the next ones one interval apart, so N tasks at R/s take at least (N-1)/R
// seconds on one worker. A task waiting for its token holds no concurrency slot; the
// caller keeps its message unacknowledged meanwhile.
//
// Behind a switch (SetFleetWide) the limit is shared by every worker of the fleet instead:
// the workers reserve their turns in Redis with GCRA (generic cell rate algorithm, burst 1),
// one key per task name, using the Redis server's clock, so N tasks at R/s take at least
// (N-1)/R seconds however many workers run them. If Redis cannot be reached the worker
// falls back to its local bucket for that task rather than stall or drop work.
package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Rate is a rate limit in tasks per second; 0 means no limit.
type Rate float64

// ParseRate parses Celery's rate syntax (celery.utils.time.rate): "N" or "N/s" per second,
// "N/m" per minute, "N/h" per hour; N may be fractional. "" and "0" mean no limit.
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	ops, unit, _ := strings.Cut(s, "/")
	n, err := strconv.ParseFloat(strings.TrimSpace(ops), 64)
	if err != nil || n < 0 || math.IsNaN(n) || math.IsInf(n, 0) {
		return 0, fmt.Errorf("rate %q: %q is not a non-negative number (want N, N/s, N/m or N/h)", s, ops)
	}
	switch strings.TrimSpace(unit) {
	case "", "s":
		return Rate(n), nil
	case "m":
		return Rate(n / 60), nil
	case "h":
		return Rate(n / 3600), nil
	}
	return 0, fmt.Errorf("rate %q: unit %q is not s, m or h", s, unit)
}

// Interval is the time between two tasks at this rate; 0 for no limit.
func (r Rate) Interval() time.Duration {
	if r <= 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / float64(r))
}

// bucket is a token bucket of capacity 1 that hands out turns in arrival order: each
// reservation gets the next free instant, at least one interval after the previous one.
type bucket struct {
	mu       sync.Mutex
	interval time.Duration
	next     time.Time // the earliest instant the next turn may start
}

// reserve returns how long the caller must wait for its turn.
func (b *bucket) reserve(now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	at := b.next
	if at.Before(now) {
		at = now
	}
	b.next = at.Add(b.interval)
	return at.Sub(now)
}

// Store is where fleet-wide turns are reserved (RedisGCRA implements it).
type Store interface {
	// Reserve books the next turn of key at the given interval and returns how long the
	// caller must wait for it.
	Reserve(ctx context.Context, key string, interval time.Duration) (time.Duration, error)
}

// Limiter applies the rate limits of a set of tasks. It is safe for concurrent use;
// SetRate changes a task's limit at run time (Celery's rate_limit control command).
type Limiter struct {
	tab     atomic.Pointer[table] // replaced whole by SetRate, never modified
	setMu   sync.Mutex            // serializes SetRate
	store   Store                 // nil: fleet-wide mode unavailable
	fleet   atomic.Bool
	log     *slog.Logger
	now     func() time.Time
	warned  atomic.Bool
	waiting atomic.Int64
	// storeDownUntil (UnixNano) skips the store for a while after it failed, so that an
	// unreachable Redis does not slow every reservation down.
	storeDownUntil atomic.Int64
}

// table is the limiter's task → rate table with each limited task's local bucket.
type table struct {
	rates map[string]Rate
	local map[string]*bucket
}

// storeRetryAfter is how long the local bucket is used after the store failed.
const storeRetryAfter = 5 * time.Second

// New returns a limiter for the given task → rate table (Celery syntax, see ParseRate).
// store may be nil, in which case SetFleetWide(true) has no effect beyond a warning.
func New(rates map[string]string, store Store, log *slog.Logger) (*Limiter, error) {
	if log == nil {
		log = slog.Default()
	}
	l := &Limiter{store: store, log: log, now: time.Now}
	t := &table{rates: map[string]Rate{}, local: map[string]*bucket{}}
	for name, s := range rates {
		r, err := ParseRate(s)
		if err != nil {
			return nil, fmt.Errorf("ratelimit: task %s: %w", name, err)
		}
		if r > 0 {
			t.rates[name] = r
			t.local[name] = &bucket{interval: r.Interval()}
		}
	}
	l.tab.Store(t)
	return l, nil
}

// SetRate changes the task's rate limit from the next reservation on; 0 removes it.
// The task gets a fresh bucket, as Celery's reset_rate_limits gives it: its next task may
// start at once. Reservations already handed out keep their wait.
func (l *Limiter) SetRate(task string, r Rate) {
	l.setMu.Lock()
	defer l.setMu.Unlock()
	old := l.tab.Load()
	t := &table{rates: make(map[string]Rate, len(old.rates)+1), local: make(map[string]*bucket, len(old.local)+1)}
	for k, v := range old.rates {
		t.rates[k] = v
	}
	for k, v := range old.local {
		t.local[k] = v
	}
	if r > 0 {
		t.rates[task] = r
		t.local[task] = &bucket{interval: r.Interval()}
	} else {
		delete(t.rates, task)
		delete(t.local, task)
	}
	l.tab.Store(t)
	l.log.Info("ratelimit: rate limit changed", "task", task, "per_second", float64(r))
}

// Rate returns the task's rate limit (0: none).
func (l *Limiter) Rate(task string) Rate {
	if l == nil {
		return 0
	}
	return l.tab.Load().rates[task]
}

// SetFleetWide switches between per-worker buckets (false, Celery's behaviour) and one
// limit shared by the whole fleet through the store (true). It applies to the next
// reservation; the feature flag RATE_LIMIT_STRICT drives it.
func (l *Limiter) SetFleetWide(on bool) {
	if on && l.store == nil {
		l.log.Warn("ratelimit: fleet-wide rate limits requested but no Redis store is configured; limits stay per worker")
	}
	if l.fleet.Swap(on) != on {
		l.log.Info("ratelimit: mode changed", "fleet_wide", on)
	}
}

// FleetWide reports whether fleet-wide limits are on.
func (l *Limiter) FleetWide() bool { return l.fleet.Load() && l.store != nil }

// Limited reports whether the task has a rate limit.
func (l *Limiter) Limited(task string) bool {
	if l == nil {
		return false
	}
	_, ok := l.tab.Load().rates[task]
	return ok
}

// Waiting is the number of callers waiting for a turn now.
func (l *Limiter) Waiting() int64 {
	if l == nil {
		return 0
	}
	return l.waiting.Load()
}

// Wait blocks until the task may start, or ctx ends (then it returns ctx's cause). A task
// without a limit returns at once.
func (l *Limiter) Wait(ctx context.Context, task string) error {
	d, err := l.Reserve(ctx, task)
	if err != nil || d <= 0 {
		return err
	}
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Reserve books the task's next turn and returns how long to wait for it (0: go now).
func (l *Limiter) Reserve(ctx context.Context, task string) (time.Duration, error) {
	if l == nil {
		return 0, nil
	}
	t := l.tab.Load()
	r, ok := t.rates[task]
	if !ok {
		return 0, nil
	}
	if l.fleet.Load() && l.store != nil && l.now().UnixNano() >= l.storeDownUntil.Load() {
		d, err := l.store.Reserve(ctx, task, r.Interval())
		if err == nil {
			if l.warned.Swap(false) {
				l.log.Info("ratelimit: fleet-wide store recovered")
			}
			return d, nil
		}
		if ctx.Err() != nil {
			return 0, context.Cause(ctx)
		}
		l.storeDownUntil.Store(l.now().Add(storeRetryAfter).UnixNano())
		if !l.warned.Swap(true) {
			l.log.Warn("ratelimit: fleet-wide store failed; using this worker's bucket until it recovers",
				"task", task, "error", err)
		}
	}
	return t.local[task].reserve(l.now()), nil
}
