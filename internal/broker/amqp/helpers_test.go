package amqp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// The tests run against the real RabbitMQ (FLEET_AMQP_URL, default the local guest one).
func amqpURL() string {
	if u := os.Getenv("FLEET_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newBroker connects to url (the real broker unless a proxy address is given) and closes
// the broker in t.Cleanup.
func newBroker(t *testing.T, o Options) *Broker {
	t.Helper()
	if o.URL == "" {
		o.URL = amqpURL()
	}
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := New(ctx, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// uniqueName is a queue name private to this test.
func uniqueName(t *testing.T, prefix string) string {
	var buf [6]byte
	if _, err := rand.Read(buf[:]); err != nil {
		t.Fatal(err)
	}
	return "fleet-test-" + prefix + "-" + hex.EncodeToString(buf[:])
}

// admin is a plain amqp091 connection the tests use to arrange and inspect RabbitMQ.
type admin struct {
	t    *testing.T
	conn *amqp091.Connection
}

func newAdmin(t *testing.T) *admin {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL())
	if err != nil {
		t.Fatalf("admin dial: %v", err)
	}
	a := &admin{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.Close() })
	return a
}

// do runs fn on a fresh channel.
func (a *admin) do(fn func(ch *amqp091.Channel) error) error {
	ch, err := a.conn.Channel()
	if err != nil {
		return err
	}
	defer func() {
		if !ch.IsClosed() {
			_ = ch.Close()
		}
	}()
	return fn(ch)
}

// cleanup deletes the queues and the exchanges of the same names after the test (this
// runs before the admin connection is closed: cleanups run last-in first-out).
func (a *admin) cleanup(names ...string) {
	a.t.Cleanup(func() {
		for _, n := range names {
			_ = a.do(func(ch *amqp091.Channel) error {
				_, err := ch.QueueDelete(n, false, false, false)
				return err
			})
			_ = a.do(func(ch *amqp091.Channel) error { return ch.ExchangeDelete(n, false, false) })
		}
	})
}

// depth is the number of ready messages in q, -1 if it does not exist.
func (a *admin) depth(q string) int {
	n := -1
	_ = a.do(func(ch *amqp091.Channel) error {
		info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err == nil {
			n = info.Messages
		}
		return err
	})
	return n
}

func (a *admin) declareQueue(q string) {
	a.t.Helper()
	if err := a.do(func(ch *amqp091.Channel) error {
		_, err := ch.QueueDeclare(q, true, false, false, false, nil)
		return err
	}); err != nil {
		a.t.Fatalf("declare %s: %v", q, err)
	}
}

// get takes one message off q (auto-ack).
func (a *admin) get(q string) (amqp091.Delivery, bool) {
	a.t.Helper()
	var (
		d  amqp091.Delivery
		ok bool
	)
	if err := a.do(func(ch *amqp091.Channel) error {
		var err error
		d, ok, err = ch.Get(q, true)
		return err
	}); err != nil {
		a.t.Fatalf("get %s: %v", q, err)
	}
	return d, ok
}

// waitFor polls cond until it holds or the timeout passes (a correctness bound, not a
// speed assertion).
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func recv(t *testing.T, ch <-chan *broker.Delivery) *broker.Delivery {
	t.Helper()
	select {
	case d, ok := <-ch:
		if !ok {
			t.Fatal("delivery channel closed")
		}
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10s")
		return nil
	}
}

// noRecv asserts that nothing is delivered for a while.
func noRecv(t *testing.T, ch <-chan *broker.Delivery, d time.Duration) {
	t.Helper()
	select {
	case del, ok := <-ch:
		if ok {
			t.Fatalf("unexpected delivery %s", del.Message.Body)
		}
	case <-time.After(d):
	}
}

func textMessage(body string) *protocol.Message {
	return &protocol.Message{
		ContentType:     "text/plain",
		ContentEncoding: "utf-8",
		Properties:      protocol.Properties{DeliveryMode: 2, CorrelationID: body},
		Headers:         map[string]any{"n": body},
		Body:            []byte(body),
	}
}

func publishN(t *testing.T, b *Broker, q string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range n {
		if err := b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: textMessage(strconv.Itoa(i))}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

// python runs a snippet with the system Python (Celery 5.2.6 / kombu 5.2.4).
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}
