package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestMain_Usage(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"no command", nil, ExitUsage, "Commands:"},
		{"unknown command", []string{"scale"}, ExitUsage, "unknown command"},
		{"unknown trace", []string{"simulate", "--trace", "T9"}, ExitUsage, "unknown trace"},
		{"bad format", []string{"simulate", "--format", "yaml"}, ExitUsage, "--format"},
		{"no seeds", []string{"simulate", "--seeds", "0"}, ExitUsage, "--seeds"},
		{"unknown controller", []string{"simulate", "--controllers", "vpa"}, ExitUsage, "unknown controller"},
		{"stray argument", []string{"simulate", "T1"}, ExitUsage, "unexpected argument"},
		{"unknown flag", []string{"simulate", "--seed", "3"}, ExitUsage, "flag provided but not defined"},
		{"help", []string{"--help"}, ExitOK, ""},
		{"simulate help", []string{"simulate", "--help"}, ExitOK, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := Main(tc.args, &out, &errOut); code != tc.code || !strings.Contains(errOut.String(), tc.wantErr) {
				t.Fatalf("exit %d, stderr %q", code, errOut.String())
			}
		})
	}
}

func TestSimulate(t *testing.T) {
	// T6 is the cheapest trace (λ = 0.4/s); one seed, ours and the oracle.
	base := []string{"simulate", "--trace", "t6", "--seeds", "1", "--tune=false", "--controllers", "fleet"}
	var out, errOut bytes.Buffer
	if code := Main(append(base, "--format", "json"), &out, &errOut); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var rows []map[string]any
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("not one JSON array: %v\n%s", err, out.String())
	}
	if len(rows) != 2 || rows[0]["trace"] != "T6" || rows[0]["controller"] != "fleet" || rows[1]["controller"] != "oracle" || len(rows[0]) != 14 {
		t.Fatalf("%v", rows)
	}
	if rows[0]["killed_in_flight"] != 0.0 || rows[0]["stop_latency_s"] != nil {
		t.Fatalf("%v", rows[0])
	}

	out.Reset()
	if code := Main(append(base, "--check"), &out, &errOut); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"T6:", "killed", "goals for fleet", "PASS  0 tasks killed in flight", "Goals: 2 of 2 hold"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("%q missing in\n%s", want, out.String())
		}
	}
}
