package dlq

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/protocol"
)

// The tests run against the real RabbitMQ and Redis (DB 8, a unique key prefix per test).
const (
	testAMQP  = "amqp://guest:guest@127.0.0.1:5672/"
	testRedis = "redis://127.0.0.1:6379/8"
)

// testBroker is what the tests need from a transport.
type testBroker interface {
	broker.Broker
	broker.Browser
}

type fixture struct {
	name string
	b    testBroker
	// rawDepth counts the messages of a queue without the fleet's code.
	rawDepth func(t *testing.T, q string) int
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fixtures opens both brokers for t; queues names with the returned prefix are deleted
// at cleanup.
func fixtures(t *testing.T) []fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ab, err := amqp.New(ctx, amqp.Options{URL: testAMQP, Logger: quiet()})
	if err != nil {
		t.Fatalf("RabbitMQ: %v", err)
	}
	t.Cleanup(func() { _ = ab.Close() })
	conn, err := amqp091.Dial(testAMQP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	var mu sync.Mutex
	var declared []string
	amqpDepth := func(t *testing.T, q string) int {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			return 0
		}
		return info.Messages
	}
	prefix := "fleetdlqtest:" + randHex(5) + ":"
	rb, err := redis.New(ctx, redis.Options{URL: testRedis, KeyPrefix: prefix, Logger: quiet()})
	if err != nil {
		t.Fatalf("Redis: %v", err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 8})
	t.Cleanup(func() {
		_ = rb.Close()
		ctx := context.Background()
		if keys, err := rdb.Keys(ctx, prefix+"*").Result(); err == nil && len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		_ = rdb.Close()
	})
	redisDepth := func(t *testing.T, q string) int {
		n := 0
		for _, k := range rb.QueueKeys(q) {
			l, err := rdb.LLen(context.Background(), k).Result()
			if err != nil {
				t.Fatal(err)
			}
			n += int(l)
		}
		return n
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, q := range declared {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
				ch.Close()
			}
		}
	})
	return []fixture{
		{name: "amqp", b: &trackingBroker{testBroker: ab, track: func(q string) {
			mu.Lock()
			declared = append(declared, q)
			mu.Unlock()
		}}, rawDepth: amqpDepth},
		{name: "redis", b: rb, rawDepth: redisDepth},
	}
}

// trackingBroker remembers the queues declared so that the test can delete them.
type trackingBroker struct {
	testBroker
	track func(string)
}

func (tb *trackingBroker) DeclareDLQ(ctx context.Context, q string) error {
	tb.track(q)
	return tb.testBroker.DeclareDLQ(ctx, q)
}

// deadLetter puts a dead letter of task name (reason, at time at) into queue's DLQ the
// way a worker does, and returns its task id.
func deadLetter(t *testing.T, b testBroker, queue, name, reason string, at time.Time) string {
	t.Helper()
	task := protocol.NewTask(name, []any{1, 2}, map[string]any{"k": "v"})
	m, err := protocol.EncodeTask(task)
	if err != nil {
		t.Fatal(err)
	}
	letter := Letter(&broker.Delivery{Queue: queue, Message: m}, reason, "boom: "+name, "w@h", at)
	if err := b.Publish(context.Background(), broker.Publishing{RoutingKey: QueueName(queue), Message: letter}); err != nil {
		t.Fatal(err)
	}
	return task.ID
}

// setup declares a work queue and its DLQ.
func setup(t *testing.T, f fixture, base string) (q, dlq string) {
	t.Helper()
	q = base + "_" + randHex(4)
	dlq = QueueName(q)
	for _, n := range []string{q, dlq} {
		if err := f.b.DeclareDLQ(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	return q, dlq
}

func TestListFilterPage(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			ctx := context.Background()
			q, dlq := setup(t, f, "list")
			now := time.Now()
			var ids []string
			for i := range 6 {
				reason := []string{ReasonUnknownTask, ReasonDecodeError, ReasonTaskFailed}[i%3]
				ids = append(ids, deadLetter(t, f.b, q, fmt.Sprintf("task.%d", i%2), reason, now.Add(-time.Duration(6-i)*time.Hour)))
			}
			all, total, err := List(ctx, f.b, dlq, Filter{}, 0, 0)
			if err != nil || total != 6 || len(all) != 6 {
				t.Fatalf("List = %d/%d, %v", len(all), total, err)
			}
			for i, e := range all {
				if e.TaskID != ids[i] || e.Origin != q || e.Queue != dlq || e.Source != SourceFleet || e.Position != i {
					t.Errorf("entry %d: %+v", i, e)
				}
			}
			page, total, _ := List(ctx, f.b, dlq, Filter{}, 2, 2)
			if total != 6 || len(page) != 2 || page[0].TaskID != ids[2] || page[1].TaskID != ids[3] {
				t.Errorf("page 2 = %v (total %d)", page, total)
			}
			// The IDs are stable between listings.
			again, _, _ := List(ctx, f.b, dlq, Filter{}, 0, 0)
			for i := range all {
				if again[i].ID != all[i].ID {
					t.Errorf("entry %d: id %s then %s", i, all[i].ID, again[i].ID)
				}
			}
			tests := []struct {
				f    Filter
				want []string
			}{
				{Filter{Reasons: []string{ReasonDecodeError}}, []string{ids[1], ids[4]}},
				{Filter{Tasks: []string{"task.1"}}, []string{ids[1], ids[3], ids[5]}},
				{Filter{Since: 150 * time.Minute, Now: now}, []string{ids[4], ids[5]}},
				{Filter{IDs: []string{all[2].ID, ids[0]}}, []string{ids[0], ids[2]}},
				{Filter{Reasons: []string{ReasonTaskFailed}, Tasks: []string{"task.0"}}, []string{ids[2]}},
			}
			for _, tt := range tests {
				got, n, err := List(ctx, f.b, dlq, tt.f, 0, 0)
				var gotIDs []string
				for _, e := range got {
					gotIDs = append(gotIDs, e.TaskID)
				}
				if err != nil || n != len(tt.want) || !slices.Equal(gotIDs, tt.want) {
					t.Errorf("List(%+v) = %v (%d), %v; want %v", tt.f, gotIDs, n, err, tt.want)
				}
			}
			if d := f.rawDepth(t, dlq); d != 6 {
				t.Errorf("listing changed the DLQ: depth %d", d)
			}
		})
	}
}

func TestReplayAndPurge(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			ctx := context.Background()
			q, dlq := setup(t, f, "replay")
			now := time.Now()
			unknown := deadLetter(t, f.b, q, "late.registered", ReasonUnknownTask, now)
			failed := deadLetter(t, f.b, q, "crew.run", ReasonTaskFailed, now)
			bad := deadLetter(t, f.b, q, "crew.run", ReasonDecodeError, now)
			other := deadLetter(t, f.b, q, "other", ReasonTaskFailed, now)
			c := NewCollector(f.b, CollectorOptions{Queues: []string{q}})

			// Dry run: nothing moves.
			rep, err := Replay(ctx, f.b, dlq, ReplayOptions{Filter: Filter{Reasons: []string{ReasonUnknownTask}}, DryRun: true, Logger: quiet()})
			if err != nil || rep.Count != 1 || f.rawDepth(t, dlq) != 4 || f.rawDepth(t, q) != 0 {
				t.Fatalf("dry run: %+v %v", rep, err)
			}
			var progress []int
			rep, err = Replay(ctx, f.b, dlq, ReplayOptions{Filter: Filter{Reasons: []string{ReasonUnknownTask}, IDs: []string{unknown, "nope"}},
				Logger: quiet(), Metrics: c, Progress: func(n int) { progress = append(progress, n) }})
			if err != nil || rep.Count != 1 || rep.Applied[0].TaskID != unknown || !slices.Equal(rep.Missing, []string{"nope"}) {
				t.Fatalf("replay: %+v %v", rep, err)
			}
			if !slices.Equal(progress, []int{1}) {
				t.Errorf("progress %v", progress)
			}
			if got := metricValue(t, c, MetricReplayed, "queue", q); got != 1 {
				t.Errorf("%s = %v", MetricReplayed, got)
			}
			// The replayed message is the same task, retries reset, in the work queue.
			var back []*protocol.Task
			if err := f.b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
				task, err := protocol.Decode(s.Message)
				if err != nil {
					return broker.Decision{}, err
				}
				back = append(back, task)
				if s.Message.Headers[HeaderReason] != nil || fmt.Sprint(s.Message.Headers[HeaderReplayed]) != "1" {
					t.Errorf("replayed headers %v", s.Message.Headers)
				}
				return broker.Decision{}, nil
			}, nil); err != nil {
				t.Fatal(err)
			}
			if len(back) != 1 || back[0].ID != unknown || back[0].Name != "late.registered" || back[0].Retries != 0 {
				t.Fatalf("work queue holds %+v", back)
			}
			// --to another queue with a new id.
			q2, _ := setup(t, f, "replayto")
			rep, err = Replay(ctx, f.b, dlq, ReplayOptions{Filter: Filter{IDs: []string{failed}}, To: q2, NewID: true, Logger: quiet()})
			if err != nil || rep.Count != 1 || f.rawDepth(t, q2) != 1 {
				t.Fatalf("replay --to: %+v %v", rep, err)
			}
			moved, _, _ := List(ctx, f.b, q2, Filter{}, 0, 0)
			if len(moved) != 1 || moved[0].TaskID == failed || moved[0].Task != "crew.run" {
				t.Errorf("--new-id: %+v", moved)
			}

			// Purge with filters, then everything.
			rep, err = Purge(ctx, f.b, dlq, PurgeOptions{Filter: Filter{Tasks: []string{"crew.run"}}, Logger: quiet()})
			if err != nil || rep.Count != 1 || rep.Applied[0].TaskID != bad {
				t.Fatalf("purge --task: %+v %v", rep, err)
			}
			left, _, _ := List(ctx, f.b, dlq, Filter{}, 0, 0)
			if len(left) != 1 || left[0].TaskID != other {
				t.Fatalf("left after purge: %+v", left)
			}
			rep, err = Purge(ctx, f.b, dlq, PurgeOptions{DryRun: true, Logger: quiet()})
			if err != nil || rep.Count != 1 || f.rawDepth(t, dlq) != 1 {
				t.Fatalf("purge dry run: %+v %v", rep, err)
			}
			rep, err = Purge(ctx, f.b, dlq, PurgeOptions{Logger: quiet()})
			if err != nil || rep.Count != 1 || f.rawDepth(t, dlq) != 0 {
				t.Fatalf("purge all: %+v %v", rep, err)
			}
		})
	}
}

// Replaying messages of a queue whose origin is unknown or is not a message at all skips
// them, leaving them in place.
func TestReplaySkips(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			ctx := context.Background()
			q, dlq := setup(t, f, "skip")
			deadLetter(t, f.b, q, "fine", ReasonUnknownTask, time.Now())
			inv := &protocol.Message{ContentType: protocol.ContentTypeInvalidEnvelope, ContentEncoding: "binary",
				Headers: map[string]any{protocol.HeaderEnvelopeError: "garbage"}, Body: []byte("garbage")}
			if err := f.b.Publish(ctx, broker.Publishing{RoutingKey: dlq, Message: inv}); err != nil {
				t.Fatal(err)
			}
			rep, err := Replay(ctx, f.b, dlq, ReplayOptions{Logger: quiet()})
			if err != nil || rep.Count != 1 || len(rep.Skipped) != 1 || !strings.Contains(rep.Skipped[0].Why, "not a message") {
				t.Fatalf("replay: %+v %v", rep, err)
			}
			if f.rawDepth(t, dlq) != 1 || f.rawDepth(t, q) != 1 {
				t.Errorf("dlq %d, queue %d", f.rawDepth(t, dlq), f.rawDepth(t, q))
			}
		})
	}
}

func TestTrim(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			ctx := context.Background()
			q, dlq := setup(t, f, "trim")
			now := time.Now()
			var ids []string
			for i := range 8 { // the first 3 are older than 2 days
				age := time.Hour
				if i < 3 {
					age = 72 * time.Hour
				}
				ids = append(ids, deadLetter(t, f.b, q, "t", ReasonTaskFailed, now.Add(-age)))
			}
			var logs bytes.Buffer
			c := NewCollector(f.b, CollectorOptions{Queues: []string{q}})
			log := slog.New(slog.NewJSONHandler(&logs, nil))

			rep, err := Trim(ctx, f.b, dlq, Retention{MaxLength: 6}, TrimOptions{DryRun: true, Now: now, Logger: log})
			if err != nil || rep.Count != 2 || f.rawDepth(t, dlq) != 8 {
				t.Fatalf("dry run: %+v %v", rep, err)
			}
			rep, err = Trim(ctx, f.b, dlq, Retention{MaxLength: 6}, TrimOptions{Now: now, Logger: log, Metrics: c})
			if err != nil || rep.Count != 2 || f.rawDepth(t, dlq) != 6 {
				t.Fatalf("max length: %+v %v", rep, err)
			}
			rep, err = Trim(ctx, f.b, dlq, Retention{MaxAge: 48 * time.Hour}, TrimOptions{Now: now, Logger: log, Metrics: c})
			if err != nil || rep.Count != 1 || rep.Applied[0].TaskID != ids[2] || f.rawDepth(t, dlq) != 5 {
				t.Fatalf("max age: %+v %v", rep, err)
			}
			rep, err = Trim(ctx, f.b, dlq, Retention{}, TrimOptions{Now: now, Logger: log, Metrics: c})
			if err != nil || rep.Count != 0 || f.rawDepth(t, dlq) != 5 {
				t.Fatalf("no retention: %+v %v", rep, err)
			}
			if got := metricValue(t, c, MetricEvicted, "queue", q); got != 3 {
				t.Errorf("%s = %v, want 3", MetricEvicted, got)
			}
			for _, id := range ids[:3] {
				if !strings.Contains(logs.String(), `"task_id":"`+id+`"`) {
					t.Errorf("eviction of %s not logged:\n%s", id, logs.String())
				}
			}
			if n := strings.Count(logs.String(), "evicted by retention"); n != 3 {
				t.Errorf("%d eviction lines", n)
			}
			// The Keeper applies a per-queue config.
			k := &Keeper{Browser: f.b, Config: RetentionConfig{Queues: map[string]Retention{q: {MaxLength: 4}}},
				Queues: c.Queues, Metrics: c, Logger: log}
			if n, err := k.Once(ctx); err != nil || n != 1 || f.rawDepth(t, dlq) != 4 {
				t.Fatalf("keeper: %d %v", n, err)
			}
		})
	}
}

func TestExportImport(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			ctx := context.Background()
			q, dlq := setup(t, f, "exp")
			now := time.Now()
			for i := range 4 {
				deadLetter(t, f.b, q, fmt.Sprintf("t%d", i%2), ReasonTaskFailed, now)
			}
			// Two identical copies and odd header values survive the round trip.
			m, _ := protocol.EncodeTask(protocol.NewTask("twin", nil, nil))
			m.Headers["float"] = 1.0
			m.Headers["nested"] = map[string]any{"a": []any{1, "b", nil, true}}
			twin := Letter(&broker.Delivery{Queue: q, Message: m}, ReasonRejected, "x", "w", now)
			for range 2 {
				if err := f.b.Publish(ctx, broker.Publishing{RoutingKey: dlq, Message: twin}); err != nil {
					t.Fatal(err)
				}
			}
			before, _, _ := List(ctx, f.b, dlq, Filter{}, 0, 0)
			var file bytes.Buffer
			n, err := Export(ctx, f.b, dlq, Filter{}, &file)
			if err != nil || n != 6 || strings.Count(file.String(), "\n") != 6 {
				t.Fatalf("export: %d %v", n, err)
			}
			var some bytes.Buffer
			if n, _ := Export(ctx, f.b, dlq, Filter{Tasks: []string{"t1"}}, &some); n != 2 {
				t.Errorf("filtered export: %d", n)
			}
			if f.rawDepth(t, dlq) != 6 {
				t.Fatal("export changed the DLQ")
			}
			// Import into an empty DLQ: everything, with the same ids.
			_, dlq2 := setup(t, f, "imp")
			rep, err := Import(ctx, f.b, dlq2, bytes.NewReader(file.Bytes()), ImportOptions{Logger: quiet()})
			if err != nil || rep.Imported != 6 || rep.Skipped != 0 {
				t.Fatalf("import: %+v %v", rep, err)
			}
			after, _, _ := List(ctx, f.b, dlq2, Filter{}, 0, 0)
			if len(after) != len(before) {
				t.Fatalf("imported %d of %d", len(after), len(before))
			}
			for i := range before {
				a, b := before[i], after[i]
				if a.ID != b.ID || a.TaskID != b.TaskID || a.Reason != b.Reason || !bytes.Equal(a.Stored.Message.Body, b.Stored.Message.Body) {
					t.Errorf("entry %d: %+v became %+v", i, a, b)
				}
			}
			// Again (as after an interruption): nothing added.
			rep, err = Import(ctx, f.b, dlq2, bytes.NewReader(file.Bytes()), ImportOptions{Logger: quiet()})
			if err != nil || rep.Imported != 0 || rep.Skipped != 6 || f.rawDepth(t, dlq2) != 6 {
				t.Fatalf("second import: %+v %v", rep, err)
			}
			// Half imported, then the rest.
			_, dlq3 := setup(t, f, "imp")
			lines := strings.SplitAfter(file.String(), "\n")
			if _, err := Import(ctx, f.b, dlq3, strings.NewReader(strings.Join(lines[:4], "")), ImportOptions{Logger: quiet()}); err != nil {
				t.Fatal(err)
			}
			rep, err = Import(ctx, f.b, dlq3, bytes.NewReader(file.Bytes()), ImportOptions{Logger: quiet()})
			if err != nil || rep.Imported != 2 || rep.Skipped != 4 || f.rawDepth(t, dlq3) != 6 {
				t.Fatalf("resumed import: %+v %v", rep, err)
			}
			if _, err := Import(ctx, f.b, dlq3, strings.NewReader("{not json\n"), ImportOptions{Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "line 1") {
				t.Errorf("bad line: %v", err)
			}
		})
	}
}

// The gauges report what the broker holds; the counters what this process did.
func TestCollectorMatchesBroker(t *testing.T) {
	for _, f := range fixtures(t) {
		t.Run(f.name, func(t *testing.T) {
			ctx := context.Background()
			q, dlq := setup(t, f, "metrics")
			qEmpty, _ := setup(t, f, "metrics_empty")
			now := time.Now()
			deadLetter(t, f.b, q, "a", ReasonTaskFailed, now.Add(-90*time.Second))
			deadLetter(t, f.b, q, "b", ReasonTaskFailed, now.Add(-30*time.Second))
			deadLetter(t, f.b, q, "c", ReasonTaskFailed, now)
			clock := now
			never := "never_" + randHex(4) // no DLQ declared: RabbitMQ does not know it
			c := NewCollector(f.b, CollectorOptions{Queues: []string{q, QueueName(qEmpty), never}, Now: func() time.Time { return clock }, MinInterval: time.Minute})
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(c)

			if got, raw := gauge(t, reg, MetricMessages, q), f.rawDepth(t, dlq); got != float64(raw) || raw != 3 {
				t.Errorf("%s = %v, broker holds %d", MetricMessages, got, raw)
			}
			if got := gauge(t, reg, MetricMessages, qEmpty); got != 0 {
				t.Errorf("%s of the empty DLQ = %v", MetricMessages, got)
			}
			if got := gauge(t, reg, MetricOldestAge, q); got < 85 || got > 95 {
				t.Errorf("%s = %v, want about 90", MetricOldestAge, got)
			}
			if got := gauge(t, reg, MetricMessages, never); got != 0 {
				t.Errorf("%s of a DLQ never declared = %v", MetricMessages, got)
			}
			if got := metricValue(t, c, MetricScrapeErrors); got != 0 {
				t.Errorf("%s = %v", MetricScrapeErrors, got)
			}
			stats, err := c.Stats(ctx)
			i := slices.IndexFunc(stats, func(s QueueStat) bool { return s.Queue == dlq })
			if err != nil || len(stats) != 3 || i < 0 {
				t.Fatalf("Stats: %+v %v", stats, err)
			}
			if age := stats[i].OldestAge; stats[i].Label != q || age < 85*time.Second || age > 95*time.Second {
				t.Errorf("oldest age %v of %+v", age, stats[i])
			}
			// Within MinInterval the broker is not read again.
			deadLetter(t, f.b, q, "d", ReasonTaskFailed, now)
			if got := gauge(t, reg, MetricMessages, q); got != 3 {
				t.Errorf("cached gauge %v", got)
			}
			clock = clock.Add(2 * time.Minute)
			if got, raw := gauge(t, reg, MetricMessages, q), f.rawDepth(t, dlq); got != float64(raw) || raw != 4 {
				t.Errorf("gauge %v, broker holds %d", got, raw)
			}

			// A real dead-lettering by the broker.
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			task := protocol.NewTask("poison.task", nil, nil)
			m, _ := protocol.EncodeTask(task)
			if err := f.b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: m}); err != nil {
				t.Fatal(err)
			}
			ch, err := f.b.Consume(cctx, []string{q}, 1)
			if err != nil {
				t.Fatal(err)
			}
			var d *broker.Delivery
			select {
			case d = <-ch:
			case <-time.After(10 * time.Second):
				t.Fatal("no delivery")
			}
			if err := Move(ctx, f.b, d, ReasonUnknownTask, "NotRegistered", "w@h"); err != nil {
				t.Fatal(err)
			}
			cancel()
			for range ch {
			}
			clock = clock.Add(2 * time.Minute)
			if got, raw := gauge(t, reg, MetricMessages, q), f.rawDepth(t, dlq); got != 5 || raw != 5 {
				t.Errorf("after dead-lettering: gauge %v, broker %d", got, raw)
			}
		})
	}
}

// metricValue gathers c alone and returns the value of the series name{labels...}.
func metricValue(t *testing.T, c prometheus.Collector, name string, labels ...string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if got[labels[i]] != labels[i+1] {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func gauge(t *testing.T, g prometheus.Gatherer, name, queue string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "queue" && l.GetValue() == queue {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{queue=%q}", name, queue)
	return 0
}

func TestObserveDelivery(t *testing.T) {
	c := NewCollector(nil, CollectorOptions{})
	m := original()
	c.ObserveDelivery(&broker.Delivery{Queue: "q", Message: m})
	m.Headers[HeaderReplayed] = 1
	c.ObserveDelivery(&broker.Delivery{Queue: "q", Message: m, Redelivered: true})
	c.ObserveDelivery(&broker.Delivery{Queue: "q", Message: m})
	if got := metricValue(t, c, MetricReplayed, "queue", "q"); got != 1 {
		t.Errorf("replayed = %v", got)
	}
}
