package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/worker"
)

// Real services; Redis DBs 5 and 6 belong to the observability tests.
const (
	amqpURL  = "amqp://guest:guest@127.0.0.1:5672//"
	redisURL = "redis://127.0.0.1:6379/5"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func TestParseRequestAndMatch(t *testing.T) {
	msg := func(body string, headers map[string]any) *protocol.Message {
		return &protocol.Message{ContentType: "application/json", Body: []byte(body), Headers: headers}
	}
	s := NewServer("fleet@pod-1", nil, nil, quiet())
	tests := []struct {
		name  string
		body  string
		match bool
	}{
		{"broadcast", `{"method":"ping","arguments":{},"destination":null,"pattern":null,"matcher":null}`, true},
		{"destination hit", `{"method":"ping","destination":["a@b","fleet@pod-1"]}`, true},
		{"destination miss", `{"method":"ping","destination":["a@b"]}`, false},
		{"glob hit", `{"method":"ping","pattern":"fleet@pod-*","matcher":"glob"}`, true},
		{"glob miss", `{"method":"ping","pattern":"celery@*","matcher":"glob"}`, false},
		{"pcre hit", `{"method":"ping","pattern":"pod-\\d$","matcher":"pcre"}`, true},
		{"pattern without matcher", `{"method":"ping","pattern":"nomatch"}`, true},
	}
	for _, tc := range tests {
		req, err := ParseRequest(msg(tc.body, map[string]any{"clock": json.Number("7"), "expires": json.Number("1795703763.96")}))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := s.Matches(req); got != tc.match {
			t.Errorf("%s: matches %v, want %v", tc.name, got, tc.match)
		}
		if req.Clock != 7 || req.Expires != 1795703763.96 {
			t.Errorf("%s: clock %d expires %v", tc.name, req.Clock, req.Expires)
		}
	}
	for _, bad := range []string{`[]`, `{"arguments":{}}`, `not json`} {
		if _, err := ParseRequest(msg(bad, nil)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if _, err := ParseRequest(&protocol.Message{ContentType: "application/x-python-serialize", Body: []byte("x")}); err == nil {
		t.Error("pickle accepted")
	}
}

func TestBrokerInfoFromURL(t *testing.T) {
	tests := []struct {
		url  string
		want BrokerInfo
	}{
		{"amqp://guest:secret@rabbit:5673/prod", BrokerInfo{Hostname: "rabbit", Port: 5673, Transport: "amqp", VirtualHost: "prod", UserID: "guest"}},
		{"amqp://guest:guest@localhost//", BrokerInfo{Hostname: "localhost", Port: 5672, Transport: "amqp", VirtualHost: "/", UserID: "guest"}},
		{"rediss://:pw@cache/3", BrokerInfo{Hostname: "cache", Port: 6379, Transport: "redis", VirtualHost: "3", SSL: true}},
	}
	for _, tc := range tests {
		if got := BrokerInfoFromURL(tc.url); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.url, got, tc.want)
		}
	}
}

// TestPythonRemoteControl drives a running Go worker's pidbox with Celery 5.2.6's own
// client on both brokers: inspect ping/stats/active_queues/registered/revoked/conf/clock/
// report/scheduled/reserved/active(safe)/query_task reply in Celery's shapes under the
// node name; revoke --terminate stops a running diag.sleep; revoke flags a queued id;
// mingle hello merges a peer's revoked ids (and answers itself with null); events switch;
// an unknown command and a refused shutdown reply with an error; glob targeting reaches
// the node and a destination naming another node does not.
func TestPythonRemoteControl(t *testing.T) {
	for _, tc := range []struct{ name, url string }{{"amqp", amqpURL}, {"redis", redisURL}} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := ""
			if tc.name == "redis" {
				prefix = "ctltest" + randHex(4) + ":"
			}
			host := "ctl" + randHex(4) + "@test"
			queue := "ctl_" + randHex(4)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			b, err := connect.Broker(ctx, tc.url, connect.BrokerOptions{KeyPrefix: prefix, Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cleanup(t, tc.name, prefix, queue) })
			defer b.Close()

			reg := tasks.NewRegistry()
			tasks.RegisterDiag(reg)
			rev := worker.NewMemoryRevoked(0, 0)
			w := worker.New(worker.Config{Hostname: host, Queues: []string{queue}, Concurrency: 2, Revoked: rev, Logger: quiet()}, b, nil, reg)
			wctx, stopWorker := context.WithCancel(ctx)
			wdone := make(chan error, 1)
			go func() { wdone <- w.Run(wctx) }()
			defer func() { stopWorker(); <-wdone }()

			fan := b.(broker.Fanout)
			disp := events.New(fan, events.Config{Hostname: host, TaskEvents: true, Logger: quiet()})
			srv := NewServer(host, fan, disp.Clock(), quiet())
			var shutdowns atomic.Int32
			srv.Commands(Deps{Node: w, Registered: reg.Names, Revoked: rev, Events: disp,
				Broker: BrokerInfoFromURL(tc.url), Conf: map[string]any{"worker_concurrency": 2}, Version: "test",
				Shutdown: func() { shutdowns.Add(1) }, Logger: quiet()})
			msgs, err := srv.Listen(ctx)
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ctx, msgs)

			out := runPython(t, map[string]string{"BROKER": tc.url, "HOST": host, "QUEUE": queue, "PREFIX": prefix})
			get := func(k string) any { return out[k] }
			if m, _ := get("ping").(map[string]any); m["ok"] != "pong" {
				t.Errorf("ping: %v", get("ping"))
			}
			stats, _ := get("stats").(map[string]any)
			pool, _ := stats["pool"].(map[string]any)
			brk, _ := stats["broker"].(map[string]any)
			if pool["max-concurrency"] != 2.0 || len(pool["processes"].([]any)) != 2 || stats["prefetch_count"] != 8.0 ||
				brk["transport"] != map[string]string{"amqp": "amqp", "redis": "redis"}[tc.name] || stats["total"] == nil ||
				stats["pid"] != float64(os.Getpid()) {
				t.Errorf("stats: %v", stats)
			}
			if _, isStr := stats["clock"].(string); !isStr {
				t.Errorf("stats clock is not a string: %v", stats["clock"])
			}
			if qs, _ := get("active_queues").([]any); len(qs) != 1 || qs[0].(map[string]any)["name"] != queue {
				t.Errorf("active_queues: %v", get("active_queues"))
			}
			if names, _ := get("registered").([]any); len(names) < 5 || names[0] != "diag.add" {
				t.Errorf("registered: %v", get("registered"))
			}
			if c, _ := get("clock").(map[string]any); c["clock"] == nil {
				t.Errorf("clock: %v", get("clock"))
			}
			if r, _ := get("report").(map[string]any); !strings.Contains(r["ok"].(string), "fleet:test") {
				t.Errorf("report: %v", get("report"))
			}
			for _, k := range []string{"scheduled", "reserved", "revoked"} {
				if l, ok := get(k).([]any); !ok || len(l) != 0 {
					t.Errorf("%s: %v", k, get(k))
				}
			}
			act, _ := get("active").([]any)
			if len(act) != 1 {
				t.Fatalf("active: %v", get("active"))
			}
			a := act[0].(map[string]any)
			di, _ := a["delivery_info"].(map[string]any)
			if a["name"] != "diag.sleep" || a["args"] != "[30]" || a["hostname"] != host || a["time_start"] == nil ||
				di["routing_key"] != queue || a["worker_pid"] != float64(os.Getpid()) {
				t.Errorf("active request info: %v", a)
			}
			if q, _ := get("query_task").(map[string]any); len(q) != 1 {
				t.Errorf("query_task: %v", get("query_task"))
			}
			if s := replyOf(get("revoke_terminate"), host); !strings.HasPrefix(s["ok"].(string), "terminate: ") {
				t.Errorf("revoke terminate: %v", get("revoke_terminate"))
			}
			waitFor(t, 10*time.Second, "terminated task gone", func() bool {
				snap := w.Snapshot()
				return len(snap.Active) == 0 && snap.Counters.Revoked == 1
			})
			if s := replyOf(get("revoke_queued"), host); s["ok"] != "tasks not-yet-sent flagged as revoked" {
				t.Errorf("revoke: %v", get("revoke_queued"))
			}
			h := replyOf(get("hello"), host)
			rv, _ := h["revoked"].(map[string]any)
			if h["clock"] == nil || rv["not-yet-sent"] == nil || rv["from-peer"] == nil {
				t.Errorf("hello: %v", get("hello"))
			}
			if l, _ := get("hello_self").([]any); len(l) != 1 || l[0].(map[string]any)[host] != nil {
				t.Errorf("hello from self: %v", get("hello_self"))
			}
			if s := replyOf(get("disable_events"), host); s["ok"] != "task events disabled" {
				t.Errorf("disable_events: %v", get("disable_events"))
			}
			if s := replyOf(get("enable_events"), host); s["ok"] != "task events enabled" || !disp.TaskEventsEnabled() {
				t.Errorf("enable_events: %v", get("enable_events"))
			}
			if s := replyOf(get("no_such"), host); s["error"] != "KeyError('no_such_cmd')" {
				t.Errorf("unknown command: %v", get("no_such"))
			}
			if s := replyOf(get("shutdown"), host); s["error"] == nil || shutdowns.Load() != 0 {
				t.Errorf("shutdown not refused: %v", get("shutdown"))
			}
			if l, _ := get("glob").([]any); len(l) != 1 {
				t.Errorf("glob ping: %v", get("glob"))
			}
			if l, _ := get("other").([]any); len(l) != 0 {
				t.Errorf("ping to another node answered: %v", get("other"))
			}
		})
	}
}

// TestRemoteShutdownAllowed: with --allow-remote-shutdown the command replies and then
// calls Shutdown.
func TestRemoteShutdownAllowed(t *testing.T) {
	var called atomic.Int32
	s := NewServer("fleet@x", nil, nil, quiet())
	s.Commands(Deps{AllowRemoteShutdown: true, Shutdown: func() { called.Add(1) }, Logger: quiet()})
	v, err := s.handlers["shutdown"](context.Background(), nil)
	if err != nil || v.(map[string]any)["ok"] != "shutting down" {
		t.Fatalf("%v %v", v, err)
	}
	waitFor(t, 2*time.Second, "shutdown called", func() bool { return called.Load() == 1 })
}

// TestRedisRevoked: revocations go to Redis and a new store (a restarted worker) loads
// them; entries past the expiry are not loaded; the set is trimmed to max.
func TestRedisRevoked(t *testing.T) {
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 6})
	prefix := "revtest" + randHex(4) + ":"
	ctx := context.Background()
	t.Cleanup(func() { // after the test's own defers: the client must still be open
		rdb.Del(ctx, prefix+RevokedKey)
		_ = rdb.Close()
	})
	a := NewRedisRevoked(rdb, prefix, 3, time.Hour, quiet())
	if err := a.Add(ctx, "r1", "r2", "r3", "r4"); err != nil {
		t.Fatal(err)
	}
	if in, _ := a.Contains(ctx, "r4"); !in {
		t.Fatal("r4 not revoked in memory")
	}
	if n, _ := rdb.ZCard(ctx, prefix+RevokedKey).Result(); n != 3 {
		t.Fatalf("redis set has %d entries, want 3 (trimmed)", n)
	}
	rdb.ZAdd(ctx, prefix+RevokedKey, goredis.Z{Score: float64(time.Now().Add(-2 * time.Hour).Unix()), Member: "stale"})
	b := NewRedisRevoked(rdb, prefix, 0, time.Hour, quiet())
	n, err := b.Sync(ctx)
	if err != nil || n != 3 {
		t.Fatalf("loaded %d (%v), want 3", n, err)
	}
	for id, want := range map[string]bool{"r4": true, "r2": true, "stale": false} {
		if in, _ := b.Contains(ctx, id); in != want {
			t.Errorf("%s revoked=%v after load, want %v", id, in, want)
		}
	}
	if err := a.Add(ctx, "r5"); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Sync(ctx); err != nil || n != 1 {
		t.Fatalf("incremental sync loaded %d (%v), want 1", n, err)
	}
}

func replyOf(v any, host string) map[string]any {
	l, _ := v.([]any)
	for _, e := range l {
		if m, ok := e.(map[string]any)[host].(map[string]any); ok {
			return m
		}
	}
	return map[string]any{}
}

func runPython(t *testing.T, env map[string]string) map[string]any {
	t.Helper()
	return runPythonScript(t, "testdata/pidbox.py", env)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cleanup(t *testing.T, transport, prefix, queue string) {
	ctx := context.Background()
	if transport == "redis" {
		rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 5})
		defer rdb.Close()
		if keys, _ := rdb.Keys(ctx, prefix+"*").Result(); len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		return
	}
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		return
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_ = ch.ExchangeDelete(queue, false, false)
		_ = ch.Close()
	}
}
