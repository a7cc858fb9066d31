package dlq

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Defaults of RedisRedeliveries.
const (
	// DefaultRedeliveryPrefix starts the key of each count: fleet:redelivered:<task id>.
	DefaultRedeliveryPrefix = "fleet:redelivered:"
	// DefaultRedeliveryTTL is how long a count is kept after its last change: a message
	// that sits in a queue longer than this between two redeliveries starts again from 0.
	DefaultRedeliveryTTL = 7 * 24 * time.Hour
)

// RedisRedeliveries counts redeliveries of task messages fleet-wide, for reason
// worker_lost (worker.RedeliveryCounter): one integer key per task id, <prefix><task id>,
// incremented on each redelivery a worker receives, decremented when a worker hands a
// message back on purpose (so that the next redelivery is not counted), deleted once the
// task's outcome is recorded, and expiring TTL after its last change in any case. Any
// Redis the workers share will do (the broker's, the result backend's).
type RedisRedeliveries struct {
	c      goredis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewRedisRedeliveries returns a counter on c; an empty prefix and a zero ttl take the
// defaults.
func NewRedisRedeliveries(c goredis.UniversalClient, prefix string, ttl time.Duration) *RedisRedeliveries {
	if prefix == "" {
		prefix = DefaultRedeliveryPrefix
	}
	if ttl <= 0 {
		ttl = DefaultRedeliveryTTL
	}
	return &RedisRedeliveries{c: c, prefix: prefix, ttl: ttl}
}

// Key is the Redis key holding the count of taskID.
func (r *RedisRedeliveries) Key(taskID string) string { return r.prefix + taskID }

// Redelivered adds one redelivery of taskID and returns the count so far.
func (r *RedisRedeliveries) Redelivered(ctx context.Context, taskID string) (int64, error) {
	return r.add(ctx, taskID, 1)
}

// HandedBack takes one redelivery off the count of taskID: the message is handed back on
// purpose, and its next redelivery will add it back.
func (r *RedisRedeliveries) HandedBack(ctx context.Context, taskID string) error {
	_, err := r.add(ctx, taskID, -1)
	return err
}

// Forget deletes the count of taskID.
func (r *RedisRedeliveries) Forget(ctx context.Context, taskID string) error {
	if err := r.c.Del(ctx, r.Key(taskID)).Err(); err != nil {
		return fmt.Errorf("dlq: forget redeliveries of %s: %w", taskID, err)
	}
	return nil
}

// add changes the count by delta and renews its TTL, in one MULTI/EXEC round trip.
func (r *RedisRedeliveries) add(ctx context.Context, taskID string, delta int64) (int64, error) {
	key := r.Key(taskID)
	var incr *goredis.IntCmd
	_, err := r.c.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		incr = p.IncrBy(ctx, key, delta)
		p.PExpire(ctx, key, r.ttl)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("dlq: count redeliveries of %s: %w", taskID, err)
	}
	return incr.Val(), nil
}
