package autoscale

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestTraceReplay writes a decision trace per decision to a real Redis stream through the
// recorder, reads it back, and replays the recorded observations through a fresh policy:
// every decision comes out the same (autoscaling.md §6.5: every decision can be replayed
// from its recorded inputs).
func TestTraceReplay(t *testing.T) {
	rdb := testRedis(t)
	ctx := context.Background()
	stream := unique("as-trace")
	t.Cleanup(func() { rdb.Del(context.Background(), stream) })

	enabled := true
	var last Observation
	rec := &TraceRecorder{Client: rdb, Stream: stream, MaxLen: 1000, Pool: "worker", Instance: "test",
		Enabled: func() bool { return enabled }, Observation: func() Observation { return last }}
	cfg := testConfig()
	p := newPolicy(t, cfg)
	w := newWorld(4, 4)
	var want []Decision
	step := func(mut func(w *world), d time.Duration) {
		mut(w)
		for end := w.now + d; w.now < end; w.now += 5 * time.Second {
			last = w.obs()
			dec := p.Decide(last)
			rec.Record(ctx, dec, dec.Changed(), nil)
			want = append(want, dec)
			if dec.Changed() {
				w.spec = dec.Desired
			}
		}
	}
	step(func(*world) {}, 2*time.Minute)
	step(func(w *world) { w.lambda = 8; w.ready = 150 }, time.Minute)
	step(func(w *world) { w.ready = 0 }, time.Minute)
	step(func(w *world) { w.queueOK = false }, 15*time.Second)
	step(func(w *world) { w.queueOK = true; w.stop = true }, 15*time.Second)
	step(func(w *world) { w.stop = false; w.lambda = 2 }, 15*time.Minute)
	enabled = false
	rec.Record(ctx, want[0], false, errors.New("not traced while disabled"))

	entries, err := rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Fatalf("%d entries for %d decisions", len(entries), len(want))
	}
	replay := newPolicy(t, cfg)
	rules := map[Rule]bool{}
	for i, e := range entries {
		var tr DecisionTrace
		if err := json.Unmarshal([]byte(e.Values["trace"].(string)), &tr); err != nil {
			t.Fatal(err)
		}
		if tr.Pool != "worker" || e.Values["rule"] != string(want[i].Rule) {
			t.Fatalf("entry %d: %v", i, e.Values)
		}
		got := replay.Decide(tr.Observation)
		if got.Desired != want[i].Desired || got.Rule != want[i].Rule || got.Reason != want[i].Reason || tr.Decision.Reason != want[i].Reason {
			t.Fatalf("decision %d replayed as %d %s %q, was %d %s %q", i, got.Desired, got.Rule, got.Reason,
				want[i].Desired, want[i].Rule, want[i].Reason)
		}
		rules[got.Rule] = true
	}
	for _, r := range []Rule{RuleEmergencyStop, RuleFailStatic, RuleBacklog} {
		if !rules[r] {
			t.Errorf("the scenario never decided by %s: %v", r, rules)
		}
	}
}

func TestTraceStreamIsBounded(t *testing.T) {
	rdb := testRedis(t)
	ctx := context.Background()
	stream := unique("as-trace-bound")
	t.Cleanup(func() { rdb.Del(context.Background(), stream) })
	rec := &TraceRecorder{Client: rdb, Stream: stream, MaxLen: 10, Pool: "worker"}
	for i := range 500 {
		rec.Record(ctx, Decision{Workload: "worker", Current: i, Desired: i, Rule: RuleHysteresis}, false, nil)
	}
	n, err := rdb.XLen(ctx, stream).Result()
	if err != nil {
		t.Fatal(err)
	}
	// MAXLEN ~ trims whole radix-tree nodes (100 entries by default), so "about" 10.
	if n < 10 || n > 200 {
		t.Fatalf("stream holds %d entries", n)
	}
}

func TestMetricsRecorder(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ages := Ages{Broker: 1.5, Heartbeats: 0.5, CPU: math.NaN()}
	r := MetricsRecorder{M: m, Ages: func() Ages { return ages }}
	d := Decision{Workload: "w", Current: 3, Desired: 5, Rule: RuleBacklog,
		Conditions: []Condition{{Type: ConditionMetricsUnavailable, Status: false}, {Type: ConditionStopped, Status: true}}}
	r.Record(context.Background(), d, true, nil)
	r.Record(context.Background(), d, false, errors.New("boom"))
	cases := []struct {
		name   string
		metric string
		labels []string
		want   float64
	}{
		{"desired", "fleet_autoscaler_desired_replicas", []string{"w"}, 5},
		{"current", "fleet_autoscaler_current_replicas", []string{"w"}, 3},
		{"decisions by rule", "fleet_autoscaler_decisions_total", []string{"w", "backlog"}, 2},
		{"broker age", "fleet_autoscaler_signal_age_seconds", []string{"w", "broker"}, 1.5},
		{"stopped condition", "fleet_autoscaler_condition", []string{"w", ConditionStopped}, 1},
		{"applied writes", "fleet_autoscaler_scale_writes_total", []string{"w", "applied"}, 1},
		{"failed writes", "fleet_autoscaler_scale_writes_total", []string{"w", "failed"}, 1},
		{"no cpu age without CPU samples", "fleet_autoscaler_signal_age_seconds", []string{"w", "cpu"}, -1},
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string, labels []string) float64 {
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		series:
			for _, m := range mf.GetMetric() {
				if len(m.GetLabel()) != len(labels) {
					continue
				}
				// Labels come sorted by name: deployment, then rule/signal/type/result.
				for i, l := range m.GetLabel() {
					if l.GetValue() != labels[i] {
						continue series
					}
				}
				if m.GetGauge() != nil {
					return m.GetGauge().GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
		return -1
	}
	for _, tc := range cases {
		if got := value(tc.metric, tc.labels); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, got, tc.want)
		}
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Fatal("registered twice")
	}
}

func TestFileRecorder(t *testing.T) {
	var buf bytes.Buffer
	r := &FileRecorder{W: &buf}
	r.Record(context.Background(), Decision{Time: time.Unix(10, 0).UTC(), Workload: "w", Current: 1, Desired: 2, Rule: RuleQueueing, Reason: "x"}, true, nil)
	var got map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(buf.Bytes()), &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "workload", "current", "desired", "rule", "reason"} {
		if _, ok := got[k]; !ok {
			t.Errorf("%s missing from %s", k, buf.String())
		}
	}
}
