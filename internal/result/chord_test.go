package result

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/protocol"
)

// pyChordPart runs Celery's own RedisBackend.on_chord_part_return (or set_chord_size) on the
// test Redis, with Signature.delay patched to record instead of send. It returns what the
// body was called with (nil if it was not) and the error the chord raised, if any.
const pyChordPart = `
import json, sys
from celery import Celery
from celery.canvas import Signature
from celery.app.task import Context
req = json.load(sys.stdin)
app = Celery("chordtest", broker="memory://", backend=req["url"])
fired = []
Signature.delay = lambda self, *a, **k: fired.append(list(a))
if req["op"] == "size":
    app.backend.set_chord_size(req["gid"], req["size"])
else:
    body = {"task": "x.body", "args": [], "kwargs": {}, "options": {"task_id": req["body"]},
            "subtask_type": None, "immutable": False}
    ctx = Context(id=req["tid"], group=req["gid"], group_index=req["idx"], chord=body)
    res = req["result"]
    if req["state"] != "SUCCESS":
        res = app.backend.exception_to_python(res)
    app.backend.on_chord_part_return(ctx, req["state"], res)
print(json.dumps({"fired": fired[0] if fired else None}))
`

func runPyChord(t *testing.T, req map[string]any) any {
	t.Helper()
	req["url"] = testRedisURL()
	in, _ := json.Marshal(req)
	v, err := protocol.ParseJSON(runPython(t, in, "-c", pyChordPart))
	if err != nil {
		t.Fatal(err)
	}
	return v.(map[string]any)["fired"]
}

// TestChordCountingWithPython pins down Celery's Redis chord counting (on_chord_part_return
// with result_chord_ordered): Python's backend and ours run it on the same keys, and
// whichever records the last part fires the body once, with the header results in
// group_index order; a failed part makes the chord fail with the same ChordError text.
func TestChordCountingWithPython(t *testing.T) {
	needPython(t)
	b, c := openTestRedis(t, Options{Expires: 10 * time.Minute})
	ctx := context.Background()
	boom := Failure("RuntimeError", ModuleBuiltins, "boom")
	cases := []struct {
		name     string
		goSize   bool    // who records the size: Go, else Python
		parts    []any   // results by group_index (ExceptionInfo = FAILURE)
		pyParts  []int   // indexes Python records, the others Go, in this order...
		order    []int   // ...with this overall order of recording
		wantBody []any   // body args when it fires
		wantErr  string  // ChordError message prefix when a part failed
		lastGo   bool    // whether Go records the last part (and reports the outcome)
		wantPy   [][]any // what Python's body got
		_        struct{}
	}{
		{name: "go completes", goSize: false, parts: []any{10, 20, 30}, pyParts: []int{0, 2}, order: []int{2, 0, 1},
			lastGo: true, wantBody: []any{10, 20, 30}},
		{name: "python completes", goSize: true, parts: []any{"a", []any{1}, nil}, pyParts: []int{1}, order: []int{0, 2, 1},
			wantPy: [][]any{{[]any{"a", []any{1}, nil}}}},
		{name: "failure seen by go", goSize: true, parts: []any{1, boom, 3}, pyParts: []int{1}, order: []int{1, 0, 2},
			lastGo: true, wantErr: "Dependency %s raised RuntimeError('boom')"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			gid := newID(t)
			tids := make([]string, len(tc.parts))
			for i := range tids {
				tids[i] = newID(t)
			}
			t.Cleanup(func() {
				c.Del(ctx, GroupKey(gid, ".j"), GroupKey(gid, ".t"), GroupKey(gid, ".s"), Key("body-"+gid))
			})
			if tc.goSize {
				if err := b.SetChordSize(ctx, gid, len(tc.parts)); err != nil {
					t.Fatal(err)
				}
			} else {
				runPyChord(t, map[string]any{"op": "size", "gid": gid, "size": len(tc.parts)})
			}
			var ready *ChordReady
			var pyFired any
			for n, i := range tc.order {
				state, res := protocol.StateSuccess, tc.parts[i]
				if _, failed := res.(protocol.ExceptionInfo); failed {
					state = protocol.StateFailure
				}
				idx := i
				if contains(tc.pyParts, i) {
					pyFired = runPyChord(t, map[string]any{"op": "part", "gid": gid, "tid": tids[i], "idx": idx,
						"state": state, "result": res, "body": "body-" + gid})
					continue
				}
				r, err := b.ChordPartReturn(ctx, ChordPart{GroupID: gid, TaskID: tids[i], GroupIndex: &idx, State: state, Result: res})
				if err != nil {
					t.Fatal(err)
				}
				if r != nil && n != len(tc.order)-1 {
					t.Fatalf("chord reported complete after %d of %d parts", n+1, len(tc.order))
				}
				ready = r
			}
			if !tc.lastGo {
				if ready != nil {
					t.Fatal("Go reported the chord complete, but Python recorded the last part")
				}
				if !sameJSON(t, pyFired, tc.wantPy[0]) {
					t.Fatalf("python fired the body with %v, want %v", pyFired, tc.wantPy[0])
				}
				return
			}
			if pyFired != nil || ready == nil {
				t.Fatalf("go ready %v, python fired %v: want Go to complete the chord", ready, pyFired)
			}
			if tc.wantErr != "" {
				failed := tids[1]
				if ready.Err == nil || ready.Err.Message != strings.Replace(tc.wantErr, "%s", failed, 1) {
					t.Fatalf("chord error %+v, want %q", ready.Err, tc.wantErr)
				}
				return
			}
			if !sameJSON(t, ready.Results, tc.wantBody) {
				t.Fatalf("results %v, want %v", ready.Results, tc.wantBody)
			}
			ttl, _ := c.TTL(ctx, GroupKey(gid, ".j")).Result()
			if ttl <= 0 || ttl > 10*time.Minute {
				t.Fatalf("<gid>.j TTL %v, want the result expiry", ttl)
			}
			if err := b.ChordCleanup(ctx, gid); err != nil {
				t.Fatal(err)
			}
			if n, _ := c.Exists(ctx, GroupKey(gid, ".j"), GroupKey(gid, ".s")).Result(); n != 0 {
				t.Fatal("chord keys left after cleanup")
			}
		})
	}
}

// TestChordPythonFailure: when Python records the last part of a failed chord, its
// ChordError text is the one Go builds too (checked through the body's stored FAILURE).
func TestChordPythonFailure(t *testing.T) {
	needPython(t)
	b, c := openTestRedis(t, Options{Expires: 10 * time.Minute})
	ctx := context.Background()
	gid, t0, t1 := newID(t), newID(t), newID(t)
	body := "body-" + gid
	t.Cleanup(func() { c.Del(ctx, GroupKey(gid, ".j"), GroupKey(gid, ".t"), GroupKey(gid, ".s"), Key(body)) })
	if err := b.SetChordSize(ctx, gid, 2); err != nil {
		t.Fatal(err)
	}
	zero := 0
	if r, err := b.ChordPartReturn(ctx, ChordPart{GroupID: gid, TaskID: t0, GroupIndex: &zero, State: protocol.StateFailure,
		Result: Failure("ValueError", ModuleBuiltins, "bad")}); err != nil || r != nil {
		t.Fatalf("first part: %v %v", r, err)
	}
	runPyChord(t, map[string]any{"op": "part", "gid": gid, "tid": t1, "idx": 1, "state": "SUCCESS", "result": 2, "body": body})
	m, err := b.Get(ctx, body)
	if err != nil || m == nil {
		t.Fatalf("body result: %v %v", m, err)
	}
	want := (&ChordError{Message: "Dependency " + t0 + " raised ValueError('bad')"}).Exception()
	got := m["result"].(map[string]any)
	if m["status"] != "FAILURE" || got["exc_type"] != want.Type || !reflect.DeepEqual(got["exc_message"], want.Message) {
		t.Fatalf("python stored %v, Go would store %v", m, want)
	}
}

// TestExceptionRepr pins down Python's repr of stored exceptions (used in ChordError texts
// and task events).
func TestExceptionRepr(t *testing.T) {
	cases := []struct {
		exc  protocol.ExceptionInfo
		want string
	}{
		{Failure("ValueError", ModuleBuiltins, "boom"), "ValueError('boom')"},
		{Exception("MyErr", "app", "custom", 42), "MyErr('custom', 42)"},
		{Exception("KeyError", ModuleBuiltins), "KeyError()"},
		{Exception("X", "m", "it's"), `X("it's")`},
	}
	for _, tc := range cases {
		if got := ExceptionRepr(tc.exc); got != tc.want {
			t.Errorf("ExceptionRepr(%v) = %s, want %s", tc.exc, got, tc.want)
		}
	}
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
