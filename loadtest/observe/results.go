// Package observe reads what the load test measures from the systems the fleet already
// writes to: task outcomes from the Redis result backend, queue and dead-letter depths from
// the broker, worker CPU and memory from /proc (local workers) or a /metrics endpoint, and
// autoscaler decisions from its decision log. Each observer is a small concrete type; the
// run package defines the interfaces it needs.
package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
)

// Outcome is a task's state as the result backend holds it.
type Outcome struct {
	Status   string    // protocol.State*; "" when there is no result yet
	DateDone time.Time // when it reached a ready state (zero otherwise)
	// Reason is exc_module.exc_type of a FAILURE or REVOKED result.
	Reason string
	// Worker is the result_extended worker field when the worker writes it.
	Worker string
}

// Ready reports whether the task has finished (SUCCESS, FAILURE or REVOKED).
func (o Outcome) Ready() bool { return protocol.IsReady(o.Status) }

// Results reads task outcomes from a Celery Redis result backend (the documents
// `celery-task-meta-<id>` the worker writes), in batches, and follows their PUBLISH
// notifications to count how often each task's state was written.
type Results struct {
	client *goredis.Client
	log    *slog.Logger
}

// OpenResults connects to the redis:// or rediss:// result backend URL.
func OpenResults(ctx context.Context, rawURL string, log *slog.Logger) (*Results, error) {
	if !strings.HasPrefix(rawURL, "redis://") && !strings.HasPrefix(rawURL, "rediss://") {
		return nil, fmt.Errorf("observe: the load test reads outcomes from a Redis result backend; %q is not redis:// or rediss://", redactURL(rawURL))
	}
	opts, err := goredis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("observe: result backend %s: %w", redactURL(rawURL), err)
	}
	c := goredis.NewClient(opts)
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("observe: result backend %s: %w", redactURL(rawURL), err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Results{client: c, log: log}, nil
}

// Close closes the connections.
func (r *Results) Close() error { return r.client.Close() }

// fetchChunk bounds one MGET.
const fetchChunk = 500

// Fetch returns the outcome of every id that has a result (ids without one are absent).
func (r *Results) Fetch(ctx context.Context, ids []string) (map[string]Outcome, error) {
	out := make(map[string]Outcome, len(ids))
	for lo := 0; lo < len(ids); lo += fetchChunk {
		chunk := ids[lo:min(lo+fetchChunk, len(ids))]
		keys := make([]string, len(chunk))
		for i, id := range chunk {
			keys[i] = result.Key(id)
		}
		vals, err := r.client.MGet(ctx, keys...).Result()
		if err != nil {
			return out, fmt.Errorf("observe: read results: %w", err)
		}
		for i, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue
			}
			o, err := ParseOutcome([]byte(s))
			if err != nil {
				r.log.Warn("observe: undecodable result document", "task_id", chunk[i], "err", err)
				continue
			}
			out[chunk[i]] = o
		}
	}
	return out, nil
}

// ParseOutcome decodes a result document as Celery's Redis backend stores it.
func ParseOutcome(doc []byte) (Outcome, error) {
	v, err := protocol.ParseJSON(doc)
	if err != nil {
		return Outcome{}, fmt.Errorf("decode result: %w", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return Outcome{}, fmt.Errorf("decode result: %T is not an object", v)
	}
	o := Outcome{}
	o.Status, _ = m["status"].(string)
	if o.Status == "" {
		return Outcome{}, errors.New("decode result: no status")
	}
	if s, ok := m["date_done"].(string); ok && s != "" {
		if t, err := ParseDateDone(s); err == nil {
			o.DateDone = t
		}
	}
	o.Worker, _ = m["worker"].(string)
	if o.Status == protocol.StateFailure || o.Status == protocol.StateRevoked {
		if exc, ok := m["result"].(map[string]any); ok {
			typ, _ := exc["exc_type"].(string)
			mod, _ := exc["exc_module"].(string)
			switch {
			case typ == "":
				o.Reason = "unknown"
			case mod == "" || mod == "builtins":
				o.Reason = typ
			default:
				o.Reason = mod + "." + typ
			}
		}
	}
	return o, nil
}

// ParseDateDone reads Celery's date_done: naive UTC ISO 8601 with or without
// microseconds (2026-11-26T14:34:00.221388), or with an offset.
func ParseDateDone(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02T15:04:05.999999", "2006-01-02T15:04:05.999999Z07:00"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("date_done %q is not ISO 8601", s)
}

// Notice is one PUBLISH of a task's result: a state written for it.
type Notice struct {
	TaskID string
	Status string
}

// Follow subscribes to every result channel (PSUBSCRIBE celery-task-meta-*) and calls fn
// for each state written, until ctx ends. Pub/sub is not durable: a notice lost during a
// reconnect is simply not counted (Fetch stays the source of outcomes). Follow returns
// once the subscription is live; the returned channel is closed when it has ended.
func (r *Results) Follow(ctx context.Context, fn func(Notice)) (<-chan struct{}, error) {
	ps := r.client.PSubscribe(ctx, result.KeyPrefix+"*")
	if _, err := ps.Receive(ctx); err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("observe: subscribe to results: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer ps.Close()
		ch := ps.Channel(goredis.WithChannelSize(10000))
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				id := strings.TrimPrefix(m.Channel, result.KeyPrefix)
				status := statusOf(m.Payload)
				if status != "" {
					fn(Notice{TaskID: id, Status: status})
				}
			}
		}
	}()
	return done, nil
}

// statusOf extracts "status" cheaply: Celery writes it first.
func statusOf(doc string) string {
	const key = `"status": "`
	i := strings.Index(doc, key)
	if i < 0 {
		return ""
	}
	rest := doc[i+len(key):]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return rest[:j]
}

func redactURL(raw string) string {
	if i := strings.Index(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			return raw[:j+3] + "xxxxx" + raw[i:]
		}
	}
	return raw
}
