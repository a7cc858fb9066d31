package metrics

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/worker"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func randHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func families(t *testing.T, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	fs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fs {
		out[f.GetName()] = f
	}
	return out
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// find returns the sample of family name whose labels include want.
func find(t *testing.T, fs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	f, ok := fs[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
	for _, m := range f.GetMetric() {
		l := labelsOf(m)
		match := true
		for k, v := range want {
			if l[k] != v {
				match = false
			}
		}
		if match {
			return m
		}
	}
	t.Fatalf("%s has no sample with labels %v", name, want)
	return nil
}

func taskInfo(id, name, queue string) *worker.TaskInfo {
	return &worker.TaskInfo{ID: id, Name: name, Queue: queue}
}

// TestCeleryExporterCompatibility pins peers.md §2a: the celery_* series have
// celery-exporter's names, types, label keys (hostname = the part after @, exception =
// the class) and bucket edges, and every counter of a (name, queue) exists at 0 from the
// first event on.
func TestCeleryExporterCompatibility(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewTaskMetrics(reg, "fleet@pod-7", true)
	i := taskInfo("a", "diag.add", "q1")
	m.TaskReceived(i)
	m.TaskStarted(i)
	m.TaskSucceeded(i, 80*time.Millisecond, 5)
	f := taskInfo("b", "diag.fail", "q1")
	m.TaskReceived(f)
	m.TaskFailed(f, protocol.ExceptionInfo{Type: "RuntimeError", Message: []any{"x"}}, "tb")
	m.TaskRetried(taskInfo("c", "diag.add", "q2"), protocol.ExceptionInfo{}, "")
	m.TaskRevoked(taskInfo("d", "diag.add", "q1"), true, false)
	m.TaskRejected(taskInfo("e", "diag.add", "q1"), false)
	m.TaskDeadLettered(taskInfo("f", "", "q1"), "q1.dlq", "decode_error")

	fs := families(t, reg)
	labels := []string{"hostname", "name", "queue_name"}
	for name, want := range map[string]struct {
		typ    dto.MetricType
		labels []string
	}{
		"celery_task_received_total":  {dto.MetricType_COUNTER, labels},
		"celery_task_started_total":   {dto.MetricType_COUNTER, labels},
		"celery_task_succeeded_total": {dto.MetricType_COUNTER, labels},
		"celery_task_failed_total":    {dto.MetricType_COUNTER, []string{"exception", "hostname", "name", "queue_name"}},
		"celery_task_rejected_total":  {dto.MetricType_COUNTER, labels},
		"celery_task_revoked_total":   {dto.MetricType_COUNTER, labels},
		"celery_task_retried_total":   {dto.MetricType_COUNTER, labels},
		"celery_task_runtime":         {dto.MetricType_HISTOGRAM, labels},
		"fleet_task_outcomes_total":   {dto.MetricType_COUNTER, []string{"outcome", "queue", "task"}},
		"fleet_dead_lettered_total":   {dto.MetricType_COUNTER, []string{"queue", "reason", "task"}},
	} {
		fam, ok := fs[name]
		if !ok {
			t.Errorf("missing %s", name)
			continue
		}
		if fam.GetType() != want.typ {
			t.Errorf("%s: type %v, want %v", name, fam.GetType(), want.typ)
		}
		for _, s := range fam.GetMetric() {
			var keys []string
			for k := range labelsOf(s) {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, want.labels) {
				t.Errorf("%s: label keys %v, want %v", name, keys, want.labels)
			}
		}
	}
	if v := find(t, fs, "celery_task_succeeded_total", map[string]string{"name": "diag.add", "hostname": "pod-7", "queue_name": "q1"}).GetCounter().GetValue(); v != 1 {
		t.Errorf("succeeded = %v", v)
	}
	// Zero-initialised: diag.fail never succeeded, yet its succeeded counter exists at 0.
	if v := find(t, fs, "celery_task_succeeded_total", map[string]string{"name": "diag.fail"}).GetCounter().GetValue(); v != 0 {
		t.Errorf("zero-initialised succeeded = %v", v)
	}
	find(t, fs, "celery_task_failed_total", map[string]string{"name": "diag.fail", "exception": "RuntimeError"})
	find(t, fs, "celery_task_failed_total", map[string]string{"name": "diag.add", "exception": ""})
	h := find(t, fs, "celery_task_runtime", map[string]string{"name": "diag.add"}).GetHistogram()
	var edges []float64
	for _, b := range h.GetBucket() {
		edges = append(edges, b.GetUpperBound())
	}
	if !slices.Equal(edges, RuntimeBuckets) || h.GetSampleCount() != 1 {
		t.Errorf("runtime buckets %v count %d", edges, h.GetSampleCount())
	}
	for o, want := range map[string]float64{"success": 1, "failure": 1, "retry": 1, "revoked": 1, "rejected": 1} {
		if v := find(t, fs, "fleet_task_outcomes_total", map[string]string{"outcome": o}).GetCounter().GetValue(); v != want {
			t.Errorf("outcome %s = %v", o, v)
		}
	}
	find(t, fs, "fleet_dead_lettered_total", map[string]string{"queue": "q1", "task": "unknown", "reason": "decode_error"})
}

// TestMiddleware: a handler-recorded outcome (tasks.SetOutcome, e.g. "stubbed") replaces
// success; the queue wait is observed from x-fleet-sent-at, from the ETA when later.
func TestMiddleware(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewTaskMetrics(reg, "fleet@pod-1", true)
	h := m.Middleware(tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
		tasks.SetOutcome(ctx, "stubbed")
		return nil, nil
	}))
	sent := float64(time.Now().Add(-3*time.Second).UnixMilli()) / 1000
	r := &tasks.Request{ID: "s1", Name: "denis.materializer.run", Delivery: tasks.DeliveryInfo{Queue: "materializers"},
		Headers: map[string]any{broker.HeaderSentAt: json.Number(strconv.FormatFloat(sent, 'f', 3, 64))}}
	if _, err := h.ServeTask(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	m.TaskSucceeded(taskInfo("s1", "denis.materializer.run", "materializers"), time.Second, nil)
	fs := families(t, reg)
	find(t, fs, "fleet_task_outcomes_total", map[string]string{"outcome": "stubbed", "task": "denis.materializer.run"})
	w := find(t, fs, "celery_task_queue_wait_time", map[string]string{"queue_name": "materializers"}).GetHistogram()
	if w.GetSampleCount() != 1 || w.GetSampleSum() < 2.9 || w.GetSampleSum() > 60 {
		t.Errorf("queue wait count %d sum %v", w.GetSampleCount(), w.GetSampleSum())
	}
	if len(w.GetBucket()) != len(QueueWaitBuckets) || w.GetBucket()[len(QueueWaitBuckets)-1].GetUpperBound() != 1800 {
		t.Errorf("queue wait buckets %v", w.GetBucket())
	}
}

// TestWorkerCollector: celery_worker_up / tasks_active with the hostname label, and the
// fleet_worker_* gauges, read at scrape time.
func TestWorkerCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	var draining atomic.Bool
	c := NewWorkerCollector("celery@pod-x", true, func() WorkerState {
		return WorkerState{Up: !draining.Load(), Active: 3, Reserved: map[string]int{"q": 2}, Scheduled: map[string]int{"q": 1},
			Draining: draining.Load(), Abandoned: 1}
	})
	reg.MustRegister(c)
	c.Heartbeat(time.Unix(1700000000, 500000000))
	fs := families(t, reg)
	for name, want := range map[string]float64{
		"celery_worker_up": 1, "celery_worker_tasks_active": 3, "fleet_worker_reserved_messages": 2,
		"fleet_worker_eta_held_messages": 1, "fleet_worker_draining": 0, "fleet_worker_abandoned_goroutines": 1,
		"fleet_worker_last_heartbeat_timestamp_seconds": 1700000000.5,
	} {
		if v := find(t, fs, name, map[string]string{"hostname": "pod-x"}).GetGauge().GetValue(); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	draining.Store(true)
	fs = families(t, reg)
	if v := find(t, fs, "celery_worker_up", nil).GetGauge().GetValue(); v != 0 {
		t.Errorf("up while draining = %v", v)
	}
}

// countingInspector counts the reads that reach the real broker.
type countingInspector struct {
	broker.Inspector
	reads atomic.Int32
}

func (c *countingInspector) QueueStats(ctx context.Context, q string) (broker.QueueStats, error) {
	c.reads.Add(1)
	return c.Inspector.QueueStats(ctx, q)
}

// TestSamplerShared: queue depth per priority comes from the real Redis broker; two
// workers sharing samples through Redis read the broker once per queue and interval
// between them, and both export the same values; the broker's state is exported.
func TestSamplerShared(t *testing.T) {
	ctx := context.Background()
	prefix := "mtest" + randHex() + ":"
	rb, err := redis.New(ctx, redis.Options{URL: "redis://127.0.0.1:6379/5", KeyPrefix: prefix, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 6})
	t.Cleanup(func() {
		_ = rb.Close()
		for _, db := range []int{5, 6} {
			c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: db})
			if keys, _ := c.Keys(ctx, prefix+"*").Result(); len(keys) > 0 {
				c.Del(ctx, keys...)
			}
			_ = c.Close()
		}
		_ = rdb.Close()
	})
	q := "depth-" + randHex()
	for _, p := range []uint8{0, 0, 0, 6} {
		m := &protocol.Message{Properties: protocol.Properties{Priority: p}, Headers: map[string]any{}, Body: []byte("x")}
		if err := rb.Publish(ctx, broker.Publishing{RoutingKey: q, Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	insp := &countingInspector{Inspector: rb}
	var regs []*prometheus.Registry
	var samplers []*Sampler
	for range 2 {
		reg := prometheus.NewRegistry()
		s := NewSampler(reg, SamplerConfig{Inspector: insp, Health: rb, Queues: func() []string { return []string{q} },
			Shared: rdb, KeyPrefix: prefix, Interval: time.Hour, Celery: true, Logger: quiet()})
		regs, samplers = append(regs, reg), append(samplers, s)
	}
	for _, s := range samplers {
		s.Sample(ctx)
	}
	if n := insp.reads.Load(); n != 1 {
		t.Fatalf("broker read %d times by two samplers, want 1", n)
	}
	for _, reg := range regs {
		fs := families(t, reg)
		if v := find(t, fs, "celery_queue_length", map[string]string{"queue_name": q}).GetGauge().GetValue(); v != 4 {
			t.Errorf("celery_queue_length = %v", v)
		}
		for p, want := range map[string]float64{"0": 3, "3": 0, "6": 1, "9": 0} {
			if v := find(t, fs, "fleet_queue_messages_ready", map[string]string{"queue": q, "priority": p}).GetGauge().GetValue(); v != want {
				t.Errorf("priority %s ready = %v, want %v", p, v, want)
			}
		}
		if v := find(t, fs, "fleet_broker_connected", nil).GetGauge().GetValue(); v != 1 {
			t.Errorf("fleet_broker_connected = %v", v)
		}
		if _, ok := fs["celery_active_consumer_count"]; ok {
			t.Error("consumer count exported for Redis, which cannot tell it")
		}
	}
}

// TestHealthEndpoints: /metrics serves the registry, /healthz follows the heartbeat,
// /readyz the readiness function.
func TestHealthEndpoints(t *testing.T) {
	reg := NewRegistry()
	var ready atomic.Pointer[error]
	h := NewHealth(time.Hour, func(context.Context) error {
		if p := ready.Load(); p != nil {
			return *p
		}
		return nil
	})
	srv := httptest.NewServer(Handler(reg, h))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics %d", code)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}
	draining := errors.New("draining")
	ready.Store(&draining)
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("/readyz while draining: %d %s", code, body)
	}
	h.Beat(time.Now().Add(-2 * time.Hour))
	if code, _ := get("/healthz"); code != 503 {
		t.Fatalf("/healthz after silence: %d", code)
	}
}
