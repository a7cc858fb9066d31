package control

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/worker"
)

// RevokedKey is the fleet-wide revoked set: a sorted set of task id → epoch seconds of the
// revocation.
const RevokedKey = "fleet:revoked"

// RedisRevoked is the fleet-wide revoked set. Lookups (one per message) stay in memory, in
// Celery's LimitedSet (worker.MemoryRevoked); every Add also goes to a sorted set in Redis,
// trimmed to the same size and age, which a starting worker loads (so a restarted worker
// still honours revocations) and every worker re-reads periodically (so one that missed the
// pidbox broadcast while disconnected catches up).
type RedisRevoked struct {
	mem    *worker.MemoryRevoked
	rdb    goredis.UniversalClient
	key    string
	max    int
	expiry time.Duration
	log    *slog.Logger

	lastSync time.Time
}

var _ worker.RevokedStore = (*RedisRevoked)(nil)

// NewRedisRevoked returns the store under prefix+RevokedKey with Celery's limits (max <= 0:
// 50000 entries; expiry <= 0: 3 h).
func NewRedisRevoked(rdb goredis.UniversalClient, prefix string, max int, expiry time.Duration, log *slog.Logger) *RedisRevoked {
	if max <= 0 {
		max = worker.DefaultRevokedMax
	}
	if expiry <= 0 {
		expiry = worker.DefaultRevokedExpiry
	}
	if log == nil {
		log = slog.Default()
	}
	return &RedisRevoked{mem: worker.NewMemoryRevoked(max, expiry), rdb: rdb, key: prefix + RevokedKey,
		max: max, expiry: expiry, log: log}
}

// Add records ids in memory at once, then in Redis.
func (r *RedisRevoked) Add(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := r.mem.Add(ctx, ids...); err != nil {
		return err
	}
	now := time.Now()
	zs := make([]goredis.Z, len(ids))
	for i, id := range ids {
		zs[i] = goredis.Z{Score: epochOf(now), Member: id}
	}
	_, err := r.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.ZAdd(ctx, r.key, zs...)
		p.ZRemRangeByScore(ctx, r.key, "-inf", strconv.FormatFloat(epochOf(now.Add(-r.expiry)), 'f', 6, 64))
		p.ZRemRangeByRank(ctx, r.key, 0, int64(-r.max-1))
		p.Expire(ctx, r.key, r.expiry)
		return nil
	})
	if err != nil {
		return fmt.Errorf("revoked: store %d ids in redis: %w", len(ids), err)
	}
	return nil
}

// Contains looks id up in memory.
func (r *RedisRevoked) Contains(ctx context.Context, id string) (bool, error) {
	return r.mem.Contains(ctx, id)
}

// List returns the revoked ids held in memory with when they were revoked.
func (r *RedisRevoked) List(ctx context.Context) (map[string]time.Time, error) {
	return r.mem.List(ctx)
}

// Sync loads the revocations recorded in Redis since the last Sync (all of them the first
// time) into memory, and returns how many it read.
func (r *RedisRevoked) Sync(ctx context.Context) (int, error) {
	now := time.Now()
	from := now.Add(-r.expiry)
	if !r.lastSync.IsZero() && r.lastSync.Add(-5*time.Second).After(from) {
		from = r.lastSync.Add(-5 * time.Second) // overlap: clocks of writers differ a little
	}
	zs, err := r.rdb.ZRangeByScoreWithScores(ctx, r.key, &goredis.ZRangeBy{
		Min: strconv.FormatFloat(epochOf(from), 'f', 6, 64), Max: "+inf"}).Result()
	if err != nil {
		return 0, fmt.Errorf("revoked: load from redis: %w", err)
	}
	ids := make([]string, 0, len(zs))
	for _, z := range zs {
		if id, ok := z.Member.(string); ok {
			if in, _ := r.mem.Contains(ctx, id); !in {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) > 0 {
		if err := r.mem.Add(ctx, ids...); err != nil {
			return 0, err
		}
	}
	r.lastSync = now
	return len(ids), nil
}

// Run syncs now and then every interval until ctx ends; failures are logged and retried at
// the next tick.
func (r *RedisRevoked) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		n, err := r.Sync(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				r.log.Warn("revoked set: reading the fleet-wide set failed", "err", err)
			}
			failing = true
		case err == nil:
			if failing {
				r.log.Info("revoked set: reading the fleet-wide set recovered")
			}
			failing = false
			if n > 0 {
				r.log.Info("revoked set: revocations loaded from the fleet-wide set", "count", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func epochOf(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }
