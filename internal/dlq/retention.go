package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
)

// Retention bounds one DLQ. The zero Retention keeps everything (the default).
type Retention struct {
	MaxLength int64         // keep at most this many messages, the newest (0: no bound)
	MaxAge    time.Duration // evict messages dead-lettered longer ago (0: no bound)
}

// Enabled reports whether r bounds anything.
func (r Retention) Enabled() bool { return r.MaxLength > 0 || r.MaxAge > 0 }

func (r Retention) String() string {
	if !r.Enabled() {
		return "keep everything"
	}
	var parts []string
	if r.MaxLength > 0 {
		parts = append(parts, "max length "+strconv.FormatInt(r.MaxLength, 10))
	}
	if r.MaxAge > 0 {
		parts = append(parts, "max age "+r.MaxAge.String())
	}
	return strings.Join(parts, ", ")
}

// RetentionConfig is the retention of every DLQ: a default and per-queue overrides, keyed
// by work queue or DLQ name.
type RetentionConfig struct {
	Default Retention
	Queues  map[string]Retention
}

// For returns the retention of dlq.
func (c RetentionConfig) For(dlq string) Retention {
	if r, ok := c.Queues[dlq]; ok {
		return r
	}
	if r, ok := c.Queues[Label(dlq)]; ok {
		return r
	}
	return c.Default
}

// ParseRetention parses QUEUE=SPEC or SPEC, where SPEC is LENGTH, LENGTH/AGE or /AGE
// ("1000", "1000/72h", "/168h"); "0" or "" means no bound. queue is "" for the bare form.
func ParseRetention(s string) (queue string, r Retention, err error) {
	spec := s
	if q, rest, ok := strings.Cut(s, "="); ok {
		if q == "" {
			return "", r, fmt.Errorf("retention %q: empty queue name", s)
		}
		queue, spec = q, rest
	}
	length, age, _ := strings.Cut(spec, "/")
	if length = strings.TrimSpace(length); length != "" {
		if r.MaxLength, err = strconv.ParseInt(length, 10, 64); err != nil || r.MaxLength < 0 {
			return "", Retention{}, fmt.Errorf("retention %q: max length %q is not a count", s, length)
		}
	}
	if age = strings.TrimSpace(age); age != "" {
		if r.MaxAge, err = time.ParseDuration(age); err != nil || r.MaxAge < 0 {
			return "", Retention{}, fmt.Errorf("retention %q: max age %q is not a duration (e.g. 72h)", s, age)
		}
	}
	return queue, r, nil
}

// TrimOptions configure Trim.
type TrimOptions struct {
	DryRun  bool
	Now     time.Time // default time.Now()
	Logger  *slog.Logger
	Metrics *Collector // counts evictions (fleet_dlq_evicted_total)
}

// Trim applies r to dlq: it evicts the oldest messages (in consume order) beyond
// r.MaxLength and every message dead-lettered more than r.MaxAge ago (messages whose
// time cannot be told are only evicted for length). Eviction is never silent: each evicted
// message is logged with its id and counted.
func Trim(ctx context.Context, b broker.Browser, dlq string, r Retention, o TrimOptions) (*Report, error) {
	rep := &Report{Queue: dlq}
	if !r.Enabled() {
		return rep, nil
	}
	log := logger(o.Logger)
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	var excess int64
	if r.MaxLength > 0 {
		n, err := b.Depth(ctx, dlq)
		if errors.Is(err, broker.ErrQueueNotFound) {
			return rep, nil // never declared: empty
		}
		if err != nil {
			return rep, fmt.Errorf("dlq: retention of %s: %w", dlq, err)
		}
		excess = n - r.MaxLength
	}
	if excess <= 0 && r.MaxAge <= 0 {
		return rep, nil
	}
	var decided int64
	rep, err := walkSelected(ctx, b, dlq, Filter{}, o.DryRun, func(e *Entry) (broker.Decision, error) {
		old := r.MaxAge > 0 && !e.Time.IsZero() && now.Sub(e.Time) > r.MaxAge
		if decided < excess || old {
			decided++
			return broker.Decision{Verdict: broker.Remove}, nil
		}
		if decided >= excess && r.MaxAge <= 0 {
			return broker.Decision{}, broker.ErrStopWalk // nothing further can be evicted
		}
		return broker.Decision{}, nil
	}, func(e *Entry) {
		if o.DryRun {
			return
		}
		log.Warn("dlq: evicted by retention", "dlq", dlq, "id", e.ID, "task_id", e.TaskID, "task", e.Task,
			"reason", e.Reason, "age", e.Age(now).Round(time.Second).String(), "retention", r.String())
		if o.Metrics != nil {
			o.Metrics.Evicted(dlq, 1)
		}
	})
	if o.DryRun && rep != nil {
		// walkSelected reports every message in a dry run: keep those that would go.
		var would []Entry
		var d int64
		for _, e := range rep.Applied {
			if d < excess || (r.MaxAge > 0 && !e.Time.IsZero() && now.Sub(e.Time) > r.MaxAge) {
				d++
				would = append(would, e)
			}
		}
		rep.Applied, rep.Count, rep.Matched = would, len(would), len(would)
	}
	if err != nil {
		return rep, fmt.Errorf("dlq: retention of %s: %w", dlq, err)
	}
	return rep, nil
}

// Keeper applies a RetentionConfig to the DLQs a Collector watches, periodically.
type Keeper struct {
	Browser  broker.Browser
	Config   RetentionConfig
	Queues   func(ctx context.Context) ([]string, error) // the DLQs, e.g. Collector.Queues
	Interval time.Duration                               // default 1 min
	Metrics  *Collector
	Logger   *slog.Logger
}

// Once applies the retention to every DLQ now and returns how many messages it evicted.
func (k *Keeper) Once(ctx context.Context) (int, error) {
	queues, err := k.Queues(ctx)
	if err != nil {
		return 0, err
	}
	total := 0
	var errs []error
	for _, q := range queues {
		r := k.Config.For(q)
		if !r.Enabled() {
			continue
		}
		rep, err := Trim(ctx, k.Browser, q, r, TrimOptions{Logger: k.Logger, Metrics: k.Metrics})
		if rep != nil {
			total += rep.Count
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return total, fmt.Errorf("dlq: retention: %w (and %d more)", errs[0], len(errs)-1)
	}
	return total, nil
}

// Run applies the retention every Interval until ctx ends.
func (k *Keeper) Run(ctx context.Context) error {
	every := k.Interval
	if every <= 0 {
		every = time.Minute
	}
	log := logger(k.Logger)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if n, err := k.Once(ctx); err != nil && ctx.Err() == nil {
			log.Warn("dlq: retention run failed", "err", err, "evicted", n)
		} else if n > 0 {
			log.Info("dlq: retention run", "evicted", n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
