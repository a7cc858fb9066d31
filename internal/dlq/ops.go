package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Report is what an operation on a DLQ did.
type Report struct {
	Queue   string  // the DLQ
	Matched int     // messages the filter selected (as far as the walk got)
	Applied []Entry // messages moved or removed, in order (would be, in a dry run)
	// Count is how many messages were moved or removed (would be, in a dry run): len(Applied),
	// or the number a whole-queue purge deleted.
	Count   int
	Missing []string // IDs of the filter that matched no message
	Skipped []Skip   // selected messages left in place, with why
}

// Skip is a selected message an operation left in place.
type Skip struct {
	Entry Entry
	Why   string
}

// Scan visits every message of dlq in consume order, leaving them all in place.
func Scan(ctx context.Context, b broker.Browser, dlq string, fn func(*Entry) error) error {
	ids := identifier{}
	return b.Walk(ctx, dlq, func(s *broker.Stored) (broker.Decision, error) {
		e := describe(s, ids.next(s.Message))
		return broker.Decision{}, fn(&e)
	}, nil)
}

// List returns the entries of dlq that f selects, in consume order, skipping offset of
// them and returning at most limit (0: all); total is how many f selects.
func List(ctx context.Context, b broker.Browser, dlq string, f Filter, offset, limit int) (entries []Entry, total int, err error) {
	err = Scan(ctx, b, dlq, func(e *Entry) error {
		if !f.Match(e) {
			return nil
		}
		total++
		if total > offset && (limit <= 0 || len(entries) < limit) {
			entries = append(entries, *e)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("dlq: list %s: %w", dlq, err)
	}
	return entries, total, nil
}

// walkSelected walks dlq, deciding for each entry f selects with decide, and reports the
// applied ones. In a dry run nothing changes and every selected entry is reported.
func walkSelected(ctx context.Context, b broker.Browser, dlq string, f Filter, dryRun bool,
	decide func(*Entry) (broker.Decision, error), onApplied func(*Entry)) (*Report, error) {
	rep := &Report{Queue: dlq}
	ids := identifier{}
	seen := map[string]bool{}
	entries := map[*broker.Stored]*Entry{}
	visit := func(s *broker.Stored) (broker.Decision, error) {
		e := describe(s, ids.next(s.Message))
		if !f.Match(&e) {
			return broker.Decision{}, nil
		}
		rep.Matched++
		seen[e.ID], seen[e.TaskID] = true, true
		if dryRun {
			rep.Applied = append(rep.Applied, e)
			rep.Count++
			if onApplied != nil {
				onApplied(&e)
			}
			return broker.Decision{}, nil
		}
		d, err := decide(&e)
		if d.Verdict != broker.Keep {
			entries[s] = &e
		}
		return d, err
	}
	applied := func(s *broker.Stored, _ broker.Decision) {
		e := entries[s]
		delete(entries, s)
		if e == nil {
			return
		}
		rep.Applied = append(rep.Applied, *e)
		rep.Count++
		if onApplied != nil {
			onApplied(e)
		}
	}
	err := b.Walk(ctx, dlq, visit, applied)
	rep.Missing = f.missing(seen)
	return rep, err
}

// ReplayOptions configure Replay.
type ReplayOptions struct {
	Filter Filter
	// To is the queue to republish to; "" means each message's origin queue.
	To string
	// NewID gives each replayed message a new task id (default: the same one).
	NewID bool
	// KeepRetries keeps the retries count (default: reset to 0).
	KeepRetries bool
	DryRun      bool
	// Rate bounds replays per second; 0 means no bound.
	Rate float64
	// Progress is called after each message replayed (would be, in a dry run).
	Progress func(done int)
	Logger   *slog.Logger
	// Metrics, if set, counts the replays (fleet_dlq_replayed_total).
	Metrics *Collector
}

// Replay republishes the selected messages of dlq to their origin queue (or o.To), each
// moved atomically: the new message is confirmed by the broker in the same step as the
// DLQ copy is removed, so replay can be interrupted at any point and run again without
// losing or duplicating anything. Each replayed message gets a new delivery, the same task
// id unless o.NewID, retries reset to 0 unless o.KeepRetries, the x-fleet-dlq-* and
// x-death headers removed (the attempts count kept), and HeaderReplayed incremented.
func Replay(ctx context.Context, b broker.Browser, dlq string, o ReplayOptions) (*Report, error) {
	log := logger(o.Logger)
	if err := o.Filter.Validate(); err != nil {
		return nil, fmt.Errorf("dlq: replay %s: %w", dlq, err)
	}
	if o.Rate < 0 {
		return nil, fmt.Errorf("dlq: replay %s: negative rate %v", dlq, o.Rate)
	}
	pace := newPacer(o.Rate)
	var skipped []Skip
	done := 0
	rep, err := walkSelected(ctx, b, dlq, o.Filter, o.DryRun, func(e *Entry) (broker.Decision, error) {
		to := o.To
		if to == "" {
			to = e.Origin
		}
		if to == "" || IsDLQ(to) {
			skipped = append(skipped, Skip{*e, fmt.Sprintf("no work queue to go back to (origin %q): use --to", to)})
			return broker.Decision{}, nil
		}
		m, err := ReplayMessage(e.Stored.Message, o.NewID, o.KeepRetries)
		if err != nil {
			skipped = append(skipped, Skip{*e, err.Error()})
			return broker.Decision{}, nil
		}
		if err := pace.wait(ctx); err != nil {
			return broker.Decision{}, err
		}
		return broker.Decision{Verdict: broker.Move, To: broker.Publishing{RoutingKey: to, Message: m}}, nil
	}, func(e *Entry) {
		done++
		if !o.DryRun {
			log.Info("dlq: replayed", "dlq", dlq, "id", e.ID, "task_id", e.TaskID, "task", e.Task, "reason", e.Reason, "to", firstNonEmpty(o.To, e.Origin))
			if o.Metrics != nil {
				o.Metrics.Replayed(Label(dlq), 1)
			}
		}
		if o.Progress != nil {
			o.Progress(done)
		}
	})
	if rep != nil {
		rep.Skipped = skipped
	}
	if err != nil {
		return rep, fmt.Errorf("dlq: replay %s: %w", dlq, err)
	}
	return rep, nil
}

// PurgeOptions configure Purge.
type PurgeOptions struct {
	Filter   Filter
	DryRun   bool
	Progress func(done int)
	Logger   *slog.Logger
}

// Purge deletes the selected messages of dlq (every message when the filter is empty: one
// atomic queue purge). Each deletion is logged with its id.
func Purge(ctx context.Context, b broker.Browser, dlq string, o PurgeOptions) (*Report, error) {
	log := logger(o.Logger)
	if err := o.Filter.Validate(); err != nil {
		return nil, fmt.Errorf("dlq: purge %s: %w", dlq, err)
	}
	if o.Filter.Empty() && !o.DryRun {
		n, err := b.Purge(ctx, dlq)
		if err != nil {
			return nil, fmt.Errorf("dlq: purge %s: %w", dlq, err)
		}
		log.Info("dlq: purged", "dlq", dlq, "count", n)
		return &Report{Queue: dlq, Matched: int(n), Count: int(n)}, nil
	}
	done := 0
	rep, err := walkSelected(ctx, b, dlq, o.Filter, o.DryRun, func(*Entry) (broker.Decision, error) {
		return broker.Decision{Verdict: broker.Remove}, nil
	}, func(e *Entry) {
		done++
		if !o.DryRun {
			log.Info("dlq: purged", "dlq", dlq, "id", e.ID, "task_id", e.TaskID, "task", e.Task, "reason", e.Reason)
		}
		if o.Progress != nil {
			o.Progress(done)
		}
	})
	if err != nil {
		return rep, fmt.Errorf("dlq: purge %s: %w", dlq, err)
	}
	return rep, nil
}

// ReplayMessage builds the message a replay publishes for dead letter m: a new delivery of
// the same task (or a new id), retries reset unless keepRetries, the dead-letter headers
// removed except the attempts count (taken from x-death when RabbitMQ dead-lettered it),
// and HeaderReplayed incremented.
func ReplayMessage(m *protocol.Message, newID, keepRetries bool) (*protocol.Message, error) {
	if protocol.IsInvalidEnvelope(m) {
		return nil, errors.New("not a message (an unreadable broker element): purge it, or fix and import it")
	}
	r := m.Clone()
	h := r.Headers
	attempts, hasAttempts := headerInt(h[HeaderAttempts])
	if d, ok := lastDeath(h); ok && !hasAttempts {
		attempts, hasAttempts = int64(d.count), true
	}
	for k := range h {
		if (strings.HasPrefix(k, "x-fleet-dlq-") && k != HeaderAttempts) || k == "x-death" ||
			strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-") || k == "redelivered" {
			delete(h, k)
		}
	}
	if hasAttempts {
		h[HeaderAttempts] = int(attempts)
	}
	replayed, _ := headerInt(h[HeaderReplayed])
	h[HeaderReplayed] = int(replayed) + 1
	r.Properties.Expiration = ""

	_, v2 := h["task"]
	bodyFields := map[string]any{}
	if !keepRetries {
		if v2 {
			h["retries"] = 0
		} else {
			bodyFields["retries"] = 0
		}
	}
	if newID {
		oldID, _ := h["id"].(string)
		id := protocol.NewUUID()
		if v2 {
			h["id"] = id
			if root, _ := h["root_id"].(string); root != "" && root == oldID {
				h["root_id"] = id
			}
		} else {
			bodyFields["id"] = id
		}
		r.Properties.CorrelationID = id
	}
	if len(bodyFields) > 0 {
		body, err := setBodyFields(r, bodyFields)
		if err != nil {
			return nil, fmt.Errorf("protocol v1 body: %w", err)
		}
		r.Body = body
	}
	return r, nil
}

// setBodyFields sets top-level fields of a protocol v1 (JSON object) body. Compressed or
// non-JSON bodies are left alone.
func setBodyFields(m *protocol.Message, fields map[string]any) ([]byte, error) {
	if c, ok := m.Headers["compression"]; ok && c != nil {
		return m.Body, nil
	}
	v, err := protocol.ParseJSON(m.Body)
	if err != nil {
		return m.Body, nil // not JSON: nothing to set; the worker reports it if it matters
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return m.Body, nil
	}
	for k, val := range fields {
		obj[k] = val
	}
	return protocol.MarshalJSON(obj)
}

// pacer spaces replays to a rate.
type pacer struct {
	every time.Duration
	next  time.Time
}

func newPacer(rate float64) *pacer {
	if rate <= 0 {
		return &pacer{}
	}
	return &pacer{every: time.Duration(float64(time.Second) / rate)}
}

func (p *pacer) wait(ctx context.Context) error {
	if p.every <= 0 {
		return ctx.Err()
	}
	now := time.Now()
	if p.next.IsZero() || p.next.Before(now) {
		p.next = now
	}
	d := p.next.Sub(now)
	p.next = p.next.Add(p.every)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Label is the value of the `queue` label of the fleet_dlq_* metrics for a DLQ (or a work
// queue): the work queue's name.
func Label(queue string) string {
	if IsDLQ(queue) {
		return strings.TrimSuffix(queue, Suffix)
	}
	return queue
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
