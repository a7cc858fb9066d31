package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// The fleet's "worker_seen" record: every worker refreshes a key of its own on every
// heartbeat tick, with a TTL, and an index sorted set scored by the time it was last seen,
// so that fleetctl and the autoscaler list the live workers (and their load) with two
// Redis calls and no events consumer:
//
//	fleet:worker:<hostname>  string, JSON WorkerStatus, expires after the TTL
//	fleet:workers            zset, hostname → last seen (epoch seconds)
const (
	SeenKeyPrefix = "fleet:worker:"
	SeenIndexKey  = "fleet:workers"
)

// DefaultSeenTTL is how long a worker's record outlives its last heartbeat.
const DefaultSeenTTL = 10 * time.Second

// FlagValue is one feature flag as a worker sees it.
type FlagValue struct {
	Value  string `json:"value"`
	Source string `json:"source"`
}

// WorkerStatus is the record a worker keeps fresh in Redis.
type WorkerStatus struct {
	Hostname    string               `json:"hostname"`
	PID         int                  `json:"pid"`
	Timestamp   float64              `json:"timestamp"` // epoch seconds of this heartbeat
	Freq        float64              `json:"freq"`      // heartbeat interval, seconds
	Started     float64              `json:"started"`   // epoch seconds the worker started
	Active      int64                `json:"active"`
	Processed   int64                `json:"processed"`
	Concurrency int                  `json:"concurrency"`
	Queues      []string             `json:"queues"`
	Version     string               `json:"sw_ver"`
	Draining    bool                 `json:"draining"`
	Flags       map[string]FlagValue `json:"flags,omitempty"`
}

// Seen writes a worker's record.
type Seen struct {
	rdb    goredis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewSeen writes records through rdb under the optional key prefix, with the given TTL
// (0: DefaultSeenTTL).
func NewSeen(rdb goredis.UniversalClient, prefix string, ttl time.Duration) *Seen {
	if ttl <= 0 {
		ttl = DefaultSeenTTL
	}
	return &Seen{rdb: rdb, prefix: prefix, ttl: ttl}
}

// Beat stores st (SET with the TTL, ZADD to the index) and prunes index entries older
// than the TTL, in one transaction.
func (s *Seen) Beat(ctx context.Context, st WorkerStatus) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("seen: encode: %w", err)
	}
	now := st.Timestamp
	if now == 0 {
		now = epoch(time.Now())
	}
	_, err = s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Set(ctx, s.prefix+SeenKeyPrefix+st.Hostname, data, s.ttl)
		p.ZAdd(ctx, s.prefix+SeenIndexKey, goredis.Z{Score: now, Member: st.Hostname})
		p.ZRemRangeByScore(ctx, s.prefix+SeenIndexKey, "-inf", strconv.FormatFloat(now-s.ttl.Seconds(), 'f', 6, 64))
		return nil
	})
	if err != nil {
		return fmt.Errorf("seen: write %s: %w", st.Hostname, err)
	}
	return nil
}

// Gone removes a worker's record at a clean shutdown.
func (s *Seen) Gone(ctx context.Context, hostname string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Del(ctx, s.prefix+SeenKeyPrefix+hostname)
		p.ZRem(ctx, s.prefix+SeenIndexKey, hostname)
		return nil
	})
	if err != nil {
		return fmt.Errorf("seen: remove %s: %w", hostname, err)
	}
	return nil
}

// ListWorkers returns the records of the workers seen within their TTL, sorted by
// hostname.
func ListWorkers(ctx context.Context, rdb goredis.UniversalClient, prefix string) ([]WorkerStatus, error) {
	hosts, err := rdb.ZRange(ctx, prefix+SeenIndexKey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("seen: list: %w", err)
	}
	if len(hosts) == 0 {
		return nil, nil
	}
	keys := make([]string, len(hosts))
	for i, h := range hosts {
		keys[i] = prefix + SeenKeyPrefix + h
	}
	vals, err := rdb.MGet(ctx, keys...).Result()
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("seen: read: %w", err)
	}
	out := make([]WorkerStatus, 0, len(vals))
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // expired since the index was read
		}
		var st WorkerStatus
		if err := json.Unmarshal([]byte(s), &st); err != nil {
			return nil, fmt.Errorf("seen: record of %s: %w", hosts[i], err)
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b WorkerStatus) int { return strings.Compare(a.Hostname, b.Hostname) })
	return out, nil
}
