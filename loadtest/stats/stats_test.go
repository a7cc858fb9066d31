package stats

import (
	"math"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ten := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	tests := []struct {
		name   string
		sorted []float64
		p      float64
		want   float64
	}{
		{"single", []float64{7}, 99, 7},
		{"min", ten, 0, 1},
		{"max", ten, 100, 10},
		{"median even", ten, 50, 5.5},
		{"p95 of 10", ten, 95, 9.55},       // h = 8.55
		{"p99 of 10", ten, 99, 9.91},       // h = 8.91
		{"p99 of 100", hundred, 99, 99.01}, // h = 98.01
		{"p50 of 100", hundred, 50, 50.5},
		{"two", []float64{0, 1}, 25, 0.25},
		{"above 100 clamps", ten, 150, 10},
		{"below 0 clamps", ten, -5, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); math.Abs(got-tt.want) > 1e-9 {
				t.Fatalf("Percentile(p%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Fatal("empty sample: want NaN")
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{5, 1, 4, 2, 3})
	want := Summary{Count: 5, Mean: 3, P50: 3, P95: 4.8, P99: 4.96, Max: 5}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"mean", s.Mean, want.Mean}, {"p50", s.P50, want.P50}, {"p95", s.P95, want.P95}, {"p99", s.P99, want.P99}, {"max", s.Max, want.Max}} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if s.Count != 5 {
		t.Errorf("count %d", s.Count)
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("empty sample: want zero summary")
	}
}

func TestBucketed(t *testing.T) {
	b := Bucketed{Width: 2 * time.Second}
	for i := range 10 {
		b.Add(time.Duration(i)*500*time.Millisecond, float64(i)) // 0..4.5 s
	}
	r := b.Rate("rate")
	if len(r.Points) != 3 || r.Points[0].V != 2 || r.Points[1].V != 2 || r.Points[2].V != 1 {
		t.Fatalf("rates %+v, want 2,2,1 per s", r.Points)
	}
	if r.Points[1].T != 3 {
		t.Fatalf("bucket middle %v, want 3", r.Points[1].T)
	}
	p := b.Percentile("p50", 50)
	if p.Points[0].V != 1.5 || p.Points[2].V != 8.5 {
		t.Fatalf("p50 per bucket %+v", p.Points)
	}
	var s Series
	s.Add(time.Second, 5)
	s.Add(3*time.Second, 2)
	if s.Max(0) != 5 || s.Max(2) != 2 || s.Max(10) != 0 {
		t.Fatal("Series.Max")
	}
}
