package worker

import (
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

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	amqpbroker "denis.io/fleet/internal/broker/amqp"
	redisbroker "denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
)

// testRedisURL is the Redis DB this package's tests own (broker and results); testAMQPURL
// the RabbitMQ the AMQP variants use (each test has its own queue).
const (
	testRedisURL = "redis://127.0.0.1:6379/3"
	testAMQPURL  = "amqp://guest:guest@127.0.0.1:5672//"
)

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// recorder is an Observer that records every event as "event:id[:detail]".
type recorder struct {
	mu     sync.Mutex
	events []string
	infos  map[string]*TaskInfo
}

func newRecorder() *recorder { return &recorder{infos: map[string]*TaskInfo{}} }

func (r *recorder) add(i *TaskInfo, ev string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev+":"+i.ID)
	r.infos[i.ID] = i
}

func (r *recorder) TaskReceived(i *TaskInfo) { r.add(i, "received") }
func (r *recorder) TaskStarted(i *TaskInfo)  { r.add(i, "started") }
func (r *recorder) TaskSucceeded(i *TaskInfo, _ time.Duration, v any) {
	r.add(i, "succeeded")
}
func (r *recorder) TaskFailed(i *TaskInfo, exc protocol.ExceptionInfo, _ string) {
	r.add(i, "failed="+exc.Type)
}
func (r *recorder) TaskRetried(i *TaskInfo, exc protocol.ExceptionInfo, _ string) {
	r.add(i, "retried="+exc.Type)
}
func (r *recorder) TaskRejected(i *TaskInfo, requeue bool) {
	r.add(i, fmt.Sprintf("rejected=%v", requeue))
}
func (r *recorder) TaskRevoked(i *TaskInfo, terminated, expired bool) {
	r.add(i, fmt.Sprintf("revoked=%v/%v", terminated, expired))
}
func (r *recorder) TaskDeadLettered(i *TaskInfo, q, reason string) { r.add(i, "deadlettered="+reason) }

// of returns the events of one task id, without the id.
func (r *recorder) of(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if ev, eid, _ := strings.Cut(e, ":"); eid == id {
			out = append(out, ev)
		}
	}
	return out
}

// env is a worker running on a Redis broker and backend (DB 3) with its own queue.
type env struct {
	q       string
	b       broker.Broker
	rb      *result.RedisBackend
	c       *goredis.Client
	w       *Worker
	rec     *recorder
	opts    envOpts
	log     *slog.Logger
	stop    context.CancelFunc
	stopped chan struct{}
}

type envOpts struct {
	amqp  bool // RabbitMQ broker instead of Redis (results stay in Redis)
	cfg   Config
	yaml  string // --config contents
	setup func(reg *tasks.Registry)
	vt    time.Duration
	// queueArgs are the AMQP x-arguments the queue is declared with (a quorum queue).
	queueArgs map[string]any
	// prepare runs before the worker starts, with a broker of its own (closed after).
	prepare func(t *testing.T, b broker.Broker, q string)
	// before runs on the worker before Run (OnDelivery hooks).
	before func(w *Worker)
}

// openBroker opens the broker of o for queue q.
func openBroker(t *testing.T, o envOpts, q string, log *slog.Logger) broker.Broker {
	t.Helper()
	ctx := context.Background()
	var b broker.Broker
	var err error
	if o.amqp {
		var args map[string]map[string]any
		if o.queueArgs != nil {
			args = map[string]map[string]any{q: o.queueArgs}
		}
		b, err = amqpbroker.New(ctx, amqpbroker.Options{URL: testAMQPURL, QueueArguments: args, Logger: log})
	} else {
		b, err = redisbroker.New(ctx, redisbroker.Options{URL: testRedisURL, VisibilityTimeout: o.vt, Logger: log})
	}
	if err != nil {
		t.Fatalf("broker (are Redis and RabbitMQ running?): %v", err)
	}
	return b
}

func startEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	ctx := context.Background()
	q := uniqueName("wt")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.amqp {
		t.Cleanup(func() { deleteAMQPQueues(q, q+".dlq") })
	}
	if o.prepare != nil {
		pb := openBroker(t, o, q, log)
		o.prepare(t, pb, q)
		if err := pb.Close(); err != nil {
			t.Fatal(err)
		}
	}
	b := openBroker(t, o, q, log)
	rb, err := result.OpenRedis(ctx, testRedisURL, result.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ropts, _ := goredis.ParseURL(testRedisURL)
	c := goredis.NewClient(ropts)
	reg := tasks.NewRegistry()
	tasks.RegisterDiag(reg)
	if o.setup != nil {
		o.setup(reg)
	}
	cfg := o.cfg
	if o.yaml != "" {
		tc, err := tasks.ParseConfig("test.yaml", []byte(o.yaml))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Tasks = tc
	}
	cfg.Queues = []string{q}
	cfg.DefaultQueue = q
	cfg.Logger = log
	cfg.Hostname = "wt@test"
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	rec := newRecorder()
	cfg.Observers = append(cfg.Observers, rec)
	e := &env{q: q, b: b, rb: rb, c: c, rec: rec, opts: o, log: log, stopped: make(chan struct{})}
	e.w = New(cfg, b, rb, reg)
	if o.before != nil {
		o.before(e.w)
	}
	runCtx, stop := context.WithCancel(ctx)
	e.stop = stop
	go func() {
		defer close(e.stopped)
		if err := e.w.Run(runCtx); err != nil {
			t.Errorf("worker run: %v", err)
		}
	}()
	t.Cleanup(func() {
		e.stop()
		<-e.stopped
		_ = b.Close()
		_ = rb.Close()
		keys := []string{q, q + "\x06\x163", q + "\x06\x166", q + "\x06\x169", q + ".dlq", "_kombu.binding." + q, "_kombu.binding." + q + ".dlq"}
		c.Del(context.Background(), keys...)
		_ = c.Close()
	})
	waitUntil(t, 10*time.Second, "worker consuming", func() bool { return e.w.started.Load() != 0 })
	return e
}

func deleteAMQPQueues(queues ...string) {
	conn, err := amqp091.Dial(testAMQPURL)
	if err != nil {
		return
	}
	defer conn.Close()
	for _, q := range queues {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(q, false, false, false)
			_ = ch.ExchangeDelete(q, false, false)
			_ = ch.Close()
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// send publishes t to the env's queue.
func (e *env) send(t *testing.T, task *protocol.Task) {
	t.Helper()
	m, err := protocol.EncodeTask(task)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.b.Publish(ctx, broker.Publishing{RoutingKey: e.q, Message: m}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.c.Del(context.Background(), result.Key(task.ID)) })
}

// meta waits until the result of id has one of the states and returns it.
func (e *env) meta(t *testing.T, id string, timeout time.Duration, states ...string) map[string]any {
	t.Helper()
	var m map[string]any
	waitUntil(t, timeout, "task "+id+" in state "+strings.Join(states, "|"), func() bool {
		var err error
		m, err = e.rb.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return m != nil && slices.Contains(states, m["status"].(string))
	})
	return m
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

func task(name string, args ...any) *protocol.Task {
	return protocol.NewTask(name, args, nil)
}

func ids(rs []RequestSnapshot) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}
