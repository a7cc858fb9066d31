package amqp

import (
	"context"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

func recvMsg(t *testing.T, ch <-chan *protocol.Message, within time.Duration) *protocol.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(within):
		t.Fatalf("no message within %s", within)
		return nil
	}
}

// TestBroadcastSubscribe: a fanout and a topic exchange as Celery declares them (pidbox:
// non-durable fanout; celeryev: durable topic) carry broadcasts to every subscriber queue
// bound to them; a topic binding key filters; the subscriber queues are declared with the
// flags and TTL arguments of §3.1; a broadcast nobody listens for is not an error.
func TestBroadcastSubscribe(t *testing.T) {
	a := newAdmin(t)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	tests := []struct {
		name     string
		ex       broker.Exchange
		bindKey  string
		sendKeys []string
		wantKeys []string
	}{
		{"fanout", broker.Exchange{Name: uniqueName(t, "pidbox"), Kind: broker.KindFanout}, "", []string{"", "x"}, []string{"", "x"}},
		{"topic", broker.Exchange{Name: uniqueName(t, "ev"), Kind: broker.KindTopic, Durable: true}, "worker.#", []string{"task.multi", "worker.heartbeat"}, []string{"worker.heartbeat"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q1, q2 := uniqueName(t, "sub1"), uniqueName(t, "sub2")
			t.Cleanup(func() {
				a.cleanup(q1, q2)
				_ = a.do(func(ch *amqp091.Channel) error { return ch.ExchangeDelete(tc.ex.Name, false, false) })
			})
			if err := b.Broadcast(ctx, tc.ex, "nobody", textMessage("lost")); err != nil {
				t.Fatalf("broadcast without subscribers: %v", err)
			}
			s1, err := b.Subscribe(ctx, broker.Binding{Exchange: tc.ex, Queue: q1, Key: tc.bindKey, MessageTTL: 300 * time.Second, Expires: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			s2, err := b.Subscribe(ctx, broker.Binding{Exchange: tc.ex, Queue: q2, Key: tc.bindKey})
			if err != nil {
				t.Fatal(err)
			}
			// A passive declare with other flags fails: the queue is non-durable auto-delete.
			if err := a.do(func(ch *amqp091.Channel) error {
				_, err := ch.QueueDeclare(q1, false, true, false, false, amqp091.Table{"x-message-ttl": int32(300000), "x-expires": int32(10000)})
				return err
			}); err != nil {
				t.Fatalf("re-declaring the subscriber queue with Celery's flags: %v", err)
			}
			for _, k := range tc.sendKeys {
				m := textMessage("m-" + k)
				m.Properties.DeliveryMode = 1
				m.Headers["hostname"] = "w@h"
				if err := b.Broadcast(ctx, tc.ex, k, m); err != nil {
					t.Fatal(err)
				}
			}
			for _, sub := range []<-chan *protocol.Message{s1, s2} {
				for _, k := range tc.wantKeys {
					m := recvMsg(t, sub, 5*time.Second)
					if string(m.Body) != "m-"+k || m.Headers["hostname"] != "w@h" || m.Properties.DeliveryMode != 1 {
						t.Fatalf("got body %q headers %v mode %d, want m-%s", m.Body, m.Headers, m.Properties.DeliveryMode, k)
					}
				}
				select {
				case m := <-sub:
					t.Fatalf("unexpected extra message %q", m.Body)
				case <-time.After(200 * time.Millisecond):
				}
			}
		})
	}
}

// TestSubscribeSurvivesConnectionLoss: after the connection is cut, the same channel goes
// on delivering broadcasts once the transport has reconnected and subscribed again.
func TestSubscribeSurvivesConnectionLoss(t *testing.T) {
	a := newAdmin(t)
	proxy, b := proxied(t)
	pub := newBroker(t, Options{})
	ex := broker.Exchange{Name: uniqueName(t, "pidbox"), Kind: broker.KindFanout}
	q := uniqueName(t, "sub")
	t.Cleanup(func() {
		a.cleanup(q)
		_ = a.do(func(ch *amqp091.Channel) error { return ch.ExchangeDelete(ex.Name, false, false) })
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, err := b.Subscribe(ctx, broker.Binding{Exchange: ex, Queue: q})
	if err != nil {
		t.Fatal(err)
	}
	before := b.Reconnects()
	proxy.Cut()
	waitFor(t, 20*time.Second, "reconnect", func() bool { return b.Reconnects() > before && b.Connected(ctx) })
	// Broadcast until one arrives: the re-subscription may lag the reconnect slightly.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := pub.Broadcast(ctx, ex, "", textMessage("after")); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-sub:
			if string(m.Body) != "after" {
				t.Fatalf("got %q", m.Body)
			}
			return
		case <-time.After(300 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no broadcast delivered after the reconnect")
		}
	}
}

// TestQueueStats: ready and consumer counts come from a passive declare.
func TestQueueStats(t *testing.T) {
	a := newAdmin(t)
	b := newBroker(t, Options{})
	q := uniqueName(t, "stats")
	a.cleanup(q)
	t.Cleanup(func() { a.cleanup(q) })
	a.declareQueue(q)
	publishN(t, b, q, 3)
	ctx := context.Background()
	waitFor(t, 5*time.Second, "3 ready", func() bool {
		st, err := b.QueueStats(ctx, q)
		return err == nil && st.Ready == 3 && st.Consumers == 0
	})
	if _, err := b.QueueStats(ctx, q+"-missing"); err == nil {
		t.Fatal("stats of a missing queue: no error")
	}
	if !b.Connected(ctx) {
		t.Fatal("not connected")
	}
}
