package protocol

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseJSON(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want any
	}{
		{"int stays exact", `12345678901234567890123`, json.Number("12345678901234567890123")},
		{"float text kept", `1.50`, json.Number("1.50")},
		{"NaN", `NaN`, math.NaN()},
		{"Infinity", `[Infinity, -Infinity]`, []any{math.Inf(1), math.Inf(-1)}},
		{"whitespace", " \t\n{\"a\" : [ 1 , true , null ] }\r\n", map[string]any{"a": []any{json.Number("1"), true, nil}}},
		{"escapes", `"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00"`, "a\"b\\c/d\b\f\n\r\t\u00e9\U0001F600"},
		{"lone surrogate", `"x\ud800y"`, "x\ufffdy"},
		{"raw utf8", `"日本 😀"`, "日本 😀"},
		{"invalid utf8 replaced", "\"a\xffb\"", "a\ufffdb"},
		{"empty containers", `[[], {}]`, []any{[]any{}, map[string]any{}}},
		{"duplicate key last wins", `{"a": 1, "a": 2}`, map[string]any{"a": json.Number("2")}},
		{"tag datetime", `{"__type__": "datetime", "__value__": "2026-01-02T03:04:05"}`, "2026-01-02T03:04:05"},
		{"tag date", `{"__value__": "2026-01-02", "__type__": "date"}`, "2026-01-02"},
		{"tag time", `{"__type__": "time", "__value__": "03:04:05.000001"}`, "03:04:05.000001"},
		{"tag uuid hex", `{"__type__": "uuid", "__value__": {"hex": "5CBFC5AF12344321ABCD0123456789EF"}}`, "5cbfc5af-1234-4321-abcd-0123456789ef"},
		{"tag uuid string", `{"__type__": "uuid", "__value__": "{5cbfc5af-1234-4321-abcd-0123456789ef}"}`, "5cbfc5af-1234-4321-abcd-0123456789ef"},
		{"tag decimal", `{"__type__": "decimal", "__value__": "3.14159265358979323846"}`, json.Number("3.14159265358979323846")},
		{"tag decimal exp", `{"__type__": "decimal", "__value__": "1E+2"}`, json.Number("1E+2")},
		{"tag decimal plus", `{"__type__": "decimal", "__value__": "+.5"}`, json.Number("0.5")},
		{"tag bytes", `{"__type__": "bytes", "__value__": "héllo"}`, []byte("héllo")},
		{"tag base64", `{"__type__": "base64", "__value__": "/w=="}`, []byte{0xff}},
		{"tag nested", `[{"k": {"__type__": "bytes", "__value__": "x"}}]`, []any{map[string]any{"k": []byte("x")}}},
		{"three keys not a tag", `{"__type__": "nope", "__value__": 1, "x": 2}`,
			map[string]any{"__type__": "nope", "__value__": json.Number("1"), "x": json.Number("2")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseJSON([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseJSON(%q): %v", tt.in, err)
			}
			if !deepEqualNaN(got, tt.want) {
				t.Errorf("ParseJSON(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseJSONErrors(t *testing.T) {
	for _, in := range []string{
		``, ` `, `nan`, `-NaN`, `+1`, `01`, `1.`, `.5`, `1e`, `1e+`, `-`, `[1,]`, `[1 2]`, `{"a" 1}`,
		`{"a":1,}`, `{1: 2}`, `"abc`, "\"a\nb\"", `"\x"`, `"\u12"`, `tru`, `nul`, `Infinit`, `[1] x`,
		`{"__type__": "pickle", "__value__": "x"}`, `{"__type__": 1, "__value__": "x"}`,
		`{"__type__": "uuid", "__value__": "not-a-uuid"}`, `{"__type__": "decimal", "__value__": "abc"}`,
		`{"__type__": "base64", "__value__": "!!"}`, `{"__type__": "datetime", "__value__": 5}`,
		strings.Repeat("[", maxJSONDepth+2) + strings.Repeat("]", maxJSONDepth+2),
	} {
		if v, err := ParseJSON([]byte(in)); err == nil {
			t.Errorf("ParseJSON(%q) = %#v, want an error", in, v)
		}
	}
	_, err := ParseJSON([]byte(`[1, }`))
	var se *JSONSyntaxError
	if !errors.As(err, &se) || se.Offset != 4 {
		t.Errorf("syntax error = %#v, want *JSONSyntaxError at offset 4", err)
	}
}

type innerStruct struct {
	X int `json:"x"`
}

type embedded struct {
	E1 string `json:"e1"`
	E2 string
}

type sampleStruct struct {
	Name     string          `json:"name"`
	Skip     string          `json:"-"`
	Opt      string          `json:"opt,omitempty"`
	Zero     time.Time       `json:"zero,omitzero"`
	Num      int             `json:"num,string"`
	Ptr      *innerStruct    `json:"ptr"`
	NilPtr   *innerStruct    `json:"nil_ptr"`
	Floats   []float64       `json:"floats"`
	NilSlice []string        `json:"nil_slice"`
	Map      map[string]int  `json:"map"`
	IntMap   map[int]string  `json:"int_map"`
	Raw      json.RawMessage `json:"raw"`
	Bytes    []byte          `json:"bytes"`
	Any      any             `json:"any"`
	Arr      [2]uint8        `json:"arr"`
	Untagged bool
	embedded
	//lint:ignore U1000 present so the test proves MarshalJSON skips unexported fields
	unexported int
}

type textKey struct{ s string }

func (k textKey) MarshalText() ([]byte, error) { return []byte("tk-" + k.s), nil }

type customMarshaler struct{}

func (customMarshaler) MarshalJSON() ([]byte, error) { return []byte(`{"b":1,"a":[1.0,"é"]}`), nil }

func TestMarshalJSON(t *testing.T) {
	ts := time.Date(2026, 11, 26, 14, 32, 32, 130075999, time.UTC)
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"nil", nil, `null`},
		{"bools", []any{true, false}, `[true, false]`},
		{"ints", []any{0, int8(-8), int16(16), int32(-32), int64(1 << 62), uint(7), uint8(8), uint64(1<<64 - 1)}, `[0, -8, 16, -32, 4611686018427387904, 7, 8, 18446744073709551615]`},
		{"floats", []any{1.0, 0.1, math.Copysign(0, -1), 1e16, 1e15, 1.5e-7, 0.0001, 1e22, float32(0.1), float32(1e20)}, `[1.0, 0.1, -0.0, 1e+16, 1000000000000000.0, 1.5e-07, 0.0001, 1e+22, 0.1, 1e+20]`},
		{"nonfinite", []any{math.NaN(), math.Inf(1), math.Inf(-1)}, `[NaN, Infinity, -Infinity]`},
		{"numbers", []any{json.Number("10"), json.Number("-0"), json.Number("1E5"), json.Number("1.50"), json.Number("1e400"), json.Number("123456789012345678901234567890")},
			`[10, 0, 100000.0, 1.5, Infinity, 123456789012345678901234567890]`},
		{"string escapes", "a\"b\\c/\b\f\n\r\t\x00\x1f\x7f é € 😀", `"a\"b\\c/\b\f\n\r\t\u0000\u001f\u007f \u00e9 \u20ac \ud83d\ude00"`},
		{"invalid utf8", "a\xffb", `"a\ufffdb"`},
		{"map sorted", map[string]any{"b": 1, "a": []any{}, "é": map[string]any{}}, `{"a": [], "b": 1, "\u00e9": {}}`},
		{"typed slices", []any{[]string{"x"}, []int{1, 2}, []float64{}}, `[["x"], [1, 2], []]`},
		{"nil typed", []any{[]any(nil), map[string]any(nil), []string(nil), (*int)(nil)}, `[null, null, null, null]`},
		{"pointer", func() any { x := 5; return &x }(), `5`},
		{"time", ts, `"2026-11-26T14:32:32.130075+00:00"`},
		{"time no fraction offset", time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("", -(5*3600+30*60))), `"2026-01-02T03:04:05-05:30"`},
		{"raw", json.RawMessage(`{"keep":  "as is"}`), `{"keep":  "as is"}`},
		{"bytes", []byte{0, 1, 0xff}, `"AAH/"`},
		{"text key map", map[textKey]int{{"b"}: 2, {"a"}: 1}, `{"tk-a": 1, "tk-b": 2}`},
		{"marshaler reformatted", []any{customMarshaler{}}, `[{"b": 1, "a": [1.0, "\u00e9"]}]`},
		{"struct", sampleStruct{
			Name: "n", Skip: "s", Num: 7, Ptr: &innerStruct{X: 1}, Floats: []float64{2},
			Map: map[string]int{"z": 1, "y": 2}, IntMap: map[int]string{10: "a", 9: "b"},
			Raw: json.RawMessage(`[1,2]`), Bytes: []byte("hi"), Any: map[string]any{"k": nil},
			Arr: [2]uint8{1, 2}, Untagged: true, embedded: embedded{E1: "e", E2: "f"},
		}, `{"name": "n", "num": "7", "ptr": {"x": 1}, "nil_ptr": null, "floats": [2.0], "nil_slice": null, "map": {"y": 2, "z": 1}, "int_map": {"10": "a", "9": "b"}, "raw": [1,2], "bytes": "aGk=", "any": {"k": null}, "arr": [1, 2], "Untagged": true, "e1": "e", "E2": "f"}`},
		{"signature", Signature{Task: "t"}, `{"task": "t", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}`},
		{"embed", Embed{Chain: []Signature{{Task: "a", Args: []any{1}}}},
			`{"callbacks": null, "errbacks": null, "chain": [{"task": "a", "args": [1], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}], "chord": null}`},
		{"exception", ExceptionFrom("ValueError", "builtins", "boom", 42), `{"exc_type": "ValueError", "exc_message": ["boom", 42], "exc_module": "builtins"}`},
		{"exception no args", ExceptionFrom("KeyError", "builtins"), `{"exc_type": "KeyError", "exc_message": [], "exc_module": "builtins"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MarshalJSON(tt.in)
			if err != nil {
				t.Fatalf("MarshalJSON: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("MarshalJSON\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestMarshalJSONErrors(t *testing.T) {
	type cyclic struct {
		Next *cyclic `json:"next"`
	}
	c := &cyclic{}
	c.Next = c
	for name, v := range map[string]any{
		"chan":        make(chan int),
		"func":        func() {},
		"bad number":  json.Number("12abc"),
		"cyclic":      c,
		"bad map key": map[[2]int]int{{1, 2}: 3},
	} {
		if got, err := MarshalJSON(v); err == nil {
			t.Errorf("%s: MarshalJSON = %s, want an error", name, got)
		}
	}
}

// TestMarshalJSONMatchesEncodingJSON checks that for ordinary values MarshalJSON means the
// same as encoding/json (only the formatting differs).
func TestMarshalJSONMatchesEncodingJSON(t *testing.T) {
	vals := []any{
		sampleStruct{Name: "x", Opt: "o", Floats: []float64{1.5}, Map: map[string]int{"a": 1}},
		map[string]any{"a": []any{1, "b", nil, true, 2.5}},
		[]Signature{{Task: "a", Args: []any{1}, Kwargs: map[string]any{}, Options: map[string]any{}}},
	}
	for _, v := range vals {
		py, err := MarshalJSON(v)
		if err != nil {
			t.Fatal(err)
		}
		std, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var a, b any
		if err := json.Unmarshal(py, &a); err != nil {
			t.Fatalf("encoding/json cannot read %s: %v", py, err)
		}
		if err := json.Unmarshal(std, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("MarshalJSON %s\nencoding/json %s", py, std)
		}
	}
}

// FuzzParseMarshal checks that MarshalJSON∘ParseJSON is stable: whatever ParseJSON
// accepts, MarshalJSON writes, ParseJSON reads back, and MarshalJSON writes identically.
func FuzzParseMarshal(f *testing.F) {
	for _, s := range []string{
		`[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`,
		`[NaN, Infinity, -Infinity, 1e400, -0, 1.0e-7, "\ud83d\ude00"]`,
		`{"__type__": "uuid", "__value__": {"hex": "5cbfc5af12344321abcd0123456789ef"}}`,
		`{"__type__": "decimal", "__value__": "1.50"}`,
		`{"a": {"__type__": "base64", "__value__": "AAE="}}`,
		"\"\\u0000\u00e9\\\\\"",
	} {
		f.Add([]byte(s))
	}
	if data, err := os.ReadFile(filepath.Join("testdata", "golden", "json_dumps.json")); err == nil {
		var cases []jsonDumpsCase
		if json.Unmarshal(data, &cases) == nil {
			for _, c := range cases {
				f.Add([]byte(c.JSON))
			}
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := ParseJSON(in)
		if err != nil {
			return
		}
		out1, err := MarshalJSON(v)
		if err != nil {
			t.Fatalf("MarshalJSON(ParseJSON(%q)): %v", in, err)
		}
		v2, err := ParseJSON(out1)
		if err != nil {
			t.Fatalf("ParseJSON(%q) (our own output): %v", out1, err)
		}
		out2, err := MarshalJSON(v2)
		if err != nil {
			t.Fatalf("MarshalJSON second pass: %v", err)
		}
		if string(out1) != string(out2) {
			t.Fatalf("not stable:\n%s\n%s", out1, out2)
		}
		for _, c := range out1 {
			if c >= 0x80 {
				t.Fatalf("non-ASCII byte in %q (ensure_ascii)", out1)
			}
		}
	})
}

// deepEqualNaN is reflect.DeepEqual with NaN equal to NaN.
func deepEqualNaN(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !deepEqualNaN(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k := range x {
			if !deepEqualNaN(x[k], y[k]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}
