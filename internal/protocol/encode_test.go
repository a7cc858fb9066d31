package protocol

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var uuid4RE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewTask(t *testing.T) {
	task := NewTask("fleet.add", []any{2, 3}, map[string]any{"a": 1})
	if !uuid4RE.MatchString(task.ID) || task.RootID != task.ID || task.Version != 2 {
		t.Errorf("id %q root %q", task.ID, task.RootID)
	}
	if want := fmt.Sprintf("gen%d@", os.Getpid()); !strings.HasPrefix(task.Origin, want) || task.Origin == want {
		t.Errorf("origin %q, want %shostname", task.Origin, want)
	}
	if task.ArgsRepr != "(2, 3)" || task.KwargsRepr != "{'a': 1}" {
		t.Errorf("reprs %q %q", task.ArgsRepr, task.KwargsRepr)
	}
	if other := NewTask("x", nil, nil); other.ID == task.ID || other.ArgsRepr != "()" || other.KwargsRepr != "{}" ||
		other.Args == nil || other.Kwargs == nil {
		t.Errorf("second task %+v", other)
	}

	m, err := EncodeTask(task)
	if err != nil {
		t.Fatal(err)
	}
	if want := `[[2, 3], {"a": 1}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`; string(m.Body) != want {
		t.Errorf("body %s, want %s", m.Body, want)
	}
	wantHeaders := fmt.Sprintf(`{"argsrepr": "(2, 3)", "eta": null, "expires": null, "group": null, "group_index": null, "id": %q, "ignore_result": false, "kwargsrepr": "{'a': 1}", "lang": "py", "origin": %q, "parent_id": null, "retries": 0, "root_id": %q, "shadow": null, "task": "fleet.add", "timelimit": [null, null]}`,
		task.ID, task.Origin, task.ID)
	if got := mustMarshal(t, m.Headers); got != wantHeaders {
		t.Errorf("headers\n got %s\nwant %s", got, wantHeaders)
	}
	if m.Properties != (Properties{CorrelationID: task.ID, DeliveryMode: 2}) || m.ContentType != "application/json" || m.ContentEncoding != "utf-8" {
		t.Errorf("properties %+v content %q %q", m.Properties, m.ContentType, m.ContentEncoding)
	}
}

func TestEncodeTaskFields(t *testing.T) {
	eta := time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)
	expires := time.Now().Add(120 * time.Second)
	hard, soft := 10.0, 2.5
	gi := 1
	task := &Task{
		ID: "id-1", Name: "fleet.add", Shadow: "shadowed", ParentID: "p", RootID: "r", Group: "g", GroupIndex: &gi,
		Args: []any{json.Number("1.0")}, Kwargs: map[string]any{}, Retries: 3, ETA: &eta, Expires: &expires,
		TimeLimit: [2]*float64{&hard, &soft}, IgnoreResult: true, Origin: "celery@host", ReplyTo: "rq", Priority: 5,
		Embed:   Embed{Chord: &Signature{Task: "fleet.tsum", Options: map[string]any{"task_id": "c"}}},
		Headers: map[string]any{"x": "y", "task": "stale", "compression": "application/x-gzip"},
	}
	m, err := EncodeTask(task)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"task": `"fleet.add"`, "shadow": `"shadowed"`, "parent_id": `"p"`, "root_id": `"r"`, "group": `"g"`,
		"group_index": "1", "retries": "3", "eta": `"2030-01-02T03:04:05.000006+00:00"`, "timelimit": "[10, 2.5]",
		"ignore_result": "true", "origin": `"celery@host"`, "argsrepr": `"(1.0,)"`, "kwargsrepr": `"{}"`, "x": `"y"`,
		"expires": strconv.Quote(pyISOFormat(expires)),
	}
	for k, v := range want {
		if got := mustMarshal(t, m.Headers[k]); got != v {
			t.Errorf("header %s = %s, want %s", k, got, v)
		}
	}
	if _, ok := m.Headers["compression"]; ok {
		t.Error("compression header copied to an uncompressed body")
	}
	if wantBody := `[[1.0], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": {"task": "fleet.tsum", "args": [], "kwargs": {}, "options": {"task_id": "c"}, "subtask_type": null, "immutable": false}}]`; string(m.Body) != wantBody {
		t.Errorf("body\n got %s\nwant %s", m.Body, wantBody)
	}
	ms, err := strconv.Atoi(m.Properties.Expiration)
	if err != nil || ms > 120000 || ms < 100000 {
		t.Errorf("expiration %q, want about 120000", m.Properties.Expiration)
	}
	if m.Properties.Priority != 5 || m.Properties.ReplyTo != "rq" {
		t.Errorf("properties %+v", m.Properties)
	}

	past := time.Now().Add(-time.Hour)
	task.Expires = &past
	if m, _ = EncodeTask(task); m.Properties.Expiration != "0" {
		t.Errorf("expired task: expiration %q, want 0", m.Properties.Expiration)
	}

	// The decoded form of the message is the same task.
	back, err := Decode(m)
	if err != nil {
		t.Fatal(err)
	}
	if back.Shadow != "shadowed" || *back.GroupIndex != 1 || *back.TimeLimit[1] != 2.5 || !back.ETA.Equal(eta) ||
		back.Retries != 3 || !back.IgnoreResult || back.Embed.Chord.Task != "fleet.tsum" || back.Priority != 5 {
		t.Errorf("decoded %+v", back)
	}
}

func TestEncodeTaskRawAndSetters(t *testing.T) {
	in := v2Message(map[string]any{"task": "t", "id": "i", "argsrepr": "(1,)", "kwargsrepr": "{'k': 1.50}",
		"timelimit": []any{json.Number("10.0"), nil}},
		`[[1],{"k":1.50},{"callbacks":null}]`)
	task, err := Decode(in)
	if err != nil {
		t.Fatal(err)
	}
	m, err := EncodeTask(task)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Body) != `[[1], {"k":1.50}, {"callbacks":null}]` {
		t.Errorf("raw parts not reused verbatim: %s", m.Body)
	}
	if mustMarshal(t, m.Headers["timelimit"]) != "[10.0, null]" || m.Headers["kwargsrepr"] != "{'k': 1.50}" {
		t.Errorf("headers not kept: %v", m.Headers)
	}

	task.SetArgs([]any{"a", 2})
	ten := 10.0
	task.TimeLimit[1] = &ten
	if m, err = EncodeTask(task); err != nil {
		t.Fatal(err)
	}
	if string(m.Body) != `[["a", 2], {"k":1.50}, {"callbacks":null}]` || m.Headers["argsrepr"] != "('a', 2)" ||
		mustMarshal(t, m.Headers["timelimit"]) != "[10, 10]" {
		t.Errorf("after SetArgs: %s %v %v", m.Body, m.Headers["argsrepr"], m.Headers["timelimit"])
	}
	task.SetKwargs(nil)
	task.SetEmbed(Embed{Callbacks: []Signature{{Task: "cb", Immutable: true}}})
	if m, err = EncodeTask(task); err != nil {
		t.Fatal(err)
	}
	if want := `[["a", 2], {}, {"callbacks": [{"task": "cb", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true}], "errbacks": null, "chain": null, "chord": null}]`; string(m.Body) != want || m.Headers["kwargsrepr"] != "{}" {
		t.Errorf("after SetKwargs/SetEmbed: %s %v", m.Body, m.Headers["kwargsrepr"])
	}

	// Only raw bytes set: the reprs are computed from them.
	rawOnly := &Task{ID: "i", Name: "t", RawArgs: json.RawMessage(`[1, "x"]`), RawKwargs: json.RawMessage(`{"b": [true]}`)}
	if m, err = EncodeTask(rawOnly); err != nil {
		t.Fatal(err)
	}
	if m.Headers["argsrepr"] != "(1, 'x')" || m.Headers["kwargsrepr"] != "{'b': [True]}" || m.Headers["root_id"] != "i" {
		t.Errorf("raw-only reprs %v %v", m.Headers["argsrepr"], m.Headers["kwargsrepr"])
	}
}

func TestEncodeTaskErrors(t *testing.T) {
	for name, task := range map[string]*Task{
		"nil":          nil,
		"no name":      {ID: "i"},
		"no id":        {Name: "t"},
		"bad args":     {ID: "i", Name: "t", Args: []any{make(chan int)}},
		"bad raw args": {ID: "i", Name: "t", RawArgs: json.RawMessage(`{`)},
	} {
		if m, err := EncodeTask(task); err == nil {
			t.Errorf("%s: EncodeTask = %+v, want an error", name, m)
		}
	}
}

func TestExceptionFrom(t *testing.T) {
	e := ExceptionFrom("TaskRevokedError", "celery.exceptions", "expired")
	if e.Type != "TaskRevokedError" || e.Module != "celery.exceptions" || len(e.Message) != 1 || e.Message[0] != "expired" {
		t.Errorf("%+v", e)
	}
}

// TestFormatDateDone: Python's naive datetime.isoformat() of the UTC time, microseconds
// only when non-zero, the same as Go's layout would give.
func TestFormatDateDone(t *testing.T) {
	tests := []struct {
		in   time.Time
		want string
	}{
		{time.Date(2026, 11, 27, 1, 2, 3, 0, time.UTC), "2026-11-27T01:02:03"},
		{time.Date(2026, 11, 27, 1, 2, 3, 999, time.UTC), "2026-11-27T01:02:03"},
		{time.Date(2026, 1, 9, 23, 59, 59, 1000, time.UTC), "2026-01-09T23:59:59.000001"},
		{time.Date(2026, 12, 31, 0, 0, 0, 123456789, time.UTC), "2026-12-31T00:00:00.123456"},
		{time.Date(2026, 6, 1, 12, 0, 0, 5e8, time.FixedZone("CEST", 2*3600)), "2026-06-01T10:00:00.500000"},
		{time.Date(999, 3, 4, 5, 6, 7, 0, time.UTC), "0999-03-04T05:06:07"},
	}
	for _, tt := range tests {
		if got := FormatDateDone(tt.in); got != tt.want {
			t.Errorf("FormatDateDone(%v) = %q, want %q", tt.in, got, tt.want)
		}
		layout := "2006-01-02T15:04:05.000000"
		if tt.in.Nanosecond()/1000 == 0 {
			layout = "2006-01-02T15:04:05"
		}
		if want := tt.in.UTC().Format(layout); FormatDateDone(tt.in) != want {
			t.Errorf("FormatDateDone(%v) = %q, Go's layout gives %q", tt.in, FormatDateDone(tt.in), want)
		}
	}
}
