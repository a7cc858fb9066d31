package dlq

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/broker/redis"
)

// syncBuffer is a log sink safe for the collector's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCollectorMissingDLQIsQuiet: a dead-letter queue that was never declared (RabbitMQ
// answers the passive declare with 404 NOT_FOUND; on Redis the list does not exist) is
// reported with 0 messages, no scrape error and no warning, only a debug line; a broker
// that cannot be read is still a warning and a scrape error.
func TestCollectorMissingDLQIsQuiet(t *testing.T) {
	open := map[string]func(ctx context.Context, log *slog.Logger) (Source, func() error, error){
		"amqp": func(ctx context.Context, log *slog.Logger) (Source, func() error, error) {
			b, err := amqp.New(ctx, amqp.Options{URL: testAMQP, Logger: log})
			if err != nil {
				return nil, nil, err
			}
			return b, b.Close, nil
		},
		"redis": func(ctx context.Context, log *slog.Logger) (Source, func() error, error) {
			b, err := redis.New(ctx, redis.Options{URL: testRedis, KeyPrefix: "fleetdlqtest:" + randHex(5) + ":", Logger: log})
			if err != nil {
				return nil, nil, err
			}
			return b, b.Close, nil
		},
	}
	for name, openBroker := range open {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var logs syncBuffer // the collector's and the broker's
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			src, closeBroker, err := openBroker(ctx, log)
			if err != nil {
				t.Fatal(err)
			}
			never := "never_" + randHex(4)
			c := NewCollector(src, CollectorOptions{Queues: []string{never}, Logger: log, MinInterval: time.Nanosecond})
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(c)
			for range 3 {
				if got := gauge(t, reg, MetricMessages, never); got != 0 {
					t.Errorf("%s of a DLQ never declared = %v", MetricMessages, got)
				}
			}
			if got := metricValue(t, c, MetricScrapeErrors); got != 0 {
				t.Errorf("%s = %v", MetricScrapeErrors, got)
			}
			if out := logs.String(); strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
				t.Errorf("a missing DLQ was logged as a problem:\n%s", out)
			}
			if name == "amqp" && !strings.Contains(logs.String(), "dead-letter queue not declared yet") {
				t.Errorf("no debug line for the missing DLQ:\n%s", logs.String())
			}

			// A real error: the broker is gone.
			if err := closeBroker(); err != nil {
				t.Fatal(err)
			}
			if _, err := reg.Gather(); err != nil {
				t.Fatal(err)
			}
			if got := metricValue(t, c, MetricScrapeErrors); got < 1 {
				t.Errorf("%s = %v after the broker closed", MetricScrapeErrors, got)
			}
			if out := logs.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "reading the broker failed") {
				t.Errorf("no warning for a broker that cannot be read:\n%s", out)
			}
		})
	}
}

// TestRedisRedeliveries: the fleet-wide redelivery count behind worker_lost: incremented
// by Redelivered, taken back by HandedBack, renewed TTL on each change, deleted by Forget.
func TestRedisRedeliveries(t *testing.T) {
	ctx := context.Background()
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 8})
	defer c.Close()
	r := NewRedisRedeliveries(c, "fleetdlqtest:"+randHex(5)+":redelivered:", time.Hour)
	id := "task-" + randHex(4)
	t.Cleanup(func() { c.Del(ctx, r.Key(id)) })
	steps := []struct {
		name string
		do   func() (int64, error)
		want int64
	}{
		{"first redelivery", func() (int64, error) { return r.Redelivered(ctx, id) }, 1},
		{"second redelivery", func() (int64, error) { return r.Redelivered(ctx, id) }, 2},
		{"handed back on purpose", func() (int64, error) { return 0, r.HandedBack(ctx, id) }, 1},
		{"its redelivery", func() (int64, error) { return r.Redelivered(ctx, id) }, 2},
	}
	for _, s := range steps {
		if _, err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		n, err := c.Get(ctx, r.Key(id)).Int64()
		if err != nil || n != s.want {
			t.Fatalf("%s: count %d %v, want %d", s.name, n, err, s.want)
		}
		if ttl := c.PTTL(ctx, r.Key(id)).Val(); ttl <= 59*time.Minute || ttl > time.Hour {
			t.Fatalf("%s: TTL %v", s.name, ttl)
		}
	}
	if err := r.Forget(ctx, id); err != nil {
		t.Fatal(err)
	}
	if n := c.Exists(ctx, r.Key(id)).Val(); n != 0 {
		t.Fatalf("count left after Forget")
	}
	if d := NewRedisRedeliveries(c, "", 0); d.Key("x") != "fleet:redelivered:x" || d.ttl != DefaultRedeliveryTTL {
		t.Errorf("defaults: key %q ttl %v", d.Key("x"), d.ttl)
	}
}
