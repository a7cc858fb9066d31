package redis

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// The fan-out tests use DB 5 (owned by the observability tests) with a unique key prefix;
// pub/sub ignores the DB, which the "/5." channel prefix stands in for, as in kombu.
const fanoutURL = "redis://127.0.0.1:6379/5"

func fanoutBroker(t *testing.T) (*Broker, *goredis.Client, string) {
	t.Helper()
	prefix := "fleettest:" + randHex(6) + ":"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := New(ctx, Options{URL: fanoutURL, KeyPrefix: prefix})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: testAddr, DB: 5})
	t.Cleanup(func() {
		_ = b.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if keys, err := rdb.Keys(ctx, prefix+"*").Result(); err == nil && len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		_ = rdb.Close()
	})
	return b, rdb, prefix
}

func eventMessage(body string) *protocol.Message {
	return &protocol.Message{ContentType: "application/json", ContentEncoding: "utf-8",
		Properties: protocol.Properties{DeliveryMode: 1}, Headers: map[string]any{"hostname": "w@h"}, Body: []byte(body)}
}

// TestBroadcastPubSub pins kombu's fanout emulation (§2.6): topic and fanout exchanges go
// out with PUBLISH on "<prefix>/<db>.<exchange>[/<key>]" as the same JSON envelope as a
// queued message; a subscriber's "#" binding key becomes the pattern "*"; the subscriber's
// queue is recorded in the exchange's binding set.
func TestBroadcastPubSub(t *testing.T) {
	b, rdb, prefix := fanoutBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A raw subscriber sees exactly what kombu's PSUBSCRIBE would.
	raw := rdb.PSubscribe(ctx, prefix+"/5.celeryev/*")
	defer raw.Close()
	if _, err := raw.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	ev := broker.Exchange{Name: "celeryev", Kind: broker.KindTopic, Durable: true}
	sub, err := b.Subscribe(ctx, broker.Binding{Exchange: ev, Queue: "celeryev.q1", Key: "worker.#"})
	if err != nil {
		t.Fatal(err)
	}
	members, err := rdb.SMembers(ctx, prefix+"_kombu.binding.celeryev").Result()
	if err != nil || len(members) != 1 || members[0] != "worker.#\x06\x16\x06\x16celeryev.q1" {
		t.Fatalf("binding members %q (%v)", members, err)
	}
	for _, k := range []string{"task.multi", "worker.heartbeat"} {
		if err := b.Broadcast(ctx, ev, k, eventMessage(`{"type":"`+k+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"task.multi", "worker.heartbeat"} {
		m, err := raw.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Channel != prefix+"/5.celeryev/"+k {
			t.Fatalf("channel %q", m.Channel)
		}
		var env struct {
			Body       string         `json:"body"`
			Headers    map[string]any `json:"headers"`
			Properties map[string]any `json:"properties"`
		}
		if err := json.Unmarshal([]byte(m.Payload), &env); err != nil {
			t.Fatalf("payload is not a kombu envelope: %v: %s", err, m.Payload)
		}
		di, _ := env.Properties["delivery_info"].(map[string]any)
		if env.Headers["hostname"] != "w@h" || di["exchange"] != "celeryev" || di["routing_key"] != k || env.Properties["body_encoding"] != "base64" {
			t.Fatalf("envelope %s", m.Payload)
		}
	}
	// The "worker.#" subscription (pattern worker.*) gets only the heartbeat.
	m := recvBroadcast(t, sub)
	if string(m.Body) != `{"type":"worker.heartbeat"}` || m.Headers["hostname"] != "w@h" {
		t.Fatalf("subscriber got %q %v", m.Body, m.Headers)
	}
	select {
	case m := <-sub:
		t.Fatalf("unexpected %q", m.Body)
	case <-time.After(200 * time.Millisecond):
	}

	// A fanout exchange with an empty key publishes on the bare exchange topic (pidbox).
	pb := broker.Exchange{Name: "celery.pidbox", Kind: broker.KindFanout}
	psub, err := b.Subscribe(ctx, broker.Binding{Exchange: pb, Queue: "w@h.celery.pidbox"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Broadcast(ctx, pb, "", eventMessage(`{"method":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if m := recvBroadcast(t, psub); string(m.Body) != `{"method":"ping"}` {
		t.Fatalf("pidbox got %q", m.Body)
	}
	if ok, _ := rdb.SIsMember(ctx, prefix+"_kombu.binding.celery.pidbox", "\x06\x16\x06\x16w@h.celery.pidbox").Result(); !ok {
		t.Fatal("pidbox binding member missing")
	}
}

func recvBroadcast(t *testing.T, ch <-chan *protocol.Message) *protocol.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no broadcast within 5s")
		return nil
	}
}

// TestBroadcastDirectReply: a direct exchange routes through its binding set the way a
// pidbox reply reaches `<oid>.reply.celery.pidbox`; no binding means the reply is dropped
// without an error (kombu ignores InconsistencyError there).
func TestBroadcastDirectReply(t *testing.T) {
	b, rdb, prefix := fanoutBroker(t)
	ctx := context.Background()
	ex := broker.Exchange{Name: "reply.celery.pidbox", Kind: broker.KindDirect}
	if err := b.Broadcast(ctx, ex, "oid-none", eventMessage(`{}`)); err != nil {
		t.Fatalf("reply without a binding: %v", err)
	}
	rdb.SAdd(ctx, prefix+"_kombu.binding.reply.celery.pidbox", "oid1\x06\x16\x06\x16oid1.reply.celery.pidbox")
	if err := b.Broadcast(ctx, ex, "oid1", eventMessage(`{"w@h": {"ok": "pong"}}`)); err != nil {
		t.Fatal(err)
	}
	items, err := rdb.LRange(ctx, prefix+"oid1.reply.celery.pidbox", 0, -1).Result()
	if err != nil || len(items) != 1 {
		t.Fatalf("reply list %v (%v)", items, err)
	}
	env, err := decodeEnvelope([]byte(items[0]))
	if err != nil || string(env.msg.Body) != `{"w@h": {"ok": "pong"}}` || env.exchange != "reply.celery.pidbox" || env.routingKey != "oid1" {
		t.Fatalf("reply envelope %s (%v)", items[0], err)
	}
}

// TestQueueStatsPriorities: ready counts per priority sub-list, and the publish time of the
// oldest message when it carries x-fleet-sent-at.
func TestQueueStatsPriorities(t *testing.T) {
	b, _, _ := fanoutBroker(t)
	ctx := context.Background()
	q := "stats-" + randHex(3)
	old := time.Now().Add(-90 * time.Second).Truncate(time.Millisecond)
	for i, prio := range []uint8{0, 0, 3, 9} {
		m := eventMessage("x")
		m.Properties.Priority = prio
		if i == 2 {
			m.Headers[broker.HeaderSentAt] = json.Number(formatScore(float64(old.UnixMilli()) / 1000))
		}
		if err := b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := b.QueueStats(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]int64{0: 2, 3: 1, 6: 0, 9: 1}
	for p, n := range want {
		if st.ByPriority[p] != n {
			t.Errorf("priority %d: %d ready, want %d", p, st.ByPriority[p], n)
		}
	}
	if st.Ready != 4 || st.Consumers != -1 {
		t.Errorf("ready %d consumers %d", st.Ready, st.Consumers)
	}
	if d := st.OldestSentAt.Sub(old); d < -time.Millisecond || d > time.Millisecond {
		t.Errorf("oldest sent at %v, want %v", st.OldestSentAt, old)
	}
	if !b.Connected(ctx) {
		t.Error("not connected")
	}
}
