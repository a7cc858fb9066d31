package worker

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
)

// TestObserverEvents pins down which Celery task events the worker reports, in order, for
// each way a task can end (task-received/started/succeeded/failed/retried/revoked, plus
// the dead-lettering of unknown tasks).
func TestObserverEvents(t *testing.T) {
	e := startEnv(t, envOpts{cfg: Config{Concurrency: 2}})
	past := time.Now().Add(-time.Minute)
	expired := task(tasks.DiagEcho, "x")
	expired.Expires = &past
	cases := []struct {
		name      string
		task      *protocol.Task
		state     string
		want      []string
		unordered bool
	}{
		{"success", task(tasks.DiagAdd, 2, 3), "SUCCESS", []string{"received", "started", "succeeded"}, false},
		{"failure", task(tasks.DiagFail, "boom"), "FAILURE", []string{"received", "started", "failed=RuntimeError"}, false},
		{"retry then success", task(tasks.DiagFlaky, 1), "SUCCESS",
			[]string{"received", "started", "retried=Retry", "received", "started", "succeeded"}, true},
		{"expired at receipt", expired, "REVOKED", []string{"revoked=false/true"}, false},
		{"unknown task", task("no.such.task"), "FAILURE", []string{"failed=NotRegistered", "deadlettered=unknown_task"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.send(t, tc.task)
			e.meta(t, tc.task.ID, 20*time.Second, tc.state)
			waitUntil(t, 5*time.Second, "events", func() bool { return len(e.rec.of(tc.task.ID)) >= len(tc.want) })
			got := e.rec.of(tc.task.ID)
			if tc.unordered {
				// The retry message may be received before task-retried is reported.
				got, tc.want = slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(tc.want))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("events %v, want %v", got, tc.want)
			}
		})
	}
	info := e.rec.infos[cases[0].task.ID]
	if info.ArgsRepr != "(2, 3)" || info.Queue != e.q || info.Hostname != "wt@test" || info.RootID != cases[0].task.ID {
		t.Fatalf("task info %+v", info)
	}
}

// TestSnapshotAndRevoke pins down Celery's inspect active/reserved/scheduled views and the
// revoke command: revoked tasks that have not started are discarded at once (REVOKED,
// acked), ETA tasks raise the prefetch while held, and revoke(terminate=True) stops a
// running task (REVOKED 'terminated') and frees its slot.
func TestSnapshotAndRevoke(t *testing.T) {
	e := startEnv(t, envOpts{cfg: Config{Concurrency: 1, PrefetchMultiplier: 3}})
	a, b := task(tasks.DiagSleep, 30), task(tasks.DiagSleep, 30)
	c := task(tasks.DiagEcho, "later")
	eta := time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)
	c.ETA = &eta
	for _, x := range []*protocol.Task{a, b, c} {
		e.send(t, x)
	}
	var s Snapshot
	waitUntil(t, 10*time.Second, "a active, b reserved, c scheduled", func() bool {
		s = e.w.Snapshot()
		return len(s.Active) == 1 && len(s.Reserved) == 1 && len(s.Scheduled) == 1
	})
	if s.Active[0].ID != a.ID || s.Reserved[0].ID != b.ID || s.Scheduled[0].Request.ID != c.ID {
		t.Fatalf("active %v reserved %v scheduled %v", ids(s.Active), ids(s.Reserved), s.Scheduled)
	}
	if s.Active[0].TimeStart.IsZero() || s.Active[0].Acknowledged || s.Scheduled[0].Priority != 6 ||
		!s.Scheduled[0].ETA.Equal(eta) {
		t.Fatalf("snapshot details %+v / %+v", s.Active[0], s.Scheduled[0])
	}
	waitUntil(t, 5*time.Second, "prefetch raised for the held ETA task", func() bool { return e.w.Snapshot().Prefetch == 4 })

	if err := e.w.Revoke(context.Background(), []string{b.ID, c.ID}, false); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{b.ID, c.ID} {
		m := e.meta(t, id, 10*time.Second, "REVOKED")
		if exc := m["result"].(map[string]any); exc["exc_type"] != "TaskRevokedError" || exc["exc_message"].([]any)[0] != "revoked" {
			t.Fatalf("revoked result %v", exc)
		}
	}
	waitUntil(t, 5*time.Second, "prefetch back to base", func() bool { return e.w.Snapshot().Prefetch == 3 })
	if s := e.w.Snapshot(); len(s.Reserved) != 0 || len(s.Scheduled) != 0 || len(s.Active) != 1 {
		t.Fatalf("after revoke: %+v", s)
	}

	if err := e.w.Revoke(context.Background(), []string{a.ID}, true); err != nil {
		t.Fatal(err)
	}
	m := e.meta(t, a.ID, 10*time.Second, "REVOKED")
	if m["result"].(map[string]any)["exc_message"].([]any)[0] != "terminated" {
		t.Fatalf("terminated result %v", m["result"])
	}
	waitUntil(t, 5*time.Second, "revoked events", func() bool {
		return slices.Contains(e.rec.of(a.ID), "revoked=true/false") && slices.Contains(e.rec.of(b.ID), "revoked=false/false")
	})
	// The slot is free: the next task runs.
	d := task(tasks.DiagAdd, 1, 1)
	e.send(t, d)
	e.meta(t, d.ID, 10*time.Second, "SUCCESS")
	s = e.w.Snapshot()
	if s.Counters.Revoked != 3 || s.Counters.AbandonedTotal != 1 || s.Totals[tasks.DiagAdd] != 1 {
		t.Fatalf("counters %+v totals %v", s.Counters, s.Totals)
	}
	// A revoked id arriving later is discarded on receipt.
	if err := e.w.Revoke(context.Background(), []string{"late-id"}, false); err != nil {
		t.Fatal(err)
	}
	late := task(tasks.DiagAdd, 1, 2)
	late.ID = "late-id"
	e.send(t, late)
	e.meta(t, late.ID, 10*time.Second, "REVOKED")
}

// TestTimeLimits pins down Celery's soft and hard time limits: the soft limit cancels the
// handler's context with SoftTimeLimitExceeded and lets it return; the hard limit records
// FAILURE TimeLimitExceeded without waiting for the handler, frees the slot and counts the
// abandoned goroutine until it returns. Header [hard, soft] wins over the configuration.
func TestTimeLimits(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	e := startEnv(t, envOpts{
		cfg:  Config{Concurrency: 1},
		yaml: "tasks:\n  t.polite:\n    soft_time_limit: 0.2\n",
		setup: func(reg *tasks.Registry) {
			reg.HandleFunc("t.stubborn", func(ctx context.Context, r *tasks.Request) (any, error) {
				<-release // ignores its context
				return "late", nil
			})
			reg.HandleFunc("t.polite", func(ctx context.Context, r *tasks.Request) (any, error) {
				<-ctx.Done()
				if errors.Is(context.Cause(ctx), tasks.ErrSoftTimeLimitExceeded) {
					return "cleaned up", nil
				}
				return nil, context.Cause(ctx)
			})
		},
	})
	polite := task("t.polite")
	e.send(t, polite)
	if m := e.meta(t, polite.ID, 10*time.Second, "SUCCESS", "FAILURE"); m["result"] != "cleaned up" {
		t.Fatalf("soft limit from config: %v", m)
	}
	soft := task(tasks.DiagSleep, 30)
	half := 0.3
	soft.TimeLimit[1] = &half
	e.send(t, soft)
	if m := e.meta(t, soft.ID, 10*time.Second, "FAILURE"); m["result"].(map[string]any)["exc_type"] != "SoftTimeLimitExceeded" {
		t.Fatalf("soft limit: %v", m)
	}

	stubborn := task("t.stubborn")
	hard := 0.3
	stubborn.TimeLimit[0] = &hard
	e.send(t, stubborn)
	m := e.meta(t, stubborn.ID, 10*time.Second, "FAILURE")
	exc := m["result"].(map[string]any)
	if exc["exc_type"] != "TimeLimitExceeded" || exc["exc_module"] != "billiard.exceptions" {
		t.Fatalf("hard limit: %v", exc)
	}
	if n := e.w.Snapshot().Counters.AbandonedRunning; n != 1 {
		t.Fatalf("abandoned running %d, want 1", n)
	}
	next := task(tasks.DiagAdd, 1, 1)
	e.send(t, next)
	e.meta(t, next.ID, 10*time.Second, "SUCCESS") // the slot was freed
	free()
	waitUntil(t, 5*time.Second, "abandoned goroutine gone", func() bool { return e.w.Snapshot().Counters.AbandonedRunning == 0 })
	if m := e.meta(t, stubborn.ID, time.Second, "FAILURE"); m["status"] != "FAILURE" {
		t.Fatal("the abandoned task's late result overwrote FAILURE")
	}
}

// TestETABound pins down the bound on held ETA messages: up to MaxETATasks each raises the
// prefetch; past it a message is handed back, and when it comes straight back it is held
// within the ordinary prefetch instead of bouncing.
func TestETABound(t *testing.T) {
	e := startEnv(t, envOpts{cfg: Config{Concurrency: 1, PrefetchMultiplier: 4, MaxETATasks: 1}})
	soon := time.Now().Add(3 * time.Second).UTC()
	a, b := task(tasks.DiagAdd, 1, 1), task(tasks.DiagAdd, 2, 2)
	a.ETA, b.ETA = &soon, &soon
	e.send(t, a)
	waitUntil(t, 5*time.Second, "a scheduled", func() bool { return len(e.w.Snapshot().Scheduled) == 1 })
	e.send(t, b)
	waitUntil(t, 5*time.Second, "both scheduled", func() bool { return len(e.w.Snapshot().Scheduled) == 2 })
	if p := e.w.Snapshot().Prefetch; p != 5 {
		t.Fatalf("prefetch %d, want 4 + 1 (only one ETA task raises it)", p)
	}
	for _, x := range []*protocol.Task{a, b} {
		m := e.meta(t, x.ID, 15*time.Second, "SUCCESS")
		done, err := protocol.ParseISO8601(m["date_done"].(string), time.UTC)
		if err != nil || done.Before(soon) {
			t.Fatalf("task %s done at %v, before its eta %v", x.ID, done, soon)
		}
	}
}

// TestETADoesNotStarve pins down Celery's prefetch raise for held ETA tasks, on both
// brokers: with a prefetch of one, a held countdown task does not keep a runnable task from
// being delivered and run first.
func TestETADoesNotStarve(t *testing.T) {
	for _, amqp := range []bool{false, true} {
		name := map[bool]string{false: "redis", true: "amqp"}[amqp]
		t.Run(name, func(t *testing.T) {
			e := startEnv(t, envOpts{amqp: amqp, cfg: Config{Concurrency: 1, PrefetchMultiplier: 1}})
			later := time.Now().Add(4 * time.Second).UTC()
			held, now := task(tasks.DiagAdd, 1, 1), task(tasks.DiagAdd, 2, 2)
			held.ETA = &later
			e.send(t, held)
			waitUntil(t, 10*time.Second, "the ETA task held", func() bool { return len(e.w.Snapshot().Scheduled) == 1 })
			e.send(t, now)
			e.meta(t, now.ID, 10*time.Second, "SUCCESS")
			if m, _ := e.rb.Get(context.Background(), held.ID); m != nil {
				t.Fatalf("the held task ran before its eta: %v", m)
			}
			e.meta(t, held.ID, 15*time.Second, "SUCCESS")
			waitUntil(t, 5*time.Second, "prefetch back to 1", func() bool { return e.w.Snapshot().Prefetch == 1 })
		})
	}
}

// TestRateLimitWithoutSlot pins down Celery's per-worker rate_limit: limited tasks run one
// interval apart and, while waiting, hold no concurrency slot.
func TestRateLimitWithoutSlot(t *testing.T) {
	// The prefetch (1 × 10) covers every message: what is tested is the slot, not the prefetch.
	e := startEnv(t, envOpts{cfg: Config{Concurrency: 1, PrefetchMultiplier: 10},
		yaml: "tasks:\n  diag.echo:\n    rate_limit: 4/s\n"})
	start := time.Now()
	var limited []*protocol.Task
	for i := range 6 {
		x := task(tasks.DiagEcho, i)
		limited = append(limited, x)
		e.send(t, x)
	}
	free := task(tasks.DiagAdd, 1, 1)
	e.send(t, free)
	doneAt := func(id string) time.Time {
		m := e.meta(t, id, 20*time.Second, "SUCCESS")
		d, err := protocol.ParseISO8601(m["date_done"].(string), time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	var last time.Time
	for _, x := range limited {
		if d := doneAt(x.ID); d.After(last) {
			last = d
		}
	}
	if el := time.Since(start); el < 1250*time.Millisecond {
		t.Fatalf("6 tasks at 4/s took %v, want at least 1.25s", el)
	}
	if f := doneAt(free.ID); !f.Before(last) {
		t.Fatalf("the unlimited task (done %v) waited behind rate-limited ones (last done %v)", f, last)
	}
}

// TestRetryMessage pins down Celery's Task.retry message: same id, retries+1, eta,
// parent_id (the task itself when it had none), stamps and custom headers kept, fleet
// dead-letter headers dropped, body bytes unchanged, expiration recomputed from expires.
func TestRetryMessage(t *testing.T) {
	expires := time.Now().Add(time.Hour).UTC()
	orig := protocol.NewTask("x.y", []any{json.Number("7")}, map[string]any{"k": "v"})
	orig.Expires = &expires
	orig.Headers = map[string]any{"stamps": map[string]any{"a": "b"}, "custom": "c", "x-fleet-dlq-reason": "task_failed"}
	m0, err := protocol.EncodeTask(orig)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := protocol.Decode(m0)
	if err != nil {
		t.Fatal(err)
	}
	w := &Worker{origin: "gen1@host"}
	cases := []struct {
		name      string
		parent    string
		wantParen string
	}{
		{"first retry: parent is the task itself", "", decoded.ID},
		{"chain step: parent kept", "p-1", "p-1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := *decoded
			in.ParentID = tc.parent
			eta := time.Now().Add(time.Second).UTC()
			m, err := w.retryMessage(&in, 1, eta)
			if err != nil {
				t.Fatal(err)
			}
			got, err := protocol.Decode(m)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != in.ID || got.Retries != 1 || got.ParentID != tc.wantParen || got.RootID != in.RootID ||
				!got.ETA.Equal(eta.Truncate(time.Microsecond)) || got.Origin != "gen1@host" {
				t.Fatalf("retry %+v", got)
			}
			if string(m.Body) != string(m0.Body) {
				t.Fatalf("body changed:\n%s\n%s", m.Body, m0.Body)
			}
			if got.Headers["custom"] != "c" || got.Headers["stamps"] == nil || got.Headers["x-fleet-dlq-reason"] != nil {
				t.Fatalf("headers %v", got.Headers)
			}
			if m.Properties.Expiration == "" || m.Properties.CorrelationID != in.ID {
				t.Fatalf("properties %+v", m.Properties)
			}
		})
	}
}

// TestMemoryRevoked pins down Celery's LimitedSet for revoked ids: entries expire, and past
// the maximum the oldest go first; re-adding refreshes an entry.
func TestMemoryRevoked(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	m := NewMemoryRevoked(3, time.Hour)
	m.now = func() time.Time { return now }
	step := func(d time.Duration) { now = now.Add(d) }
	_ = m.Add(ctx, "a", "b", "c")
	step(time.Minute)
	_ = m.Add(ctx, "a") // refresh a: b is now the oldest
	_ = m.Add(ctx, "d") // over the maximum: b goes
	cases := []struct {
		id   string
		want bool
	}{{"a", true}, {"b", false}, {"c", true}, {"d", true}, {"zz", false}}
	for _, tc := range cases {
		if got, _ := m.Contains(ctx, tc.id); got != tc.want {
			t.Errorf("Contains(%s) = %v, want %v", tc.id, got, tc.want)
		}
	}
	step(time.Hour - 30*time.Second) // c (added at 0) expired; a and d (added at 1m) not
	if got, _ := m.Contains(ctx, "c"); got {
		t.Error("c should have expired")
	}
	l, _ := m.List(ctx)
	var keys []string
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if strings.Join(keys, ",") != "a,d" {
		t.Fatalf("list %v", keys)
	}
	for range 10000 {
		_ = m.Add(ctx, "a")
	}
	if len(m.order)-m.head > 4*3+1024+1 {
		t.Fatalf("order grew to %d with one live id", len(m.order)-m.head)
	}
}

// TestConsumerAlive: on both brokers the worker's consumer probe keeps up with the clock
// while it consumes, idle or busy; it falls behind while the dispatch loop is stuck (here
// in a blocking OnDelivery hook), catches up once it turns again, and is zero after Run.
func TestConsumerAlive(t *testing.T) {
	for _, amqp := range []bool{false, true} {
		name := map[bool]string{false: "redis", true: "amqp"}[amqp]
		t.Run(name, func(t *testing.T) {
			block := make(chan struct{})
			var blocked atomic.Bool
			e := startEnv(t, envOpts{amqp: amqp, before: func(w *Worker) {
				w.OnDelivery(func(d *broker.Delivery) {
					if strings.Contains(string(d.Message.Body), "stuck-dispatch") {
						blocked.Store(true)
						<-block
					}
				})
			}})
			fresh := func(what string) {
				t.Helper()
				waitUntil(t, 10*time.Second, what, func() bool {
					return time.Since(e.w.ConsumerAlive()) < dispatchTick+500*time.Millisecond
				})
			}
			fresh("idle")
			tk := task("diag.add", 2, 3)
			e.send(t, tk)
			e.meta(t, tk.ID, 10*time.Second, "SUCCESS")
			fresh("after a task")

			stuck := task("diag.echo", "stuck-dispatch")
			e.send(t, stuck)
			waitUntil(t, 10*time.Second, "dispatch blocked", blocked.Load)
			time.Sleep(2*dispatchTick + 500*time.Millisecond)
			if age := time.Since(e.w.ConsumerAlive()); age < 2*dispatchTick {
				t.Errorf("dispatch stuck for %s: ConsumerAlive only %s old", 2*dispatchTick, age)
			}
			close(block)
			e.meta(t, stuck.ID, 10*time.Second, "SUCCESS")
			fresh("dispatching again")

			e.stop()
			<-e.stopped
			if at := e.w.ConsumerAlive(); !at.IsZero() {
				t.Errorf("after Run: %v", at)
			}
		})
	}
}
