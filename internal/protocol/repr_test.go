package protocol

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

// Expected values below were produced by Python 3.11 repr() and Celery 5.2.6 saferepr.
func TestRepr(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"bytes", []byte("a'b\"\x00\xff\n"), `b'a\'b"\x00\xff\n'`},
		{"bytes single quote", []byte("it's"), `b"it's"`},
		{"non-printable unicode", "\u0085 \u200b \ue000 \U0010ffff \u00ad é 😀 \x00", `'\x85 \u200b \ue000 \U0010ffff \xad é 😀 \x00'`},
		{"only single quote", "only ' single", `"only ' single"`},
		{"only double quote", `only " double`, `'only " double'`},
		{"go numbers", []any{int8(-1), uint16(7), float32(0.1), math.Inf(-1), json.Number("1E5"), json.Number("-0")}, "[-1, 7, 0.1, -inf, 100000.0, 0]"},
		{"nil and typed", map[string]any{"z": nil, "a": []string{"x"}, "m": map[string]int{"k": 1}}, "{'a': ['x'], 'm': {'k': 1}, 'z': None}"},
		{"struct through JSON", struct {
			A int    `json:"a"`
			B string `json:"b"`
		}{1, "x"}, "{'a': 1, 'b': 'x'}"},
		{"time", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), "'2026-01-02T03:04:05+00:00'"},
	}
	for _, tt := range tests {
		if got := Repr(tt.in); got != tt.want {
			t.Errorf("%s: Repr = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestSafeRepr(t *testing.T) {
	long := strings.Repeat("x", 2000)
	tests := []struct {
		name   string
		in     any
		maxlen int
		want   string
	}{
		{"bytes", []byte("abc"), 0, "b'abc'"},
		{"binary bytes as hex", []any{[]byte{0xff, 0}}, 0, "[b'ff00']"},
		{"cut after value drops the closing brace", map[string]any{"a": long}, 50, "{'a': 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...', ..."},
		{"cut inside nested", []any{[]any{1, 2}, []any{3, 4}}, 5, "[[1, , ...]]"},
		{"no limit", []any{long}, 0, "['" + long + "']"},
	}
	for _, tt := range tests {
		if got := SafeRepr(tt.in, tt.maxlen); got != tt.want {
			t.Errorf("%s: SafeRepr = %s, want %s", tt.name, got, tt.want)
		}
	}
	if got := ReprArgs([]any{1}); got != "(1,)" {
		t.Errorf("ReprArgs single = %s", got)
	}
	if got := ReprArgs(nil); got != "()" {
		t.Errorf("ReprArgs(nil) = %s", got)
	}
	if got := ReprKwargs(nil); got != "{}" {
		t.Errorf("ReprKwargs(nil) = %s", got)
	}
	if got := ReprArgs([]any{long}); len([]rune(got)) > ReprMaxSize+16 || !strings.HasSuffix(got, "...', ...") {
		t.Errorf("ReprArgs not cut at %d: %d chars, ends %q", ReprMaxSize, len(got), got[len(got)-12:])
	}
}
