package protocol

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// The fixtures under testdata/golden are written by testdata/capture_golden.py from real
// Celery 5.2.6 / kombu 5.2.4 producers; the format is documented in that script.

type goldenFixture struct {
	Case     string            `json:"case"`
	Broker   string            `json:"broker"`
	SentAt   string            `json:"sent_at"`
	Queue    string            `json:"queue"`
	Messages []json.RawMessage `json:"messages"`
}

type goldenMessage struct {
	name   string // broker/case#i
	broker string
	key    string // Redis list key the message was read from
	sentAt time.Time
	msg    *Message
}

func loadGolden(t *testing.T, broker, name string) []goldenMessage {
	t.Helper()
	path := filepath.Join("testdata", "golden", broker, name+".json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	var fx goldenFixture
	if err := json.Unmarshal(data, &fx); err != nil {
		t.Fatalf("fixture %s: %v", path, err)
	}
	sentAt, err := ParseISO8601(fx.SentAt, time.UTC)
	if err != nil {
		t.Fatalf("fixture %s: sent_at: %v", path, err)
	}
	var out []goldenMessage
	for i, raw := range fx.Messages {
		gm := goldenMessage{name: fmt.Sprintf("%s/%s#%d", broker, name, i), broker: broker, sentAt: sentAt}
		v, err := ParseJSON(raw)
		if err != nil {
			t.Fatalf("%s: %v", gm.name, err)
		}
		rec := v.(map[string]any)
		switch broker {
		case "redis":
			gm.key, _ = rec["key"].(string)
			gm.msg = redisEnvelopeToMessage(t, rec["raw"].(string))
		case "amqp":
			gm.msg = amqpRecordToMessage(t, rec)
		}
		out = append(out, gm)
	}
	return out
}

// redisEnvelopeToMessage converts kombu's Redis list element (hyphenated top-level keys,
// base64 body) into a Message, as the Redis transport does.
func redisEnvelopeToMessage(t *testing.T, raw string) *Message {
	t.Helper()
	v, err := ParseJSON([]byte(raw))
	if err != nil {
		t.Fatalf("envelope: %v", err)
	}
	env := v.(map[string]any)
	props, _ := env["properties"].(map[string]any)
	m := &Message{
		ContentType:     str(env["content-type"]),
		ContentEncoding: str(env["content-encoding"]),
		Headers:         map[string]any{},
		Properties:      propertiesFrom(props),
	}
	if h, ok := env["headers"].(map[string]any); ok {
		m.Headers = h
	}
	body := str(env["body"])
	if str(props["body_encoding"]) == "base64" {
		b, err := base64.StdEncoding.DecodeString(body)
		if err != nil {
			t.Fatalf("envelope body: %v", err)
		}
		m.Body = b
	} else {
		m.Body = []byte(body)
	}
	return m
}

// amqpRecordToMessage converts a fixture's basic_get record into a Message.
func amqpRecordToMessage(t *testing.T, rec map[string]any) *Message {
	t.Helper()
	props, _ := rec["properties"].(map[string]any)
	body, err := base64.StdEncoding.DecodeString(str(rec["body_base64"]))
	if err != nil {
		t.Fatalf("amqp body: %v", err)
	}
	h, _ := rec["headers"].(map[string]any)
	if h == nil {
		h = map[string]any{}
	}
	return &Message{
		ContentType:     str(props["content_type"]),
		ContentEncoding: str(props["content_encoding"]),
		Properties:      propertiesFrom(props),
		Headers:         h,
		Body:            body,
	}
}

func propertiesFrom(p map[string]any) Properties {
	var out Properties
	out.CorrelationID = str(p["correlation_id"])
	out.ReplyTo = str(p["reply_to"])
	out.Expiration = str(p["expiration"])
	if n, ok := toInt(p["delivery_mode"]); ok {
		out.DeliveryMode = uint8(n)
	}
	if n, ok := toInt(p["priority"]); ok {
		out.Priority = uint8(n)
	}
	return out
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := MarshalJSON(v)
	if err != nil {
		t.Fatalf("MarshalJSON(%#v): %v", v, err)
	}
	return string(b)
}

type goldenExpect struct {
	version     int
	task        string
	count       int
	args        []string // MarshalJSON of each message's args, in publish order
	kwargs      string
	eta         time.Duration // offset from sent_at; 0 means no eta
	etaExact    string
	expires     time.Duration // offset from sent_at; 0 means no expires
	timelimit   [2]string     // "" for null
	priority    uint8
	redisSuffix string // the priority sub-queue suffix on Redis
	callbacks   []string
	errbacks    []string
	chain       []string // embed chain task names, as on the wire (reversed)
	chord       string
	group       bool // a group header on every message
	groupIndex  bool // group_index 0..n-1
	shadow      string
	ignore      bool
	headers     map[string]string // extra headers, MarshalJSON form
	unsupported bool
	compressed  bool
}

var goldenCases = map[string]goldenExpect{
	"v2_plain": {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: `{"scale": 10}`},
	"v2_unicode_nested": {version: 2, task: "fleet.echo", count: 1,
		args:   []string{`["h\u00e9llo w\u00f6rld", "\u65e5\u672c\u8a9e", "\ud83d\ude00 emoji", "quote's \"dq\" back\\slash\nnl\ttab\u007f\u0001"]`},
		kwargs: `{"empty": {}, "list": [], "nested": {"a": [1, 2.5, {"b": null, "c": true, "d": false}], "big": 1180591620717411303424, "e16": 1e+16, "f": 1.0, "neg": -1e-07, "zero": -0.0}, "\u00fc": "\u043a\u043b\u044e\u0447"}`},
	"v2_nan_inf": {version: 2, task: "fleet.echo", count: 1, args: []string{"[NaN, Infinity, -Infinity, 0.1]"}, kwargs: `{"x": NaN}`},
	"v1": {version: 1, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: `{"scale": 10}`,
		eta: 30 * time.Second, expires: 120 * time.Second, callbacks: []string{"fleet.log_result"}},
	"countdown": {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: "{}", eta: 30 * time.Second},
	"expires":   {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: "{}", expires: 120 * time.Second},
	"link": {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: "{}",
		callbacks: []string{"fleet.log_result"}, errbacks: []string{"fleet.on_err"}},
	"chain": {version: 2, task: "fleet.add", count: 1, args: []string{"[1, 2]"}, kwargs: "{}",
		chain: []string{"fleet.add", "fleet.add"}},
	"group": {version: 2, task: "fleet.add", count: 3, args: []string{"[0, 0]", "[1, 1]", "[2, 2]"}, kwargs: "{}",
		group: true},
	"chord": {version: 2, task: "fleet.add", count: 3, args: []string{"[0, 1]", "[1, 1]", "[2, 1]"}, kwargs: "{}",
		group: true, groupIndex: true, chord: "fleet.tsum"},
	"priority": {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: "{}",
		priority: 7, redisSuffix: "\x06\x166"},
	"timelimit": {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: "{}",
		timelimit: [2]string{"10", "5"}},
	"extras": {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: "{}",
		etaExact: "2030-01-02T03:04:05.123456+00:00", shadow: "fleet.add_shadow", ignore: true,
		headers: map[string]string{"x_trace": `"abc"`, "stamps": `{"s1": ["v1"]}`,
			"stamped_headers": `["s1"]`, "replaced_task_nesting": "1"}},
	"gzip":   {version: 2, task: "fleet.add", count: 1, args: []string{"[2, 3]"}, kwargs: `{"scale": 10}`, compressed: true},
	"pickle": {task: "fleet.add", count: 1, unsupported: true},
	"yaml":   {task: "fleet.add", count: 1, unsupported: true},
}

func sigNames(s []Signature) []string {
	var out []string
	for _, x := range s {
		out = append(out, x.Task)
	}
	return out
}

func TestGoldenFixtures(t *testing.T) {
	names := make([]string, 0, len(goldenCases))
	for n := range goldenCases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, broker := range []string{"redis", "amqp"} {
		for _, name := range names {
			want := goldenCases[name]
			t.Run(broker+"/"+name, func(t *testing.T) {
				msgs := loadGolden(t, broker, name)
				if len(msgs) != want.count {
					t.Fatalf("fixture has %d messages, want %d", len(msgs), want.count)
				}
				groups := map[string]bool{}
				for i, gm := range msgs {
					checkGoldenMessage(t, gm, i, want)
					if g, _ := gm.msg.Headers["group"].(string); g != "" {
						groups[g] = true
					}
				}
				if want.group && len(groups) != 1 {
					t.Errorf("messages carry %d distinct group ids, want 1", len(groups))
				}
			})
		}
	}
}

func checkGoldenMessage(t *testing.T, gm goldenMessage, i int, want goldenExpect) {
	t.Helper()
	m := gm.msg
	task, err := Decode(m)
	if want.unsupported {
		de, ok := err.(*DecodeError)
		if !ok || de.Reason != ReasonUnsupportedContent {
			t.Fatalf("%s: Decode error = %v, want unsupported_content", gm.name, err)
		}
		if de.TaskID == "" || de.TaskID != m.Headers["id"] || de.TaskName != want.task {
			t.Errorf("%s: DecodeError id/name = %q/%q, want %v/%s", gm.name, de.TaskID, de.TaskName, m.Headers["id"], want.task)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: Decode: %v", gm.name, err)
	}
	if task.Version != want.version || task.Name != want.task {
		t.Errorf("%s: version/name = %d/%s, want %d/%s", gm.name, task.Version, task.Name, want.version, want.task)
	}
	if task.ID == "" || task.ID != m.Properties.CorrelationID || task.CorrelationID != task.ID {
		t.Errorf("%s: id %q, correlation_id %q", gm.name, task.ID, m.Properties.CorrelationID)
	}
	if want.version == 2 && task.RootID != task.ID {
		t.Errorf("%s: root_id %q, want the task id", gm.name, task.RootID)
	}
	if task.ReplyTo == "" || task.ReplyTo != m.Properties.ReplyTo {
		t.Errorf("%s: reply_to %q", gm.name, task.ReplyTo)
	}
	if got := mustMarshal(t, task.Args); got != want.args[i] {
		t.Errorf("%s: args %s, want %s", gm.name, got, want.args[i])
	}
	if got := mustMarshal(t, task.Kwargs); got != want.kwargs {
		t.Errorf("%s: kwargs %s, want %s", gm.name, got, want.kwargs)
	}
	if task.Retries != 0 {
		t.Errorf("%s: retries %d", gm.name, task.Retries)
	}
	checkOffset := func(what string, got *time.Time, off time.Duration) {
		if off == 0 {
			if got != nil && want.etaExact == "" {
				t.Errorf("%s: %s = %v, want none", gm.name, what, got)
			}
			return
		}
		if got == nil {
			t.Errorf("%s: %s missing", gm.name, what)
			return
		}
		if d := got.Sub(gm.sentAt) - off; d < -time.Second || d > 5*time.Second {
			t.Errorf("%s: %s %v is %v after sent_at, want about %v", gm.name, what, got, got.Sub(gm.sentAt), off)
		}
	}
	checkOffset("eta", task.ETA, want.eta)
	checkOffset("expires", task.Expires, want.expires)
	if want.etaExact != "" {
		if task.ETA == nil || pyISOFormat(*task.ETA) != want.etaExact {
			t.Errorf("%s: eta %v, want %s", gm.name, task.ETA, want.etaExact)
		}
	}
	for j, p := range task.TimeLimit {
		got := ""
		if p != nil {
			got = mustMarshal(t, *p)
			got = strings.TrimSuffix(got, ".0")
		}
		if got != want.timelimit[j] {
			t.Errorf("%s: timelimit[%d] = %q, want %q", gm.name, j, got, want.timelimit[j])
		}
	}
	if task.Priority != want.priority {
		t.Errorf("%s: priority %d, want %d", gm.name, task.Priority, want.priority)
	}
	if gm.broker == "redis" && !strings.HasSuffix(gm.key, want.redisSuffix) {
		t.Errorf("%s: read from Redis key %q, want suffix %q", gm.name, gm.key, want.redisSuffix)
	}
	if got := sigNames(task.Embed.Callbacks); strings.Join(got, ",") != strings.Join(want.callbacks, ",") {
		t.Errorf("%s: callbacks %v, want %v", gm.name, got, want.callbacks)
	}
	if got := sigNames(task.Embed.Errbacks); strings.Join(got, ",") != strings.Join(want.errbacks, ",") {
		t.Errorf("%s: errbacks %v, want %v", gm.name, got, want.errbacks)
	}
	if got := sigNames(task.Embed.Chain); strings.Join(got, ",") != strings.Join(want.chain, ",") {
		t.Errorf("%s: chain %v, want %v", gm.name, got, want.chain)
	}
	for _, s := range task.Embed.Chain {
		if id, _ := s.Options["task_id"].(string); id == "" {
			t.Errorf("%s: chain step without a pre-assigned task_id: %+v", gm.name, s)
		}
	}
	if want.chain != nil && mustMarshal(t, task.Embed.Chain[0].Args) != "[4]" {
		t.Errorf("%s: next chain step must be last: chain[0] args %v", gm.name, task.Embed.Chain[0].Args)
	}
	switch {
	case want.chord == "" && task.Embed.Chord != nil:
		t.Errorf("%s: unexpected chord %+v", gm.name, task.Embed.Chord)
	case want.chord != "" && (task.Embed.Chord == nil || task.Embed.Chord.Task != want.chord):
		t.Errorf("%s: chord %+v, want %s", gm.name, task.Embed.Chord, want.chord)
	}
	if want.group != (task.Group != "") {
		t.Errorf("%s: group %q", gm.name, task.Group)
	}
	if want.groupIndex {
		if task.GroupIndex == nil || *task.GroupIndex != i {
			t.Errorf("%s: group_index %v, want %d", gm.name, task.GroupIndex, i)
		}
	} else if task.GroupIndex != nil {
		t.Errorf("%s: group_index %d, want none", gm.name, *task.GroupIndex)
	}
	if task.Shadow != want.shadow || task.IgnoreResult != want.ignore {
		t.Errorf("%s: shadow/ignore_result = %q/%v", gm.name, task.Shadow, task.IgnoreResult)
	}
	for k, v := range want.headers {
		if got := mustMarshal(t, task.Headers[k]); got != v {
			t.Errorf("%s: header %s = %s, want %s", gm.name, k, got, v)
		}
	}
	if want.version == 2 && (task.ArgsRepr != m.Headers["argsrepr"] || task.Origin == "") {
		t.Errorf("%s: argsrepr %q origin %q", gm.name, task.ArgsRepr, task.Origin)
	}

	enc, err := EncodeTask(task)
	if err != nil {
		t.Fatalf("%s: EncodeTask: %v", gm.name, err)
	}
	checkEncodedProperties(t, gm.name, task, enc)
	if want.version == 1 {
		// A v1 task re-encodes as the v2 message Celery would send for it.
		wantBody := `[[2, 3], {"scale": 10}, {"callbacks": [{"task": "fleet.log_result", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}], "errbacks": null, "chain": null, "chord": null}]`
		if string(enc.Body) != wantBody {
			t.Errorf("%s: v1 re-encoded body\n got %s\nwant %s", gm.name, enc.Body, wantBody)
		}
		if enc.Headers["argsrepr"] != "(2, 3)" || enc.Headers["kwargsrepr"] != "{'scale': 10}" {
			t.Errorf("%s: v1 re-encoded reprs %v %v", gm.name, enc.Headers["argsrepr"], enc.Headers["kwargsrepr"])
		}
		if enc.Headers["id"] != task.ID || enc.Headers["root_id"] != task.ID || enc.Headers["eta"] == nil {
			t.Errorf("%s: v1 re-encoded headers %v", gm.name, enc.Headers)
		}
		return
	}
	wantBody := m.Body
	wantHeaders := maps.Clone(m.Headers)
	if want.compressed {
		if _, ok := wantHeaders["compression"]; !ok {
			t.Fatalf("%s: fixture lacks the compression header", gm.name)
		}
		delete(wantHeaders, "compression")
		if wantBody, err = decompress(CompressionZlib, m.Body); err != nil {
			t.Fatalf("%s: %v", gm.name, err)
		}
	}
	if string(enc.Body) != string(wantBody) {
		t.Errorf("%s: re-encoded body differs\n got %s\nwant %s", gm.name, enc.Body, wantBody)
	}
	if got, w := mustMarshal(t, enc.Headers), mustMarshal(t, wantHeaders); got != w {
		t.Errorf("%s: re-encoded headers differ\n got %s\nwant %s", gm.name, got, w)
	}
	// And decoding the re-encoded message gives the same task.
	again, err := Decode(enc)
	if err != nil {
		t.Fatalf("%s: Decode(EncodeTask): %v", gm.name, err)
	}
	if mustMarshal(t, again.Args) != mustMarshal(t, task.Args) || again.ID != task.ID || again.Name != task.Name {
		t.Errorf("%s: second decode differs", gm.name)
	}
}

func checkEncodedProperties(t *testing.T, name string, task *Task, enc *Message) {
	t.Helper()
	p := enc.Properties
	if p.CorrelationID != task.ID || p.ReplyTo != task.ReplyTo || p.DeliveryMode != 2 || p.Priority != task.Priority {
		t.Errorf("%s: re-encoded properties %+v", name, p)
	}
	if (p.Expiration != "") != (task.Expires != nil) {
		t.Errorf("%s: expiration %q with expires %v", name, p.Expiration, task.Expires)
	}
	if enc.ContentType != "application/json" || enc.ContentEncoding != "utf-8" {
		t.Errorf("%s: content %q/%q", name, enc.ContentType, enc.ContentEncoding)
	}
}

type jsonDumpsCase struct {
	Name           string `json:"name"`
	JSON           string `json:"json"`
	Repr           string `json:"repr"`
	SafeReprArgs   string `json:"saferepr_args"`
	SafeReprKwargs string `json:"saferepr_kwargs"`
}

// TestGoldenJSONDumps compares MarshalJSON, Repr, ReprArgs and ReprKwargs with Python's
// json.dumps, repr and Celery's saferepr on the same values.
func TestGoldenJSONDumps(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "golden", "json_dumps.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []jsonDumpsCase
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 10 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			v, err := ParseJSON([]byte(c.JSON))
			if err != nil {
				t.Fatalf("ParseJSON: %v", err)
			}
			if got := mustMarshal(t, v); got != c.JSON {
				t.Errorf("MarshalJSON\n got %s\nwant %s", got, c.JSON)
			}
			if got := Repr(v); got != c.Repr {
				t.Errorf("Repr\n got %s\nwant %s", got, c.Repr)
			}
			args, ok := v.([]any)
			if !ok {
				args = []any{v}
			}
			if got := ReprArgs(args); got != c.SafeReprArgs {
				t.Errorf("ReprArgs\n got %s\nwant %s", got, c.SafeReprArgs)
			}
			if got := ReprKwargs(map[string]any{"v": v}); got != c.SafeReprKwargs {
				t.Errorf("ReprKwargs\n got %s\nwant %s", got, c.SafeReprKwargs)
			}
		})
	}
}

// TestGoldenSafeReprRandom compares Repr and Celery's saferepr on random nested values with
// random length limits (cuts land on every kind of token).
func TestGoldenSafeReprRandom(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "golden", "saferepr_random.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		JSON           string `json:"json"`
		MaxLen         int    `json:"maxlen"`
		Repr           string `json:"repr"`
		SafeReprArgs   string `json:"saferepr_args"`
		SafeReprKwargs string `json:"saferepr_kwargs"`
	}
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		v, err := ParseJSON([]byte(c.JSON))
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got := Repr(v); got != c.Repr {
			t.Errorf("case %d: Repr(%s)\n got %s\nwant %s", i, c.JSON, got, c.Repr)
		}
		if got := SafeRepr(map[string]any{"v": v}, c.MaxLen); got != c.SafeReprKwargs {
			t.Errorf("case %d: SafeRepr(%s, %d)\n got %s\nwant %s", i, c.JSON, c.MaxLen, got, c.SafeReprKwargs)
		}
		if c.MaxLen == ReprMaxSize {
			args, ok := v.([]any)
			if !ok {
				args = []any{v}
			}
			if got := ReprArgs(args); got != c.SafeReprArgs {
				t.Errorf("case %d: ReprArgs(%s)\n got %s\nwant %s", i, c.JSON, got, c.SafeReprArgs)
			}
		}
	}
}
