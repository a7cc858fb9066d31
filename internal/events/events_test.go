package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/worker"
)

// Real services; Redis DBs 5 and 6 belong to the observability tests.
const (
	amqpURL       = "amqp://guest:guest@127.0.0.1:5672//"
	redisBrokerDB = 5
	redisStateDB  = 6
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fanouts opens both transports; Redis gets a unique global key prefix, which kombu also
// applies to the pub/sub channels, so parallel runs do not see each other's events.
func fanouts(t *testing.T) map[string]broker.Fanout {
	t.Helper()
	out := map[string]broker.Fanout{}
	for name, url := range map[string]string{
		"amqp":  amqpURL,
		"redis": "redis://127.0.0.1:6379/5",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		prefix := "evtest" + randHex(4) + ":"
		b, err := connect.Broker(ctx, url, connect.BrokerOptions{KeyPrefix: prefix, Logger: quietLogger()})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() {
			_ = b.Close()
			if name == "redis" { // the event bindings kombu keeps (_kombu.binding.celeryev)
				rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 5})
				deleteKeys(t, rdb, prefix)
				_ = rdb.Close()
			}
		})
		out[name] = b.(broker.Fanout)
	}
	return out
}

// listen subscribes to every event (binding key "#", as `celery events` binds) and decodes
// each message into the events it carries, keeping those of host.
func listen(t *testing.T, ctx context.Context, f broker.Fanout, host string) <-chan map[string]any {
	t.Helper()
	msgs, err := f.Subscribe(ctx, broker.Binding{Exchange: Exchange, Queue: "celeryev." + protocol.NewUUID(), Key: "#",
		MessageTTL: 5 * time.Second, Expires: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan map[string]any, 1000)
	go func() {
		defer close(out)
		seq := 0
		for m := range msgs {
			if m.Headers["hostname"] != host || m.ContentType != "application/json" || m.Properties.DeliveryMode != 1 {
				continue
			}
			var v any
			if err := json.Unmarshal(m.Body, &v); err != nil {
				t.Errorf("event body is not JSON: %s", m.Body)
				continue
			}
			switch x := v.(type) {
			case map[string]any:
				out <- x
			case []any:
				seq++
				for _, e := range x {
					ev := e.(map[string]any)
					ev["_batched"], ev["_message"] = len(x), seq
					out <- ev
				}
			}
		}
	}()
	return out
}

func next(t *testing.T, ch <-chan map[string]any, typ string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("subscription closed waiting for %s", typ)
			}
			if ev["type"] == typ {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s within %s", typ, within)
		}
	}
}

// TestDispatcherWireFormat pins §8 on both brokers: worker-online, worker-heartbeat every
// freq and worker-offline with every field Celery sends (hostname, utcoffset, pid, clock,
// timestamp, type, freq, active, processed, loadavg, sw_ident, sw_ver, sw_sys), the clock
// increasing; task events buffered and sent as JSON lists under task.multi with their own
// fields plus the common ones; nothing sent for task events while they are disabled.
func TestDispatcherWireFormat(t *testing.T) {
	for name, f := range fanouts(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			host := "evtest-" + randHex(4) + "@test"
			evs := listen(t, ctx, f, host)
			var beats atomic.Int32
			d := New(f, Config{
				Hostname: host, Freq: 300 * time.Millisecond, TaskEvents: true,
				Software: Software{Version: "1.2.3"},
				Stats:    func() Stats { return Stats{Active: 2, Processed: 7} },
				Beat:     []func(context.Context, time.Time){func(context.Context, time.Time) { beats.Add(1) }},
				Logger:   quietLogger(),
			})
			d.Start(ctx)
			online := next(t, evs, "worker-online", 5*time.Second)
			hb := next(t, evs, "worker-heartbeat", 5*time.Second)
			for _, ev := range []map[string]any{online, hb} {
				for _, k := range []string{"hostname", "utcoffset", "pid", "clock", "timestamp", "type", "freq",
					"active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"} {
					if _, ok := ev[k]; !ok {
						t.Errorf("%s lacks %s: %v", ev["type"], k, ev)
					}
				}
			}
			if hb["freq"] != 0.3 || hb["active"] != 2.0 || hb["processed"] != 7.0 || hb["sw_ver"] != "1.2.3" ||
				hb["sw_ident"] != "fleet-go" || hb["sw_sys"] != "Linux" || hb["hostname"] != host {
				t.Errorf("heartbeat fields: %v", hb)
			}
			if la, _ := hb["loadavg"].([]any); len(la) != 3 {
				t.Errorf("loadavg %v", hb["loadavg"])
			}
			if hb["clock"].(float64) <= online["clock"].(float64) {
				t.Errorf("clock did not advance: %v then %v", online["clock"], hb["clock"])
			}

			for i := range 30 {
				d.Task("task-succeeded", map[string]any{"uuid": "id-" + string(rune('a'+i%26)), "result": "5", "runtime": 0.01, "queue": "q"})
			}
			got := 0
			for got < 30 {
				ev := next(t, evs, "task-succeeded", 5*time.Second)
				got++
				if n := ev["_batched"].(int); n < 1 || n > DefaultMaxBatch {
					t.Fatalf("batch of %d events", n)
				}
				if ev["queue"] != "q" || ev["result"] != "5" || ev["hostname"] != host || ev["clock"] == nil || ev["timestamp"] == nil {
					t.Fatalf("task event %v", ev)
				}
			}

			d.EnableTaskEvents(false)
			d.Task("task-received", map[string]any{"uuid": "hidden"})
			d.EnableTaskEvents(true)
			d.Task("task-received", map[string]any{"uuid": "shown"})
			if ev := next(t, evs, "task-received", 5*time.Second); ev["uuid"] != "shown" {
				t.Fatalf("task event sent while disabled: %v", ev)
			}

			d.Stop(ctx)
			off := next(t, evs, "worker-offline", 5*time.Second)
			if off["hostname"] != host {
				t.Fatalf("offline %v", off)
			}
			if beats.Load() < 2 {
				t.Errorf("beat callbacks ran %d times", beats.Load())
			}
		})
	}
}

// TestWithoutHeartbeat: --without-heartbeat sends no worker-* events but still runs the
// Beat callbacks (the worker_seen key stays fresh).
func TestWithoutHeartbeat(t *testing.T) {
	f := fanouts(t)["redis"]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host := "evtest-" + randHex(4) + "@test"
	evs := listen(t, ctx, f, host)
	var beats atomic.Int32
	d := New(f, Config{Hostname: host, Freq: 100 * time.Millisecond, WithoutHeartbeat: true, Logger: quietLogger(),
		Beat: []func(context.Context, time.Time){func(context.Context, time.Time) { beats.Add(1) }}})
	d.Start(ctx)
	time.Sleep(500 * time.Millisecond)
	d.Stop(ctx)
	select {
	case ev := <-evs:
		t.Fatalf("event sent without heartbeat: %v", ev)
	case <-time.After(300 * time.Millisecond):
	}
	if beats.Load() < 3 {
		t.Fatalf("beat callbacks ran %d times", beats.Load())
	}
}

func TestUTCOffset(t *testing.T) {
	tests := []struct {
		zone string
		when time.Time
		want int
	}{
		{"UTC", time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC), 0},
		{"Asia/Tokyo", time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC), -9},
		{"America/New_York", time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC), 5},
		{"America/New_York", time.Date(2026, 7, 15, 12, 0, 0, 0, time.UTC), 4},
		{"Asia/Kolkata", time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC), -6},
		{"America/St_Johns", time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC), 3},
	}
	for _, tc := range tests {
		loc, err := time.LoadLocation(tc.zone)
		if err != nil {
			t.Skipf("no tzdata for %s: %v", tc.zone, err)
		}
		if got := UTCOffset(tc.when.In(loc)); got != tc.want {
			t.Errorf("%s at %s: utcoffset %d, want %d", tc.zone, tc.when.Format("Jan"), got, tc.want)
		}
	}
}

func TestClock(t *testing.T) {
	var c Clock
	steps := []struct {
		op   string
		arg  int64
		want int64
	}{
		{"forward", 0, 1}, {"adjust", 10, 11}, {"adjust", 3, 12}, {"forward", 0, 13},
	}
	for _, s := range steps {
		var got int64
		if s.op == "forward" {
			got = c.Forward()
		} else {
			got = c.Adjust(s.arg)
		}
		if got != s.want {
			t.Fatalf("%s(%d) = %d, want %d", s.op, s.arg, got, s.want)
		}
	}
}

func TestExceptionRepr(t *testing.T) {
	tests := []struct {
		typ  string
		args []any
		want string
	}{
		{"RuntimeError", []any{"boom"}, "RuntimeError('boom')"},
		{"TaskRevokedError", nil, "TaskRevokedError()"},
		{"KeyError", []any{"it's", json.Number("3")}, `KeyError("it's", 3)`},
	}
	for _, tc := range tests {
		if got := ExceptionRepr(tc.typ, tc.args); got != tc.want {
			t.Errorf("got %s, want %s", got, tc.want)
		}
	}
}

// TestSeen: a record is listed while fresh, disappears after its TTL without a beat, and
// at once after Gone.
func TestSeen(t *testing.T) {
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: redisStateDB})
	prefix := "seentest" + randHex(4) + ":"
	t.Cleanup(func() {
		deleteKeys(t, rdb, prefix)
		_ = rdb.Close()
	})
	ctx := context.Background()
	s := NewSeen(rdb, prefix, time.Second)
	now := epoch(time.Now())
	for _, h := range []string{"b@x", "a@x"} {
		st := WorkerStatus{Hostname: h, PID: 1, Timestamp: now, Freq: 2, Active: 1, Processed: 5, Concurrency: 8,
			Queues: []string{"celery"}, Flags: map[string]FlagValue{"TELEMETRY_ENABLED": {"true", "redis"}}}
		if err := s.Beat(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	ws, err := ListWorkers(ctx, rdb, prefix)
	if err != nil || len(ws) != 2 || ws[0].Hostname != "a@x" || ws[1].Concurrency != 8 || ws[0].Flags["TELEMETRY_ENABLED"].Source != "redis" {
		t.Fatalf("listed %+v (%v)", ws, err)
	}
	if err := s.Gone(ctx, "a@x"); err != nil {
		t.Fatal(err)
	}
	if ws, _ := ListWorkers(ctx, rdb, prefix); len(ws) != 1 || ws[0].Hostname != "b@x" {
		t.Fatalf("after Gone: %+v", ws)
	}
	time.Sleep(1500 * time.Millisecond)
	if ws, _ := ListWorkers(ctx, rdb, prefix); len(ws) != 0 {
		t.Fatalf("after the TTL: %+v", ws)
	}
}

// TestEncodeEvents: the event encoder writes JSON that Go's decoder reads back, with floats
// keeping a fraction, escapes where JSON needs them and invalid UTF-8 replaced.
func TestEncodeEvents(t *testing.T) {
	ev := map[string]any{"type": "task-failed", "freq": 2.0, "timestamp": 1795713744.4439178, "runtime": 2.5e-07,
		"pid": 7, "clock": int64(9), "ok": true, "none": nil, "loadavg": []float64{0.5, 1, 2.25},
		"traceback": "line1\n\t\"quoted\" \\ \x01 ünï \xff", "n": json.Number("3")}
	data, err := encodeEvents([]any{ev})
	if err != nil {
		t.Fatal(err)
	}
	var back []map[string]any
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("%v: %s", err, data)
	}
	got := back[0]
	if got["traceback"] != "line1\n\t\"quoted\" \\ \x01 ünï \ufffd" || got["freq"] != 2.0 || got["runtime"] != 2.5e-07 ||
		got["timestamp"] != 1795713744.4439178 || got["none"] != nil || got["n"] != 3.0 {
		t.Fatalf("round trip: %v from %s", got, data)
	}
	for _, want := range []string{`"freq": 2.0`, `"loadavg": [0.5, 1.0, 2.25]`, `"pid": 7`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("%s lacks %s", data, want)
		}
	}
}

// TestTaskEventEncoding: a task event is encoded at once, byte for byte as the general
// encoder writes the same map (sorted keys, Python separators), a given field winning over
// the common one of the same name.
func TestTaskEventEncoding(t *testing.T) {
	d := New(nil, Config{Hostname: "w@h", TaskEvents: true, Logger: quietLogger()})
	fields := map[string]any{"uuid": "u1", "name": "diag.add", "queue": "q", "args": "(1, 2)", "kwargs": "{}",
		"root_id": nil, "retries": 0, "eta": nil, "runtime": 0.25, "result": "'3'",
		"clock": 42, "timestamp": 1795713744.5, "utcoffset": 0, "pid": 7}
	d.Task("task-succeeded", fields)
	want := map[string]any{"type": "task-succeeded", "hostname": "w@h"}
	for k, v := range fields {
		want[k] = v
	}
	exp, err := encodeEvents(want)
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.curN != 1 || string(d.cur) != "["+string(exp) {
		t.Fatalf("buffered %q\nwant %q", d.cur, "["+string(exp))
	}
}

// TestTaskEventBuffer: events fill task.multi batches of up to MaxBatch; while publishing
// lags, the oldest batches are dropped beyond MaxBuffered and counted.
func TestTaskEventBuffer(t *testing.T) {
	d := New(nil, Config{Hostname: "w@h", TaskEvents: true, BufferLimit: 2, MaxBatch: 4, MaxBuffered: 10, Logger: quietLogger()})
	for i := range 23 {
		d.Task("task-started", map[string]any{"uuid": fmt.Sprint(i)})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.queued > 10 || d.queued != 4*len(d.full)+d.curN || d.dropped != 23-uint64(d.queued) {
		t.Fatalf("queued %d (%d full batches + %d), dropped %d", d.queued, len(d.full), d.curN, d.dropped)
	}
	var evs []map[string]any
	if err := json.Unmarshal(d.full[0], &evs); err != nil || len(evs) != 4 {
		t.Fatalf("batch %s: %v", d.full[0], err)
	}
	if first := evs[0]["uuid"]; first != fmt.Sprint(d.dropped) {
		t.Errorf("oldest kept event %v, want %d (the oldest are dropped)", first, d.dropped)
	}
}

// TestObserverEvents: every task event the observer sends carries the common fields and
// Celery's own, with the same values the general encoder gives the same fields.
func TestObserverEvents(t *testing.T) {
	eta := time.Date(2026, 11, 26, 12, 0, 0, 250000000, time.UTC)
	info := &worker.TaskInfo{ID: "id-1", Name: "diag.add", ArgsRepr: "(2, 3)", KwargsRepr: "{'x': \"y\"}",
		RootID: "root", Retries: 2, ETA: &eta, Queue: "q", Exchange: "ex", RoutingKey: "rk"}
	exc := protocol.ExceptionInfo{Type: "RuntimeError", Module: "builtins", Message: []any{"boom"}}
	base := func(typ string, extra map[string]any) map[string]any {
		m := map[string]any{"type": typ, "hostname": "w@h", "pid": os.Getpid(), "utcoffset": UTCOffset(time.Now()),
			"uuid": "id-1", "name": "diag.add", "queue": "q"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		send func(TaskObserver)
		want map[string]any
	}{
		{func(o TaskObserver) { o.TaskReceived(info) }, base("task-received", map[string]any{"args": "(2, 3)",
			"kwargs": "{'x': \"y\"}", "root_id": "root", "parent_id": nil, "retries": 2,
			"eta": "2026-11-26T12:00:00.250000+00:00", "expires": nil, "exchange": "ex", "routing_key": "rk"})},
		{func(o TaskObserver) { o.TaskStarted(info) }, base("task-started", nil)},
		{func(o TaskObserver) { o.TaskSucceeded(info, 1500*time.Millisecond, 5) },
			base("task-succeeded", map[string]any{"result": "5", "runtime": 1.5})},
		{func(o TaskObserver) { o.TaskFailed(info, exc, "tb\n") },
			base("task-failed", map[string]any{"exception": "RuntimeError('boom')", "traceback": "tb\n"})},
		{func(o TaskObserver) { o.TaskRetried(info, exc, "") },
			base("task-retried", map[string]any{"exception": "RuntimeError('boom')", "traceback": ""})},
		{func(o TaskObserver) { o.TaskRejected(info, true) }, base("task-rejected", map[string]any{"requeue": true})},
		{func(o TaskObserver) { o.TaskRevoked(info, true, false) },
			base("task-revoked", map[string]any{"terminated": true, "signum": 15, "expired": false})},
		{func(o TaskObserver) { o.TaskRevoked(info, false, true) },
			base("task-revoked", map[string]any{"terminated": false, "signum": nil, "expired": true})},
	}
	for _, tt := range tests {
		d := New(nil, Config{Hostname: "w@h", TaskEvents: true, Logger: quietLogger()})
		tt.send(d.Observer())
		d.mu.Lock()
		raw := append(d.cur, ']')
		d.mu.Unlock()
		var got []map[string]any
		if err := json.Unmarshal(raw, &got); err != nil || len(got) != 1 {
			t.Fatalf("%s: %v", raw, err)
		}
		wantJSON, err := encodeEvents(tt.want)
		if err != nil {
			t.Fatal(err)
		}
		var want map[string]any
		if err := json.Unmarshal(wantJSON, &want); err != nil {
			t.Fatal(err)
		}
		ev := got[0]
		if _, ok := ev["clock"].(float64); !ok {
			t.Errorf("%s: no clock", raw)
		}
		if ts, _ := ev["timestamp"].(float64); ts < float64(time.Now().Add(-time.Minute).Unix()) {
			t.Errorf("%s: timestamp %v", raw, ev["timestamp"])
		}
		delete(ev, "clock")
		delete(ev, "timestamp")
		if !reflect.DeepEqual(ev, want) {
			t.Errorf("%s:\n got %v\nwant %v", want["type"], ev, want)
		}
	}
	d := New(nil, Config{Hostname: "w@h", TaskEvents: false, Logger: quietLogger()})
	d.Observer().TaskStarted(info)
	if d.queued != 0 {
		t.Error("a task event was buffered while task events are disabled")
	}
}

// TestBacklogFlush: a backlog of several full task.multi batches (the broker was slower
// than the tasks) is flushed in order and complete on both brokers: Redis sends it in
// pipelined round trips (BroadcastBatch), AMQP one message after the other.
func TestBacklogFlush(t *testing.T) {
	for name, f := range fanouts(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			host := "evbacklog-" + randHex(4) + "@test"
			evs := listen(t, ctx, f, host)
			time.Sleep(200 * time.Millisecond) // the subscription is in place
			d := New(f, Config{Hostname: host, TaskEvents: true, WithoutHeartbeat: true, MaxBatch: 24, Logger: quietLogger()})
			const n = 5*24 + 7 // 5 full batches and a partial one
			o := d.Observer()
			for i := range n {
				o.TaskStarted(&worker.TaskInfo{ID: fmt.Sprint(i), Name: "diag.add", Queue: "q"})
			}
			d.flush(ctx)
			for i := range n {
				ev := next(t, evs, "task-started", 10*time.Second)
				if ev["uuid"] != fmt.Sprint(i) {
					t.Fatalf("event %d: uuid %v (order lost)", i, ev["uuid"])
				}
			}
		})
	}
}

// TestFlushPacing pins when task events go out, on both brokers: a lone event within the
// linger, in a message of its own; a steady stream (far more than BufferLimit events per
// MinInterval) in about one task.multi message per MinInterval, complete and in order.
func TestFlushPacing(t *testing.T) {
	for name, f := range fanouts(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			host := "evpace-" + randHex(4) + "@test"
			evs := listen(t, ctx, f, host)
			time.Sleep(200 * time.Millisecond) // the subscription is in place
			const interval = 50 * time.Millisecond
			d := New(f, Config{Hostname: host, TaskEvents: true, WithoutHeartbeat: true,
				Linger: 200 * time.Millisecond, MinInterval: interval, Logger: quietLogger()})
			d.Start(ctx)
			defer d.Stop(ctx)
			o := d.Observer()

			sent := time.Now()
			o.TaskStarted(&worker.TaskInfo{ID: "lone", Name: "diag.add", Queue: "q"})
			ev := next(t, evs, "task-started", 5*time.Second)
			if ev["uuid"] != "lone" || ev["_batched"] != 1 {
				t.Fatalf("lone event %v", ev)
			}
			if waited := time.Since(sent); waited > 2*time.Second {
				t.Errorf("a lone event took %s (linger 200ms)", waited)
			}

			const n = 3000
			start := time.Now()
			for i := range n {
				o.TaskStarted(&worker.TaskInfo{ID: fmt.Sprint(i), Name: "diag.add", Queue: "q"})
				if i%10 == 9 {
					time.Sleep(time.Millisecond)
				}
			}
			streamed := time.Since(start)
			messages := map[int]bool{}
			for i := range n {
				ev := next(t, evs, "task-started", 10*time.Second)
				if ev["uuid"] != fmt.Sprint(i) {
					t.Fatalf("event %d: uuid %v (order lost)", i, ev["uuid"])
				}
				messages[ev["_message"].(int)] = true
			}
			// Without the interval a message would go out per BufferLimit (24) events: 125.
			if most := int(streamed/interval) + 3; len(messages) > most {
				t.Errorf("%d events streamed over %s came in %d task.multi messages, want ≤ %d (one per %s)",
					n, streamed.Round(time.Millisecond), len(messages), most, interval)
			}
			t.Logf("%d events over %s: %d task.multi messages", n, streamed.Round(time.Millisecond), len(messages))
		})
	}
}

// TestBatchBytes: large events close a task.multi body once it passes 256 KiB.
func TestBatchBytes(t *testing.T) {
	d := New(nil, Config{Hostname: "w@h", TaskEvents: true, Logger: quietLogger()})
	big := strings.Repeat("x", 100<<10)
	for i := range 7 {
		d.Task("task-succeeded", map[string]any{"uuid": fmt.Sprint(i), "result": big})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.full) != 2 || d.curN != 1 || d.queued != 7 {
		t.Fatalf("%d full batches %v, %d in the current one, %d queued; want 2 of 3 events and 1", len(d.full), d.fullN, d.curN, d.queued)
	}
	for _, b := range d.full {
		var evs []map[string]any
		if err := json.Unmarshal(b, &evs); err != nil || len(evs) != 3 {
			t.Fatalf("batch of %d bytes: %d events, %v", len(b), len(evs), err)
		}
	}
}

// deleteKeys removes every key under prefix.
func deleteKeys(t *testing.T, rdb *goredis.Client, prefix string) {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Errorf("cleanup: list %s*: %v", prefix, err)
		return
	}
	if len(keys) > 0 {
		if err := rdb.Del(ctx, keys...).Err(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}
