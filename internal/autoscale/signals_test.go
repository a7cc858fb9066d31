package autoscale

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"math"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	brokerredis "denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/protocol"
)

// The autoscaler's tests use Redis database 4 on the local server (make services), with
// unique key names, cleaned up afterwards.
const testRedisURL = "redis://127.0.0.1:6379/4"

func testRedis(t *testing.T) *goredis.Client {
	t.Helper()
	ro, err := goredis.ParseURL(testRedisURL)
	if err != nil {
		t.Fatal(err)
	}
	c := goredis.NewClient(ro)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis at %s (run `make services`): %v", testRedisURL, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func unique(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func TestPodName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"fleet@worker-7d9f-abcde", "worker-7d9f-abcde"},
		{"celery@a@b", "b"},
		{"bare-host", "bare-host"},
	} {
		if got := PodName(tc.in); got != tc.want {
			t.Errorf("PodName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestArrivalRate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name      string
		prev      queueTrack
		smp       QueueSample
		inFlight  int
		completed float64
		want      float64
	}{
		{"broker's publish rate wins", queueTrack{at: t0, ready: 50}, QueueSample{At: t0.Add(5 * time.Second), Ready: 0, PublishRate: 7.5, RateKnown: true}, 0, 0, 7.5},
		{"growth only", queueTrack{at: t0, ready: 10}, QueueSample{At: t0.Add(5 * time.Second), Ready: 60}, 0, 0, 10},
		{"growth plus completions", queueTrack{at: t0, ready: 10, inFlight: 4}, QueueSample{At: t0.Add(5 * time.Second), Ready: 10}, 4, 25, 5},
		{"a draining queue with completions", queueTrack{at: t0, ready: 100}, QueueSample{At: t0.Add(10 * time.Second), Ready: 40}, 0, 80, 2},
		{"never negative", queueTrack{at: t0, ready: 100}, QueueSample{At: t0.Add(5 * time.Second), Ready: 0}, 0, 0, 0},
		{"a repeated sample has no interval", queueTrack{at: t0, ready: 1}, QueueSample{At: t0, Ready: 9}, 0, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := tc.prev
			tr.completed = tc.completed
			if got := arrivalRate(&tr, tc.smp, tc.inFlight); math.Abs(got-tc.want) > 1e-9 {
				t.Fatalf("λ = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPoolQueues(t *testing.T) {
	pool := []string{"a", "b"}
	for _, tc := range []struct {
		worker []string
		want   int
	}{{nil, 2}, {[]string{"a"}, 1}, {[]string{"a", "b", "c"}, 2}, {[]string{"c"}, 2}} {
		if got := poolQueues(tc.worker, pool); len(got) != tc.want {
			t.Errorf("poolQueues(%v) = %v", tc.worker, got)
		}
	}
}

// TestSourceRedis observes a real kombu Redis queue, real leases in the unacked hash,
// heartbeat records in Redis and a local fleet of real processes: the pods' running tasks
// come from the heartbeats, μ from the processed counters, λ from the queue's growth plus
// the completions.
func TestSourceRedis(t *testing.T) {
	rdb := testRedis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	queue := unique("as-src")
	prefix := unique("as-src-hb") + ":"
	b, err := brokerredis.New(ctx, brokerredis.Options{URL: testRedisURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = b.Close()
		keys := append(b.QueueKeys(queue), "_kombu.binding."+queue)
		rdb.Del(context.Background(), keys...)
		if ks, _ := rdb.Keys(context.Background(), prefix+"*").Result(); len(ks) > 0 {
			rdb.Del(context.Background(), ks...)
		}
	})
	publish := func(n int) {
		t.Helper()
		for range n {
			m, err := protocol.EncodeTask(protocol.NewTask("diag.sleep", []any{1}, nil))
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Publish(ctx, broker.Publishing{RoutingKey: queue, Message: m}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Three "pods": real processes supervised by the local fleet.
	f := startFleet(t, LocalConfig{Name: unique("p"), Command: []string{"sleep", "300"}, Grace: 2 * time.Second, ReadyAfter: time.Millisecond})
	if err := f.Scale(ctx, 3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "three processes", func() bool { r, _ := podNames(t, f); return len(r) == 3 })
	pods, _ := podNames(t, f)

	clock := time.Now()
	now := func() time.Time { return clock }
	seen := events.NewSeen(rdb, prefix, time.Minute)
	beat := func(pod string, active, processed int64) {
		t.Helper()
		err := seen.Beat(ctx, events.WorkerStatus{Hostname: "fleet@" + pod, Timestamp: float64(clock.UnixMicro()) / 1e6,
			Started: 1, Active: active, Processed: processed, Concurrency: 4, Queues: []string{queue}})
		if err != nil {
			t.Fatal(err)
		}
	}
	src, err := NewSource(SourceConfig{Queues: []string{queue},
		Broker:  &RedisProbe{Stats: b, Client: rdb, Now: now},
		Workers: RedisWorkers{Client: rdb, Prefix: prefix}, Workload: f, ServiceTime: 2 * time.Second,
		MuMinBusy: 10, MuMinTasks: 5, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	publish(10)
	for _, p := range pods {
		beat(p, 0, 100)
	}
	src.Prime(ctx)

	// 5 s later: 30 more messages, 2 of them leased (in flight), pods busy, 12 completions.
	clock = clock.Add(5 * time.Second)
	publish(30)
	deliveries, err := b.Consume(ctx, []string{queue}, 2)
	if err != nil {
		t.Fatal(err)
	}
	var held []*broker.Delivery
	for len(held) < 2 {
		select {
		case d := <-deliveries:
			held = append(held, d)
		case <-ctx.Done():
			t.Fatal("no delivery")
		}
	}
	beat(pods[0], 2, 104)
	beat(pods[1], 2, 104)
	beat(pods[2], 0, 104)
	obs, err := src.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(obs.Queues) != 1 {
		t.Fatalf("queues %+v", obs.Queues)
	}
	q := obs.Queues[0]
	// Ready 38 + in flight 2 = 40, was 10: growth 30, plus 12 completed, over 5 s.
	if !q.Available || q.Ready != 38 || q.InFlight != 2 || math.Abs(q.ArrivalRate-42.0/5) > 1e-6 {
		t.Fatalf("queue signal %+v", q)
	}
	// μ: 12 tasks over (0+2)/2·5 + (0+2)/2·5 + 0 = 10 busy slot-seconds = 1.2 per slot-second.
	if math.Abs(q.ServiceRate-1.2) > 1e-6 {
		t.Fatalf("μ = %v, want 1.2", q.ServiceRate)
	}
	byName := map[string]PodSignal{}
	for _, p := range obs.Pods {
		byName[p.Name] = p
	}
	if p := byName[pods[0]]; p.Active != 2 || p.Slots != 4 || p.HeartbeatAt.IsZero() || !p.Ready {
		t.Fatalf("pod %+v", p)
	}
	if p := byName[pods[2]]; p.Active != 0 || p.HeartbeatAt.IsZero() {
		t.Fatalf("pod %+v", p)
	}
	if obs.Workload.SpecReplicas != 3 || obs.Workload.Name == "" {
		t.Fatalf("workload %+v", obs.Workload)
	}
	_, ages := src.Last()
	if ages.Broker != 0 || math.Abs(ages.Heartbeats) > 0.01 || !math.IsNaN(ages.CPU) {
		t.Fatalf("ages %+v", ages)
	}
	for _, d := range held {
		if err := b.Requeue(ctx, d); err != nil {
			t.Fatal(err)
		}
	}

	// The policy takes it from here: the observation is one it can decide on.
	pol, err := NewPolicy(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	d := pol.Decide(obs)
	if d.State.MetricsUnavailable || d.Inputs.Ready != 38 || d.Inputs.BusySlots != 4 {
		t.Fatalf("decision %+v", d)
	}
	t.Logf("decision: %s %s", d.Rule, d.Reason)
}

func TestSourceFailsStaticWhenTheBrokerIsDown(t *testing.T) {
	f := startFleet(t, LocalConfig{Name: unique("p"), Command: []string{"sleep", "300"}, Grace: time.Second})
	lazy := &LazyInspector{Open: func(ctx context.Context) (QueueInspector, error) {
		return brokerredis.New(ctx, brokerredis.Options{URL: "redis://127.0.0.1:1/0"})
	}}
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	src, err := NewSource(SourceConfig{Queues: []string{"q"}, Broker: &RedisProbe{Stats: lazy, Client: rdb}, Workload: f})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src.Prime(ctx)
	obs, err := src.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(obs.Queues) != 1 || obs.Queues[0].Available || obs.Queues[0].Error == "" {
		t.Fatalf("queues %+v", obs.Queues)
	}
	pol, _ := NewPolicy(DefaultConfig())
	d := pol.Decide(obs)
	c, _ := d.Condition(ConditionMetricsUnavailable)
	if !c.Status || d.Desired != 1 || d.Rule != RuleFloor {
		t.Fatalf("decision %s %d %+v", d.Rule, d.Desired, c)
	}
}
