// Package redisclean removes, for tests, what a worker process leaves in Redis after it
// is gone: the pidbox binding kombu keeps for its node (neither a killed worker nor a
// Python Celery worker shutting down removes it) and, for a fleet worker, its
// worker_seen record and index entry. Tests run real workers against shared Redis
// databases, and each cleans up after its own.
package redisclean

import (
	"context"
	"os"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Keys a worker leaves behind: kombu's binding set of the celery.pidbox exchange (one
// member per node) and the fleet's worker_seen record and index (internal/events).
const (
	pidboxBinding = "_kombu.binding.celery.pidbox"
	seenKeyPrefix = "fleet:worker:"
	seenIndexKey  = "fleet:workers"
)

// ForgetNode removes what node (a worker's full hostname, "name@host") left in each of
// the Redis servers at redisURLs; URLs that are not redis:// are skipped.
func ForgetNode(node string, redisURLs ...string) {
	if node == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, u := range redisURLs {
		if !strings.HasPrefix(u, "redis://") {
			continue
		}
		opts, err := goredis.ParseURL(u)
		if err != nil {
			continue
		}
		c := goredis.NewClient(opts)
		c.ZRem(ctx, seenIndexKey, node)
		c.Del(ctx, seenKeyPrefix+node)
		for _, m := range c.SMembers(ctx, pidboxBinding).Val() {
			if strings.HasSuffix(m, "\x06\x16"+node+".celery.pidbox") {
				c.SRem(ctx, pidboxBinding, m)
			}
		}
		_ = c.Close()
	}
}

// ForgetWorker is ForgetNode for a worker started with the command-line arguments args
// (bin/worker's or celery worker's): the node from -n/--hostname, %h expanded as both
// expand it, and the Redis servers from -b/--broker and --result-backend.
func ForgetWorker(args []string) {
	node, urls := "", []string(nil)
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-n", "--hostname":
			node = args[i+1]
		case "-b", "--broker", "--result-backend":
			urls = append(urls, args[i+1])
		}
	}
	ForgetNode(ExpandHost(node), urls...)
}

// ExpandHost expands %h in a node name to this machine's host name.
func ExpandHost(node string) string {
	h, _ := os.Hostname()
	return strings.ReplaceAll(node, "%h", h)
}
