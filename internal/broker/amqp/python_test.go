package amqp

import (
	"context"
	"encoding/json"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// pythonURL is amqpURL in kombu's spelling (vhost "/" is written "//").
func pythonURL(t *testing.T) string {
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "//"
	}
	return u.String()
}

// declareScript declares queue q as kombu or Celery's app.amqp would (argv: mode url q
// max_priority); it exits non-zero on a 406.
const declareScript = `
import sys
mode, url, q, prio = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == 'kombu':
    from kombu import Connection, Exchange, Queue
    with Connection(url) as conn:
        args = {'x-max-priority': prio} if prio else None
        Queue(q, Exchange(q, 'direct'), routing_key=q, queue_arguments=args)(conn.default_channel).declare()
else:
    from celery import Celery
    app = Celery('fleet_test', broker=url)
    if prio:
        app.conf.task_queue_max_priority = prio
    with app.connection_for_write() as conn:
        app.amqp.queues[q](conn.default_channel).declare()
print('declared')
`

// TestDeclareCompatibility: our declaration of a task queue and Celery's (kombu's Queue
// and Celery's own app.amqp queue) are interchangeable in either order, with and without
// x-max-priority; a real mismatch is reported by Consume.
func TestDeclareCompatibility(t *testing.T) {
	tests := []struct {
		name    string
		mode    string // kombu or celery
		goFirst bool
		pyPrio  int // x-max-priority Python declares with (0: none)
		goPrio  int // x-max-priority in Options.QueueArguments (0: none)
		want406 bool
	}{
		{name: "go first, kombu redeclares", mode: "kombu", goFirst: true},
		{name: "go first, celery redeclares", mode: "celery", goFirst: true},
		{name: "kombu first, go consumes", mode: "kombu"},
		{name: "celery first, go consumes", mode: "celery"},
		{name: "priority: celery first, go consumes", mode: "celery", pyPrio: 10, goPrio: 10},
		{name: "priority: go first, kombu redeclares", mode: "kombu", goFirst: true, pyPrio: 10, goPrio: 10},
		{name: "mismatch: priority queue, go without arguments", mode: "celery", pyPrio: 10, want406: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAdmin(t)
			q := uniqueName(t, "declare")
			a.cleanup(q)
			o := Options{}
			if tt.goPrio != 0 {
				o.QueueArguments = map[string]map[string]any{q: {"x-max-priority": tt.goPrio}}
			}
			b := newBroker(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			declare := func() {
				if out := python(t, declareScript, tt.mode, pythonURL(t), q, strconv.Itoa(tt.pyPrio)); out != "declared" {
					t.Fatalf("python: %s", out)
				}
			}
			if !tt.goFirst {
				declare()
			}
			dels, err := b.Consume(ctx, []string{q}, 1)
			if tt.want406 {
				if err == nil || !strings.Contains(err.Error(), "PRECONDITION_FAILED") {
					t.Fatalf("Consume = %v, want a PRECONDITION_FAILED error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Consume: %v", err)
			}
			if tt.goFirst {
				declare()
			}
			// The binding exists: a publish to exchange q with routing key q arrives.
			if err := b.Publish(ctx, broker.Publishing{Exchange: q, RoutingKey: q, Message: textMessage("via-exchange")}); err != nil {
				t.Fatal(err)
			}
			d := recv(t, dels)
			if d.Exchange != q || string(d.Message.Body) != "via-exchange" {
				t.Errorf("delivery from exchange %q body %q", d.Exchange, d.Message.Body)
			}
			if err := b.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// sendTaskScript is Python's send_task (argv: url queue); it prints the task id.
const sendTaskScript = `
import sys
from celery import Celery
app = Celery('fleet_test', broker=sys.argv[1])
r = app.send_task('research.add', args=(2, 3), queue=sys.argv[2], expires=120, countdown=30,
                  headers={'sent_ms': 2**41, 'neg_big': -2**40, 'ratio': 0.5})
print(r.id)
`

// TestPythonSendTask: a task sent by Celery's send_task arrives with its headers
// normalized (None → nil, ints → json.Number, timelimit → []any) and its properties,
// including headers whose ints py-amqp encodes as 'L' (which amqp091-go cannot read).
func TestPythonSendTask(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "sendtask")
	a.cleanup(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dels, err := b.Consume(ctx, []string{q}, 1)
	if err != nil {
		t.Fatal(err)
	}
	id := python(t, sendTaskScript, pythonURL(t), q)

	d := recv(t, dels)
	if d.Exchange != "" || d.RoutingKey != q || d.Queue != q {
		t.Errorf("delivery info: exchange %q key %q queue %q", d.Exchange, d.RoutingKey, d.Queue)
	}
	m := d.Message
	if m.ContentType != "application/json" || m.ContentEncoding != "utf-8" {
		t.Errorf("content %q/%q", m.ContentType, m.ContentEncoding)
	}
	p := m.Properties
	if p.CorrelationID != id || p.ReplyTo == "" || p.DeliveryMode != 2 || p.Priority != 0 {
		t.Errorf("properties %+v (task id %s)", p, id)
	}
	if ms, err := strconv.Atoi(p.Expiration); err != nil || ms <= 0 || ms > 120000 {
		t.Errorf("expiration %q, want milliseconds up to 120000", p.Expiration)
	}
	want := map[string]any{
		"lang":          "py",
		"task":          "research.add",
		"id":            id,
		"shadow":        nil,
		"group":         nil,
		"group_index":   nil,
		"retries":       json.Number("0"),
		"timelimit":     []any{nil, nil},
		"root_id":       id,
		"parent_id":     nil,
		"argsrepr":      "(2, 3)",
		"kwargsrepr":    "{}",
		"ignore_result": false,
		"sent_ms":       json.Number("2199023255552"),
		"neg_big":       json.Number("-1099511627776"),
		"ratio":         json.Number("0.5"),
	}
	for k, v := range want {
		if got, ok := m.Headers[k]; !ok || !reflect.DeepEqual(got, v) {
			t.Errorf("header %s = %#v (%T), want %#v (%T)", k, got, got, v, v)
		}
	}
	for _, k := range []string{"eta", "expires", "origin"} {
		if s, ok := m.Headers[k].(string); !ok || s == "" {
			t.Errorf("header %s = %#v, want a non-empty string", k, m.Headers[k])
		}
	}
	var body []any
	if err := json.Unmarshal(m.Body, &body); err != nil || len(body) != 3 {
		t.Errorf("body %s: %v", m.Body, err)
	}
	if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}
}

// readScript takes one message off a queue with py-amqp and prints what Python sees.
const readScript = `
import sys, json
from kombu import Connection
with Connection(sys.argv[1]) as conn:
    m = conn.default_channel.basic_get(sys.argv[2], no_ack=True)
    props = {k: v for k, v in m.properties.items() if k != 'application_headers'}
    print(json.dumps({'headers': m.properties.get('application_headers'), 'props': props,
                      'body': m.body if isinstance(m.body, str) else m.body.decode(), 'types': {k: type(v).__name__ for k, v in m.properties.get('application_headers', {}).items()}}, sort_keys=True))
`

// TestPythonReadsOurMessage: what we publish reads in Python as Celery would have sent it
// (None, ints, floats, lists, nested dicts, string expiration).
func TestPythonReadsOurMessage(t *testing.T) {
	a := newAdmin(t)
	q := uniqueName(t, "pyread")
	a.cleanup(q)
	a.declareQueue(q)
	b := newBroker(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msg := &protocol.Message{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties:      protocol.Properties{CorrelationID: "tid", ReplyTo: "rq", DeliveryMode: 2, Expiration: "5000"},
		Headers: map[string]any{
			"shadow":    nil,
			"retries":   json.Number("1"),
			"big":       json.Number("2199023255552"),
			"timelimit": []any{json.Number("10.0"), nil},
			"flag":      true,
			"nested":    map[string]any{"a": []any{"b"}},
		},
		Body: []byte(`[[1], {}, {}]`),
	}
	if err := b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: msg}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Headers map[string]any    `json:"headers"`
		Props   map[string]any    `json:"props"`
		Body    string            `json:"body"`
		Types   map[string]string `json:"types"`
	}
	if err := json.Unmarshal([]byte(python(t, readScript, pythonURL(t), q)), &got); err != nil {
		t.Fatal(err)
	}
	wantTypes := map[string]string{"shadow": "NoneType", "retries": "int", "big": "int", "timelimit": "list", "flag": "bool", "nested": "dict"}
	if !reflect.DeepEqual(got.Types, wantTypes) {
		t.Errorf("python header types %v, want %v", got.Types, wantTypes)
	}
	if tl := got.Headers["timelimit"].([]any); tl[0] != 10.0 || tl[1] != nil {
		t.Errorf("timelimit %v", tl)
	}
	if got.Props["correlation_id"] != "tid" || got.Props["reply_to"] != "rq" || got.Props["expiration"] != "5000" ||
		got.Props["delivery_mode"] != 2.0 || got.Props["content_type"] != "application/json" {
		t.Errorf("python properties %v", got.Props)
	}
	if got.Body != string(msg.Body) {
		t.Errorf("body %q", got.Body)
	}
}
