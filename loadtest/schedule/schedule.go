// Package schedule turns a load profile (a rate over time) into the send times of an
// open-loop producer. The times are fixed in advance from the profile alone: the k-th
// message is due when the integral of the rate reaches k, computed from k directly (never
// by adding intervals), so a long run does not drift and a slow producer cannot lower the
// offered load (no coordinated omission): it only falls behind, which the caller measures.
package schedule

import (
	"errors"
	"fmt"
	"iter"
	"math"
	"math/rand/v2"
	"time"
)

// Segment is a stretch of the profile whose rate goes linearly from From to To tasks/s
// (From == To: constant).
type Segment struct {
	Start    time.Duration `json:"start"`
	Duration time.Duration `json:"duration"`
	From     float64       `json:"from"`
	To       float64       `json:"to"`
	// Label names the phase (e.g. "1x", "2x", "ramp 25%"); the report shows it.
	Label string `json:"label,omitempty"`
}

// End is when the segment ends.
func (s Segment) End() time.Duration { return s.Start + s.Duration }

// rateAt is the rate at offset tau into the segment.
func (s Segment) rateAt(tau time.Duration) float64 {
	if s.Duration <= 0 {
		return s.From
	}
	f := tau.Seconds() / s.Duration.Seconds()
	return s.From + (s.To-s.From)*f
}

// area is the number of messages the whole segment sends.
func (s Segment) area() float64 { return (s.From + s.To) / 2 * s.Duration.Seconds() }

// Profile is a named rate curve: consecutive segments starting at 0.
type Profile struct {
	Name     string    `json:"name"`
	Segments []Segment `json:"segments"`
}

// Duration is the length of the profile.
func (p Profile) Duration() time.Duration {
	if len(p.Segments) == 0 {
		return 0
	}
	return p.Segments[len(p.Segments)-1].End()
}

// RateAt is the target rate (tasks/s) at offset t; 0 outside the profile.
func (p Profile) RateAt(t time.Duration) float64 {
	for _, s := range p.Segments {
		if t >= s.Start && t < s.End() {
			return s.rateAt(t - s.Start)
		}
	}
	return 0
}

// PhaseAt is the label of the segment at offset t.
func (p Profile) PhaseAt(t time.Duration) string {
	for _, s := range p.Segments {
		if t >= s.Start && t < s.End() {
			return s.Label
		}
	}
	return ""
}

// Expected is the number of messages the profile sends (the integral of its rate).
func (p Profile) Expected() float64 {
	var n float64
	for _, s := range p.Segments {
		n += s.area()
	}
	return n
}

// MaxRate is the highest rate of the profile.
func (p Profile) MaxRate() float64 {
	var m float64
	for _, s := range p.Segments {
		m = max(m, s.From, s.To)
	}
	return m
}

// Validate checks that the segments are contiguous from 0, of positive length, with
// finite non-negative rates.
func (p Profile) Validate() error {
	if len(p.Segments) == 0 {
		return errors.New("schedule: profile has no segments")
	}
	var at time.Duration
	for i, s := range p.Segments {
		if s.Start != at {
			return fmt.Errorf("schedule: segment %d starts at %s, want %s", i, s.Start, at)
		}
		if s.Duration <= 0 {
			return fmt.Errorf("schedule: segment %d has length %s, want > 0", i, s.Duration)
		}
		for _, r := range []float64{s.From, s.To} {
			if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
				return fmt.Errorf("schedule: segment %d has rate %v, want a finite rate >= 0", i, r)
			}
		}
		at = s.End()
	}
	return nil
}

// Scaled returns the profile with every length divided by factor (a time-scale of 10 runs
// a 30-minute profile in 3 minutes at the same rates). Lengths are rounded to the
// millisecond so that segments stay contiguous.
func (p Profile) Scaled(factor float64) Profile {
	if factor == 1 || factor <= 0 {
		return p
	}
	out := Profile{Name: p.Name}
	var at time.Duration
	for _, s := range p.Segments {
		d := time.Duration(float64(s.Duration) / factor).Round(time.Millisecond)
		if d <= 0 {
			d = time.Millisecond
		}
		out.Segments = append(out.Segments, Segment{Start: at, Duration: d, From: s.From, To: s.To, Label: s.Label})
		at += d
	}
	return out
}

// Stretched returns the profile resized to total length d, keeping its proportions.
func (p Profile) Stretched(d time.Duration) Profile {
	cur := p.Duration()
	if d <= 0 || cur <= 0 || d == cur {
		return p
	}
	return p.Scaled(float64(cur) / float64(d))
}

// Arrivals say how send times are spread.
type Arrivals int

const (
	// Uniform sends the k-th message exactly when the integral of the rate reaches k:
	// evenly spaced at a constant rate.
	Uniform Arrivals = iota
	// Poisson draws exponential gaps (mean 1) in integral space: a Poisson process whose
	// intensity follows the profile. The seed fixes the draw.
	Poisson
)

// ParseArrivals reads "uniform" or "poisson".
func ParseArrivals(s string) (Arrivals, error) {
	switch s {
	case "", "uniform":
		return Uniform, nil
	case "poisson":
		return Poisson, nil
	}
	return 0, fmt.Errorf("schedule: arrivals %q: want uniform or poisson", s)
}

// Times yields the send offsets of the profile in order, each computed from its index
// (Uniform) or from its position in integral space (Poisson), never by summing durations.
func (p Profile) Times(a Arrivals, seed uint64) iter.Seq[time.Duration] {
	return func(yield func(time.Duration) bool) {
		var rng *rand.Rand
		if a == Poisson {
			rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		}
		var base float64 // integral at the start of segment i
		target := 0.0    // integral value of the next arrival
		if rng != nil {
			target = rng.ExpFloat64()
		}
		k := 0
		for _, s := range p.Segments {
			area := s.area()
			for target < base+area {
				tau := solve(s, target-base)
				if !yield(s.Start + tau) {
					return
				}
				k++
				if rng != nil {
					target += rng.ExpFloat64()
				} else {
					target = float64(k)
				}
			}
			base += area
		}
	}
}

// solve returns the offset tau into s at which the integral of its rate reaches delta
// (0 <= delta < area): a*tau + b*tau²/2 = delta with a = From, b = slope.
func solve(s Segment, delta float64) time.Duration {
	d := s.Duration.Seconds()
	a := s.From
	b := (s.To - s.From) / d
	var tau float64
	switch {
	case math.Abs(b) < 1e-12:
		tau = delta / a
	default:
		disc := a*a + 2*b*delta
		if disc < 0 {
			disc = 0
		}
		// Numerically stable root of b/2 τ² + a τ − δ = 0.
		if den := a + math.Sqrt(disc); den > 0 {
			tau = 2 * delta / den
		}
	}
	tau = min(max(tau, 0), d)
	return time.Duration(tau * float64(time.Second))
}
