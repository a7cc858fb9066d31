package protocol

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func sigOf(t *testing.T, doc string) Signature {
	t.Helper()
	v, err := ParseJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s, err := SignatureFromValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustApply(t *testing.T, s Signature, a ApplyOptions) *Applied {
	t.Helper()
	if a.Now.IsZero() {
		a.Now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	}
	a.Origin = "gen1@host"
	ap, err := Apply(s, a)
	if err != nil {
		t.Fatal(err)
	}
	// Every message must encode and decode back (what a Python worker reads).
	for _, m := range ap.Messages {
		msg, err := EncodeTask(m.Task)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decode(msg); err != nil {
			t.Fatalf("decode %s: %v", m.Task.Name, err)
		}
	}
	return ap
}

// TestApplyTask pins down send_task for a plain signature a worker applies (a callback or a
// chain step): partial args prepended unless immutable, options turned into headers,
// properties, embed and route, ids kept, parent/root from the running task.
func TestApplyTask(t *testing.T) {
	s := sigOf(t, `{"task": "x.add", "args": [1], "kwargs": {"k": 2}, "options": {
		"task_id": "tid", "countdown": 10, "expires": 60, "priority": 7, "queue": "q1",
		"time_limit": 30, "soft_time_limit": 20, "headers": {"custom": "h"}, "reply_to": "client",
		"link": {"task": "x.cb", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false},
		"link_error": [{"task": "x.eb", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}],
		"shadow": "nice-name"}, "subtask_type": null, "immutable": false}`)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ap := mustApply(t, s, ApplyOptions{Args: []any{json.Number("5")}, Kwargs: map[string]any{"z": true},
		Options: map[string]any{"parent_id": nil}, CurrentID: "cur", CurrentRootID: "root", Now: now})
	if len(ap.Messages) != 1 || ap.ChordSizes != nil {
		t.Fatalf("applied %+v", ap)
	}
	m := ap.Messages[0]
	task := m.Task
	if m.Queue != "q1" || task.ID != "tid" || task.ParentID != "cur" || task.RootID != "root" ||
		task.Priority != 7 || task.ReplyTo != "client" || task.Shadow != "nice-name" {
		t.Fatalf("task %+v route %+v", task, m)
	}
	if !reflect.DeepEqual(task.Args, []any{json.Number("5"), json.Number("1")}) || task.Kwargs["z"] != true {
		t.Fatalf("args %v kwargs %v", task.Args, task.Kwargs)
	}
	if !task.ETA.Equal(now.Add(10*time.Second)) || !task.Expires.Equal(now.Add(time.Minute)) {
		t.Fatalf("eta %v expires %v", task.ETA, task.Expires)
	}
	if *task.TimeLimit[0] != 30 || *task.TimeLimit[1] != 20 || task.Headers["custom"] != "h" {
		t.Fatalf("timelimit %v headers %v", task.TimeLimit, task.Headers)
	}
	if len(task.Embed.Callbacks) != 1 || task.Embed.Callbacks[0].Task != "x.cb" || len(task.Embed.Errbacks) != 1 {
		t.Fatalf("embed %+v", task.Embed)
	}
	if !reflect.DeepEqual(ap.Result, []any{[]any{"tid", nil}, nil}) {
		t.Fatalf("result tuple %v", ap.Result)
	}

	imm := sigOf(t, `{"task": "x.fixed", "args": ["a"], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true}`)
	ap = mustApply(t, imm, ApplyOptions{Args: []any{"ignored"}, CurrentID: "cur"})
	if got := ap.Messages[0].Task; !reflect.DeepEqual(got.Args, []any{"a"}) || got.ID == "" || got.RootID != "cur" {
		t.Fatalf("immutable: %+v", got)
	}
}

// TestApplyGroup pins down group.apply_async: one message per member (nested groups
// flattened), all with the group id (options.task_id), partial args prepended; members
// carrying a chord make the group record the chord size.
func TestApplyGroup(t *testing.T) {
	g := sigOf(t, `{"task": "celery.group", "args": [], "kwargs": {"tasks": [
		{"task": "x.a", "args": [], "kwargs": {}, "options": {"task_id": "a1"}, "subtask_type": null, "immutable": false},
		{"task": "celery.group", "args": [], "kwargs": {"tasks": [
			{"task": "x.b", "args": [2], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false},
			{"task": "x.c", "args": [3], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true}]},
		 "options": {}, "subtask_type": "group", "immutable": false}]},
		"options": {"task_id": "gid"}, "subtask_type": "group", "immutable": false}`)
	ap := mustApply(t, g, ApplyOptions{Args: []any{"r"}, Options: map[string]any{"parent_id": "p", "root_id": "root"}})
	if len(ap.Messages) != 3 || len(ap.ChordSizes) != 0 {
		t.Fatalf("applied %d messages, sizes %v", len(ap.Messages), ap.ChordSizes)
	}
	wantArgs := [][]any{{"r"}, {"r", json.Number("2")}, {json.Number("3")}}
	for i, m := range ap.Messages {
		if m.Task.Group != "gid" || m.Task.ParentID != "p" || m.Task.RootID != "root" || !reflect.DeepEqual(m.Task.Args, wantArgs[i]) {
			t.Fatalf("member %d: %+v", i, m.Task)
		}
	}
	if ap.Messages[0].Task.ID != "a1" {
		t.Fatal("frozen member id not kept")
	}
	res := ap.Result.([]any)
	if !reflect.DeepEqual(res[0], []any{"gid", nil}) || len(res[1].([]any)) != 3 {
		t.Fatalf("group result tuple %v", ap.Result)
	}

	several := GroupOf([]Signature{sigOf(t, `{"task": "x.a"}`), sigOf(t, `{"task": "x.b"}`)})
	ap = mustApply(t, several, ApplyOptions{Args: []any{1}})
	if ap.Messages[0].Task.Group == "" || ap.Messages[0].Task.Group != ap.Messages[1].Task.Group {
		t.Fatal("GroupOf members must share a new group id")
	}
}

// TestApplyChord pins down chord.apply_async as a worker runs it for a chain step: the
// header size is recorded first, every header member carries the group id, its
// group_index and the body (with the rest of the chain) in its embed, and gets the partial
// args; an empty header sends the body with [].
func TestApplyChord(t *testing.T) {
	ch := sigOf(t, `{"task": "celery.chord", "args": [], "kwargs": {"kwargs": {},
		"header": {"task": "celery.group", "args": [], "kwargs": {"tasks": [
			{"task": "x.a", "args": [10], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false},
			{"task": "x.a", "args": [20], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}]},
			"options": {"task_id": "gid"}, "subtask_type": "group", "immutable": false},
		"body": {"task": "x.sum", "args": [], "kwargs": {}, "options": {"task_id": "body"}, "subtask_type": null, "immutable": false}},
		"options": {"task_id": "body"}, "subtask_type": "chord", "immutable": false}`)
	rest := []any{sigOf(t, `{"task": "x.after", "options": {"task_id": "after"}}`)}
	ap := mustApply(t, ch, ApplyOptions{Args: []any{json.Number("1")},
		Options: map[string]any{"chain": rest, "parent_id": "prev", "root_id": "root"}})
	if !reflect.DeepEqual(ap.ChordSizes, []ChordSize{{GroupID: "gid", Size: 2}}) || len(ap.Messages) != 2 {
		t.Fatalf("sizes %v, %d messages", ap.ChordSizes, len(ap.Messages))
	}
	for i, m := range ap.Messages {
		tk := m.Task
		if tk.Group != "gid" || tk.GroupIndex == nil || *tk.GroupIndex != i || tk.ParentID != "prev" || tk.RootID != "root" {
			t.Fatalf("header %d: %+v", i, tk)
		}
		if tk.Embed.Chord == nil || tk.Embed.Chord.ID() != "body" || len(tk.Embed.Chain) != 0 {
			t.Fatalf("header %d embed: %+v", i, tk.Embed)
		}
		if chain := asList(tk.Embed.Chord.Options["chain"]); len(chain) != 1 {
			t.Fatalf("the chain must continue after the body: %v", tk.Embed.Chord.Options)
		}
		if tk.Args[0] != json.Number("1") {
			t.Fatalf("header %d args %v: partial args not prepended", i, tk.Args)
		}
	}
	if !reflect.DeepEqual(ap.Result, []any{[]any{"body", nil}, nil}) {
		t.Fatalf("chord result %v", ap.Result)
	}

	empty := sigOf(t, `{"task": "celery.chord", "kwargs": {"kwargs": {}, "header": {"task": "celery.group",
		"kwargs": {"tasks": []}, "subtask_type": "group"}, "body": {"task": "x.sum", "options": {"task_id": "b"}}},
		"subtask_type": "chord"}`)
	ap = mustApply(t, empty, ApplyOptions{})
	if len(ap.Messages) != 1 || ap.Messages[0].Task.ID != "b" || !reflect.DeepEqual(ap.Messages[0].Task.Args, []any{[]any{}}) {
		t.Fatalf("empty header: %+v", ap.Messages)
	}
}

// TestApplyChain pins down chain.apply_async: the first step is sent with the others,
// reversed (next step last), in its embed, each frozen with an id; link_error reaches
// every step; group | step becomes a chord.
func TestApplyChain(t *testing.T) {
	c := sigOf(t, `{"task": "celery.chain", "args": [], "kwargs": {"tasks": [
		{"task": "x.a", "args": [1], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false},
		{"task": "x.b", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false},
		{"task": "celery.group", "args": [], "kwargs": {"tasks": [
			{"task": "x.g", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false},
			{"task": "x.g", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}]},
			"options": {}, "subtask_type": "group", "immutable": false},
		{"task": "x.c", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}]},
		"options": {}, "subtask_type": "chain", "immutable": false}`)
	eb := sigOf(t, `{"task": "x.err"}`)
	ap := mustApply(t, c, ApplyOptions{Args: []any{0}, Options: map[string]any{"link_error": []any{eb}}})
	if len(ap.Messages) != 1 {
		t.Fatalf("%d messages, want the first step only", len(ap.Messages))
	}
	first := ap.Messages[0].Task
	if first.Name != "x.a" || !reflect.DeepEqual(first.Args, []any{0, json.Number("1")}) || len(first.Embed.Errbacks) != 1 {
		t.Fatalf("first step %+v", first)
	}
	chain := first.Embed.Chain
	if len(chain) != 2 || chain[1].Task != "x.b" || chain[0].Type() != SubtaskChord {
		t.Fatalf("chain %+v: want [chord(group, x.c), x.b]", chain)
	}
	if chain[1].ID() == "" || len(asList(chain[1].Options["link_error"])) != 1 {
		t.Fatalf("step x.b not frozen with the errback: %v", chain[1].Options)
	}
	body, err := toSignature(chain[0].Kwargs["body"])
	if err != nil || chain[0].ID() == "" || len(asList(body.Options["link_error"])) != 1 ||
		chain[0].Options["link_error"] != nil {
		t.Fatalf("chord step: the errback belongs to its body: %v / %v", chain[0].Options, body.Options)
	}
	n, err := descend(chain[0], 0)
	if err != nil || n != 1 {
		t.Fatalf("descend(chord) = %d, %v; want the body's 1", n, err)
	}
}
