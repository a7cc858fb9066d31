package redisclean

import (
	"context"
	"testing"

	goredis "github.com/redis/go-redis/v9"
)

// A killed worker's binding, seen record and index entry go; another node's stay.
func TestForgetWorker(t *testing.T) {
	const url = "redis://127.0.0.1:6379/3"
	opts, _ := goredis.ParseURL(url)
	c := goredis.NewClient(opts)
	ctx := context.Background()
	node, other := ExpandHost("rc-gone@%h"), ExpandHost("rc-other@%h")
	t.Cleanup(func() {
		c.SRem(ctx, pidboxBinding, "\x06\x16\x06\x16"+other+".celery.pidbox")
		c.ZRem(ctx, seenIndexKey, other)
		c.Del(ctx, seenKeyPrefix+other)
		_ = c.Close()
	})
	for _, n := range []string{node, other} {
		if err := c.SAdd(ctx, pidboxBinding, "\x06\x16\x06\x16"+n+".celery.pidbox").Err(); err != nil {
			t.Fatal(err)
		}
		c.ZAdd(ctx, seenIndexKey, goredis.Z{Score: 1, Member: n})
		c.Set(ctx, seenKeyPrefix+n, "{}", 0)
	}
	ForgetWorker([]string{"-b", "amqp://guest:guest@127.0.0.1:5672//", "--result-backend", url, "-Q", "q", "-n", "rc-gone@%h"})
	for _, tc := range []struct {
		node string
		want bool
	}{{node, false}, {other, true}} {
		bound := c.SIsMember(ctx, pidboxBinding, "\x06\x16\x06\x16"+tc.node+".celery.pidbox").Val()
		_, zerr := c.ZScore(ctx, seenIndexKey, tc.node).Result()
		seen := c.Exists(ctx, seenKeyPrefix+tc.node).Val() == 1
		if bound != tc.want || (zerr == nil) != tc.want || seen != tc.want {
			t.Errorf("%s: binding %v, index entry %v, record %v; want all %v", tc.node, bound, zerr == nil, seen, tc.want)
		}
	}
}
