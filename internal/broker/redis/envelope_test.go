package redis

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"denis.io/fleet/internal/protocol"
)

// capturedKombu is the envelope of celery-protocol.md §1.6 (Celery 5.2.6 over Redis).
const capturedKombu = `{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogW3sidGFzayI6ICJyZXNlYXJjaC5sb2dfcmVzdWx0IiwgImFyZ3MiOiBbXSwgImt3YXJncyI6IHt9LCAib3B0aW9ucyI6IHt9LCAic3VidGFza190eXBlIjogbnVsbCwgImltbXV0YWJsZSI6IGZhbHNlfV0sICJlcnJiYWNrcyI6IG51bGwsICJjaGFpbiI6IG51bGwsICJjaG9yZCI6IG51bGx9XQ==",
 "content-encoding": "utf-8", "content-type": "application/json",
 "headers": {"lang": "py", "task": "research.add", "id": "cd2bc80c-98fe-40ab-8137-b60746e3c44e",
   "shadow": null, "eta": "2026-11-26T14:32:32.130075+00:00", "expires": "2026-11-26T14:34:02.130075+00:00",
   "group": null, "group_index": null, "retries": 0, "timelimit": [null, null],
   "root_id": "cd2bc80c-98fe-40ab-8137-b60746e3c44e", "parent_id": null, "argsrepr": "(2, 3)",
   "kwargsrepr": "{}", "origin": "gen11511@vm", "ignore_result": false},
 "properties": {"correlation_id": "cd2bc80c-98fe-40ab-8137-b60746e3c44e",
   "reply_to": "45fc3a3f-a9ca-3ca8-be53-590d99303f4a", "delivery_mode": 2, "expiration": "120000",
   "delivery_info": {"exchange": "", "routing_key": "research_tasks"}, "priority": 0,
   "body_encoding": "base64", "delivery_tag": "34a341fe-3ac8-457f-be31-2fc5a2a0ba1b"}}`

const capturedBody = `[[2, 3], {}, {"callbacks": [{"task": "research.log_result", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}], "errbacks": null, "chain": null, "chord": null}]`

func TestDecodeCapturedKombuEnvelope(t *testing.T) {
	env, err := decodeEnvelope([]byte(capturedKombu))
	if err != nil {
		t.Fatal(err)
	}
	m := env.msg
	if string(m.Body) != capturedBody {
		t.Errorf("body = %s", m.Body)
	}
	wantProps := protocol.Properties{
		CorrelationID: "cd2bc80c-98fe-40ab-8137-b60746e3c44e",
		ReplyTo:       "45fc3a3f-a9ca-3ca8-be53-590d99303f4a",
		DeliveryMode:  2, Expiration: "120000",
	}
	if m.Properties != wantProps {
		t.Errorf("properties = %+v", m.Properties)
	}
	if m.ContentType != "application/json" || m.ContentEncoding != "utf-8" {
		t.Errorf("content = %q %q", m.ContentType, m.ContentEncoding)
	}
	if env.tag != "34a341fe-3ac8-457f-be31-2fc5a2a0ba1b" || env.exchange != "" ||
		env.routingKey != "research_tasks" || env.redelivered || env.priority != 0 {
		t.Errorf("envelope = %+v", env)
	}
	checks := map[string]any{
		"task":          "research.add",
		"retries":       json.Number("0"),
		"timelimit":     []any{nil, nil},
		"shadow":        nil,
		"ignore_result": false,
		"argsrepr":      "(2, 3)",
	}
	for k, want := range checks {
		if got, ok := m.Headers[k]; !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("header %s = %#v, want %#v", k, got, want)
		}
	}

	// Re-encoding gives the same document, apart from key order and spacing.
	out, err := encodeEnvelope(m, env.exchange, env.routingKey, env.tag)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(jsonValue(t, out), jsonValue(t, []byte(capturedKombu))) {
		t.Errorf("re-encoded envelope differs:\n%s", out)
	}
}

func jsonValue(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := unmarshalNumber(b, &v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return v
}

func TestEnvelopeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    *protocol.Message
	}{
		{"task", msg("a", 0)},
		{"priority and expiry", &protocol.Message{
			ContentType: "application/json", ContentEncoding: "utf-8",
			Properties: protocol.Properties{CorrelationID: "c", ReplyTo: "r", DeliveryMode: 1, Priority: 7, Expiration: "5000"},
			Headers: map[string]any{
				"n": json.Number("12345678901234567890"), "f": json.Number("1.5"), "b": true, "nil": nil,
				"list": []any{"x", json.Number("1")}, "map": map[string]any{"k": "<&>"},
			},
			Body: []byte(`{"html": "<b>&</b>"}`),
		}},
		{"binary body, no headers", &protocol.Message{
			ContentType: "application/x-binary", ContentEncoding: "binary",
			Body: []byte{0, 1, 2, 255},
		}},
		{"empty", &protocol.Message{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := encodeEnvelope(tt.m, "ex", "rk", "tag-1")
			if err != nil {
				t.Fatal(err)
			}
			env, err := decodeEnvelope(raw)
			if err != nil {
				t.Fatal(err)
			}
			want := *tt.m
			if want.Headers == nil {
				want.Headers = map[string]any{}
			}
			if want.Properties.DeliveryMode == 0 {
				want.Properties.DeliveryMode = 2
			}
			if !bytes.Equal(env.msg.Body, want.Body) {
				t.Errorf("body = %q, want %q", env.msg.Body, want.Body)
			}
			env.msg.Body, want.Body = nil, nil
			if !reflect.DeepEqual(*env.msg, want) {
				t.Errorf("got %+v\nwant %+v", *env.msg, want)
			}
			if env.tag != "tag-1" || env.exchange != "ex" || env.routingKey != "rk" || env.priority != int(tt.m.Properties.Priority) {
				t.Errorf("envelope = %+v", env)
			}
			if strings.Contains(string(raw), `\u003c`) {
				t.Errorf("HTML-escaped output: %s", raw)
			}
		})
	}
}

func TestDecodeEnvelopeVariants(t *testing.T) {
	tests := []struct {
		name        string
		raw         string
		body        string
		headers     map[string]any
		priority    int
		redelivered bool
		wantErr     bool
	}{
		{name: "plain body without body_encoding",
			raw:  `{"body": "hello", "headers": {}, "properties": {"delivery_tag": "t", "delivery_info": {"exchange": "", "routing_key": "q"}}}`,
			body: "hello", headers: map[string]any{}},
		{name: "Python NaN and Infinity in headers",
			raw:  `{"body": "aGk=", "headers": {"x": NaN, "y": [Infinity, -Infinity], "s": "NaN"}, "properties": {"body_encoding": "base64", "delivery_tag": "t", "priority": 9}}`,
			body: "hi", headers: map[string]any{"x": nil, "y": []any{nil, nil}, "s": "NaN"}, priority: 9},
		{name: "redelivered by kombu restore",
			raw:  `{"body": "", "headers": {"redelivered": true}, "properties": {"delivery_tag": "t", "priority": 42, "delivery_info": {"exchange": "", "routing_key": "q", "redelivered": true}}}`,
			body: "", headers: map[string]any{"redelivered": true}, priority: 9, redelivered: true},
		{name: "null headers and priority",
			raw:  `{"body": null, "headers": null, "properties": {"delivery_tag": "t", "priority": null}}`,
			body: "", headers: map[string]any{}},
		{name: "no properties", raw: `{"body": "x"}`, wantErr: true},
		{name: "bad base64", raw: `{"body": "***", "properties": {"body_encoding": "base64"}}`, wantErr: true},
		{name: "not JSON", raw: `hello`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := decodeEnvelope([]byte(tt.raw))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if string(env.msg.Body) != tt.body {
				t.Errorf("body = %q, want %q", env.msg.Body, tt.body)
			}
			if !reflect.DeepEqual(env.msg.Headers, tt.headers) {
				t.Errorf("headers = %#v, want %#v", env.msg.Headers, tt.headers)
			}
			if env.priority != tt.priority || env.redelivered != tt.redelivered {
				t.Errorf("priority %d redelivered %v", env.priority, env.redelivered)
			}
		})
	}
}

func TestMarkRedelivered(t *testing.T) {
	out, err := markRedelivered([]byte(capturedKombu))
	if err != nil {
		t.Fatal(err)
	}
	env, err := decodeEnvelope(out)
	if err != nil {
		t.Fatal(err)
	}
	if !env.redelivered || env.msg.Headers["redelivered"] != true {
		t.Errorf("not marked: %s", out)
	}
	// Everything else is unchanged.
	got := jsonValue(t, out).(map[string]any)
	want := jsonValue(t, []byte(capturedKombu)).(map[string]any)
	delete(got["headers"].(map[string]any), "redelivered")
	delete(got["properties"].(map[string]any)["delivery_info"].(map[string]any), "redelivered")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("other fields changed:\n%s", out)
	}
	// Big integers survive byte for byte.
	big := `{"body": "", "headers": {"n": 123456789012345678901234567890}, "properties": {"delivery_tag": "t"}}`
	if out, err = markRedelivered([]byte(big)); err != nil || !strings.Contains(string(out), "123456789012345678901234567890") {
		t.Errorf("big int: %s, %v", out, err)
	}
}

func TestRecord(t *testing.T) {
	rec, err := makeRecord([]byte(capturedKombu), "", "research_tasks")
	if err != nil {
		t.Fatal(err)
	}
	env, ex, rk, err := parseRecord(rec)
	if err != nil || ex != "" || rk != "research_tasks" || !bytes.Equal(env, []byte(capturedKombu)) {
		t.Errorf("parseRecord = %s %q %q %v", env, ex, rk, err)
	}
	if _, _, _, err := parseRecord([]byte(`[{}, ""]`)); err == nil {
		t.Error("short record accepted")
	}
}

func TestPriorityKeys(t *testing.T) {
	ks := keyspace{prefix: "p:", steps: []int{0, 3, 6, 9}}
	tests := []struct {
		priority int
		key      string
	}{
		{-1, "p:q"}, {0, "p:q"}, {1, "p:q"}, {2, "p:q"},
		{3, "p:q\x06\x163"}, {5, "p:q\x06\x163"},
		{6, "p:q\x06\x166"}, {7, "p:q\x06\x166"}, {8, "p:q\x06\x166"},
		{9, "p:q\x06\x169"}, {200, "p:q\x06\x169"},
	}
	for _, tt := range tests {
		if got := ks.listFor("q", tt.priority); got != tt.key {
			t.Errorf("priority %d → %q, want %q", tt.priority, got, tt.key)
		}
	}
	// kombu's bisect wraps to the last step below the first one (Python steps[-1]).
	odd := keyspace{steps: []int{2, 5}}
	if got := odd.listFor("q", 0); got != "q\x06\x165" {
		t.Errorf("odd steps: %q", got)
	}
	keys, owner := ks.fetchKeys([]string{"a", "b"})
	wantKeys := []string{"p:a", "p:b", "p:a\x06\x163", "p:b\x06\x163", "p:a\x06\x166", "p:b\x06\x166", "p:a\x06\x169", "p:b\x06\x169"}
	if !reflect.DeepEqual(keys, wantKeys) || !reflect.DeepEqual(owner, []string{"a", "b", "a", "b", "a", "b", "a", "b"}) {
		t.Errorf("fetchKeys = %q %q", keys, owner)
	}
}

func TestDirectRoute(t *testing.T) {
	members := []string{
		bindingMember("rk", "", "q1"),
		bindingMember("rk", "", "q2"),
		bindingMember("other", "", "q3"),
		bindingMember("rk", "", "q1"),
		"garbage",
	}
	if got := directRoute(members, "rk"); !reflect.DeepEqual(got, []string{"q1", "q2"}) {
		t.Errorf("directRoute = %q", got)
	}
	if got := directRoute(members, "none"); len(got) != 0 {
		t.Errorf("directRoute(none) = %q", got)
	}
}

func TestNewTag(t *testing.T) {
	a, b := newTag(), newTag()
	if a == b || len(a) != 36 || a[14] != '4' || !strings.ContainsRune("89ab", rune(a[19])) {
		t.Errorf("tags %q %q", a, b)
	}
}

// plainEnvelope is the envelope as encoding/json writes it with the base64 body inside:
// encodeEnvelope must produce exactly these bytes.
func plainEnvelope(t testing.TB, m *protocol.Message, exchange, routingKey, tag string) []byte {
	t.Helper()
	env := envelopeOf(m, exchange, routingKey, tag)
	env.Body = base64.StdEncoding.EncodeToString(m.Body)
	out, err := marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestEnvelopeSplice: the body spliced into the envelope gives the same bytes as
// encoding/json with the body inside, for empty, small, binary and large bodies.
func TestEnvelopeSplice(t *testing.T) {
	for _, body := range [][]byte{nil, []byte("x"), {0, 1, 2, 255}, []byte(strings.Repeat(`[{"a": "<&>"}]`, 20000))} {
		m := &protocol.Message{ContentType: "application/json", ContentEncoding: "utf-8",
			Headers: map[string]any{"hostname": "w@h\u2028<>"}, Properties: protocol.Properties{DeliveryMode: 1, Priority: 3},
			Body: body}
		got, err := encodeEnvelope(m, "celeryev", "task.multi", "tag\"1")
		if err != nil {
			t.Fatal(err)
		}
		if want := plainEnvelope(t, m, "celeryev", "task.multi", "tag\"1"); !bytes.Equal(got, want) {
			t.Errorf("body of %d bytes:\n got %.200s\nwant %.200s", len(body), got, want)
		}
	}
}

// BenchmarkEnvelope encodes a 100 KiB event batch: the spliced body against encoding/json
// writing the base64 string itself.
func BenchmarkEnvelope(b *testing.B) {
	m := &protocol.Message{ContentType: "application/json", ContentEncoding: "utf-8",
		Headers: map[string]any{"hostname": "fleet@node-1"}, Properties: protocol.Properties{DeliveryMode: 1},
		Body: []byte(strings.Repeat(`{"hostname": "fleet@node-1", "type": "task-started", "uuid": "5f0c2a8e"}, `, 1400))}
	b.Run("splice", func(b *testing.B) {
		b.SetBytes(int64(len(m.Body)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeEnvelope(m, "celeryev", "task.multi", "t"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(m.Body)))
		b.ReportAllocs()
		for b.Loop() {
			plainEnvelope(b, m, "celeryev", "task.multi", "t")
		}
	})
}
