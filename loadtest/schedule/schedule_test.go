package schedule

import (
	"math"
	"testing"
	"time"
)

func TestUniformNoDriftOverTenMinutes(t *testing.T) {
	for _, rate := range []float64{0.3, 7, 20, 333.3, 1000} {
		p := Profile{Name: "steady", Segments: []Segment{{Duration: 10 * time.Minute, From: rate, To: rate}}}
		var n int
		var last time.Duration
		interval := time.Duration(float64(time.Second) / rate)
		for at := range p.Times(Uniform, 0) {
			// The k-th send is due at exactly k/rate: no error accumulates over 10 min.
			want := time.Duration(float64(n) / rate * float64(time.Second))
			if d := at - want; d < -time.Microsecond || d > time.Microsecond {
				t.Fatalf("rate %v: send %d at %s, want %s (drift %s)", rate, n, at, want, d)
			}
			if n > 0 && at < last {
				t.Fatalf("rate %v: send %d goes back in time", rate, n)
			}
			last = at
			n++
		}
		want := int(math.Ceil(rate * 600))
		if n != want {
			t.Errorf("rate %v: %d sends in 10 min, want %d", rate, n, want)
		}
		if end := 10*time.Minute - last; end < 0 || end > interval+time.Microsecond {
			t.Errorf("rate %v: last send %s before the end, want within one interval %s", rate, end, interval)
		}
	}
}

func TestPiecewiseCountsMatchIntegral(t *testing.T) {
	l := Level{Expected: 10, Multiplier: 2}
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			p, err := Builtin(name, l)
			if err != nil {
				t.Fatal(err)
			}
			if name == Soak {
				p = p.Stretched(20 * time.Minute)
			}
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}
			var n int
			var prev time.Duration = -1
			for at := range p.Times(Uniform, 0) {
				if at < prev || at >= p.Duration() {
					t.Fatalf("send %d at %s out of order or past the end %s", n, at, p.Duration())
				}
				prev = at
				n++
			}
			if want := p.Expected(); math.Abs(float64(n)-want) > 1 {
				t.Errorf("%d sends, want %.1f (±1)", n, want)
			}
		})
	}
}

func TestLinearRampSendTimes(t *testing.T) {
	// Rate 0 → 20/s over 10 s: 100 sends, the k-th at sqrt(k) (integral t² = k).
	p := Profile{Segments: []Segment{{Duration: 10 * time.Second, From: 0, To: 20}}}
	k := 0
	for at := range p.Times(Uniform, 0) {
		want := math.Sqrt(float64(k))
		if math.Abs(at.Seconds()-want) > 1e-6 {
			t.Fatalf("send %d at %.6fs, want %.6fs", k, at.Seconds(), want)
		}
		k++
	}
	if k != 100 {
		t.Fatalf("%d sends, want 100", k)
	}
}

func TestPoissonMeanRate(t *testing.T) {
	p := Profile{Segments: []Segment{{Duration: 10 * time.Minute, From: 50, To: 50}}}
	n := 0
	for range p.Times(Poisson, 42) {
		n++
	}
	// 30000 expected, sd ≈ 173: 5 sd.
	if math.Abs(float64(n)-30000) > 900 {
		t.Fatalf("%d Poisson sends in 10 min at 50/s, want about 30000", n)
	}
	again := 0
	for range p.Times(Poisson, 42) {
		again++
	}
	if again != n {
		t.Fatalf("same seed gave %d then %d sends", n, again)
	}
}

func TestBuiltinShapes(t *testing.T) {
	l := Level{Expected: 10, Multiplier: 2}
	tests := []struct {
		name   string
		length time.Duration
		rates  []float64 // rate of each segment
	}{
		{Steady, SteadyLength, []float64{20}},
		{Step, 3 * StepPhaseLength, []float64{10, 20, 10}},
		{Ramp, 7 * RampPhaseLength, []float64{10.1, 10.5, 11, 12.5, 15, 20, 10}},
		{Spike, SpikeLength, []float64{10, 20, 10}},
		{Soak, SoakLength, []float64{20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Builtin(tt.name, l)
			if err != nil {
				t.Fatal(err)
			}
			if p.Duration() != tt.length {
				t.Errorf("length %s, want %s", p.Duration(), tt.length)
			}
			if len(p.Segments) != len(tt.rates) {
				t.Fatalf("%d segments, want %d", len(p.Segments), len(tt.rates))
			}
			for i, r := range tt.rates {
				if math.Abs(p.Segments[i].From-r) > 1e-9 {
					t.Errorf("segment %d rate %v, want %v", i, p.Segments[i].From, r)
				}
			}
		})
	}
}

func TestScaleAndStretch(t *testing.T) {
	p, _ := Builtin(Ramp, Level{Expected: 10, Multiplier: 2})
	s := p.Scaled(10)
	if s.Duration() != p.Duration()/10 {
		t.Fatalf("time-scale 10: %s, want %s", s.Duration(), p.Duration()/10)
	}
	if s.RateAt(s.Segments[3].Start) != p.Segments[3].From {
		t.Fatal("scaling changed the rates")
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	st := p.Stretched(7 * time.Minute)
	if st.Duration() != 7*time.Minute {
		t.Fatalf("stretched to %s, want 7m", st.Duration())
	}
}

func TestParseFile(t *testing.T) {
	l := Level{Expected: 10, Multiplier: 3}
	tests := []struct {
		name    string
		yaml    string
		rates   [][2]float64
		wantErr bool
	}{
		{"mixed", "name: x\nphases:\n  - {duration: 1m, rate: 1x}\n  - {duration: 30s, from: 1x, to: peak}\n  - {duration: 10s, rate: 7/s}\n",
			[][2]float64{{10, 10}, {10, 30}, {7, 7}}, false},
		{"no phases", "name: x\n", nil, true},
		{"bad duration", "phases:\n  - {duration: soon, rate: 1}\n", nil, true},
		{"rate and from", "phases:\n  - {duration: 1s, rate: 1, from: 2, to: 3}\n", nil, true},
		{"negative", "phases:\n  - {duration: 1s, rate: -1}\n", nil, true},
		{"unknown key", "phases:\n  - {duration: 1s, rate: 1, speed: 3}\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseFile([]byte(tt.yaml), l)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			for i, r := range tt.rates {
				if p.Segments[i].From != r[0] || p.Segments[i].To != r[1] {
					t.Errorf("phase %d: %v→%v, want %v→%v", i, p.Segments[i].From, p.Segments[i].To, r[0], r[1])
				}
			}
		})
	}
}
