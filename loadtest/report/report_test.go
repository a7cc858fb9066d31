package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/loadtest/stats"
)

func sample() *Result {
	v := 1.5
	return &Result{Verdict: Fail, Published: 10, Succeeded: 9, Missing: 1, Profile: "step", Started: time.Unix(0, 0).UTC(),
		Criteria: []Criterion{{Name: "lost tasks (missing)", Value: &v, Threshold: 0, Op: "<=", Unit: "tasks", Measured: true},
			{Name: "worker CPU: p95", Threshold: 70, Op: "<", Unit: "%", Note: "not measured"}},
		Chaos: Chaos{WorkersKilled: []string{"w1"}, KillTimesS: []float64{3}, ConnectionCuts: []float64{4}},
		Charts: []Chart{
			{ID: "rate", Title: "Rate", YLabel: "tasks/s", Series: []stats.Series{{Name: "sent", Points: []stats.Point{{T: 0, V: 1}, {T: 1, V: 2}}}}},
			{ID: "depth", Title: "Depth", YLabel: "messages", Threshold: 100},
		}}
}

func TestWriteAll(t *testing.T) {
	dir := t.TempDir()
	r := sample()
	jp, err := WriteJSON(dir, r)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	data, _ := os.ReadFile(jp)
	if err := json.Unmarshal(data, &keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"verdict", "published", "succeeded", "failed", "dead_lettered", "revoked", "queued", "missing", "duplicates", "criteria"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("result.json lacks %q", k)
		}
	}
	crit := keys["criteria"].([]any)[1].(map[string]any)
	for _, k := range []string{"name", "value", "threshold", "pass"} {
		if _, ok := crit[k]; !ok {
			t.Errorf("criterion lacks %q", k)
		}
	}
	pngs, err := WritePNGs(dir, r)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pngs {
		b, err := os.ReadFile(p)
		if err != nil || len(b) < 8 || string(b[1:4]) != "PNG" {
			t.Errorf("%s is not a PNG (%v)", p, err)
		}
	}
	hp, err := WriteHTML(dir, r)
	if err != nil {
		t.Fatal(err)
	}
	html, _ := os.ReadFile(hp)
	for _, want := range []string{"Chart.js v4.6.1", `"id":"rate"`, "not measured", "SIGKILL w1 at 3", "MIT License", `class="FAIL"`} {
		if !strings.Contains(string(html), want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	if strings.Contains(string(html), "https://cdn") || strings.Contains(string(html), "<script src=") {
		t.Error("report.html loads a script from elsewhere: it must work offline")
	}
	if _, err := os.Stat(filepath.Join(dir, "depth.png")); err != nil {
		t.Error("a chart without data still gets its PNG")
	}
}
