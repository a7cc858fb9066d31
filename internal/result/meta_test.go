package result

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/protocol"
)

// pyExc names a Python exception the reference script instantiates: module.name(*args).
type pyExc struct {
	module, name string
	args         []any
}

type metaCase struct {
	name string
	rec  Record
	exc  *pyExc // the exception Python encodes where rec.Result holds our ExceptionInfo
	us   int    // microseconds of date_done
}

func intp(i int) *int { return &i }

func metaCases() []metaCase {
	return []metaCase{
		{name: "success extended (doc sample)", us: 221388, rec: Record{
			TaskID: "d85fcd87-bcd9-425b-a062-23a848698851", Status: protocol.StateSuccess, Result: 5,
			Name: "research.add", Args: []any{2, 3}, Kwargs: map[string]any{}, Worker: "research1@vm",
			Retries: intp(0), Queue: "research_tasks",
		}},
		{name: "success nested unicode with group and parent", us: 1, rec: Record{
			TaskID: "t-2", Status: protocol.StateSuccess,
			Result: map[string]any{
				"naïve": []any{"é☃", "emoji 😀", "quote \" back \\ nl \n tab \t ctl \x01", nil, true, false},
				"n":     map[string]any{"deep": []any{[]any{1, 2.5, json.Number("12345678901234567890")}}},
				"f":     []any{1e16, 1e-05, 0.1, 0.0, 3.0, 1.5e300},
			},
			GroupID: "g-1", ParentID: "p-1",
			Children: []any{[]any{[]any{"7cabf92f-0000", nil}, nil}},
		}},
		{name: "success non-finite floats", us: 999999, rec: Record{
			TaskID: "t-3", Status: protocol.StateSuccess,
			Result: []any{math.NaN(), math.Inf(1), math.Inf(-1)},
		}},
		{name: "success null result, whole second", us: 0, rec: Record{
			TaskID: "t-4", Status: protocol.StateSuccess, Result: nil,
		}},
		{name: "started", rec: Record{
			TaskID: "t-5", Status: protocol.StateStarted,
			Result: map[string]any{"pid": 17473, "hostname": "research1@vm"},
		}},
		{name: "failure ValueError", us: 42, rec: Record{
			TaskID: "t-6", Status: protocol.StateFailure,
			Result:    Failure("ValueError", ModuleBuiltins, "boom"),
			Traceback: "Traceback (most recent call last):\n  File \"x.go\", line 1\nValueError: boom\n",
		}, exc: &pyExc{"builtins", "ValueError", []any{"boom"}}},
		{name: "failure NotRegistered", us: 42, rec: Record{
			TaskID: "t-7", Status: protocol.StateFailure, Result: NotRegistered("research.nope"),
		}, exc: &pyExc{"celery.exceptions", "NotRegistered", []any{"research.nope"}}},
		{name: "revoked expired", us: 42, rec: Record{
			TaskID: "t-8", Status: protocol.StateRevoked, Result: Revoked(RevokedReasonExpired),
		}, exc: &pyExc{"celery.exceptions", "TaskRevokedError", []any{"expired"}}},
		{name: "retry RuntimeError", rec: Record{
			TaskID: "t-9", Status: protocol.StateRetry,
			Result: Exception("RuntimeError", ModuleBuiltins, "again", 3), Traceback: "tb",
		}, exc: &pyExc{"builtins", "RuntimeError", []any{"again", 3}}},
		{name: "failure time limit", us: 5, rec: Record{
			TaskID: "t-10", Status: protocol.StateFailure, Result: TimeLimitExceeded(10),
		}, exc: &pyExc{"billiard.exceptions", "TimeLimitExceeded", []any{10}}},
		{name: "failure no args", us: 5, rec: Record{
			TaskID: "t-11", Status: protocol.StateFailure,
			Result: &protocol.ExceptionInfo{Type: "KeyError", Module: "builtins"},
		}, exc: &pyExc{"builtins", "KeyError", []any{}}},
		{name: "failure worker lost", us: 5, rec: Record{
			TaskID: "t-12", Status: protocol.StateFailure, Result: WorkerLost("Worker exited prematurely: signal 9 (SIGKILL) Job: 0."),
		}, exc: &pyExc{"billiard.exceptions", "WorkerLostError", []any{"Worker exited prematurely: signal 9 (SIGKILL) Job: 0."}}},
	}
}

func doneAt(us int) time.Time {
	return time.Date(2026, 11, 26, 14, 34, 0, us*1000, time.UTC)
}

// TestEncodeMatchesCelery encodes each case with our ResultMeta and with real Celery 5.2.6
// (the backend's own _get_result_meta and encoder) and compares the bytes.
func TestEncodeMatchesCelery(t *testing.T) {
	needPython(t)
	cases := metaCases()
	var in bytes.Buffer
	for _, c := range cases {
		pc := map[string]any{
			"task_id": c.rec.TaskID, "status": c.rec.Status, "result": c.rec.Result,
			"traceback": nullIfEmptyString(c.rec.Traceback), "children": childrenOrEmpty(c.rec.Children),
			"date_done": []int{2026, 11, 26, 14, 34, 0, c.us},
		}
		if c.exc != nil {
			pc["exc"] = []any{c.exc.module, c.exc.name, c.exc.args}
			pc["result"] = nil
		}
		if c.rec.GroupID != "" {
			pc["group_id"] = c.rec.GroupID
		}
		if c.rec.ParentID != "" {
			pc["parent_id"] = c.rec.ParentID
		}
		if c.rec.Name != "" {
			pc["extended"] = map[string]any{"name": c.rec.Name, "args": c.rec.Args, "kwargs": c.rec.Kwargs,
				"worker": c.rec.Worker, "retries": *c.rec.Retries, "queue": c.rec.Queue}
		}
		line, err := protocol.MarshalJSON(pc)
		if err != nil {
			t.Fatal(err)
		}
		in.Write(line)
		in.WriteByte('\n')
	}
	out := runPython(t, in.Bytes(), "testdata/celery_meta.py")
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(cases) {
		t.Fatalf("python wrote %d lines for %d cases:\n%s", len(lines), len(cases), out)
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantMeta, wantRPC, ok := strings.Cut(lines[i], "\t")
			if !ok {
				t.Fatalf("bad python line %q", lines[i])
			}
			m := c.rec.Meta(doneAt(c.us))
			got, err := m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != wantMeta {
				t.Errorf("Encode:\n got %s\nwant %s", got, wantMeta)
			}
			gotRPC, err := m.RPCBody()
			if err != nil {
				t.Fatal(err)
			}
			if string(gotRPC) != wantRPC {
				t.Errorf("RPCBody:\n got %s\nwant %s", gotRPC, wantRPC)
			}
		})
	}
}

func nullIfEmptyString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func childrenOrEmpty(c []any) []any {
	if c == nil {
		return []any{}
	}
	return c
}

// TestEncodeDocSample checks the captured SUCCESS document of the protocol reference
// (§4.1) key for key, in order.
func TestEncodeDocSample(t *testing.T) {
	const sample = `{"status":"SUCCESS","result":5,"traceback":null,"children":[],"date_done":"2026-11-26T14:34:00.221388",
 "name":"research.add","args":[2,3],"kwargs":{},"worker":"research1@vm","retries":0,"queue":"research_tasks",
 "task_id":"d85fcd87-bcd9-425b-a062-23a848698851"}`
	got, err := metaCases()[0].rec.Meta(doneAt(221388)).Encode()
	if err != nil {
		t.Fatal(err)
	}
	gotKeys, wantKeys := objectKeys(t, got), objectKeys(t, []byte(sample))
	if strings.Join(gotKeys, ",") != strings.Join(wantKeys, ",") {
		t.Errorf("keys:\n got %v\nwant %v", gotKeys, wantKeys)
	}
	gv, _ := protocol.ParseJSON(got)
	wv, _ := protocol.ParseJSON([]byte(sample))
	for k, w := range wv.(map[string]any) {
		if g := gv.(map[string]any)[k]; !sameJSON(t, g, w) {
			t.Errorf("%s = %#v, want %#v", k, g, w)
		}
	}
}

// objectKeys lists the keys of a JSON object in document order.
func objectKeys(t *testing.T, doc []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(doc))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", doc)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func TestEncodeNullsAndOptionalKeys(t *testing.T) {
	tests := []struct {
		name string
		m    protocol.ResultMeta
		want string
	}{
		{
			name: "pending-like non-ready state ignores DateDone",
			m:    protocol.ResultMeta{Status: protocol.StateRetry, TaskID: "x", DateDone: doneAt(1)},
			want: `{"status": "RETRY", "result": null, "traceback": null, "children": [], "date_done": null, "task_id": "x"}`,
		},
		{
			name: "ready without DateDone is null",
			m:    protocol.ResultMeta{Status: protocol.StateSuccess, TaskID: "x", Result: "ok"},
			want: `{"status": "SUCCESS", "result": "ok", "traceback": null, "children": [], "date_done": null, "task_id": "x"}`,
		},
		{
			name: "parent only, date in another zone",
			m: protocol.ResultMeta{Status: protocol.StateFailure, TaskID: "x", ParentID: "p", Traceback: "tb",
				Result: Failure("ValueError", ModuleBuiltins, "b"), DateDone: doneAt(7).In(time.FixedZone("X", -5*3600))},
			want: `{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["b"], "exc_module": "builtins"}, "traceback": "tb", "children": [], "date_done": "2026-11-26T14:34:00.000007", "parent_id": "p", "task_id": "x"}`,
		},
		{
			name: "nil *ExceptionInfo is null",
			m:    protocol.ResultMeta{Status: protocol.StateFailure, TaskID: "x", Result: (*protocol.ExceptionInfo)(nil), DateDone: doneAt(0)},
			want: `{"status": "FAILURE", "result": null, "traceback": null, "children": [], "date_done": "2026-11-26T14:34:00", "task_id": "x"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.m.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestExceptionHelpers(t *testing.T) {
	tests := []struct {
		got  protocol.ExceptionInfo
		want string
	}{
		{Failure("ValueError", ModuleBuiltins, "boom"), `{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}`},
		{Exception("GoTimeoutError", "gocelery.errors"), `{"exc_type": "GoTimeoutError", "exc_message": [], "exc_module": "gocelery.errors"}`},
		{Revoked(RevokedReasonRevoked), `{"exc_type": "TaskRevokedError", "exc_message": ["revoked"], "exc_module": "celery.exceptions"}`},
		{Revoked(RevokedReasonTerminated), `{"exc_type": "TaskRevokedError", "exc_message": ["terminated"], "exc_module": "celery.exceptions"}`},
		{NotRegistered("a.b"), `{"exc_type": "NotRegistered", "exc_message": ["a.b"], "exc_module": "celery.exceptions"}`},
		{TimeLimitExceeded(2.5), `{"exc_type": "TimeLimitExceeded", "exc_message": [2.5], "exc_module": "billiard.exceptions"}`},
		{TimeLimitExceeded(30), `{"exc_type": "TimeLimitExceeded", "exc_message": [30], "exc_module": "billiard.exceptions"}`},
		{MaxRetriesExceeded("Can't retry x"), `{"exc_type": "MaxRetriesExceededError", "exc_message": ["Can't retry x"], "exc_module": "celery.exceptions"}`},
	}
	for _, tt := range tests {
		got, err := protocol.MarshalJSON(tt.got)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.want {
			t.Errorf("\n got %s\nwant %s", got, tt.want)
		}
	}
}
