package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// The DLQ browsing tests use Redis DB 8 (a unique key prefix per test on top).
const (
	browseDB  = 8
	browseURL = "redis://127.0.0.1:6379/8"
)

// browseFixture is newFixture on DB 8.
func browseFixture(t *testing.T) (*fixture, *Broker) {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: testAddr, DB: browseDB})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis at %s is required: %v", testAddr, err)
	}
	f := &fixture{t: t, prefix: "fleetbrowse:" + randHex(6) + ":", rdb: rdb}
	f.ks = keyspace{prefix: f.prefix, steps: []int{0, 3, 6, 9}}
	b, err := New(ctx, Options{URL: browseURL, KeyPrefix: f.prefix, VisibilityTimeout: time.Second})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if keys, err := rdb.Keys(ctx, f.prefix+"*").Result(); err == nil && len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		_ = rdb.Close()
	})
	return f, b
}

// ids walks q keeping everything and returns the ids in visit order.
func walkIDs(t *testing.T, b *Broker, q string) []string {
	t.Helper()
	var out []string
	err := b.Walk(context.Background(), q, func(s *broker.Stored) (broker.Decision, error) {
		if s.Position != len(out) || s.Queue != q {
			t.Errorf("stored %q: position %d queue %q, want %d %q", idOfMsg(s.Message), s.Position, s.Queue, len(out), q)
		}
		out = append(out, idOfMsg(s.Message))
		return broker.Decision{}, nil
	}, nil)
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return out
}

func idOfMsg(m *protocol.Message) string {
	if m.ContentType == protocol.ContentTypeInvalidEnvelope {
		return "invalid:" + string(m.Body)
	}
	s, _ := m.Headers["id"].(string)
	return s
}

func TestWalkOrderAndKeep(t *testing.T) {
	f, b := browseFixture(t)
	q := queueName("dlq") + ".dlq"
	// Published in this order; consumed priority 0 first (Redis: 0 is the highest), FIFO within.
	for _, m := range []struct {
		id   string
		prio uint8
	}{{"a", 0}, {"p6", 6}, {"b", 0}, {"p3", 3}, {"c", 1}} {
		f.publish(b, q, msg(m.id, m.prio))
	}
	f.rdb.LPush(context.Background(), f.prefix+q, "not an envelope")
	want := []string{"a", "b", "c", "invalid:not an envelope", "p3", "p6"}
	if got := walkIDs(t, b, q); !slices.Equal(got, want) {
		t.Fatalf("walk order %v, want %v", got, want)
	}
	// Keeping everything changes nothing.
	if got := walkIDs(t, b, q); !slices.Equal(got, want) {
		t.Fatalf("second walk %v, want %v", got, want)
	}
	if n, err := b.Depth(context.Background(), q); err != nil || n != 6 {
		t.Fatalf("depth %d %v", n, err)
	}
	heads, err := b.Heads(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	var hs []string
	var pos []int
	for _, h := range heads {
		hs = append(hs, idOfMsg(h.Message))
		pos = append(pos, h.Position)
	}
	if !slices.Equal(hs, []string{"a", "p3", "p6"}) || !slices.Equal(pos, []int{0, 4, 5}) {
		t.Errorf("heads %v at %v", hs, pos)
	}
}

func TestWalkRemoveMove(t *testing.T) {
	f, b := browseFixture(t)
	ctx := context.Background()
	base := queueName("work")
	q, to := base+".dlq", base
	for i := range 6 {
		f.publish(b, q, msg(fmt.Sprintf("m%d", i), uint8(3*(i%2))))
	}
	tests := []struct {
		id      string
		verdict broker.Verdict
	}{{"m0", broker.Remove}, {"m2", broker.Move}, {"m3", broker.Move}, {"m5", broker.Remove}}
	decide := map[string]broker.Verdict{}
	for _, tt := range tests {
		decide[tt.id] = tt.verdict
	}
	var applied []string
	err := b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
		id := idOfMsg(s.Message)
		d := broker.Decision{Verdict: decide[id]}
		if d.Verdict == broker.Move {
			m := s.Message.Clone()
			m.Headers["x-fleet-replayed"] = 1
			d.To = broker.Publishing{RoutingKey: to, Message: m}
		}
		return d, nil
	}, func(s *broker.Stored, d broker.Decision) {
		applied = append(applied, idOfMsg(s.Message))
	})
	if err != nil {
		t.Fatal(err)
	}
	// Consume order: priority 0 (m0 m2 m4) then priority 3 (m1 m3 m5).
	if want := []string{"m0", "m2", "m3", "m5"}; !slices.Equal(applied, want) {
		t.Errorf("applied %v, want %v", applied, want)
	}
	if got, want := walkIDs(t, b, q), []string{"m4", "m1"}; !slices.Equal(got, want) {
		t.Errorf("left in %s: %v, want %v", q, got, want)
	}
	if got, want := walkIDs(t, b, to), []string{"m2", "m3"}; !slices.Equal(got, want) {
		t.Errorf("moved to %s: %v, want %v", to, got, want)
	}
	// The moved message went to its priority's sub-list with the new header, as a fresh envelope.
	var seen int
	_ = b.Walk(ctx, to, func(s *broker.Stored) (broker.Decision, error) {
		seen++
		if s.Message.Headers["x-fleet-replayed"] == nil || s.RoutingKey != to || s.Exchange != "" || s.Redelivered {
			t.Errorf("moved message %v: rk %q ex %q redelivered %v", s.Message.Headers, s.RoutingKey, s.Exchange, s.Redelivered)
		}
		return broker.Decision{}, nil
	}, nil)
	if seen != 2 || f.llen(f.prefix+to+sep+"3") != 1 {
		t.Errorf("moved: %d, priority 3 list %d", seen, f.llen(f.prefix+to+sep+"3"))
	}
}

// A message removed by someone else between the read and the decision is neither removed
// nor moved: nothing is duplicated.
func TestWalkMoveVanished(t *testing.T) {
	f, b := browseFixture(t)
	ctx := context.Background()
	q, to := queueName("v")+".dlq", queueName("v")
	f.publish(b, q, msg("gone", 0))
	f.publish(b, q, msg("stays", 0))
	var applied int
	err := b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
		if idOfMsg(s.Message) == "gone" {
			raw := s.Handle.(stored).raw
			if err := f.rdb.LRem(ctx, f.prefix+q, 1, raw).Err(); err != nil {
				t.Fatal(err)
			}
		}
		return broker.Decision{Verdict: broker.Move, To: broker.Publishing{RoutingKey: to, Message: s.Message}}, nil
	}, func(*broker.Stored, broker.Decision) { applied++ })
	if err != nil {
		t.Fatal(err)
	}
	if applied != 1 {
		t.Errorf("applied %d, want 1", applied)
	}
	if got := walkIDs(t, b, to); !slices.Equal(got, []string{"stays"}) {
		t.Errorf("moved %v", got)
	}
}

func TestWalkStopAndCancel(t *testing.T) {
	f, b := browseFixture(t)
	q := queueName("s") + ".dlq"
	for i := range 5 {
		f.publish(b, q, msg(fmt.Sprintf("m%d", i), 0))
	}
	var visited int
	err := b.Walk(context.Background(), q, func(s *broker.Stored) (broker.Decision, error) {
		visited++
		if visited == 2 {
			return broker.Decision{Verdict: broker.Remove}, broker.ErrStopWalk
		}
		return broker.Decision{}, nil
	}, nil)
	if err != nil || visited != 2 {
		t.Fatalf("stop: err %v after %d visits", err, visited)
	}
	if got := walkIDs(t, b, q); !slices.Equal(got, []string{"m0", "m2", "m3", "m4"}) {
		t.Fatalf("after stop: %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	visited = 0
	err = b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
		visited++
		cancel()
		return broker.Decision{Verdict: broker.Remove}, nil
	}, nil)
	if !errors.Is(err, context.Canceled) || visited != 1 {
		t.Fatalf("cancel: err %v after %d visits", err, visited)
	}
	if got := walkIDs(t, b, q); !slices.Equal(got, []string{"m2", "m3", "m4"}) {
		t.Fatalf("after cancel: %v (the decision taken before the cancel is applied)", got)
	}
	boom := errors.New("boom")
	if err := b.Walk(context.Background(), q, func(*broker.Stored) (broker.Decision, error) {
		return broker.Decision{}, boom
	}, nil); !errors.Is(err, boom) {
		t.Fatalf("visit error: %v", err)
	}
}

// A walk is bounded by what the list held when the walk reached it: messages pushed meanwhile
// are not visited, and chunked reads stay aligned while elements are removed.
func TestWalkLargeWithRemovalsAndInflow(t *testing.T) {
	f, b := browseFixture(t)
	ctx := context.Background()
	q := queueName("big") + ".dlq"
	const n = 3*walkChunk + 17
	pipe := f.rdb.Pipeline()
	for i := range n {
		env, err := encodeEnvelope(msg(fmt.Sprintf("m%d", i), 0), "", q, newTag())
		if err != nil {
			t.Fatal(err)
		}
		pipe.LPush(ctx, f.prefix+q, env)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	var visited, removed int
	err := b.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
		if want := fmt.Sprintf("m%d", visited); idOfMsg(s.Message) != want {
			return broker.Decision{}, fmt.Errorf("visit %d is %s, want %s", visited, idOfMsg(s.Message), want)
		}
		visited++
		f.publish(b, q, msg("late", 0))
		if visited%3 == 0 {
			return broker.Decision{Verdict: broker.Remove}, nil
		}
		return broker.Decision{}, nil
	}, func(*broker.Stored, broker.Decision) { removed++ })
	if err != nil {
		t.Fatal(err)
	}
	if visited != n || removed != n/3 {
		t.Fatalf("visited %d removed %d, want %d %d", visited, removed, n, n/3)
	}
	if d, _ := b.Depth(ctx, q); d != int64(2*n-n/3) {
		t.Fatalf("depth %d, want %d", d, 2*n-n/3)
	}
}

func TestPurgeDeclareQueues(t *testing.T) {
	f, b := browseFixture(t)
	ctx := context.Background()
	base := queueName("pq")
	q := base + ".dlq"
	f.publish(b, q, msg("a", 0))
	f.publish(b, q, msg("b", 9))
	f.publish(b, base, msg("w", 0))
	if err := b.DeclareDLQ(ctx, q); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.rdb.SIsMember(ctx, f.ks.binding(q), bindingMember(q, "", q)).Result(); !ok {
		t.Error("DeclareDLQ: no kombu binding")
	}
	qs, err := b.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(qs, []string{base, q}) {
		t.Errorf("Queues = %v", qs)
	}
	n, err := b.Purge(ctx, q)
	if err != nil || n != 2 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	if d, _ := b.Depth(ctx, q); d != 0 {
		t.Errorf("depth after purge %d", d)
	}
	if h, err := b.Heads(ctx, q); err != nil || len(h) != 0 {
		t.Errorf("heads of empty queue: %v %v", h, err)
	}
	if n, err := b.Purge(ctx, q); err != nil || n != 0 {
		t.Errorf("second Purge = %d, %v", n, err)
	}
}

func TestEscapeGlobAndQueueOfKey(t *testing.T) {
	b := &Broker{keys: keyspace{prefix: "p*[x]:", steps: []int{0, 3, 6, 9}}}
	if got := escapeGlob(b.keys.prefix); got != `p\*\[x\]:` {
		t.Errorf("escapeGlob = %q", got)
	}
	tests := []struct{ key, want string }{
		{"p*[x]:jobs", "jobs"},
		{"p*[x]:jobs.dlq" + sep + "3", "jobs.dlq"},
		{"p*[x]:jobs" + sep + "4", ""},
		{"other:jobs", ""},
		{"p*[x]:", ""},
	}
	for _, tt := range tests {
		if got := b.queueOfKey(tt.key); got != tt.want {
			t.Errorf("queueOfKey(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}
