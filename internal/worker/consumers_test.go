package worker

import (
	"context"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
)

// TestCancelConsumerHandsBack: on both brokers, CancelConsumer hands back every message of
// the queue the worker holds but has not started (waiting for a slot, for a rate-limit
// turn, held for its ETA, which also lowers the prefetch again) before it returns, lets
// the running task finish, and AddConsumer consumes the queue again.
func TestCancelConsumerHandsBack(t *testing.T) {
	for _, amqp := range []bool{false, true} {
		name := map[bool]string{false: "redis", true: "amqp"}[amqp]
		t.Run(name, func(t *testing.T) {
			e := startEnv(t, envOpts{amqp: amqp, cfg: Config{Concurrency: 1, PrefetchMultiplier: 5},
				yaml: "tasks:\n  diag.echo:\n    rate_limit: 1/m\n"})
			running := task(tasks.DiagSleep, 2)
			e.send(t, running)
			waitUntil(t, 10*time.Second, "the sleep running", func() bool { return len(e.w.Snapshot().Active) == 1 })
			later := time.Now().Add(time.Minute).UTC()
			eta := task(tasks.DiagAdd, 1, 1)
			eta.ETA = &later
			waiting := []*protocol.Task{task(tasks.DiagEcho, "turn"), task(tasks.DiagEcho, "next turn"), task(tasks.DiagAdd, 2, 2), eta}
			for _, x := range waiting {
				e.send(t, x)
			}
			waitUntil(t, 10*time.Second, "3 reserved and 1 scheduled", func() bool {
				s := e.w.Snapshot()
				return len(s.Reserved) == 3 && len(s.Scheduled) == 1 && s.Prefetch == 6
			})

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := e.w.CancelConsumer(ctx, e.q); err != nil {
				t.Fatal(err)
			}
			s := e.w.Snapshot()
			if len(s.Active) != 1 || len(s.Reserved) != 0 || len(s.Scheduled) != 0 || len(s.Queues) != 0 {
				t.Fatalf("after CancelConsumer: %d active, %d reserved, %d scheduled, queues %v",
					len(s.Active), len(s.Reserved), len(s.Scheduled), s.Queues)
			}
			if n := e.ready(t); n != len(waiting) {
				t.Fatalf("%d messages back in the queue, want %d", n, len(waiting))
			}
			e.meta(t, running.ID, 10*time.Second, "SUCCESS")
			waitUntil(t, 5*time.Second, "prefetch back to 5", func() bool { return e.w.Snapshot().Prefetch == 5 })
			if err := e.w.CancelConsumer(ctx, e.q); err != nil { // not consumed: nothing
				t.Fatal(err)
			}

			if err := e.w.AddConsumer(ctx, broker.TaskQueue(e.q)); err != nil {
				t.Fatal(err)
			}
			e.meta(t, waiting[2].ID, 10*time.Second, "SUCCESS")
			if qs := e.w.Snapshot().Queues; len(qs) != 1 || qs[0] != e.q {
				t.Fatalf("queues after AddConsumer: %v", qs)
			}
		})
	}
}

// TestRuntimeLimits: SetTimeLimit replaces the task's configured limits (the message's
// header still wins) and SetRateLimit a rate; a bad rate is refused.
func TestRuntimeLimits(t *testing.T) {
	e := startEnv(t, envOpts{cfg: Config{Concurrency: 2}, yaml: "tasks:\n  diag.sleep:\n    time_limit: 30\n"})
	if err := e.w.SetTimeLimit(tasks.DiagSleep, 0, time.Second); err != nil {
		t.Fatal(err)
	}
	limited, ownHeader := task(tasks.DiagSleep, 3), task(tasks.DiagSleep, 2)
	hard := 10.0
	ownHeader.TimeLimit[0] = &hard
	e.send(t, limited)
	e.send(t, ownHeader)
	if m := e.meta(t, limited.ID, 10*time.Second, "FAILURE", "SUCCESS"); m["status"] != "FAILURE" {
		t.Fatalf("diag.sleep(3) under a 1 s limit: %v", m)
	}
	e.meta(t, ownHeader.ID, 10*time.Second, "SUCCESS")

	if err := e.w.SetRateLimit(tasks.DiagEcho, "10/d"); err == nil {
		t.Fatal("rate 10/d accepted")
	}
	if err := e.w.SetRateLimit(tasks.DiagEcho, "2/m"); err != nil || !e.w.limiter.Limited(tasks.DiagEcho) {
		t.Fatalf("SetRateLimit: %v, limited %v", err, e.w.limiter.Limited(tasks.DiagEcho))
	}
	if err := e.w.SetRateLimit(tasks.DiagEcho, ""); err != nil || e.w.limiter.Limited(tasks.DiagEcho) {
		t.Fatalf("lifting the rate limit: %v, limited %v", err, e.w.limiter.Limited(tasks.DiagEcho))
	}
}

// ready counts the messages waiting in the env's queue, from the broker.
func (e *env) ready(t *testing.T) int {
	t.Helper()
	if !e.opts.amqp {
		n := 0
		for _, k := range []string{e.q, e.q + "\x06\x163", e.q + "\x06\x166", e.q + "\x06\x169"} {
			n += int(e.c.LLen(context.Background(), k).Val())
		}
		return n
	}
	conn, err := amqp091.Dial(testAMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(e.q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}
