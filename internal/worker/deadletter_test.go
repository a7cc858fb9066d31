package worker

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/flags"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
)

var _ RedeliveryCounter = (*dlq.RedisRedeliveries)(nil)

// brokerCases are the two transports the dead-letter tests run on.
var brokerCases = []struct {
	name string
	amqp bool
}{{"redis", false}, {"amqp", true}}

// takeDLQ consumes n dead letters from the env's DLQ (acking them) and returns them by
// task id.
func (e *env) takeDLQ(t *testing.T, n int) map[string]*broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := openBroker(t, e.opts, e.q, e.log) // an AMQP broker consumes once at a time
	defer b.Close()
	ch, err := b.Consume(ctx, []string{dlq.QueueName(e.q)}, n)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*broker.Delivery{}
	for len(out) < n {
		select {
		case d := <-ch:
			if err := b.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
			id, _ := d.Message.Headers["id"].(string)
			out[id] = d
		case <-ctx.Done():
			t.Fatalf("%d of %d dead letters in %s.dlq", len(out), n, e.q)
		}
	}
	return out
}

// checkLetter checks the x-fleet-dlq-* headers of a dead letter of the env's queue.
func (e *env) checkLetter(t *testing.T, d *broker.Delivery, reason string) {
	t.Helper()
	h := d.Message.Headers
	if h[dlq.HeaderReason] != reason || h[dlq.HeaderQueue] != e.q || h[dlq.HeaderWorker] != "wt@test" {
		t.Errorf("dead letter headers %v, want reason %s from %s", h, reason, e.q)
	}
	if s, _ := h[dlq.HeaderError].(string); s == "" {
		t.Errorf("no %s header: %v", dlq.HeaderError, h)
	}
	if s, _ := h[dlq.HeaderTime].(string); s == "" {
		t.Errorf("no %s header: %v", dlq.HeaderTime, h)
	} else if at, err := time.Parse(time.RFC3339, s); err != nil || time.Since(at) > time.Minute {
		t.Errorf("%s = %q", dlq.HeaderTime, s)
	}
	if n, _ := strconv.Atoi(headerText(h[dlq.HeaderAttempts])); n != 1 {
		t.Errorf("%s = %v", dlq.HeaderAttempts, h[dlq.HeaderAttempts])
	}
}

func headerText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return ""
	default:
		b, _ := protocol.MarshalJSON(x)
		return string(b)
	}
}

// TestDeadLetterRejectedAndFlagDisabled: a handler that rejects its message without requeue
// (tasks.Reject) sends it to Q.dlq with reason rejected and nothing stored; a task gated by
// tasks.RequireFlag whose flag is off is stored as FAILURE FlagDisabledError and
// dead-lettered with reason flag_disabled, even without dead_letter_on_failure and never
// retried. Both brokers, a real worker.
func TestDeadLetterRejectedAndFlagDisabled(t *testing.T) {
	fl, err := flags.New(flags.Options{LookupEnv: func(name string) (string, bool) {
		if name == flags.VoiceEnabled {
			return "false", true
		}
		return "", false
	}})
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan string, 4)
	for _, bc := range brokerCases {
		t.Run(bc.name, func(t *testing.T) {
			e := startEnv(t, envOpts{amqp: bc.amqp, yaml: "tasks:\n  wt.voice:\n    autoretry_for: [Exception]\n    max_retries: 3\n",
				setup: func(reg *tasks.Registry) {
					reg.HandleFunc("wt.reject", func(ctx context.Context, r *tasks.Request) (any, error) {
						return nil, tasks.Reject(false, errors.New("payload refers to a deleted crew"))
					})
					reg.Register("wt.voice", tasks.RequireFlag(flags.VoiceEnabled, fl,
						tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
							ran <- r.ID
							return "spoken", nil
						})))
				}})
			rejected, gated := task("wt.reject", 1), task("wt.voice", "hello")
			e.send(t, rejected)
			e.send(t, gated)
			letters := e.takeDLQ(t, 2)
			e.checkLetter(t, letters[rejected.ID], dlq.ReasonRejected)
			e.checkLetter(t, letters[gated.ID], dlq.ReasonFlagDisabled)
			if got := letters[rejected.ID].Message.Headers[dlq.HeaderError]; got != "Reject: payload refers to a deleted crew" {
				t.Errorf("rejected error header %q", got)
			}
			m := e.meta(t, gated.ID, 5*time.Second, "FAILURE")
			if r, _ := m["result"].(map[string]any); r["exc_type"] != "FlagDisabledError" || r["exc_module"] != "fleet.errors" {
				t.Errorf("flag_disabled result %v", m)
			}
			if m, err := e.rb.Get(context.Background(), rejected.ID); err != nil || m != nil {
				t.Errorf("a rejected message stores nothing, got %v %v", m, err)
			}
			select {
			case id := <-ran:
				t.Errorf("the gated handler ran for %s", id)
			default:
			}
			if ev := e.rec.of(gated.ID); len(ev) == 0 || ev[len(ev)-1] != "deadlettered=flag_disabled" {
				t.Errorf("events of the gated task %v", ev)
			}
			if ev := e.rec.of(rejected.ID); len(ev) == 0 || ev[len(ev)-1] != "deadlettered=rejected" {
				t.Errorf("events of the rejected task %v", ev)
			}
		})
	}
}

// redeliver publishes the messages of ts to queue q and hands them back k times through b,
// as a consumer that dies holding them would: each time they come back flagged redelivered.
func redeliver(t *testing.T, b broker.Broker, q string, k int, ts ...*protocol.Task) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < k; i++ {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		ch, err := b.Consume(cctx, []string{q}, len(ts)) // declares the queue
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if i == 0 {
			for _, task := range ts {
				m, err := protocol.EncodeTask(task)
				if err == nil {
					err = b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: m})
				}
				if err != nil {
					cancel()
					t.Fatal(err)
				}
			}
		}
		var held []*broker.Delivery
		for len(held) < len(ts) {
			select {
			case d := <-ch:
				if i > 0 && !d.Redelivered {
					t.Errorf("round %d: a delivery is not flagged redelivered", i)
				}
				held = append(held, d)
			case <-cctx.Done():
				t.Fatalf("round %d: %d of %d deliveries", i, len(held), len(ts))
			}
		}
		cancel()
		for x := range ch {
			held = append(held, x)
		}
		for _, d := range held {
			if err := b.Requeue(ctx, d); err != nil && !errors.Is(err, broker.ErrStaleDelivery) {
				t.Fatal(err)
			}
		}
	}
}

// TestWorkerLost pins down reason worker_lost: a message redelivered more than
// MaxRedeliveries times is not run again but stored as FAILURE WorkerLostError and
// dead-lettered, its count dropped; below the limit it runs (and its count is dropped with
// the outcome). The count is fleet-wide in Redis, preset here as the workers that died
// before would have left it. A message handed back on purpose (shutdown) is not counted.
func TestWorkerLost(t *testing.T) {
	const limit = 2
	ropts, _ := goredis.ParseURL(testRedisURL)
	c := goredis.NewClient(ropts)
	defer c.Close()
	for _, bc := range brokerCases {
		t.Run(bc.name, func(t *testing.T) {
			ctx := context.Background()
			counter := dlq.NewRedisRedeliveries(c, uniqueName("wt_redelivered")+":", time.Hour)
			lost, fine, held := task(tasks.DiagAdd, 1, 2), task(tasks.DiagAdd, 3, 4), task(tasks.DiagEcho, "later")
			eta := time.Now().Add(time.Hour)
			held.ETA = &eta
			t.Cleanup(func() { c.Del(ctx, counter.Key(lost.ID), counter.Key(fine.ID), counter.Key(held.ID)) })
			for id, n := range map[string]int{lost.ID: limit, fine.ID: limit - 1} {
				if err := c.Set(ctx, counter.Key(id), n, time.Hour).Err(); err != nil {
					t.Fatal(err)
				}
			}
			e := startEnv(t, envOpts{amqp: bc.amqp, cfg: Config{MaxRedeliveries: limit, Redeliveries: counter},
				prepare: func(t *testing.T, b broker.Broker, q string) {
					redeliver(t, b, q, 1, lost, fine)
				}})
			e.checkLetter(t, e.takeDLQ(t, 1)[lost.ID], dlq.ReasonWorkerLost)
			m := e.meta(t, lost.ID, 5*time.Second, "FAILURE")
			if r, _ := m["result"].(map[string]any); r["exc_type"] != "WorkerLostError" || r["exc_module"] != "billiard.exceptions" {
				t.Errorf("worker_lost result %v", m)
			}
			if got := e.meta(t, fine.ID, 10*time.Second, "SUCCESS")["result"]; headerText(got) != "7" {
				t.Errorf("result of the task below the limit %v (%T)", got, got)
			}
			if ev := e.rec.of(lost.ID); len(ev) != 2 || ev[0] != "failed=WorkerLostError" || ev[1] != "deadlettered=worker_lost" {
				t.Errorf("events of the lost task %v (it must not run)", ev)
			}
			for _, id := range []string{lost.ID, fine.ID} {
				waitUntil(t, 5*time.Second, "count of "+id+" dropped with its outcome", func() bool {
					return c.Exists(ctx, counter.Key(id)).Val() == 0
				})
			}

			// Shutdown hands the held ETA message back: its next redelivery is excused.
			e.send(t, held)
			waitUntil(t, 10*time.Second, "ETA task held", func() bool { return len(e.w.Snapshot().Scheduled) == 1 })
			e.stop()
			<-e.stopped
			if n, err := c.Get(ctx, counter.Key(held.ID)).Int(); err != nil || n != -1 {
				t.Errorf("count after a hand-back at shutdown: %d %v, want -1", n, err)
			}
		})
	}
}

// TestWorkerLostWithoutRedis: without a fleet-wide counter redeliveries are not counted: a
// message redelivered more often than the limit still runs.
func TestWorkerLostWithoutRedis(t *testing.T) {
	const limit = 1
	for _, bc := range brokerCases {
		t.Run(bc.name, func(t *testing.T) {
			many := task(tasks.DiagAdd, 1, 2)
			e := startEnv(t, envOpts{amqp: bc.amqp, cfg: Config{MaxRedeliveries: limit},
				prepare: func(t *testing.T, b broker.Broker, q string) { redeliver(t, b, q, limit+2, many) }})
			e.meta(t, many.ID, 10*time.Second, "SUCCESS")
			if got := e.w.redeliveryMode(); got != "not counted (no counter: no Redis)" {
				t.Errorf("redelivery mode %q", got)
			}
		})
	}
}

func TestRedeliveryLimitFlag(t *testing.T) {
	cases := []struct {
		in   string
		want int
		ok   bool
	}{{"5", 5, true}, {"0", 0, true}, {" 12 ", 12, true}, {"-1", 0, false}, {"many", 0, false}, {"2.5", 0, false}}
	for _, tc := range cases {
		var l RedeliveryLimit
		err := l.Set(tc.in)
		if (err == nil) != tc.ok || (tc.ok && int(l) != tc.want) {
			t.Errorf("Set(%q) = %d, %v", tc.in, l, err)
		}
		if tc.ok && l.String() != strconv.Itoa(tc.want) {
			t.Errorf("String() = %q", l.String())
		}
	}
}
