package flags

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gatherFlags scrapes reg and returns the samples of the fleet_flag_* families, keyed by
// family name and then by the joined label values.
func gatherFlags(t *testing.T, reg *prometheus.Registry) map[string]map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]map[string]float64{}
	for _, mf := range mfs {
		m := map[string]float64{}
		for _, s := range mf.GetMetric() {
			key := ""
			for _, lp := range s.GetLabel() {
				if lp.GetName() == "hostname" {
					continue
				}
				key += lp.GetValue()
			}
			m[key] = sampleValue(mf.GetType(), s)
		}
		out[mf.GetName()] = m
	}
	return out
}

func sampleValue(typ dto.MetricType, m *dto.Metric) float64 {
	if typ == dto.MetricType_COUNTER {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestCollector: the series follow the live flags, a Redis change included, and carry the
// constant labels.
func TestCollector(t *testing.T) {
	fx := newRedisFixture(t)
	f, _ := fx.worker(t, Options{LookupEnv: envOf(map[string]string{MaterializersPercent: "10", VoiceEnabled: "true"})})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(f.Snapshot, prometheus.Labels{"hostname": "w1"}))

	tests := []struct {
		family, key string
		want        float64
	}{
		{"fleet_flag_enabled", VoiceEnabled, 1},
		{"fleet_flag_enabled", MaterializersEnabled, 0},
		{"fleet_flag_value", MaterializersPercent, 10},
		{"fleet_flag_value", VoiceEnabled, 1},
		{"fleet_flag_rejections_total", string(SourceRedis), 0},
		{"fleet_flag_source_healthy", string(SourceRedis), 1},
	}
	got := gatherFlags(t, reg)
	for _, tc := range tests {
		if v, ok := got[tc.family][tc.key]; !ok || v != tc.want {
			t.Errorf("%s{%s} = %v (present %v), want %v", tc.family, tc.key, v, ok, tc.want)
		}
	}
	if _, ok := got["fleet_flag_enabled"][MaterializersPercent]; ok {
		t.Errorf("fleet_flag_enabled has the percent flag")
	}
	if len(got["fleet_flag_value"]) != len(Defs()) {
		t.Errorf("fleet_flag_value has %d series, want %d", len(got["fleet_flag_value"]), len(Defs()))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := fx.store.Set(ctx, MaterializersEnabled, "true"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the collector to show the Redis change", func() bool {
		g := gatherFlags(t, reg)
		return g["fleet_flag_enabled"][MaterializersEnabled] == 1 && g["fleet_flag_changes_total"][""] >= 1
	})
}
