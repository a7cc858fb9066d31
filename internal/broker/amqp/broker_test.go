package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

func TestNewErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name string
		url  string
		want string
	}{
		{"bad scheme", "http://guest:secret@127.0.0.1:5672/", "parse URL"},
		{"unparsable", "amqp://guest:secret@127.0.0.1:notaport/", "parse URL"},
		{"unreachable", "amqp://guest:secret@" + closedAddr + "/", "connect to"},
		{"bad credentials", "amqp://guest:wrong-secret@127.0.0.1:5672/", "connect to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			b, err := New(ctx, Options{URL: tt.url, Logger: testLogger(t)})
			if err == nil {
				b.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q leaks the password", err)
			}
		})
	}
}

// TestPublishConsume: a message published through the broker comes back with the same
// properties, headers (normalized types) and body, and the ack removes it.
func TestPublishConsume(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "pubcons")
	a.cleanup(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	dels, err := b.Consume(ctx, []string{q}, 4)
	if err != nil {
		t.Fatal(err)
	}
	msg := &protocol.Message{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties: protocol.Properties{
			CorrelationID: "c0ffee",
			ReplyTo:       "reply-q",
			DeliveryMode:  2,
			Priority:      3,
			Expiration:    "60000",
		},
		Headers: map[string]any{
			"task":      "research.add",
			"shadow":    nil,
			"retries":   json.Number("2"),
			"timelimit": []any{nil, json.Number("30.5")},
			"stamps":    map[string]any{"k": []any{"v", true}},
			"big":       json.Number("12345678901"),
		},
		Body: []byte(`[[2, 3], {}, {}]`),
	}
	if err := b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: msg}); err != nil {
		t.Fatal(err)
	}
	d := recv(t, dels)
	if d.Queue != q || d.Exchange != "" || d.RoutingKey != q || d.Redelivered {
		t.Errorf("delivery info = queue %q exchange %q key %q redelivered %v", d.Queue, d.Exchange, d.RoutingKey, d.Redelivered)
	}
	if !reflect.DeepEqual(d.Message, msg) {
		t.Errorf("message:\n got %#v\nwant %#v", d.Message, msg)
	}
	if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(ctx, d); err == nil {
		t.Error("second Ack of the same delivery succeeded")
	}
	n, err := b.Depth(ctx, q)
	if err != nil || n != 0 {
		t.Errorf("Depth = %d, %v; want 0", n, err)
	}
	if _, err := b.Depth(ctx, uniqueName(t, "missing")); err == nil {
		t.Error("Depth of a missing queue succeeded")
	}
	cancel()
	for range dels {
	}
	b.Close()
	if got := a.depth(q); got != 0 {
		t.Errorf("after Close the queue holds %d messages; the ack was lost", got)
	}
}

// TestPrefetch: with more messages than the prefetch, only prefetch deliveries are
// unsettled at once, and SetPrefetch raises the limit live.
func TestPrefetch(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "prefetch")
	a.cleanup(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dels, err := b.Consume(ctx, []string{q}, 3)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q, 10)

	var held []*broker.Delivery
	for range 3 {
		held = append(held, recv(t, dels))
	}
	noRecv(t, dels, 300*time.Millisecond)

	if err := b.SetPrefetch(ctx, 5); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		held = append(held, recv(t, dels))
	}
	noRecv(t, dels, 300*time.Millisecond)

	for _, d := range held {
		if err := b.Ack(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		if err := b.Ack(ctx, recv(t, dels)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "empty queue", func() bool { return a.depth(q) == 0 })
}

// TestRequeue: a requeued delivery comes back with Redelivered set.
func TestRequeue(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "requeue")
	a.cleanup(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dels, err := b.Consume(ctx, []string{q}, 1)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q, 1)
	d := recv(t, dels)
	if d.Redelivered {
		t.Error("first delivery marked redelivered")
	}
	if err := b.Requeue(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := b.Requeue(ctx, d); err == nil {
		t.Error("second Requeue of the same delivery succeeded")
	}
	d2 := recv(t, dels)
	if !d2.Redelivered || string(d2.Message.Body) != "0" {
		t.Errorf("redelivery: redelivered=%v body=%q", d2.Redelivered, d2.Message.Body)
	}
	if err := b.Ack(ctx, d2); err != nil {
		t.Fatal(err)
	}
}

// TestDeadLetter: the message lands in the (declared on first use) dead-letter queue with
// the extra headers, and the original is gone.
func TestDeadLetter(t *testing.T) {
	a := newAdmin(t)
	q, dlq := uniqueName(t, "dl-src"), uniqueName(t, "dl-dlq")
	a.cleanup(q, dlq)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	dels, err := b.Consume(ctx, []string{q}, 2)
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q, 2)
	for i := range 2 {
		d := recv(t, dels)
		m := d.Message.Clone()
		m.Headers["x-fleet-error"] = "boom"
		m.Headers["x-fleet-attempt"] = json.Number(strconv.Itoa(i))
		if err := b.DeadLetter(ctx, d, dlq, m); err != nil {
			t.Fatal(err)
		}
		if err := b.Ack(ctx, d); err == nil {
			t.Error("Ack after DeadLetter succeeded")
		}
	}
	cancel()
	for range dels {
	}
	b.Close()

	if n := a.depth(q); n != 0 {
		t.Errorf("source queue holds %d messages", n)
	}
	for i := range 2 {
		got, ok := a.get(dlq)
		if !ok {
			t.Fatalf("dead-letter queue has %d messages, want 2", i)
		}
		if got.Headers["x-fleet-error"] != "boom" || got.Headers["n"] != string(got.Body) || got.CorrelationId != string(got.Body) {
			t.Errorf("dead-lettered message: headers %v body %q", got.Headers, got.Body)
		}
	}
}

// TestPublishUnroutable: every way a message can find no queue is an error, never a
// silent drop, and the broker goes on publishing afterwards.
func TestPublishUnroutable(t *testing.T) {
	a := newAdmin(t)
	q, unbound := uniqueName(t, "route-ok"), uniqueName(t, "route-unbound")
	a.cleanup(q, unbound)
	a.declareQueue(q)
	if err := a.do(func(ch *amqp091.Channel) error {
		return ch.ExchangeDeclare(unbound, "direct", false, true, false, false, nil)
	}); err != nil {
		t.Fatal(err)
	}
	b := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tests := []struct {
		name     string
		exchange string
		key      string
	}{
		{"default exchange, no such queue", "", uniqueName(t, "nowhere")},
		{"no such exchange", uniqueName(t, "noexchange"), "k"},
		{"exchange without bindings", unbound, "k"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := b.Publish(ctx, broker.Publishing{Exchange: tt.exchange, RoutingKey: tt.key, Message: textMessage("x")})
			if !errors.Is(err, ErrUnroutable) {
				t.Fatalf("Publish = %v, want ErrUnroutable", err)
			}
			if err := b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: textMessage("ok")}); err != nil {
				t.Fatalf("routable publish afterwards: %v", err)
			}
		})
	}
	if n := a.depth(q); n != len(tests) {
		t.Errorf("queue holds %d messages, want %d", n, len(tests))
	}
}

// TestConcurrentPublish: concurrent publishes are each confirmed (or reported unroutable)
// on their own, including when another publish kills the shared channel.
func TestConcurrentPublish(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "concurrent")
	a.cleanup(q)
	a.declareQueue(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := broker.Publishing{RoutingKey: q, Message: textMessage(strconv.Itoa(i))}
			switch i % 10 {
			case 3:
				p.RoutingKey = "fleet-test-no-such-queue-" + strconv.Itoa(i)
			case 7:
				p.Exchange = "fleet-test-no-such-exchange"
			}
			errs[i] = b.Publish(ctx, p)
		}()
	}
	wg.Wait()
	routed := 0
	for i, err := range errs {
		switch i % 10 {
		case 3, 7:
			if !errors.Is(err, ErrUnroutable) {
				t.Errorf("publish %d: %v, want ErrUnroutable", i, err)
			}
		default:
			if err != nil {
				t.Errorf("publish %d: %v", i, err)
			}
			routed++
		}
	}
	// At-least-once: a publish caught on a channel killed by another may be sent twice.
	waitFor(t, 10*time.Second, "all routed messages", func() bool { return a.depth(q) >= routed })
}

// TestConsumeCancel: when the consume ctx ends, what the transport holds is requeued, the
// delivery channel is closed, and nothing stays unacked.
func TestConsumeCancel(t *testing.T) {
	tests := []struct {
		name        string
		requeueHeld bool // the caller requeues what it holds; otherwise Close hands it back
	}{
		{name: "caller requeues held deliveries", requeueHeld: true},
		{name: "Close hands back held deliveries", requeueHeld: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAdmin(t)
			q := uniqueName(t, "cancel")
			a.cleanup(q)
			b := newBroker(t, Options{})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()

			const n = 10
			dels, err := b.Consume(ctx, []string{q}, 4)
			if err != nil {
				t.Fatal(err)
			}
			publishN(t, b, q, n)
			held := []*broker.Delivery{recv(t, dels), recv(t, dels)}
			// Wait until the transport holds the rest of the prefetch window.
			waitFor(t, 10*time.Second, "prefetch window filled", func() bool { return a.depth(q) == n-4 })
			cancel()
			for d := range dels {
				held = append(held, d)
			}
			if _, err := b.Consume(context.Background(), nil, 1); err == nil {
				t.Error("Consume with no queues succeeded")
			}
			if tt.requeueHeld {
				for _, d := range held {
					if err := b.Requeue(context.Background(), d); err != nil {
						t.Fatal(err)
					}
				}
				waitFor(t, 10*time.Second, "all messages ready again", func() bool {
					n2, err := b.Depth(context.Background(), q)
					return err == nil && n2 == n
				})
			}
			b.Close()
			if got := a.depth(q); got != n {
				t.Errorf("after Close %d messages ready, want %d", got, n)
			}
		})
	}
}

// TestClosed: calls after Close fail with broker.ErrClosed; a second Consume while one
// is active is refused.
func TestClosed(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "closed")
	a.cleanup(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dels, err := b.Consume(ctx, []string{q}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Consume(ctx, []string{q}, 1); err == nil {
		t.Error("second concurrent Consume succeeded")
	}
	publishN(t, b, q, 1)
	d := recv(t, dels)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-dels; ok {
		t.Error("delivery channel still open after Close")
	}
	checks := map[string]error{
		"Publish":     b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: textMessage("x")}),
		"Ack":         b.Ack(ctx, d),
		"SetPrefetch": b.SetPrefetch(ctx, 3),
	}
	_, checks["Consume"] = b.Consume(ctx, []string{q}, 1)
	_, checks["Depth"] = b.Depth(ctx, q)
	for name, err := range checks {
		if !errors.Is(err, broker.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got := a.depth(q); got != 1 {
		t.Errorf("the unsettled delivery did not go back to the queue (depth %d)", got)
	}
}
