package amqp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/testutil/tcpproxy"
)

// walkBodies walks q keeping everything and returns the bodies in visit order.
func walkBodies(t *testing.T, b *Broker, q string) []string {
	t.Helper()
	var out []string
	err := b.Walk(context.Background(), q, func(s *broker.Stored) (broker.Decision, error) {
		if s.Position != len(out) || s.Queue != q {
			t.Errorf("stored %s: position %d queue %q", s.Message.Body, s.Position, s.Queue)
		}
		out = append(out, string(s.Message.Body))
		return broker.Decision{}, nil
	}, nil)
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return out
}

func seq(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

func TestWalkKeepsOrder(t *testing.T) {
	b := newBroker(t, Options{})
	a := newAdmin(t)
	q := uniqueName(t, "walk") + ".dlq"
	a.cleanup(q)
	if err := b.DeclareDLQ(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	publishN(t, b, q, 5)
	for range 2 { // the second walk sees the same order: kept messages go back in place
		if got := walkBodies(t, b, q); !slices.Equal(got, seq(0, 5)) {
			t.Fatalf("walk %v", got)
		}
	}
	if d := a.depth(q); d != 5 {
		t.Fatalf("depth %d after walks", d)
	}
	heads, err := b.Heads(context.Background(), q)
	if err != nil || len(heads) != 1 || string(heads[0].Message.Body) != "0" {
		t.Fatalf("Heads = %v, %v", heads, err)
	}
	if d := a.depth(q); d != 5 {
		t.Fatalf("depth %d after Heads", d)
	}
	// Empty and missing queues.
	if h, err := b.Heads(context.Background(), q+"-missing"); err != nil || h != nil {
		t.Errorf("Heads(missing) = %v, %v", h, err)
	}
	if got := walkBodies(t, b, q+"-missing"); len(got) != 0 {
		t.Errorf("Walk(missing) = %v", got)
	}
	if _, err := b.Depth(context.Background(), q+"-missing"); !errors.Is(err, broker.ErrQueueNotFound) {
		t.Errorf("Depth(missing) = %v, want ErrQueueNotFound", err)
	}
	if _, err := b.Depth(context.Background(), q); err != nil {
		t.Errorf("Depth: %v", err)
	}
	if n, err := b.Purge(context.Background(), q+"-missing"); err != nil || n != 0 {
		t.Errorf("Purge(missing) = %d, %v", n, err)
	}
	if n, err := b.Purge(context.Background(), q); err != nil || n != 5 {
		t.Errorf("Purge = %d, %v", n, err)
	}
	if h, err := b.Heads(context.Background(), q); err != nil || h != nil {
		t.Errorf("Heads(empty) = %v, %v", h, err)
	}
}

func TestWalkRemoveAndMove(t *testing.T) {
	b := newBroker(t, Options{})
	a := newAdmin(t)
	ctx := context.Background()
	q, to := uniqueName(t, "src")+".dlq", uniqueName(t, "dst")
	a.cleanup(q, to)
	a.declareQueue(q)
	a.declareQueue(to)
	publishN(t, b, q, 10)
	verdict := func(body string) broker.Verdict {
		n, _ := strconv.Atoi(body)
		switch n % 3 {
		case 0:
			return broker.Move
		case 1:
			return broker.Remove
		}
		return broker.Keep
	}
	var applied []string
	err := b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
		d := broker.Decision{Verdict: verdict(string(s.Message.Body))}
		if d.Verdict == broker.Move {
			m := s.Message.Clone()
			m.Headers["x-fleet-replayed"] = 1
			d.To = broker.Publishing{RoutingKey: to, Message: m}
		}
		return d, nil
	}, func(s *broker.Stored, d broker.Decision) {
		applied = append(applied, fmt.Sprintf("%s:%d", s.Message.Body, d.Verdict))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"0:2", "1:1", "3:2", "4:1", "6:2", "7:1", "9:2"}
	if !slices.Equal(applied, want) {
		t.Errorf("applied %v, want %v", applied, want)
	}
	if got := walkBodies(t, b, q); !slices.Equal(got, []string{"2", "5", "8"}) {
		t.Errorf("left %v", got)
	}
	var moved []string
	if err := b.Walk(ctx, to, func(s *broker.Stored) (broker.Decision, error) {
		moved = append(moved, string(s.Message.Body))
		if s.Message.Headers["x-fleet-replayed"] == nil || s.Message.Headers["n"] != string(s.Message.Body) {
			t.Errorf("moved headers %v", s.Message.Headers)
		}
		return broker.Decision{}, nil
	}, nil); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(moved, []string{"0", "3", "6", "9"}) {
		t.Errorf("moved %v", moved)
	}

	// A move to a queue that does not exist fails before anything is committed for it;
	// what was decided before is applied.
	applied = nil
	err = b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
		if string(s.Message.Body) == "2" {
			return broker.Decision{Verdict: broker.Remove}, nil
		}
		return broker.Decision{Verdict: broker.Move, To: broker.Publishing{RoutingKey: to + "-missing", Message: s.Message}}, nil
	}, func(s *broker.Stored, d broker.Decision) { applied = append(applied, string(s.Message.Body)) })
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("move to a missing queue: %v", err)
	}
	if !slices.Equal(applied, []string{"2"}) {
		t.Errorf("applied %v", applied)
	}
	if got := walkBodies(t, b, q); !slices.Equal(got, []string{"5", "8"}) {
		t.Errorf("left %v", got)
	}
}

func TestWalkStopCancelAndError(t *testing.T) {
	b := newBroker(t, Options{})
	a := newAdmin(t)
	q := uniqueName(t, "stop") + ".dlq"
	a.cleanup(q)
	a.declareQueue(q)
	publishN(t, b, q, 6)
	n := 0
	err := b.Walk(context.Background(), q, func(s *broker.Stored) (broker.Decision, error) {
		n++
		if n == 2 {
			return broker.Decision{Verdict: broker.Remove}, broker.ErrStopWalk
		}
		return broker.Decision{}, nil
	}, nil)
	if err != nil || n != 2 {
		t.Fatalf("stop: %v after %d", err, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	err = b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
		cancel()
		return broker.Decision{Verdict: broker.Remove}, nil
	}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: %v", err)
	}
	boom := errors.New("boom")
	err = b.Walk(context.Background(), q, func(s *broker.Stored) (broker.Decision, error) {
		if string(s.Message.Body) == "3" {
			return broker.Decision{}, boom
		}
		return broker.Decision{Verdict: broker.Remove}, nil
	}, nil)
	if !errors.Is(err, boom) {
		t.Fatalf("visit error: %v", err)
	}
	if got := walkBodies(t, b, q); !slices.Equal(got, []string{"3", "4", "5"}) {
		t.Fatalf("left %v", got)
	}
}

// A walk cut off in the middle (the connection dies, as when the process is killed) has
// moved each message exactly once or not at all: committed batches are in the
// destination and gone from the source, the uncommitted one is back in the source.
func TestWalkMoveAtomicWhenCut(t *testing.T) {
	a := newAdmin(t)
	q, to := uniqueName(t, "cutsrc")+".dlq", uniqueName(t, "cutdst")
	a.cleanup(q, to)
	a.declareQueue(q)
	a.declareQueue(to)
	const n = 3*walkBatch + 10
	publishN(t, newBroker(t, Options{}), q, n)

	proxy := tcpproxy.Start(t, "127.0.0.1:5672")
	b := newBroker(t, Options{URL: "amqp://guest:guest@" + proxy.Addr() + "/"})
	var applied int
	visited := 0
	err := b.Walk(context.Background(), q, func(s *broker.Stored) (broker.Decision, error) {
		visited++
		if visited == 2*walkBatch+5 {
			proxy.Cut()
		}
		return broker.Decision{Verdict: broker.Move, To: broker.Publishing{RoutingKey: to, Message: s.Message}}, nil
	}, func(*broker.Stored, broker.Decision) { applied++ })
	if err == nil {
		t.Fatal("walk survived the cut")
	}
	waitFor(t, 10*time.Second, "requeue of the uncommitted batch", func() bool { return a.depth(q)+a.depth(to) == n })
	// Batches commit by size or age: what was reported applied is exactly what moved.
	if applied == 0 || applied > 2*walkBatch+4 || a.depth(to) != applied {
		t.Errorf("applied %d, destination holds %d (cut after %d visits)", applied, a.depth(to), 2*walkBatch+5)
	}
	seen := map[string]int{}
	for _, qq := range []string{q, to} {
		for _, body := range walkBodies(t, newBroker(t, Options{}), qq) {
			seen[body]++
		}
	}
	for i := range n {
		if c := seen[strconv.Itoa(i)]; c != 1 {
			t.Errorf("message %d found %d times", i, c)
		}
	}
}

func TestManagement(t *testing.T) {
	m, err := NewManagement(amqpURL(), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.Ping(ctx); err != nil {
		t.Skipf("RabbitMQ management API not enabled (rabbitmq-plugins enable rabbitmq_management): %v", err)
	}
	a := newAdmin(t)
	q := uniqueName(t, "mgmt") + ".dlq"
	a.cleanup(q)
	a.declareQueue(q)
	qs, err := m.Queues(ctx)
	if err != nil || !slices.Contains(qs, q) {
		t.Fatalf("Queues: %v (%d queues)", err, len(qs))
	}
	name := "fleet-test-" + q
	p := Policy{Name: name, Pattern: "^" + q + "$", ApplyTo: "queues", Priority: 7,
		Definition: map[string]any{"dead-letter-exchange": "", "dead-letter-routing-key": q + ".x"}}
	if err := m.PutPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.DeletePolicy(context.Background(), name) })
	ps, err := m.Policies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ps, func(x Policy) bool { return x.Name == name })
	if i < 0 || ps[i].Priority != 7 || ps[i].Definition["dead-letter-routing-key"] != q+".x" {
		t.Fatalf("policy not listed: %+v", ps)
	}
	waitFor(t, 10*time.Second, "policy applied", func() bool {
		info, err := m.Queue(ctx, q)
		return err == nil && info.Policy == name
	})
	if err := m.DeletePolicy(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := m.DeletePolicy(ctx, name); err != nil {
		t.Errorf("deleting a missing policy: %v", err)
	}
	_, err = m.Queue(ctx, q+"-missing")
	var me *ManagementError
	if !errors.As(err, &me) || me.Status != http.StatusNotFound {
		t.Errorf("missing queue: %v", err)
	}
}

func TestNewManagement(t *testing.T) {
	tests := []struct {
		broker, mgmt        string
		base, user, vhost   string
		wantErr             string
		unavailableOnAccess bool
	}{
		{broker: "amqp://guest:guest@127.0.0.1:5672//", base: "http://127.0.0.1:15672", user: "guest", vhost: "/"},
		{broker: "amqps://u:p@rabbit.example:5671/prod", base: "https://rabbit.example:15672", user: "u", vhost: "prod"},
		{broker: "amqp://u:p@h/v", mgmt: "https://admin:pw@mgmt.example:8443/rmq/", base: "https://mgmt.example:8443/rmq", user: "admin", vhost: "v"},
		{broker: "amqp://u:p@h/v", mgmt: "ftp://x", wantErr: "want http(s)"},
		{broker: "amqp://u:p@h/v", mgmt: "::", wantErr: "not a URL"},
		{broker: "amqp://127.0.0.1:1//", mgmt: "http://127.0.0.1:1", base: "http://127.0.0.1:1", user: "guest", vhost: "/", unavailableOnAccess: true},
	}
	for _, tt := range tests {
		m, err := NewManagement(tt.broker, tt.mgmt)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewManagement(%q, %q) = %v, want %q", tt.broker, tt.mgmt, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewManagement(%q, %q): %v", tt.broker, tt.mgmt, err)
			continue
		}
		if m.Endpoint() != tt.base || m.user != tt.user || m.VHost() != tt.vhost {
			t.Errorf("NewManagement(%q, %q) = %s %s %s", tt.broker, tt.mgmt, m.Endpoint(), m.user, m.VHost())
		}
		if tt.unavailableOnAccess {
			if err := m.Ping(context.Background()); !errors.Is(err, ErrManagementUnavailable) {
				t.Errorf("Ping on a closed port: %v", err)
			}
		}
	}
}
