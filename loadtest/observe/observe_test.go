package observe

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
)

func TestParseOutcome(t *testing.T) {
	done := time.Date(2026, 11, 26, 14, 34, 0, 221388000, time.UTC)
	fail := result.Record{TaskID: "x", Status: protocol.StateFailure,
		Result: protocol.ExceptionInfo{Type: "RuntimeError", Module: "builtins", Message: []any{"boom"}}}
	custom := result.Record{TaskID: "y", Status: protocol.StateFailure,
		Result: protocol.ExceptionInfo{Type: "FlagDisabledError", Module: "fleet.errors", Message: []any{"off"}}}
	ok := result.Record{TaskID: "z", Status: protocol.StateSuccess, Result: 3}
	started := result.Record{TaskID: "s", Status: protocol.StateStarted}
	tests := []struct {
		name   string
		rec    result.Record
		status string
		reason string
		dated  bool
	}{
		{"success", ok, protocol.StateSuccess, "", true},
		{"builtin failure", fail, protocol.StateFailure, "RuntimeError", true},
		{"module failure", custom, protocol.StateFailure, "fleet.errors.FlagDisabledError", true},
		{"started has no date_done", started, protocol.StateStarted, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := tt.rec.Meta(done).Encode()
			if err != nil {
				t.Fatal(err)
			}
			o, err := ParseOutcome(doc)
			if err != nil {
				t.Fatal(err)
			}
			if o.Status != tt.status || o.Reason != tt.reason {
				t.Fatalf("got %+v", o)
			}
			if tt.dated && !o.DateDone.Equal(done) {
				t.Fatalf("date_done %v, want %v", o.DateDone, done)
			}
			if !tt.dated && !o.DateDone.IsZero() {
				t.Fatalf("date_done %v, want none", o.DateDone)
			}
			if statusOf(string(doc)) != tt.status {
				t.Fatalf("statusOf = %q", statusOf(string(doc)))
			}
		})
	}
	if _, err := ParseOutcome([]byte(`{"result": 1}`)); err == nil {
		t.Fatal("no status: want an error")
	}
}

func TestParseDateDone(t *testing.T) {
	for in, want := range map[string]time.Time{
		"2026-11-26T14:34:00.221388":       time.Date(2026, 11, 26, 14, 34, 0, 221388000, time.UTC),
		"2026-11-26T14:34:00":              time.Date(2026, 11, 26, 14, 34, 0, 0, time.UTC),
		"2026-11-26T15:34:00.5+01:00":      time.Date(2026, 11, 26, 14, 34, 0, 500000000, time.UTC),
		"2026-11-26T14:34:00.000001+00:00": time.Date(2026, 11, 26, 14, 34, 0, 1000, time.UTC),
	} {
		got, err := ParseDateDone(in)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseDateDone(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseDateDone("yesterday"); err == nil {
		t.Error("want an error")
	}
}

// TestScrape reads a real client_golang /metrics endpoint, as a worker exposes it.
func TestScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_tasks_active", Help: "h"}, []string{"queue"})
	reg.MustRegister(g)
	g.WithLabelValues("a").Set(2)
	g.WithLabelValues("b").Set(3)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	vals, err := Scrape(context.Background(), &http.Client{Timeout: 2 * time.Second}, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// The CPU time is counted in clock ticks (10 ms): a test process that has just started
	// can show 0, so only its presence is checked.
	if _, ok := vals["process_cpu_seconds_total"]; !ok || vals["process_resident_memory_bytes"] <= 0 {
		t.Fatalf("process metrics missing: %v", vals)
	}
	if vals["fleet_tasks_active"] != 5 {
		t.Fatalf("labelled samples summed to %v, want 5", vals["fleet_tasks_active"])
	}
	if _, err := Scrape(context.Background(), http.DefaultClient, srv.URL+"/nope\x00"); err == nil {
		t.Fatal("bad URL: want an error")
	}
}

func TestParseExposition(t *testing.T) {
	got := ParseExposition([]byte("# HELP x y\n# TYPE x counter\nx 1.5\nx{a=\"b c\",d=\"}\"} 2\ny_total 3e2 1700000000\nbroken\nz{a=\"1\"} NaN\n"))
	if got["x"] != 3.5 || got["y_total"] != 300 {
		t.Fatalf("%v", got)
	}
}

func TestDecisionLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "decisions.jsonl")
	if err := os.WriteFile(p, []byte(`{"time":"2026-01-01T00:00:00Z","current":1,"desired":9,"rule":"old"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := NewDecisionLog(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, _ = f.WriteString(`{"time":"2026-01-01T00:00:01Z","workload":"w","current":2,"desired":4,"rule":"queueing","reason":"λ up"}` + "\n" +
		`{"level":"INFO","msg":"not a decision"}` + "\n" + `{"time":"2026-01-01T00:00:02Z","current":4,"desi`)
	ds, err := d.Poll()
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].Desired != 4 || ds[0].Rule != "queueing" {
		t.Fatalf("first poll %+v, want the one new decision", ds)
	}
	_, _ = f.WriteString(`red":5,"rule":"backlog"}` + "\n")
	ds, err = d.Poll()
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].Desired != 5 {
		t.Fatalf("second poll %+v, want the completed line", ds)
	}
}
