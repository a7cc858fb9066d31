package protocol

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func v2Message(headers map[string]any, body string) *Message {
	return &Message{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties:      Properties{CorrelationID: "corr-1", ReplyTo: "reply-q", DeliveryMode: 2},
		Headers:         headers,
		Body:            []byte(body),
	}
}

func zlibBytes(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := zlib.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestDecodeMalformed(t *testing.T) {
	h := func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	good := `[[1], {}, null]`
	tests := []struct {
		name     string
		msg      *Message
		reason   string
		wantID   string
		wantName string
		errHas   string
	}{
		{"broken json", v2Message(h("task", "t", "id", "abc"), `[[1], {}`), ReasonDecodeError, "abc", "t", "body"},
		{"empty body", v2Message(h("task", "t", "id", "abc"), ``), ReasonDecodeError, "abc", "t", "empty"},
		{"body not a list", v2Message(h("task", "t", "id", "abc"), `"hello"`), ReasonDecodeError, "abc", "t", "want a list"},
		{"body of two", v2Message(h("task", "t", "id", "abc"), `[[1], {}]`), ReasonDecodeError, "abc", "t", "2 elements"},
		{"args not a list", v2Message(h("task", "t", "id", "abc"), `[{}, {}, null]`), ReasonDecodeError, "abc", "t", "args"},
		{"kwargs not an object", v2Message(h("task", "t", "id", "abc"), `[[], [], null]`), ReasonDecodeError, "abc", "t", "kwargs"},
		{"embed a list", v2Message(h("task", "t", "id", "abc"), `[[], {}, []]`), ReasonDecodeError, "abc", "t", "embed"},
		{"callbacks not a list", v2Message(h("task", "t", "id", "abc"), `[[], {}, {"callbacks": 5}]`), ReasonDecodeError, "abc", "t", "callbacks"},
		{"chord not a signature", v2Message(h("task", "t", "id", "abc"), `[[], {}, {"chord": "x"}]`), ReasonDecodeError, "abc", "t", "chord"},
		{"unknown tag in args", v2Message(h("task", "t", "id", "abc"), `[[{"__type__": "pickle", "__value__": "x"}], {}, null]`), ReasonDecodeError, "abc", "t", "tagged"},
		{"missing id, correlation recovered", v2Message(h("task", "t"), good), ReasonDecodeError, "corr-1", "t", "missing task id"},
		{"missing task header, list body", v2Message(h("id", "abc"), good), ReasonDecodeError, "abc", "", "no task header"},
		{"null task header", v2Message(h("task", nil, "id", "abc"), good), ReasonDecodeError, "abc", "", "missing task name"},
		{"id not a string", v2Message(h("task", "t", "id", 5), good), ReasonDecodeError, "corr-1", "t", "header id"},
		{"bad eta", v2Message(h("task", "t", "id", "abc", "eta", "tomorrow"), good), ReasonDecodeError, "abc", "t", "eta"},
		{"eta out of range", v2Message(h("task", "t", "id", "abc", "eta", "2026-02-30T00:00:00"), good), ReasonDecodeError, "abc", "t", "eta"},
		{"eta trailing garbage", v2Message(h("task", "t", "id", "abc", "eta", "2026-02-03T00:00:00+00:00x"), good), ReasonDecodeError, "abc", "t", "eta"},
		{"bad expires type", v2Message(h("task", "t", "id", "abc", "expires", jsonNumberOf("5")), good), ReasonDecodeError, "abc", "t", "expires"},
		{"bad retries", v2Message(h("task", "t", "id", "abc", "retries", "one"), good), ReasonDecodeError, "abc", "t", "retries"},
		{"bad timelimit", v2Message(h("task", "t", "id", "abc", "timelimit", []any{jsonNumberOf("1")}), good), ReasonDecodeError, "abc", "t", "timelimit"},
		{"bad timelimit element", v2Message(h("task", "t", "id", "abc", "timelimit", []any{"x", nil}), good), ReasonDecodeError, "abc", "t", "timelimit"},
		{"bad group_index", v2Message(h("task", "t", "id", "abc", "group_index", jsonNumberOf("1.5")), good), ReasonDecodeError, "abc", "t", "group_index"},
		{"bad ignore_result", v2Message(h("task", "t", "id", "abc", "ignore_result", "yes"), good), ReasonDecodeError, "abc", "t", "ignore_result"},
		{"bad zlib", func() *Message {
			m := v2Message(h("task", "t", "id", "abc", "compression", "application/x-gzip"), "")
			m.Body = []byte("not zlib at all")
			return m
		}(), ReasonDecodeError, "abc", "t", "zlib"},
		{"truncated zlib", func() *Message {
			m := v2Message(h("task", "t", "id", "abc", "compression", "application/x-gzip"), "")
			z := zlibBytes(t, good)
			m.Body = z[:len(z)-6]
			return m
		}(), ReasonDecodeError, "abc", "t", "decompress"},
		{"v1 without task", v2Message(h(), `{"id": "v1id", "args": []}`), ReasonDecodeError, "v1id", "", "missing task name"},
		{"v1 args not a list", v2Message(h(), `{"id": "v1id", "task": "t", "args": {}}`), ReasonDecodeError, "v1id", "t", "args"},
		{"v1 bad utc", v2Message(h(), `{"id": "v1id", "task": "t", "utc": "no"}`), ReasonDecodeError, "v1id", "t", "utc"},
		{"pickle", func() *Message {
			m := v2Message(h("task", "t", "id", "abc"), "\x80\x04K\x02.")
			m.ContentType, m.ContentEncoding = "application/x-python-serialize", "binary"
			return m
		}(), ReasonUnsupportedContent, "abc", "t", "x-python-serialize"},
		{"yaml", func() *Message {
			m := v2Message(h("task", "t", "id", "abc"), "- []\n")
			m.ContentType = "application/x-yaml"
			return m
		}(), ReasonUnsupportedContent, "abc", "t", "yaml"},
		{"msgpack, id from correlation", func() *Message {
			m := v2Message(h("task", "t"), "\x93")
			m.ContentType, m.ContentEncoding = "application/x-msgpack", "binary"
			return m
		}(), ReasonUnsupportedContent, "corr-1", "t", "msgpack"},
		{"odd encoding", func() *Message {
			m := v2Message(h("task", "t", "id", "abc"), good)
			m.ContentEncoding = "utf-16"
			return m
		}(), ReasonUnsupportedContent, "abc", "t", "utf-16"},
		{"lzma compression", v2Message(h("task", "t", "id", "abc", "compression", "application/x-lzma"), good), ReasonUnsupportedContent, "abc", "t", "x-lzma"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task, err := Decode(tt.msg)
			if err == nil {
				t.Fatalf("Decode = %+v, want an error", task)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T %v is not a *DecodeError", err, err)
			}
			if de.Reason != tt.reason || de.TaskID != tt.wantID || de.TaskName != tt.wantName {
				t.Errorf("DecodeError{%q, %q, %q}, want {%q, %q, %q}", de.Reason, de.TaskID, de.TaskName, tt.reason, tt.wantID, tt.wantName)
			}
			if !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("error %q does not mention %q", err, tt.errHas)
			}
			if de.Err == nil || errors.Unwrap(err) != de.Err {
				t.Errorf("Unwrap = %v", errors.Unwrap(err))
			}
		})
	}
	if _, err := Decode(nil); err == nil {
		t.Error("Decode(nil) succeeded")
	}
}

func TestDecodeAccepts(t *testing.T) {
	bz2, _ := base64.StdEncoding.DecodeString("QlpoOTFBWSZTWYilTYUAAAUbgEAEVAAACgAFAgogACIaBoBA0DQCtxqSjm02dHeLuSKcKEhEUqbCgA==")
	paris := time.FixedZone("", 3600)
	tests := []struct {
		name  string
		msg   *Message
		check func(t *testing.T, task *Task)
	}{
		{"minimal headers, null embed", v2Message(map[string]any{"task": "t", "id": "i"}, `[[40,2],{},null]`), func(t *testing.T, task *Task) {
			if task.Version != 2 || mustMarshal(t, task.Args) != "[40, 2]" || string(task.RawArgs) != "[40,2]" ||
				string(task.RawKwargs) != "{}" || string(task.RawEmbed) != "null" || task.RootID != "" {
				t.Errorf("%+v", task)
			}
		}},
		{"no content type", func() *Message {
			m := v2Message(map[string]any{"task": "t", "id": "i"}, ` [ [ 1 ] , { "a" : 1 } , { } ] `)
			m.ContentType, m.ContentEncoding = "", ""
			return m
		}(), func(t *testing.T, task *Task) {
			if string(task.RawArgs) != "[ 1 ]" || string(task.RawKwargs) != `{ "a" : 1 }` || string(task.RawEmbed) != "{ }" {
				t.Errorf("raw %q %q %q", task.RawArgs, task.RawKwargs, task.RawEmbed)
			}
		}},
		{"bzip2 body", func() *Message {
			m := v2Message(map[string]any{"task": "t", "id": "i", "compression": "application/x-bz2"}, "")
			m.Body = bz2
			return m
		}(), func(t *testing.T, task *Task) {
			if mustMarshal(t, task.Args) != "[40, 2]" {
				t.Errorf("args %v", task.Args)
			}
		}},
		{"naive eta is UTC in v2, offsets kept", v2Message(map[string]any{"task": "t", "id": "i",
			"eta": "2026-11-26T14:32:32.130075", "expires": "2026-11-26T15:32:32+01:00"}, `[[], {}, null]`), func(t *testing.T, task *Task) {
			if !task.ETA.Equal(time.Date(2026, 11, 26, 14, 32, 32, 130075000, time.UTC)) || pyISOFormat(*task.ETA) != "2026-11-26T14:32:32.130075+00:00" {
				t.Errorf("eta %v", task.ETA)
			}
			if !task.Expires.Equal(time.Date(2026, 11, 26, 15, 32, 32, 0, paris)) || pyISOFormat(*task.Expires) != "2026-11-26T15:32:32+01:00" {
				t.Errorf("expires %v", task.Expires)
			}
		}},
		{"newer headers kept", v2Message(map[string]any{"task": "t", "id": "i", "stamps": map[string]any{"a": []any{"1"}},
			"stamped_headers": []any{"a"}, "replaced_task_nesting": jsonNumberOf("2"), "redelivered": true}, `[[], {}, null]`), func(t *testing.T, task *Task) {
			if mustMarshal(t, task.Headers["stamps"]) != `{"a": ["1"]}` || task.Headers["replaced_task_nesting"] != jsonNumberOf("2") {
				t.Errorf("headers %v", task.Headers)
			}
			enc, err := EncodeTask(task)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := enc.Headers["redelivered"]; ok {
				t.Error("EncodeTask copied the transport's redelivered header")
			}
			if mustMarshal(t, enc.Headers["stamped_headers"]) != `["a"]` {
				t.Errorf("stamped_headers not re-encoded: %v", enc.Headers)
			}
		}},
		{"kombu 5.3 tagged args", v2Message(map[string]any{"task": "t", "id": "i"},
			`[[{"__type__": "datetime", "__value__": "2026-01-02T03:04:05"}, {"__type__": "decimal", "__value__": "1.10"}], {}, null]`), func(t *testing.T, task *Task) {
			if task.Args[0] != "2026-01-02T03:04:05" || task.Args[1] != jsonNumberOf("1.10") {
				t.Errorf("args %#v", task.Args)
			}
		}},
		{"v1 local time when utc is false", v2Message(map[string]any{},
			`{"task": "t", "id": "v1", "args": [1], "kwargs": {"k": 2}, "eta": "2026-11-26T14:32:32", "utc": false, "taskset": "ts", "group": "g", "timelimit": [3.5, null], "errbacks": [{"task": "e"}]}`),
			func(t *testing.T, task *Task) {
				want := time.Date(2026, 11, 26, 14, 32, 32, 0, time.Local)
				if task.Version != 1 || !task.ETA.Equal(want) || task.Group != "g" || *task.TimeLimit[0] != 3.5 || task.TimeLimit[1] != nil {
					t.Errorf("%+v eta %v", task, task.ETA)
				}
				if string(task.RawArgs) != "[1]" || string(task.RawKwargs) != `{"k": 2}` || task.RawEmbed != nil {
					t.Errorf("raw %q %q %q", task.RawArgs, task.RawKwargs, task.RawEmbed)
				}
				if len(task.Embed.Errbacks) != 1 || task.Embed.Errbacks[0].Task != "e" || task.Embed.Errbacks[0].Args == nil {
					t.Errorf("errbacks %+v", task.Embed.Errbacks)
				}
				if len(task.Headers) != 0 {
					t.Errorf("headers %v", task.Headers)
				}
			}},
		{"v1 without args takes taskset as group", v2Message(map[string]any{},
			`{"task": "t", "id": "v1", "taskset": "ts", "group": "g"}`), func(t *testing.T, task *Task) {
			if task.Group != "ts" || len(task.Args) != 0 || len(task.Kwargs) != 0 {
				t.Errorf("%+v", task)
			}
		}},
		{"hybrid: headers override body", v2Message(map[string]any{"task": "t", "id": "hid", "retries": jsonNumberOf("2")},
			`{"task": "other", "id": "bid", "args": [7], "retries": 1, "shadow": "s", "root_id": "r"}`), func(t *testing.T, task *Task) {
			if task.Name != "t" || task.ID != "hid" || task.Retries != 2 || task.Shadow != "s" || task.RootID != "r" || mustMarshal(t, task.Args) != "[7]" {
				t.Errorf("%+v", task)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task, err := Decode(tt.msg)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if task.ReplyTo != "reply-q" || task.CorrelationID != "corr-1" {
				t.Errorf("properties not copied: %q %q", task.ReplyTo, task.CorrelationID)
			}
			tt.check(t, task)
		})
	}
}

func TestParseISO8601(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
	}{
		{"2026-11-26T14:32:32.130075+00:00", time.Date(2026, 11, 26, 14, 32, 32, 130075000, time.UTC)},
		{"2026-11-26T14:32:32Z", time.Date(2026, 11, 26, 14, 32, 32, 0, time.UTC)},
		{"2026-11-26 14:32:32-05:30", time.Date(2026, 11, 26, 20, 2, 32, 0, time.UTC)},
		{"2026-11-26T14:32+0100", time.Date(2026, 11, 26, 13, 32, 0, 0, time.UTC)},
		{"2026-1-2", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)},
		{"2026-11-26T14:32:32.5", time.Date(2026, 11, 26, 14, 32, 32, 500000000, time.UTC)},
		{"2026-11-26T14:32:32.1234567891", time.Date(2026, 11, 26, 14, 32, 32, 123456789, time.UTC)},
	}
	for _, tt := range tests {
		got, err := ParseISO8601(tt.in, nil)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("ParseISO8601(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "2026", "2026-11", "26-11-2026", "2026-13-01", "2026-11-26T25:00:00",
		"2026-11-26T14", "2026-11-26T14:32:32.", "2026-11-26T14:32:32+1", "2026-11-26T14:32:32 UTC"} {
		if got, err := ParseISO8601(bad, nil); err == nil {
			t.Errorf("ParseISO8601(%q) = %v, want an error", bad, got)
		}
	}
}

func jsonNumberOf(s string) any { return json.Number(s) }
