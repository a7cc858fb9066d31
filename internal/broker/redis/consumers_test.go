package redis

import (
	"context"
	"fmt"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
)

// TestAddCancelQueue: AddQueue adds a queue (and its kombu binding) to the running fetch
// loop; CancelQueue stops fetching from it, a message of it fetched but not taken by the
// caller goes back to its list, and what the caller holds stays the caller's; cancelling
// every queue idles the loop until one is added again.
func TestAddCancelQueue(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q1, q2, ex := queueName("cq1"), queueName("cq2"), queueName("cqex")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const prefetch = 3
	dels, _ := f.consume(b, prefetch, q1)

	if err := b.AddQueue(ctx, broker.QueueSpec{Name: q2, Exchange: ex, ExchangeType: "direct", RoutingKey: "rk"}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddQueue(ctx, broker.TaskQueue(q2)); err != nil { // already consumed: nothing
		t.Fatal(err)
	}
	if err := b.Publish(ctx, broker.Publishing{Exchange: ex, RoutingKey: "rk", Message: msg("via-ex", 0)}); err != nil {
		t.Fatalf("publish through the added binding: %v", err)
	}
	d := recv(t, dels)
	if d.Queue != q2 || idOf(d) != "via-ex" {
		t.Fatalf("delivery %s from %s", idOf(d), d.Queue)
	}
	ack(t, b, d)

	// The caller takes one message of q2 and stops reading; the fetch loop holds the
	// next one, waiting to hand it over.
	for i := range 5 {
		f.publish(b, q2, msg(fmt.Sprintf("m%d", i), 0))
	}
	held := recv(t, dels)
	waitFor(t, 10*time.Second, "more messages fetched", func() bool { return f.llen(f.prefix+q2) <= 3 })
	if err := b.CancelQueue(ctx, q2); err != nil {
		t.Fatal(err)
	}
	if n := f.llen(f.prefix + q2); n != 4 {
		t.Fatalf("after CancelQueue %d in %s, want 4 (all but the one the caller holds)", n, q2)
	}
	if n := f.hlen(f.prefix + "unacked"); n != 1 {
		t.Fatalf("%d leases after CancelQueue, want 1 (the held delivery)", n)
	}
	expectNone(t, dels, 300*time.Millisecond)
	if err := b.Requeue(ctx, held); err != nil {
		t.Fatalf("settling a delivery of the cancelled queue: %v", err)
	}
	if n := f.llen(f.prefix + q2); n != 5 {
		t.Fatalf("%d in %s after the requeue, want 5", n, q2)
	}

	// No queue at all: the loop idles; q1 added back is fetched again.
	if err := b.CancelQueue(ctx, q1); err != nil {
		t.Fatal(err)
	}
	f.publish(b, q1, msg("idle", 0))
	expectNone(t, dels, 300*time.Millisecond)
	if err := b.AddQueue(ctx, broker.TaskQueue(q1)); err != nil {
		t.Fatal(err)
	}
	if d := recv(t, dels); d.Queue != q1 || idOf(d) != "idle" {
		t.Fatalf("delivery %s from %s", idOf(d), d.Queue)
	} else {
		ack(t, b, d)
	}
	if n := f.llen(f.prefix + q2); n != 5 {
		t.Fatalf("%d in the cancelled %s, want 5", n, q2)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
