package amqp

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/testutil/tcpproxy"
)

// proxied starts a tcpproxy in front of RabbitMQ and a broker that connects through it.
func proxied(t *testing.T) (*tcpproxy.Proxy, *Broker) {
	t.Helper()
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	p := tcpproxy.Start(t, u.Host)
	pu := *u
	pu.Host = p.Addr()
	b := newBroker(t, Options{URL: pu.String(), ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	return p, b
}

// TestReconnectConsume: the connection is cut mid-stream; the same delivery channel goes
// on delivering, every published message is eventually acked, and settling a delivery
// from before the cut reports ErrStaleDelivery.
func TestReconnectConsume(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "reconnect")
	a.cleanup(q)
	proxy, b := proxied(t)
	pub := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	dels, err := b.Consume(ctx, []string{q}, 10)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	pubErr := make(chan error, 1)
	go func() {
		for i := range n {
			if err := pub.Publish(ctx, broker.Publishing{RoutingKey: q, Message: textMessage(strconv.Itoa(i))}); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()

	acked := make(map[string]int) // body → successful acks (>1: duplicate delivery)
	var held *broker.Delivery
	stale, cuts := 0, 0
	for len(acked) < n {
		d := recv(t, dels)
		if held == nil {
			held = d // kept unsettled across the cut
			continue
		}
		if (cuts == 0 && len(acked) >= n/3) || (cuts == 1 && len(acked) >= 2*n/3) {
			proxy.Cut()
			cuts++
		}
		switch err := b.Ack(ctx, d); {
		case err == nil:
			acked[string(d.Message.Body)]++
		case errors.Is(err, broker.ErrStaleDelivery):
			stale++
		default:
			t.Fatalf("ack: %v", err)
		}
	}
	if err := <-pubErr; err != nil {
		t.Fatalf("publisher: %v", err)
	}
	if err := b.Ack(ctx, held); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Errorf("ack of the pre-cut delivery = %v, want ErrStaleDelivery", err)
	}
	// Acks written just before a cut may be lost: those messages come once more.
	for a.depth(q) != 0 || len(dels) != 0 {
		select {
		case d := <-dels:
			if err := b.Ack(ctx, d); err == nil {
				acked[string(d.Message.Body)]++
			}
		case <-time.After(500 * time.Millisecond):
		}
	}
	dups := 0
	for _, c := range acked {
		dups += c - 1
	}
	t.Logf("%d messages, %d cuts, %d stale acks, %d duplicate deliveries", n, cuts, stale, dups)

	cancel()
	for range dels {
	}
	b.Close()
	if got := a.depth(q); got != 0 {
		t.Errorf("%d messages left unacked in the queue", got)
	}
}

// TestPublishDuringOutage: a publish while RabbitMQ is unreachable waits for the
// reconnect and then goes through; with a short ctx it gives up with the ctx error.
func TestPublishDuringOutage(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "outage")
	a.cleanup(q)
	a.declareQueue(q)
	proxy, b := proxied(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: textMessage("before")}); err != nil {
		t.Fatal(err)
	}

	proxy.Pause()
	proxy.Cut()

	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if err := b.Publish(short, broker.Publishing{RoutingKey: q, Message: textMessage("dropped")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("publish during outage with a short ctx = %v, want DeadlineExceeded", err)
	}

	done := make(chan error, 1)
	go func() { done <- b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: textMessage("during")}) }()
	select {
	case err := <-done:
		t.Fatalf("publish returned during the outage: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	proxy.Resume()
	if err := <-done; err != nil {
		t.Fatalf("publish after the outage: %v", err)
	}
	for _, want := range []string{"before", "during"} {
		d, ok := a.get(q)
		if !ok || string(d.Body) != want {
			t.Errorf("queue message %q (ok %v), want %q", d.Body, ok, want)
		}
	}
	if d, ok := a.get(q); ok {
		t.Errorf("unexpected message %q", d.Body)
	}
}

// TestConsumeSurvivesQueueDeletion: when the broker cancels the consumer (queue deleted),
// the transport declares the queue again and goes on delivering on the same channel.
func TestConsumeSurvivesQueueDeletion(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "qdelete")
	a.cleanup(q)
	b := newBroker(t, Options{ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dels, err := b.Consume(ctx, []string{q}, 1)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q, 1)
	first := recv(t, dels)

	if err := a.do(func(ch *amqp091.Channel) error {
		_, err := ch.QueueDelete(q, false, false, false)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, first); !errors.Is(err, broker.ErrStaleDelivery) {
		// The cancel may not have been processed yet; then the ack is simply accepted.
		t.Logf("ack after queue deletion: %v", err)
	}
	waitFor(t, 10*time.Second, "queue declared again", func() bool { return a.depth(q) == 0 })
	publishN(t, b, q, 1)
	d := recv(t, dels)
	if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
}

// TestConsumerAlive: the probe is zero without a Consume, keeps up with the clock while
// the consuming channel is open, stays at the moment of the loss while the connection is
// down, catches up once consuming resumed, and is zero again after the Consume ends.
func TestConsumerAlive(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "alive")
	a.cleanup(q)
	proxy, b := proxied(t)
	fresh := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Since(b.ConsumerAlive()) > 100*time.Millisecond {
			if time.Now().After(deadline) {
				t.Fatalf("%s: ConsumerAlive is %s old", what, time.Since(b.ConsumerAlive()))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if at := b.ConsumerAlive(); !at.IsZero() {
		t.Fatalf("before Consume: %v", at)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dels, err := b.Consume(ctx, []string{q}, 10)
	if err != nil {
		t.Fatal(err)
	}
	fresh("consuming")

	proxy.Pause()
	proxy.Cut()
	time.Sleep(1500 * time.Millisecond)
	if age := time.Since(b.ConsumerAlive()); age < time.Second {
		t.Errorf("connection down for 1.5 s: ConsumerAlive only %s old", age)
	}
	proxy.Resume()
	fresh("consuming again")

	cancel()
	for range dels {
	}
	if at := b.ConsumerAlive(); !at.IsZero() {
		t.Errorf("after the Consume ended: %v", at)
	}
}
