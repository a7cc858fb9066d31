package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"empty URL", Options{}, "empty broker URL"},
		{"bad scheme", Options{URL: "amqp://guest:secret@localhost//"}, "parse broker URL"},
		{"password redacted", Options{URL: "ftp://u:secret@localhost/0"}, "xxxxx"},
		{"bad db", Options{URL: "redis://127.0.0.1:6379/notanumber"}, "parse broker URL"},
		{"unreachable", Options{URL: "redis://127.0.0.1:1/0"}, "connect to 127.0.0.1:1"},
		{"bad steps", Options{URL: testURL, PrioritySteps: []int{0, 6, 3}}, "strictly ascending"},
		{"negative visibility", Options{URL: testURL, VisibilityTimeout: -time.Second}, "negative visibility"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			b, err := New(ctx, tt.o)
			if err == nil {
				b.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q, want it to mention %q (and no password)", err, tt.want)
			}
		})
	}
}

func TestNewURLForms(t *testing.T) {
	f := newFixture(t)
	for _, u := range []string{"redis://127.0.0.1:6379/12", "redis://:@127.0.0.1:6379/12", "redis://127.0.0.1/12"} {
		b := f.broker(func(o *Options) { o.URL = u })
		if db := b.client.Options().DB; db != testDB {
			t.Errorf("%s: db %d", u, db)
		}
	}
}

func TestPublishConsumeFIFO(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q := queueName("fifo")
	for i := range 5 {
		f.publish(b, q, msg(fmt.Sprint(i), 0))
	}
	if n, err := b.Depth(context.Background(), q); err != nil || n != 5 {
		t.Fatalf("Depth = %d, %v", n, err)
	}
	ch, _ := f.consume(b, 0, q)
	for i := range 5 {
		d := recv(t, ch)
		if idOf(d) != fmt.Sprint(i) || d.Queue != q || d.RoutingKey != q || d.Exchange != "" || d.Redelivered {
			t.Errorf("delivery %d: id %q queue %q rk %q ex %q redelivered %v", i, idOf(d), d.Queue, d.RoutingKey, d.Exchange, d.Redelivered)
		}
		if string(d.Message.Body) != fmt.Sprintf(`[[], {"id": "%d"}, {}]`, i) {
			t.Errorf("body %s", d.Message.Body)
		}
		ack(t, b, d)
	}
	// Consume declared the queue the way kombu does.
	ok, err := f.rdb.SIsMember(context.Background(), f.ks.binding(q), q+"\x06\x16\x06\x16"+q).Result()
	if err != nil || !ok {
		t.Errorf("binding not declared: %v %v", ok, err)
	}
	if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()); n != 0 {
		t.Errorf("%d lease entries left after acks", n)
	}
}

func TestPriorities(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q := queueName("prio")
	order := []uint8{9, 7, 3, 0, 6, 1, 5, 8, 2}
	for _, p := range order {
		f.publish(b, q, msg(fmt.Sprint(p), p))
	}
	// kombu's bisect mapping: 0-2 → q, 3-5 → q\x06\x163, 6-8 → q\x06\x166, 9 → q\x06\x169.
	for _, want := range []struct {
		key string
		n   int64
	}{{q, 3}, {q + "\x06\x163", 2}, {q + "\x06\x166", 3}, {q + "\x06\x169", 1}} {
		if n := f.llen(f.prefix + want.key); n != want.n {
			t.Errorf("LLEN %q = %d, want %d", want.key, n, want.n)
		}
	}
	if got := b.QueueKeys(q); strings.Join(got, ",") != strings.Join(f.ks.queueKeys(q), ",") || got[0] != f.prefix+q {
		t.Errorf("QueueKeys = %q", got)
	}
	ch, _ := f.consume(b, 0, q)
	var got []string
	for range order {
		d := recv(t, ch)
		got = append(got, idOf(d))
		ack(t, b, d)
	}
	// Step-major, FIFO within a step.
	if want := "0,1,2,3,5,7,6,8,9"; strings.Join(got, ",") != want {
		t.Errorf("order %s, want %s", strings.Join(got, ","), want)
	}
}

func TestRoundRobin(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	qa, qb := queueName("a"), queueName("b")
	for i := range 3 {
		f.publish(b, qa, msg(fmt.Sprint("a", i), 0))
		f.publish(b, qb, msg(fmt.Sprint("b", i), 0))
	}
	// A prioritized message in qb still comes after every step-0 message.
	f.publish(b, qb, msg("b-low", 9))
	ch, _ := f.consume(b, 0, qa, qb)
	var got []string
	for range 7 {
		d := recv(t, ch)
		got = append(got, idOf(d))
		ack(t, b, d)
	}
	if want := "a0,b0,a1,b1,a2,b2,b-low"; strings.Join(got, ",") != want {
		t.Errorf("order %s, want %s", strings.Join(got, ","), want)
	}
}

func TestPrefetchBound(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q := queueName("prefetch")
	for i := range 6 {
		f.publish(b, q, msg(fmt.Sprint(i), 0))
	}
	ch, _ := f.consume(b, 2, q)
	d0, d1 := recv(t, ch), recv(t, ch)
	expectNone(t, ch, 1500*time.Millisecond)
	if n := f.hlen(f.ks.unacked()); n != 2 {
		t.Errorf("unacked has %d leases, want 2", n)
	}
	if n, _ := b.Depth(context.Background(), q); n != 4 {
		t.Errorf("Depth = %d, want 4", n)
	}
	ack(t, b, d0)
	d2 := recv(t, ch)
	expectNone(t, ch, 500*time.Millisecond)
	if err := b.Requeue(context.Background(), d1); err != nil {
		t.Fatal(err)
	}
	d1again := recv(t, ch) // requeued to the consuming end: next in line
	if idOf(d1again) != "1" || !d1again.Redelivered {
		t.Errorf("after requeue got %q redelivered=%v", idOf(d1again), d1again.Redelivered)
	}
	if err := b.SetPrefetch(context.Background(), 4); err != nil {
		t.Fatal(err)
	}
	d3, d4 := recv(t, ch), recv(t, ch)
	expectNone(t, ch, 500*time.Millisecond)
	if got := []string{idOf(d2), idOf(d3), idOf(d4)}; strings.Join(got, ",") != "2,3,4" {
		t.Errorf("got %v", got)
	}
	for _, d := range []*broker.Delivery{d1again, d2, d3, d4} {
		ack(t, b, d)
	}
	recv(t, ch)
}

func TestSettlementKeys(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		act   func(t *testing.T, f *fixture, b *Broker, d *broker.Delivery, q, dlq string)
		queue []string // ids left in q, consuming end first
		dlq   int64
	}{
		{"ack", func(t *testing.T, f *fixture, b *Broker, d *broker.Delivery, q, dlq string) {
			ack(t, b, d)
		}, []string{"m2"}, 0},
		{"requeue", func(t *testing.T, f *fixture, b *Broker, d *broker.Delivery, q, dlq string) {
			if err := b.Requeue(ctx, d); err != nil {
				t.Fatal(err)
			}
		}, []string{"m1", "m2"}, 0},
		{"dead-letter", func(t *testing.T, f *fixture, b *Broker, d *broker.Delivery, q, dlq string) {
			m := d.Message.Clone()
			m.Headers["x-death-reason"] = "boom"
			if err := b.DeadLetter(ctx, d, dlq, m); err != nil {
				t.Fatal(err)
			}
		}, []string{"m2"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			b := f.broker(nil)
			q, dlq := queueName("settle"), queueName("dlq")
			f.publish(b, q, msg("m1", 0))
			f.publish(b, q, msg("m2", 0))
			ch, cancel := f.consume(b, 1, q)
			d := recv(t, ch)
			cancel()
			for range ch {
			}
			tag := d.Handle.(*lease).tag
			if v, err := f.rdb.HGet(ctx, f.ks.unacked(), tag).Result(); err != nil || !strings.HasPrefix(v, "[{") || !strings.HasSuffix(v, `,"",`+`"`+q+`"]`) {
				t.Fatalf("lease record %q, %v", v, err)
			}
			if _, err := f.rdb.ZScore(ctx, f.ks.unackedIndex(), tag).Result(); err != nil {
				t.Fatalf("no unacked_index entry: %v", err)
			}
			tt.act(t, f, b, d, q, dlq)

			if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()); n != 0 {
				t.Errorf("%d lease entries left", n)
			}
			items := f.lrange(f.prefix + q)
			var ids []string
			for i := len(items) - 1; i >= 0; i-- { // the consuming end is the right
				env, err := decodeEnvelope([]byte(items[i]))
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, env.msg.Headers["id"].(string))
				if env.msg.Headers["id"] == "m1" && (!env.redelivered || env.tag != tag) {
					t.Errorf("requeued m1 not marked redelivered or tag changed: %s", items[i])
				}
			}
			if strings.Join(ids, ",") != strings.Join(tt.queue, ",") {
				t.Errorf("queue holds %v, want %v", ids, tt.queue)
			}
			if n := f.llen(f.prefix + dlq); n != tt.dlq {
				t.Errorf("dead-letter list has %d, want %d", n, tt.dlq)
			}
			if tt.dlq > 0 {
				env, err := decodeEnvelope([]byte(f.lrange(f.prefix + dlq)[0]))
				if err != nil {
					t.Fatal(err)
				}
				if env.routingKey != dlq || env.exchange != "" || env.tag == tag || env.msg.Headers["x-death-reason"] != "boom" || env.msg.Headers["id"] != "m1" {
					t.Errorf("dead-letter envelope %+v", env)
				}
				ok, _ := f.rdb.SIsMember(ctx, f.ks.binding(dlq), dlq+"\x06\x16\x06\x16"+dlq).Result()
				if !ok {
					t.Error("dead-letter queue binding not declared")
				}
			}
			// A delivery is settled once.
			if err := b.Ack(ctx, d); err == nil {
				t.Error("second settlement accepted")
			}
		})
	}
}

func TestPublishNamedExchange(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	ctx := context.Background()
	ex, q1, q2, q3 := queueName("ex"), queueName("q1"), queueName("q2"), queueName("q3")
	f.rdb.SAdd(ctx, f.ks.binding(ex), bindingMember("rk", "", q1), bindingMember("rk", "", q2), bindingMember("other", "", q3))
	if err := b.Publish(ctx, broker.Publishing{Exchange: ex, RoutingKey: "rk", Message: msg("x", 4)}); err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, q := range []string{q1, q2} {
		items := f.lrange(f.ks.listFor(q, 4))
		if len(items) != 1 {
			t.Fatalf("%s has %d items", q, len(items))
		}
		env, err := decodeEnvelope([]byte(items[0]))
		if err != nil || env.exchange != ex || env.routingKey != "rk" {
			t.Fatalf("envelope %+v %v", env, err)
		}
		tags = append(tags, env.tag)
	}
	if tags[0] == tags[1] {
		t.Error("bound queues share a delivery tag")
	}
	if n := f.llen(f.prefix + q3); n != 0 {
		t.Errorf("unbound queue got %d", n)
	}
	err := b.Publish(ctx, broker.Publishing{Exchange: ex, RoutingKey: "nobody", Message: msg("y", 0)})
	if err == nil || !strings.Contains(err.Error(), "no queue bound") {
		t.Errorf("unroutable publish: %v", err)
	}
	if err := b.Publish(ctx, broker.Publishing{Message: msg("z", 0)}); err == nil {
		t.Error("publish without routing key accepted")
	}
}

func TestLeaseRefreshOutlivesVisibilityTimeout(t *testing.T) {
	f := newFixture(t)
	vt := func(o *Options) { o.VisibilityTimeout = time.Second }
	owner, other := f.broker(vt), f.broker(vt)
	q := queueName("refresh")
	f.publish(owner, q, msg("held", 0))
	ch, _ := f.consume(owner, 1, q)
	d := recv(t, ch)
	// Another consumer's sweep runs repeatedly well past the visibility timeout.
	otherCh, _ := f.consume(other, 1, queueName("elsewhere"))
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := other.sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := f.hlen(f.ks.unacked()); n != 1 {
		t.Fatalf("lease gone: unacked has %d", n)
	}
	if n, _ := owner.Depth(context.Background(), q); n != 0 {
		t.Fatalf("held message was restored to the queue")
	}
	expectNone(t, otherCh, 10*time.Millisecond)
	// The owner's own sweep never restores what it holds either.
	if n, err := owner.sweep(context.Background()); err != nil || n != 0 {
		t.Errorf("own sweep restored %d, %v", n, err)
	}
	ack(t, owner, d)
}

func TestSweepRestoresAbandonedLeases(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	q := queueName("abandoned")

	// A consumer that died: it took m1 and never settled or closed.
	dead := f.broker(nil)
	f.publish(dead, q, msg("m1", 7))
	deadCh, _ := f.consume(dead, 0, q)
	d := recv(t, deadCh)
	tag := d.Handle.(*lease).tag
	crash(dead)

	// A lease written directly, as a crashed Python worker leaves it.
	raw, err := encodeEnvelope(msg("m2", 0), "", q, "python-tag")
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := makeRecord(raw, "", q)
	f.rdb.HSet(ctx, f.ks.unacked(), "python-tag", rec)
	f.rdb.ZAdd(ctx, f.ks.unackedIndex(), goredis.Z{Score: nowFloat() - 10, Member: "python-tag"})
	// A stray index entry with no record is cleaned up.
	f.rdb.ZAdd(ctx, f.ks.unackedIndex(), goredis.Z{Score: nowFloat() - 10, Member: "stray"})

	time.Sleep(1100 * time.Millisecond) // m1's lease ages past the visibility timeout
	live := f.broker(func(o *Options) { o.VisibilityTimeout = time.Second })
	ch, _ := f.consume(live, 0, q)
	got := map[string]*broker.Delivery{}
	for range 2 {
		d := recv(t, ch)
		got[idOf(d)] = d
	}
	for id, wantTag := range map[string]string{"m1": tag, "m2": "python-tag"} {
		d := got[id]
		if d == nil || !d.Redelivered || d.Handle.(*lease).tag != wantTag {
			t.Fatalf("%s: %+v", id, d)
		}
		if d.Message.Headers["redelivered"] != true {
			t.Errorf("%s: headers.redelivered not set", id)
		}
	}
	if got["m1"].Message.Properties.Priority != 7 {
		t.Errorf("m1 priority %d", got["m1"].Message.Properties.Priority)
	}
	for _, d := range got {
		ack(t, live, d)
	}
	if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()); n != 0 {
		t.Errorf("%d lease entries left", n)
	}
	if ok, _ := f.rdb.Exists(ctx, f.ks.mutex()).Result(); ok != 0 {
		t.Error("unacked_mutex left behind")
	}
}

func TestSweepSkipsWhileMutexHeld(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(func(o *Options) { o.VisibilityTimeout = time.Second })
	q := queueName("mutex")
	raw, _ := encodeEnvelope(msg("m", 0), "", q, "t1")
	rec, _ := makeRecord(raw, "", q)
	f.rdb.HSet(ctx, f.ks.unacked(), "t1", rec)
	f.rdb.ZAdd(ctx, f.ks.unackedIndex(), goredis.Z{Score: nowFloat() - 10, Member: "t1"})
	f.rdb.Set(ctx, f.ks.mutex(), "someone-else", time.Minute)
	if n, err := b.sweep(ctx); err != nil || n != 0 {
		t.Fatalf("sweep under someone else's mutex: %d, %v", n, err)
	}
	if v, _ := f.rdb.Get(ctx, f.ks.mutex()).Result(); v != "someone-else" {
		t.Errorf("mutex changed to %q", v)
	}
	f.rdb.Del(ctx, f.ks.mutex())
	if n, err := b.sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	if n := f.llen(f.prefix + q); n != 1 {
		t.Errorf("queue has %d", n)
	}
}

// A sweeper that died holding unacked_mutex (kombu holds it for 5 minutes) does not stop
// restores for longer than the visibility timeout or our own mutex lifetime.
func TestSweepTakesOverAbandonedMutex(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(func(o *Options) { o.VisibilityTimeout = time.Second })
	q := queueName("deadmutex")
	raw, _ := encodeEnvelope(msg("m", 0), "", q, "t1")
	rec, _ := makeRecord(raw, "", q)
	f.rdb.HSet(ctx, f.ks.unacked(), "t1", rec)
	f.rdb.ZAdd(ctx, f.ks.unackedIndex(), goredis.Z{Score: nowFloat() - 10, Member: "t1"})
	f.rdb.Set(ctx, f.ks.mutex(), "dead-sweeper", 5*time.Minute)
	if n, err := b.sweep(ctx); err != nil || n != 0 {
		t.Fatalf("first sweep under a held mutex: %d, %v", n, err)
	}
	// The same holder is seen again once more than max(visibility timeout, mutexTTL) passed.
	b.stale.mu.Lock()
	b.stale.since = time.Now().Add(-b.mutexTTL - time.Second)
	b.stale.mu.Unlock()
	if n, err := b.sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep past an abandoned mutex: %d, %v", n, err)
	}
	if n := f.llen(f.prefix + q); n != 1 {
		t.Errorf("queue has %d", n)
	}
	if v, _ := f.rdb.Get(ctx, f.ks.mutex()).Result(); v != "dead-sweeper" {
		t.Errorf("mutex changed to %q", v)
	}
	// A different holder starts the clock again.
	f.rdb.Set(ctx, f.ks.mutex(), "new-sweeper", 5*time.Minute)
	if b.stale.abandoned("new-sweeper", b.mutexTTL) {
		t.Error("a new holder is taken as abandoned at once")
	}
	if b.mutexTTL >= kombuMutexTTL || b.mutexTTL < 5*time.Second {
		t.Errorf("mutexTTL %s", b.mutexTTL)
	}
}

// The fetch script leases every element it pops, readable or not, in the same step: an
// element without a usable delivery_tag gets a placeholder lease routed to its queue.
func TestFetchLeasesUnreadableElementsAtomically(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	q := queueName("rawlease")
	f.rdb.LPush(ctx, f.prefix+q, "garbage \x00 element")
	keys := []string{f.ks.unacked(), f.ks.unackedIndex(), f.prefix + q}
	res, err := fetchScript.Run(ctx, f.rdb, keys, nowScore(), 8, "ph-tag", 1, q).Slice()
	if err != nil || len(res) != 5 {
		t.Fatalf("fetch script: %v %v", res, err)
	}
	if res[0] != int64(1) || res[2] != "ph-tag" || res[4] != int64(1) || res[1] != "garbage \x00 element" {
		t.Fatalf("fetch script returned %v", res)
	}
	if n := f.llen(f.prefix + q); n != 0 {
		t.Fatalf("list still has %d", n)
	}
	rec, err := f.rdb.HGet(ctx, f.ks.unacked(), "ph-tag").Result()
	if err != nil || rec != res[3] {
		t.Fatalf("lease record %q (%v), script said %q", rec, err, res[3])
	}
	env, ex, rk, err := parseRecord([]byte(rec))
	if err != nil || ex != "" || rk != q || string(env) != `"garbage \u0000 element"` {
		t.Fatalf("placeholder record %q: env %s ex %q rk %q %v", rec, env, ex, rk, err)
	}
	if _, err := f.rdb.ZScore(ctx, f.ks.unackedIndex(), "ph-tag").Result(); err != nil {
		t.Fatalf("no index entry: %v", err)
	}
}

// A placeholder lease whose consumer died before replacing it is restored as the element
// it was, and delivered again (here: for dead-lettering, as it is not an envelope).
func TestSweepRestoresPlaceholderLease(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	q := queueName("phrestore")
	f.rdb.HSet(ctx, f.ks.unacked(), "ph", `["not json at all","",`+strconv.Quote(q)+`]`)
	f.rdb.ZAdd(ctx, f.ks.unackedIndex(), goredis.Z{Score: nowFloat() - 10, Member: "ph"})
	b := f.broker(func(o *Options) { o.VisibilityTimeout = time.Second })
	if n, err := b.sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	if got := f.lrange(f.prefix + q); len(got) != 1 || got[0] != "not json at all" {
		t.Fatalf("restored %q", got)
	}
	ch, _ := f.consume(b, 0, q)
	d := recv(t, ch)
	if d.Message.ContentType != protocol.ContentTypeInvalidEnvelope || string(d.Message.Body) != "not json at all" {
		t.Fatalf("delivered %q %q", d.Message.ContentType, d.Message.Body)
	}
	ack(t, b, d)
}

func TestCloseRestoresUnsettled(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(nil)
	q := queueName("close")
	for i := range 3 {
		f.publish(b, q, msg(fmt.Sprint(i), 0))
	}
	ch, _ := f.consume(b, 2, q)
	d0, d1 := recv(t, ch), recv(t, ch)
	ack(t, b, d0)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for range ch { // closed by Close
	}
	if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()); n != 0 {
		t.Errorf("%d lease entries left after Close", n)
	}
	items := f.lrange(f.prefix + q)
	if len(items) != 2 {
		t.Fatalf("queue has %d items, want 2", len(items))
	}
	// d1 went back to the consuming end, ahead of the never-delivered message 2.
	env, _ := decodeEnvelope([]byte(items[len(items)-1]))
	if env.msg.Headers["id"] != "1" || !env.redelivered {
		t.Errorf("consuming end holds %s", items[len(items)-1])
	}
	if err := b.Ack(ctx, d1); !errors.Is(err, broker.ErrStaleDelivery) {
		t.Errorf("Ack after Close: %v", err)
	}
	if err := b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: msg("x", 0)}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish after Close: %v", err)
	}
	if _, err := b.Consume(ctx, []string{q}, 1); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Consume after Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCancelClosesChannel(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q := queueName("cancel")
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := b.Consume(ctx, []string{q}, 1)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let it poll the empty queue
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("unexpected delivery")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
	// A message fetched but never taken from the channel is restored at stop.
	f.publish(b, q, msg("m", 0))
	ctx2, cancel2 := context.WithCancel(context.Background())
	ch2, err := b.Consume(ctx2, []string{q}, 1)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.hlen(f.ks.unacked()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel2()
	for d := range ch2 { // it may still have been handed over: the caller requeues it
		if err := b.Requeue(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.hlen(f.ks.unacked()); n != 0 {
		t.Errorf("lease left after stop: %d", n)
	}
	if n, _ := b.Depth(context.Background(), q); n != 1 {
		t.Errorf("Depth after stop = %d, want 1", n)
	}
}

func TestKeyPrefixIsolation(t *testing.T) {
	f1, f2 := newFixture(t), newFixture(t)
	b1, b2 := f1.broker(nil), f2.broker(nil)
	q := queueName("shared-name")
	f1.publish(b1, q, msg("one", 3))
	ch1, _ := f1.consume(b1, 0, q)
	ch2, _ := f2.consume(b2, 0, q)
	d := recv(t, ch1)
	expectNone(t, ch2, 300*time.Millisecond)
	if n, _ := b2.Depth(context.Background(), q); n != 0 {
		t.Errorf("other prefix sees %d", n)
	}
	keys, _ := f1.rdb.Keys(context.Background(), "*"+q+"*").Result()
	for _, k := range keys {
		if !strings.HasPrefix(k, f1.prefix) && !strings.HasPrefix(k, f2.prefix) {
			t.Errorf("unprefixed key %q", k)
		}
	}
	for _, k := range []string{f1.ks.unacked(), f1.ks.unackedIndex(), f1.ks.binding(q)} {
		if n, _ := f1.rdb.Exists(context.Background(), k).Result(); n != 1 {
			t.Errorf("key %q missing", k)
		}
	}
	ack(t, b1, d)
}

func TestReconnectAfterServerLoss(t *testing.T) {
	f := newFixture(t)
	p := startProxy(t)
	b := f.broker(func(o *Options) { o.URL = "redis://" + p.addr + "/12" })
	direct := f.broker(nil)
	q := queueName("reconnect")
	ch, _ := f.consume(b, 0, q)
	f.publish(direct, q, msg("before", 0))
	ack(t, b, recv(t, ch))

	p.down()
	time.Sleep(1500 * time.Millisecond) // the fetch loop fails and backs off
	f.publish(direct, q, msg("during", 0))
	time.Sleep(500 * time.Millisecond)
	p.up()

	d := recv(t, ch)
	if idOf(d) != "during" {
		t.Errorf("got %q", idOf(d))
	}
	ack(t, b, d)
	f.publish(direct, q, msg("after", 0))
	d = recv(t, ch)
	if idOf(d) != "after" {
		t.Errorf("got %q", idOf(d))
	}
	ack(t, b, d)
}

func TestIdleFetchRecordsLease(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(nil)
	q := queueName("idle")
	ch, _ := f.consume(b, 0, q)
	time.Sleep(300 * time.Millisecond) // the consumer is polling the empty queue now
	f.publish(b, q, msg("late", 6))
	d := recv(t, ch)
	tag := d.Handle.(*lease).tag
	rec, err := f.rdb.HGet(ctx, f.ks.unacked(), tag).Result()
	if err != nil {
		t.Fatalf("no lease after an idle fetch: %v", err)
	}
	env, ex, rk, err := parseRecord([]byte(rec))
	if err != nil || ex != "" || rk != q {
		t.Fatalf("record %q: %v", rec, err)
	}
	if e, err := decodeEnvelope(env); err != nil || e.tag != tag || e.msg.Headers["id"] != "late" {
		t.Fatalf("record envelope %s: %v", env, err)
	}
	score, err := f.rdb.ZScore(ctx, f.ks.unackedIndex(), tag).Result()
	if err != nil || time.Since(time.Unix(int64(score), 0)) > time.Minute {
		t.Fatalf("index score %v: %v", score, err)
	}
	ack(t, b, d)
}

func TestOddEnvelopes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(nil)
	q := queueName("odd")
	// Oldest first: garbage, an envelope without delivery_tag (plain body), a normal one.
	f.rdb.LPush(ctx, f.prefix+q,
		"not json at all",
		`{"body": "plain", "content-type": "text/plain", "headers": {"id": "untagged", "v": NaN}, "properties": {"delivery_info": {"exchange": "", "routing_key": "`+q+`"}}}`)
	f.publish(b, q, msg("normal", 0))
	ch, _ := f.consume(b, 0, q)
	// The garbage is not dropped: it comes as an invalid-envelope message (see invalid_test.go).
	d0 := recv(t, ch)
	if d0.Message.ContentType != protocol.ContentTypeInvalidEnvelope || string(d0.Message.Body) != "not json at all" {
		t.Fatalf("garbage delivered as %q %q", d0.Message.ContentType, d0.Message.Body)
	}
	ack(t, b, d0)
	d1, d2 := recv(t, ch), recv(t, ch)
	if idOf(d1) != "untagged" || string(d1.Message.Body) != "plain" || d1.Message.Headers["v"] != nil || idOf(d2) != "normal" {
		t.Fatalf("got %q %q %q", idOf(d1), d1.Message.Body, idOf(d2))
	}
	tag := d1.Handle.(*lease).tag
	rec, err := f.rdb.HGet(ctx, f.ks.unacked(), tag).Result()
	if err != nil || !strings.Contains(rec, `"delivery_tag":"`+tag+`"`) {
		t.Fatalf("generated tag not in the lease record %q: %v", rec, err)
	}
	// Requeued, it carries its new tag and can be consumed again.
	if err := b.Requeue(ctx, d1); err != nil {
		t.Fatal(err)
	}
	d3 := recv(t, ch)
	if idOf(d3) != "untagged" || d3.Handle.(*lease).tag != tag || !d3.Redelivered {
		t.Errorf("requeued: %q tag %s redelivered %v", idOf(d3), d3.Handle.(*lease).tag, d3.Redelivered)
	}
	ack(t, b, d2)
	ack(t, b, d3)
	if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()) + f.llen(f.prefix+q); n != 0 {
		t.Errorf("%d keys entries left", n)
	}
}

// One fetch takes several messages in the order successive single fetches would:
// priority-major over the consumed queues, the queue just taken from moving to the end
// (kombu's round robin), every one leased in the same step.
func TestFetchBatchOrder(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(nil)
	qa, qb := queueName("batch-a"), queueName("batch-b")
	for _, p := range []struct {
		q    string
		id   string
		prio uint8
	}{{qa, "a0", 0}, {qa, "a1", 0}, {qa, "a2", 0}, {qb, "b0", 0}, {qb, "b1", 0}, {qa, "a9", 9}, {qb, "b5", 5}} {
		f.publish(b, p.q, msg(p.id, p.prio))
	}
	rr := &roundRobin{order: []string{qa, qb}}
	ds, skipped, err := b.fetch(ctx, rr, 10)
	if err != nil || skipped != 0 {
		t.Fatalf("fetch: %v (skipped %d)", err, skipped)
	}
	var got []string
	for _, d := range ds {
		got = append(got, idOf(d))
	}
	if want := "a0 b0 a1 b1 a2 b5 a9"; strings.Join(got, " ") != want {
		t.Errorf("fetched %v, want %s", got, want)
	}
	if want := []string{qb, qa}; !slices.Equal(rr.order, want) {
		t.Errorf("round robin after the batch: %v, want %v", rr.order, want)
	}
	if n := f.hlen(f.ks.unacked()); n != int64(len(ds)) {
		t.Errorf("%d leases for %d deliveries", n, len(ds))
	}
	for _, d := range ds {
		ack(t, b, d)
	}
	if n := f.hlen(f.ks.unacked()); n != 0 {
		t.Errorf("%d leases left after acking", n)
	}
}

// A fetch never takes more than asked, and ends after the element it leased under the
// fresh tag (an element without a usable delivery_tag).
func TestFetchBatchLimits(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(nil)
	q := queueName("batch-limit")
	f.publish(b, q, msg("m1", 0))
	f.rdb.LPush(ctx, f.prefix+q, "not an envelope")
	f.publish(b, q, msg("m2", 0))
	f.publish(b, q, msg("m3", 0))
	rr := &roundRobin{order: []string{q}}
	ds, _, err := b.fetch(ctx, rr, 10)
	if err != nil || len(ds) != 2 || idOf(ds[0]) != "m1" {
		t.Fatalf("first fetch: %d deliveries, %v", len(ds), err)
	}
	if ct := ds[1].Message.ContentType; ct != protocol.ContentTypeInvalidEnvelope {
		t.Errorf("second delivery has content type %q, want the invalid-envelope marker", ct)
	}
	ds2, _, err := b.fetch(ctx, rr, 1)
	if err != nil || len(ds2) != 1 || idOf(ds2[0]) != "m2" {
		t.Fatalf("second fetch (limit 1): %d deliveries, %v", len(ds2), err)
	}
	if n := f.llen(f.prefix + q); n != 1 {
		t.Errorf("%d left in the queue, want 1", n)
	}
	for _, d := range append(ds, ds2...) {
		ack(t, b, d)
	}
}

// Concurrent acks share round trips and each removes its own lease.
func TestAckConcurrent(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q := queueName("acks")
	const n = 200
	for i := range n {
		f.publish(b, q, msg(fmt.Sprintf("m%d", i), 0))
	}
	ch, stop := f.consume(b, n, q)
	defer stop()
	var wg sync.WaitGroup
	for range n {
		d := recv(t, ch)
		wg.Go(func() { ack(t, b, d) })
	}
	wg.Wait()
	if h, z := f.hlen(f.ks.unacked()), f.zcard(f.ks.unackedIndex()); h != 0 || z != 0 {
		t.Errorf("after acking everything: unacked %d, unacked_index %d", h, z)
	}
}

// TestConsumerAlive: the probe is zero without a Consume, keeps up with the clock while
// the fetch loop polls an empty queue and while it waits for a free slot (the worker holds
// the prefetch), falls behind while Redis is unreachable, catches up once it is back, and
// is zero again after the Consume ends.
func TestConsumerAlive(t *testing.T) {
	f := newFixture(t)
	p := startProxy(t)
	b := f.broker(func(o *Options) { o.URL = "redis://" + p.addr + "/12" })
	direct := f.broker(nil)
	q := queueName("alive")
	fresh := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Since(b.ConsumerAlive()) > 500*time.Millisecond {
			if time.Now().After(deadline) {
				t.Fatalf("%s: ConsumerAlive %v is %s old", what, b.ConsumerAlive(), time.Since(b.ConsumerAlive()))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if at := b.ConsumerAlive(); !at.IsZero() {
		t.Fatalf("before Consume: %v", at)
	}
	ch, cancel := f.consume(b, 1, q)
	fresh("polling")
	time.Sleep(time.Second)
	fresh("still polling")

	f.publish(direct, q, msg("held", 0))
	f.publish(direct, q, msg("next", 0))
	d := recv(t, ch) // prefetch 1: the loop now waits for this slot
	time.Sleep(time.Second)
	fresh("waiting for a slot")
	ack(t, b, d)
	ack(t, b, recv(t, ch))

	p.down()
	time.Sleep(1500 * time.Millisecond)
	if age := time.Since(b.ConsumerAlive()); age < time.Second {
		t.Errorf("Redis down for 1.5 s: ConsumerAlive only %s old", age)
	}
	p.up()
	fresh("after Redis came back")

	cancel()
	for range ch {
	}
	if at := b.ConsumerAlive(); !at.IsZero() {
		t.Errorf("after the Consume ended: %v", at)
	}
}

// The fetch script returns only the tail of a lease's record; the record the broker
// rebuilds from it (for a restore or a dead-letter, which compare it with what is in
// unacked) is byte for byte the one the script wrote, also when cjson escapes the
// exchange or routing key ("/" as "\/", non-ASCII as is), and hand-backs that compare it
// succeed.
func TestLeaseRecordRebuilt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.broker(nil)
	q := queueName("rec")
	f.publish(b, q, msg("plain", 0))
	for i, di := range []string{
		`{"exchange":"ex/1","routing_key":"rk/é \"q\""}`,
		`{"exchange":"","routing_key":""}`,
		`{}`,
	} {
		env := fmt.Sprintf(`{"body":"W10=","content-encoding":"utf-8","content-type":"application/json",`+
			`"headers":{"id":"py%d","task":"t"},"properties":{"delivery_tag":"py-tag-%d","delivery_info":%s,`+
			`"body_encoding":"base64","priority":0,"delivery_mode":2}}`, i, i, di)
		f.rdb.LPush(ctx, f.prefix+q, env)
	}
	ds, skipped, err := b.fetch(ctx, &roundRobin{order: []string{q}}, 10)
	if err != nil || skipped != 0 || len(ds) != 4 {
		t.Fatalf("fetch: %d deliveries, skipped %d, %v", len(ds), skipped, err)
	}
	for i, d := range ds {
		l := d.Handle.(*lease)
		want, err := f.rdb.HGet(ctx, f.ks.unacked(), l.tag).Result()
		if err != nil {
			t.Fatalf("lease %s: %v", l.tag, err)
		}
		if got := string(l.unackedRecord()); got != want {
			t.Errorf("delivery %d: rebuilt record\n%s\nunacked holds\n%s", i, got, want)
		}
		if l.record != nil {
			t.Errorf("delivery %d: the whole record is held", i)
		}
	}
	for _, d := range ds {
		if err := b.Requeue(ctx, d); err != nil {
			t.Fatalf("requeue %s: %v", idOf(d), err)
		}
	}
	if n, m := f.hlen(f.ks.unacked()), f.llen(f.prefix+q); n != 0 || m != 4 {
		t.Errorf("after the hand-backs: %d leases, %d in the queue; want 0 and 4", n, m)
	}
}
