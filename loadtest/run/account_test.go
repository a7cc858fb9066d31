package run

import (
	"testing"

	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/loadtest/observe"
	"denis.io/fleet/loadtest/report"
)

func TestClassify(t *testing.T) {
	st := func(s string) observe.Outcome { return observe.Outcome{Status: s} }
	tests := []struct {
		name string
		f    Final
		want Category
	}{
		{"success", Final{Outcome: st(protocol.StateSuccess)}, Succeeded},
		{"success beats a stray copy in the DLQ", Final{Outcome: st(protocol.StateSuccess), InDLQ: true}, Succeeded},
		{"failure", Final{Outcome: st(protocol.StateFailure)}, Failed},
		{"dead letter with its FAILURE", Final{Outcome: st(protocol.StateFailure), InDLQ: true}, DeadLettered},
		{"dead letter without result", Final{InDLQ: true}, DeadLettered},
		{"revoked", Final{Outcome: st(protocol.StateRevoked)}, Revoked},
		{"waiting", Final{InQueue: true}, Queued},
		{"redelivered after a started run", Final{Outcome: st(protocol.StateStarted), InQueue: true}, Queued},
		{"waiting for its retry", Final{Outcome: st(protocol.StateRetry), InQueue: true}, Queued},
		{"running", Final{Outcome: st(protocol.StateStarted)}, InFlight},
		{"retry in flight", Final{Outcome: st(protocol.StateRetry)}, InFlight},
		{"nowhere", Final{}, Missing},
		{"pending result only", Final{Outcome: st(protocol.StatePending)}, Missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.f); got != tt.want {
				t.Fatalf("Classify = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestTrackerDuplicates(t *testing.T) {
	tests := []struct {
		name    string
		notices []string
		want    bool
	}{
		{"one run", []string{"STARTED", "SUCCESS"}, false},
		{"retried once", []string{"STARTED", "RETRY", "STARTED", "SUCCESS"}, false},
		{"killed and run again", []string{"STARTED", "STARTED", "SUCCESS"}, true},
		{"outcome written twice", []string{"STARTED", "FAILURE", "STARTED", "FAILURE"}, true},
		{"retried, then run twice", []string{"STARTED", "RETRY", "STARTED", "STARTED", "SUCCESS"}, true},
		{"no track_started, one outcome", []string{"SUCCESS"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker()
			rec := &record{id: "a"}
			tr.add(rec)
			for _, s := range tt.notices {
				tr.notice(observe.Notice{TaskID: "a", Status: s})
			}
			tr.notice(observe.Notice{TaskID: "someone-else", Status: "STARTED"})
			if got := rec.duplicate(); got != tt.want {
				t.Fatalf("duplicate = %v, want %v (starts %d retries %d ready %d)", got, tt.want, rec.starts, rec.retries, rec.ready)
			}
		})
	}
}

func TestTrackerPending(t *testing.T) {
	tr := newTracker()
	a, b := &record{id: "a"}, &record{id: "b"}
	tr.add(a)
	tr.add(b)
	tr.markPublished(a, a.due)
	tr.markPublished(b, b.due)
	if c := tr.counts(); c.published != 2 || c.pending != 2 {
		t.Fatalf("counts %+v", c)
	}
	done := tr.setOutcomes(map[string]observe.Outcome{"a": {Status: protocol.StateSuccess}, "b": {Status: protocol.StateStarted}, "x": {Status: protocol.StateSuccess}})
	if len(done) != 1 || done[0] != a {
		t.Fatalf("done %v, want a", done)
	}
	if ids := tr.pendingIDs(); len(ids) != 1 || ids[0] != "b" {
		t.Fatalf("pending %v, want b", ids)
	}
	// A second fetch of a ready task does not count it again.
	if done := tr.setOutcomes(map[string]observe.Outcome{"a": {Status: protocol.StateSuccess}}); len(done) != 0 {
		t.Fatalf("counted twice: %v", done)
	}
}

func TestJudge(t *testing.T) {
	th := DefaultThresholds()
	good := func() Measured {
		return Measured{E2EP99: ptr(12), QueueMax: ptr(99), DLQ: ptr(0), CPUP95: ptr(69.9), MaterializerSuccess: ptr(95.1),
			OverheadP99: ptr(0.499), Missing: ptr(0), ProducerLagP99: ptr(0.01)}
	}
	tests := []struct {
		name     string
		mutate   func(m *Measured, th *Thresholds)
		verdict  string
		failing  string
		measured bool
	}{
		{"all pass", func(*Measured, *Thresholds) {}, report.Pass, "", true},
		{"p99 at 5 min fails", func(m *Measured, _ *Thresholds) { m.E2EP99 = ptr(300) }, report.Fail, CritE2E, true},
		{"queue at 100 fails", func(m *Measured, _ *Thresholds) { m.QueueMax = ptr(100) }, report.Fail, CritQueue, true},
		{"one dead letter fails", func(m *Measured, _ *Thresholds) { m.DLQ = ptr(1) }, report.Fail, CritDLQ, true},
		{"cpu 70 fails", func(m *Measured, _ *Thresholds) { m.CPUP95 = ptr(70) }, report.Fail, CritCPU, true},
		{"materializer 95 fails", func(m *Measured, _ *Thresholds) { m.MaterializerSuccess = ptr(95) }, report.Fail, CritMaterializer, true},
		{"overhead 500 ms fails", func(m *Measured, _ *Thresholds) { m.OverheadP99 = ptr(0.5) }, report.Fail, CritOverhead, true},
		{"one missing fails", func(m *Measured, _ *Thresholds) { m.Missing = ptr(1) }, report.Fail, CritMissing, true},
		{"producer behind fails", func(m *Measured, _ *Thresholds) { m.ProducerLagP99 = ptr(3) }, report.Fail, CritProducer, true},
		{"unmeasured CPU fails", func(m *Measured, _ *Thresholds) { m.CPUP95 = nil }, report.Fail, CritCPU, false},
		{"unmeasured CPU allowed", func(m *Measured, th *Thresholds) { m.CPUP95 = nil; th.AllowUnmeasured = true }, report.Pass, "", false},
		{"raised threshold", func(m *Measured, th *Thresholds) { m.QueueMax = ptr(150); th.QueueMax = 200 }, report.Pass, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, th := good(), th
			tt.mutate(&m, &th)
			cs, v := Judge(m, th)
			if v != tt.verdict {
				t.Fatalf("verdict %s, want %s: %+v", v, tt.verdict, cs)
			}
			if len(cs) != 8 {
				t.Fatalf("%d criteria, want 8", len(cs))
			}
			for _, c := range cs {
				if want := c.Name != tt.failing; c.Pass != want {
					t.Errorf("%s: pass %v, want %v", c.Name, c.Pass, want)
				}
			}
			if c := cs[3]; c.Measured != tt.measured {
				t.Errorf("CPU measured = %v, want %v", c.Measured, tt.measured)
			}
		})
	}
	cs, _ := Judge(good(), th)
	if o := cs[5]; o.Value == nil || *o.Value != 499 || o.Unit != "ms" || o.Threshold != 500 {
		t.Errorf("overhead shown as %+v, want 499 ms against 500", o)
	}
}
