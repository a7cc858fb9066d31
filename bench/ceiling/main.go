// Command ceiling is the broker's ceiling for `make bench-compare`: a minimal Go consumer
// that does only the broker work a Celery worker with acks_late must do for a no-op task,
// with the same ack discipline, and nothing else (no task decoding, no task code).
//
//   - AMQP: basic.qos(prefetch, global) as Celery sends it, basic.consume with manual
//     acks, one basic.ack per message (never `multiple`).
//   - Redis: kombu's transport bookkeeping. BRPOP over the queue's priority sub-lists, the
//     lease (MULTI ZADD unacked_index, HSET unacked, EXEC) recorded before the message
//     counts as delivered, and one MULTI ZREM/HDEL EXEC per ack. It is pipelined: the
//     lease of message k travels in the same write as the BRPOP of message k+1, and
//     acks go out in batches on a second connection. At most prefetch messages are
//     popped and not yet acked.
//
// With --result-backend (a redis:// URL) each message also gets its result stored before
// it is acked, as the Redis result backend does it: GET (Celery 5.2's SUCCESS dedupe),
// then MULTI SETEX+PUBLISH EXEC, pipelined over a batch. The result value is null (the
// body is never decoded).
//
// It runs until SIGTERM/SIGINT, then stops fetching, settles what it holds and prints one
// JSON line on stdout: {"acked":N,"first_unix_ns":…,"last_unix_ns":…}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	broker   string
	queue    string
	prefetch int
	results  string
	batch    int
}

// stats are the consumer's own counters, printed at exit.
type stats struct {
	acked atomic.Int64
	first atomic.Int64 // unix ns of the first ack
	last  atomic.Int64 // unix ns of the last ack
}

func (s *stats) add(n int) {
	now := time.Now().UnixNano()
	s.first.CompareAndSwap(0, now)
	s.last.Store(now)
	s.acked.Add(int64(n))
}

func main() {
	var o options
	flag.StringVar(&o.broker, "broker", "amqp://guest:guest@127.0.0.1:5672//", "amqp:// or redis:// broker URL")
	flag.StringVar(&o.queue, "queue", "celery", "queue to consume")
	flag.IntVar(&o.prefetch, "prefetch", 1000, "unacked messages held at most (AMQP basic.qos; Redis: popped, not yet acked)")
	flag.StringVar(&o.results, "result-backend", "", "redis:// result backend URL; empty: no results")
	flag.IntVar(&o.batch, "batch", 512, "most acks (and result writes) sent in one pipeline")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if o.prefetch < 1 || o.batch < 1 || o.queue == "" {
		fmt.Fprintln(os.Stderr, "ceiling: --prefetch and --batch must be >= 1 and --queue non-empty")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var st stats
	var err error
	switch {
	case strings.HasPrefix(o.broker, "amqp://"), strings.HasPrefix(o.broker, "amqps://"):
		err = runAMQP(ctx, o, &st, log)
	case strings.HasPrefix(o.broker, "redis://"), strings.HasPrefix(o.broker, "rediss://"):
		err = runRedis(ctx, o, &st, log)
	default:
		err = fmt.Errorf("unsupported broker URL scheme in %q", o.broker)
	}
	out, _ := json.Marshal(map[string]int64{
		"acked": st.acked.Load(), "first_unix_ns": st.first.Load(), "last_unix_ns": st.last.Load()})
	fmt.Println(string(out))
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("ceiling failed", "err", err)
		os.Exit(1)
	}
}
