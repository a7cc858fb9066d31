package amqp

import (
	"context"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
)

// TestAddCancelQueue: AddQueue consumes a queue bound to its own exchange and routing key
// on the running Consume; CancelQueue gives back at once what RabbitMQ pushed but the
// caller has not taken, leaves what the caller holds to the caller, and the other queue
// goes on; a refused declaration fails AddQueue without touching the consuming channel.
func TestAddCancelQueue(t *testing.T) {
	a := newAdmin(t)
	q1, q2, q3, ex := uniqueName(t, "cq1"), uniqueName(t, "cq2"), uniqueName(t, "cq3"), uniqueName(t, "cqex")
	a.cleanup(q1, q2, q3, ex)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const prefetch = 3
	dels, err := b.Consume(ctx, []string{q1}, prefetch)
	if err != nil {
		t.Fatal(err)
	}

	if err := b.AddQueue(ctx, broker.QueueSpec{Name: q2, Exchange: ex, ExchangeType: "direct", RoutingKey: "rk"}); err != nil {
		t.Fatal(err)
	}
	if err := b.AddQueue(ctx, broker.TaskQueue(q2)); err != nil { // already consumed: nothing
		t.Fatal(err)
	}
	if err := b.Publish(ctx, broker.Publishing{Exchange: ex, RoutingKey: "rk", Message: textMessage("via-ex")}); err != nil {
		t.Fatal(err)
	}
	d := recv(t, dels)
	if d.Queue != q2 || string(d.Message.Body) != "via-ex" || d.Exchange != ex || d.RoutingKey != "rk" {
		t.Fatalf("delivery %q from %s via %s/%s", d.Message.Body, d.Queue, d.Exchange, d.RoutingKey)
	}
	if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}

	// The caller takes one delivery of q2 and stops reading: RabbitMQ pushes two more
	// (prefetch 3), which the transport holds.
	publishN(t, b, q2, 5)
	held := recv(t, dels)
	waitFor(t, 10*time.Second, "prefetch filled", func() bool { return a.depth(q2) == 5-prefetch })
	if err := b.CancelQueue(ctx, q2); err != nil {
		t.Fatal(err)
	}
	if n := a.depth(q2); n != 4 {
		t.Fatalf("after CancelQueue %d ready in %s, want 4 (all but the one the caller holds)", n, q2)
	}
	if err := b.CancelQueue(ctx, q2); err != nil { // not consumed any more: nothing
		t.Fatal(err)
	}
	noRecv(t, dels, 300*time.Millisecond)
	if err := b.Requeue(ctx, held); err != nil {
		t.Fatalf("settling a delivery of the cancelled queue: %v", err)
	}
	waitFor(t, 5*time.Second, "held delivery requeued", func() bool { return a.depth(q2) == 5 })
	noRecv(t, dels, 300*time.Millisecond)

	// q3 exists with other arguments: 406 on the declaration, consuming goes on.
	if err := a.do(func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(q3, true, false, false, false, amqp091.Table{"x-max-priority": int32(5)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q1, 1)
	before := recv(t, dels)
	if err := b.AddQueue(ctx, broker.TaskQueue(q3)); err == nil {
		t.Fatal("AddQueue of a queue declared with other arguments succeeded")
	}
	if err := b.Ack(ctx, before); err != nil {
		t.Fatalf("ack after a refused AddQueue: %v (the consuming channel must survive)", err)
	}
	publishN(t, b, q1, 1)
	if d := recv(t, dels); d.Queue != q1 {
		t.Fatalf("delivery from %s", d.Queue)
	} else if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got := b.activeConsumer().queueNames(); len(got) != 1 || got[0] != q1 {
		t.Fatalf("consumed queues %v, want [%s]", got, q1)
	}
}

// TestQueuesSurviveReconnect: a queue added at run time is consumed again after the
// connection is cut, and a cancelled one is not.
func TestQueuesSurviveReconnect(t *testing.T) {
	a := newAdmin(t)
	q1, q2 := uniqueName(t, "rq1"), uniqueName(t, "rq2")
	a.cleanup(q1, q2)
	proxy, b := proxied(t)
	pub := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dels, err := b.Consume(ctx, []string{q1}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.AddQueue(ctx, broker.TaskQueue(q2)); err != nil {
		t.Fatal(err)
	}
	if err := b.CancelQueue(ctx, q1); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	publishN(t, pub, q2, 1)
	publishN(t, pub, q1, 1)
	d := recv(t, dels)
	if d.Queue != q2 {
		t.Fatalf("delivery from %s after the reconnect, want %s", d.Queue, q2)
	}
	if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	noRecv(t, dels, 500*time.Millisecond)
	if n := a.depth(q1); n != 1 {
		t.Fatalf("%d ready in the cancelled %s, want 1", n, q1)
	}
}
