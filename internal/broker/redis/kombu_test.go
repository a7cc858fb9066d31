package redis

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// Interoperability with the real kombu 5.2.4 / Celery 5.2.6 of /usr/bin/python3.

const pySendTask = `
import sys
from celery import Celery
url, prefix, q = sys.argv[1:4]
app = Celery('interop', broker=url)
app.conf.broker_transport_options = {'global_keyprefix': prefix}
r = app.send_task('research.add', args=(2, 3), kwargs={'z': 'ü'}, queue=q, priority=7,
                  headers={'custom': [1, 2.5, None]})
print(r.id)
`

func TestInteropCelerySendTaskConsumedByGo(t *testing.T) {
	f := newFixture(t)
	q := queueName("celery-send")
	id := strings.TrimSpace(python(t, pySendTask, testURL, f.prefix, q))
	if n := f.llen(f.ks.listFor(q, 7)); n != 1 {
		t.Fatalf("Celery's message is not in the priority-7 sub-list (%d)", n)
	}
	b := f.broker(nil)
	ch, _ := f.consume(b, 1, q)
	d := recv(t, ch)
	m := d.Message
	if m.Headers["id"] != id || m.Headers["task"] != "research.add" || m.Headers["lang"] != "py" {
		t.Errorf("headers %v", m.Headers)
	}
	if got, want := m.Headers["custom"], []any{json.Number("1"), json.Number("2.5"), nil}; !jsonEqual(got, want) {
		t.Errorf("custom header %#v", got)
	}
	if m.Properties.CorrelationID != id || m.Properties.Priority != 7 || m.Properties.DeliveryMode != 2 || m.Properties.ReplyTo == "" {
		t.Errorf("properties %+v", m.Properties)
	}
	if m.ContentType != "application/json" || m.ContentEncoding != "utf-8" {
		t.Errorf("content %q %q", m.ContentType, m.ContentEncoding)
	}
	var body []any
	if err := json.Unmarshal(m.Body, &body); err != nil || len(body) != 3 {
		t.Fatalf("body %s: %v", m.Body, err)
	}
	if !jsonEqual(body[0], []any{2.0, 3.0}) || !jsonEqual(body[1], map[string]any{"z": "ü"}) {
		t.Errorf("body %s", m.Body)
	}
	if d.Queue != q || d.RoutingKey != q || d.Redelivered {
		t.Errorf("delivery %+v", d)
	}
	ack(t, b, d)
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

const pySimpleGet = `
import sys, json
from kombu import Connection
url, prefix, q = sys.argv[1:4]
with Connection(url, transport_options={'global_keyprefix': prefix}) as c:
    sq = c.SimpleQueue(q)
    out = []
    for _ in range(int(sys.argv[4])):
        m = sq.get(timeout=10)
        out.append({'body': m.body.decode() if isinstance(m.body, bytes) else m.body,
                    'headers': m.headers, 'content_type': m.content_type,
                    'content_encoding': m.content_encoding, 'properties': m.properties,
                    'delivery_info': m.delivery_info})
        m.ack()
    sq.close()
    print(json.dumps(out))
`

func TestInteropGoPublishConsumedByKombu(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q := queueName("go-publish")
	m1 := msg("first", 0)
	m1.Properties.ReplyTo = "reply-q"
	m1.Properties.Expiration = "60000"
	m1.Headers["nested"] = map[string]any{"n": json.Number("12345678901234567890"), "l": []any{true, nil}}
	m2 := msg("urgent", 9) // priority 9 is the lowest on Redis: delivered after step 0
	f.publish(b, q, m2)
	f.publish(b, q, m1)

	var got []struct {
		Body            string         `json:"body"`
		Headers         map[string]any `json:"headers"`
		ContentType     string         `json:"content_type"`
		ContentEncoding string         `json:"content_encoding"`
		Properties      map[string]any `json:"properties"`
		DeliveryInfo    map[string]any `json:"delivery_info"`
	}
	out := python(t, pySimpleGet, testURL, f.prefix, q, "2")
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(got) != 2 || got[0].Headers["id"] != "first" || got[1].Headers["id"] != "urgent" {
		t.Fatalf("kombu got %s", out)
	}
	g := got[0]
	if g.Body != string(m1.Body) || g.ContentType != "application/json" || g.ContentEncoding != "utf-8" {
		t.Errorf("kombu message %+v", g)
	}
	if !strings.Contains(out, `"n": 12345678901234567890`) {
		t.Errorf("big integer header not preserved: %s", out)
	}
	p := g.Properties
	if p["correlation_id"] != "first" || p["reply_to"] != "reply-q" || p["expiration"] != "60000" ||
		p["delivery_mode"] != 2.0 || p["body_encoding"] != "base64" || p["priority"] != 0.0 {
		t.Errorf("kombu properties %v", p)
	}
	if g.DeliveryInfo["routing_key"] != q || g.DeliveryInfo["exchange"] != "" {
		t.Errorf("delivery_info %v", g.DeliveryInfo)
	}
	if got[1].Properties["priority"] != 9.0 {
		t.Errorf("priority %v", got[1].Properties["priority"])
	}
	if n := f.hlen(f.ks.unacked()); n != 0 {
		t.Errorf("kombu's acks left %d leases", n)
	}
}

const pyRestoreVisible = `
import sys
from kombu import Connection
url, prefix = sys.argv[1:3]
with Connection(url, transport_options={'global_keyprefix': prefix, 'visibility_timeout': 1}) as c:
    c.default_channel.qos.restore_visible(num=100)
`

func TestInteropKombuRestoresLeasesGoLeftBehind(t *testing.T) {
	f := newFixture(t)
	q := queueName("go-crash")
	dead := f.broker(nil)
	f.publish(dead, q, msg("m1", 0))
	f.publish(dead, q, msg("m2", 6))
	ch, _ := f.consume(dead, 0, q)
	d1, d2 := recv(t, ch), recv(t, ch)
	tags := map[string]string{idOf(d1): d1.Handle.(*lease).tag, idOf(d2): d2.Handle.(*lease).tag}
	crash(dead) // gone without Close: the leases stay in unacked
	if n := f.hlen(f.ks.unacked()); n != 2 {
		t.Fatalf("unacked has %d", n)
	}
	time.Sleep(1200 * time.Millisecond)
	python(t, pyRestoreVisible, testURL, f.prefix)
	if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()); n != 0 {
		t.Fatalf("kombu left %d lease entries", n)
	}
	b := f.broker(nil)
	ch2, _ := f.consume(b, 0, q)
	for range 2 {
		d := recv(t, ch2)
		if !d.Redelivered || d.Handle.(*lease).tag != tags[idOf(d)] {
			t.Errorf("%s: redelivered=%v tag %s want %s", idOf(d), d.Redelivered, d.Handle.(*lease).tag, tags[idOf(d)])
		}
		ack(t, b, d)
	}
}

const pyTakeAndDie = `
import sys, os, json
from kombu import Connection
url, prefix, q = sys.argv[1:4]
c = Connection(url, transport_options={'global_keyprefix': prefix})
sq = c.SimpleQueue(q)
m = sq.get(timeout=10)
print(json.dumps({'tag': m.delivery_tag, 'id': m.headers.get('id')}), flush=True)
os._exit(0)  # die holding the message unacked: no restore_at_shutdown
`

func TestInteropGoRestoresLeasesKombuLeftBehind(t *testing.T) {
	f := newFixture(t)
	q := queueName("py-crash")
	b := f.broker(func(o *Options) { o.VisibilityTimeout = time.Second })
	f.publish(b, q, msg("m1", 3))
	var took struct{ Tag, ID string }
	if err := json.Unmarshal([]byte(python(t, pyTakeAndDie, testURL, f.prefix, q)), &took); err != nil {
		t.Fatal(err)
	}
	if took.ID != "m1" || f.hlen(f.ks.unacked()) != 1 {
		t.Fatalf("kombu took %+v; unacked has %d", took, f.hlen(f.ks.unacked()))
	}
	time.Sleep(1200 * time.Millisecond)
	ch, _ := f.consume(b, 1, q) // the sweep at consumer start restores it
	d := recv(t, ch)
	if idOf(d) != "m1" || !d.Redelivered || d.Handle.(*lease).tag != took.Tag || d.Message.Properties.Priority != 3 {
		t.Errorf("got %s redelivered=%v tag=%s prio=%d", idOf(d), d.Redelivered, d.Handle.(*lease).tag, d.Message.Properties.Priority)
	}
	ack(t, b, d)
	if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()); n != 0 {
		t.Errorf("%d lease entries left", n)
	}
}

func TestInteropKombuSweepSparesRefreshedLease(t *testing.T) {
	f := newFixture(t)
	q := queueName("refreshed")
	b := f.broker(func(o *Options) { o.VisibilityTimeout = time.Second })
	f.publish(b, q, msg("busy", 0))
	ch, _ := f.consume(b, 1, q)
	d := recv(t, ch)
	time.Sleep(1500 * time.Millisecond) // older than kombu's visibility_timeout=1, but refreshed
	python(t, pyRestoreVisible, testURL, f.prefix)
	if n := f.hlen(f.ks.unacked()); n != 1 {
		t.Fatalf("kombu restored a lease Go still holds (unacked has %d)", n)
	}
	if n, _ := b.Depth(context.Background(), q); n != 0 {
		t.Fatalf("queue depth %d", n)
	}
	ack(t, b, d)
}

func TestInteropDeadLetterConsumableByKombu(t *testing.T) {
	f := newFixture(t)
	b := f.broker(nil)
	q, dlq := queueName("dl-src"), queueName("dl")
	f.publish(b, q, msg("bad", 0))
	ch, _ := f.consume(b, 1, q)
	d := recv(t, ch)
	m := d.Message.Clone()
	m.Headers["x-reason"] = "poison"
	if err := b.DeadLetter(context.Background(), d, dlq, m); err != nil {
		t.Fatal(err)
	}
	out := python(t, pySimpleGet, testURL, f.prefix, dlq, "1")
	if !strings.Contains(out, `"x-reason": "poison"`) || !strings.Contains(out, `"id": "bad"`) {
		t.Errorf("kombu read %s", out)
	}
}
