package ratelimit

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// DefaultKeyPrefix prefixes the Redis keys of fleet-wide rate limits: one string per task
// name holding its theoretical arrival time (GCRA's TAT) in microseconds.
const DefaultKeyPrefix = "fleet.ratelimit."

// gcraScript reserves the next turn: TAT = max(TAT, now); the caller waits TAT - now; the
// stored TAT moves on by one interval. The server's clock is the only clock, so workers
// with skewed clocks still share one schedule. The key expires once its TAT has passed.
var gcraScript = goredis.NewScript(`
local interval = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
return tat - now
`)

// RedisGCRA keeps fleet-wide turns in Redis.
type RedisGCRA struct {
	client goredis.UniversalClient
	prefix string
}

// NewRedisGCRA returns a store using client; prefix "" means DefaultKeyPrefix.
func NewRedisGCRA(client goredis.UniversalClient, prefix string) *RedisGCRA {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	return &RedisGCRA{client: client, prefix: prefix}
}

// Key is the Redis key of a task's schedule.
func (g *RedisGCRA) Key(task string) string { return g.prefix + task }

// Reserve books the task's next turn fleet-wide.
func (g *RedisGCRA) Reserve(ctx context.Context, task string, interval time.Duration) (time.Duration, error) {
	us := max(interval.Microseconds(), 1)
	wait, err := gcraScript.Run(ctx, g.client, []string{g.Key(task)}, us).Int64()
	if err != nil {
		return 0, fmt.Errorf("ratelimit: reserve %s in redis: %w", task, err)
	}
	return time.Duration(wait) * time.Microsecond, nil
}
