package amqp

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
)

// Concurrent acks in any order are coalesced where that is exact, and only there:
// deliveries held unsettled while everything else is acked stay on the broker and come
// back when the consumer goes away; nothing else does.
func TestAckCoalescingKeepsUnsettled(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "ackbatch")
	a.cleanup(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 300
	dels, err := b.Consume(ctx, []string{q}, n)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q, n)
	got := make([]*broker.Delivery, n)
	for i := range got {
		got[i] = recv(t, dels)
	}
	held := map[int]bool{n / 3: true, 2 * n / 3: true}
	order := rand.Perm(n)
	var wg sync.WaitGroup
	for _, i := range order {
		if held[i] {
			continue
		}
		wg.Go(func() {
			if err := b.Ack(ctx, got[i]); err != nil {
				t.Errorf("ack %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if err := b.Ack(ctx, got[1]); err == nil {
		t.Error("a second ack of a settled delivery succeeded")
	}
	waitFor(t, 10*time.Second, "acks applied", func() bool { return a.depth(q) == 0 })
	if b.multiAcks.Load() == 0 {
		t.Error("no ack was coalesced")
	}
	b.Close() // the held deliveries go back to the queue
	waitFor(t, 10*time.Second, "held deliveries back in the queue", func() bool { return a.depth(q) == len(held) })
	bodies := map[string]bool{}
	for range len(held) {
		d, ok := a.get(q)
		if !ok {
			t.Fatal("queue emptied early")
		}
		bodies[string(d.Body)] = true
	}
	for i := range held {
		if !bodies[string(got[i].Message.Body)] {
			t.Errorf("held delivery %d (%s) did not come back; got %v", i, got[i].Message.Body, bodies)
		}
	}
}

// After the held deliveries are settled too, the bookkeeping has caught up: every tag
// is settled and nothing is remembered above the watermark.
func TestAckCoalescingWatermark(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "ackmark")
	a.cleanup(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 100
	dels, err := b.Consume(ctx, []string{q}, n)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q, n)
	got := make([]*broker.Delivery, n)
	for i := range got {
		got[i] = recv(t, dels)
	}
	var wg sync.WaitGroup
	for i := n - 1; i >= 1; i-- {
		wg.Go(func() {
			if err := b.Ack(ctx, got[i]); err != nil {
				t.Errorf("ack %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if err := b.Requeue(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	cc := got[0].Handle.(handle).cc
	cc.mu.Lock()
	low, above := cc.low, len(cc.above)
	cc.mu.Unlock()
	if low != got[n-1].Handle.(handle).tag || above != 0 {
		t.Errorf("watermark %d (want %d), %d tags above", low, got[n-1].Handle.(handle).tag, above)
	}
	d := recv(t, dels) // the requeued one comes back
	if string(d.Message.Body) != string(got[0].Message.Body) || !d.Redelivered {
		t.Errorf("redelivered %s (redelivered %v), want %s", d.Message.Body, d.Redelivered, got[0].Message.Body)
	}
	if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "queue empty", func() bool { return a.depth(q) == 0 })
}
