package autoscale

import (
	"math"
	"time"
)

// rateSample is one broker rate sample: rate messages per second over dt seconds ending at at.
type rateSample struct {
	at   time.Time
	rate float64
	dt   float64
}

// rateEstimator turns noisy per-poll arrival rates into λ̂: the time-weighted mean over
// Config.RateWindow, which forgets the samples before a step as soon as the recent samples
// show one (an adaptive window). It is part of the policy's small state.
type rateEstimator struct {
	samples []rateSample
	lastAt  time.Time
	// warm is set once the samples spanned a full ChangeWindow: λ̂ is usable from then on,
	// also right after a step, when only the samples after it are kept.
	warm bool
	// settling is true after a step until a ChangeWindow of samples followed it: the first
	// sample kept may straddle the step, and is dropped if the later ones disown it.
	settling bool
	// lastSeen is the time of the last observation that carried this queue.
	lastSeen time.Time
}

// add records a sample unless it repeats the previous one (same SampledAt), drops samples
// older than the rate window and runs the step detector. It returns true when a step was
// detected (the samples before it are then forgotten).
//
// The detector is a multi-scale test: for every tail of the samples within ChangeWindow
// (the last one, the last two, …) it compares the tail's mean with the mean of the samples
// before the tail. Under "no change" the tail's count is Poisson with mean old·T (inflated
// by Overdispersion for bursty producers), so a tail that is more than ChangeSigmas standard
// deviations and ChangeMinRatio of the old rate away is a step. The tail with the strongest
// evidence (largest z²) is where the step began.
func (e *rateEstimator) add(cfg Config, at time.Time, rate float64) bool {
	if !e.lastAt.IsZero() && !at.After(e.lastAt) {
		return false
	}
	dt := cfg.Interval.Seconds()
	if !e.lastAt.IsZero() {
		dt = math.Min(at.Sub(e.lastAt).Seconds(), cfg.ChangeWindow.Seconds())
	}
	e.lastAt = at
	e.samples = append(e.samples, rateSample{at: at, rate: math.Max(0, rate), dt: dt})
	cut := at.Add(-cfg.RateWindow)
	i := 0
	for i < len(e.samples) && !e.samples[i].at.After(cut) {
		i++
	}
	e.samples = e.samples[i:]

	n := len(e.samples)
	var totN, totT float64
	for _, s := range e.samples {
		totN += s.rate * s.dt
		totT += s.dt
	}
	if totT >= cfg.ChangeWindow.Seconds()*0.99 {
		e.warm = true
	}
	if e.settling {
		if n >= 3 {
			first := e.samples[0]
			restN, restT := totN-first.rate*first.dt, totT-first.dt
			rest := restN / restT
			diff := math.Abs(first.rate - rest)
			sigma := cfg.Overdispersion * math.Sqrt(math.Max(rest, 1/restT)/first.dt)
			if diff/sigma > cfg.ChangeSigmas && diff > cfg.ChangeMinRatio*rest {
				e.samples = e.samples[1:]
				totT = restT
			}
		}
		if totT >= cfg.ChangeWindow.Seconds()*0.99 {
			e.settling = false
		}
		return false
	}
	shortFrom := at.Add(-cfg.ChangeWindow)
	bestK, bestZ2 := 0, 0.0
	var tailN, tailT float64
	for k := 1; k < n; k++ {
		s := e.samples[n-k]
		if !s.at.After(shortFrom) {
			break
		}
		tailN += s.rate * s.dt
		tailT += s.dt
		oldT := totT - tailT
		if oldT < cfg.ChangeWindow.Seconds()*0.99 {
			break // judge a tail only against a full short window of history
		}
		old := (totN - tailN) / oldT
		tail := tailN / tailT
		diff := math.Abs(tail - old)
		sigma := cfg.Overdispersion * math.Sqrt(math.Max(old, 1/oldT)/tailT)
		z := diff / sigma
		if z > cfg.ChangeSigmas && diff > cfg.ChangeMinRatio*old && z*z > bestZ2 {
			bestK, bestZ2 = k, z*z
		}
	}
	if bestK > 0 {
		e.samples = append(e.samples[:0], e.samples[n-bestK:]...)
		e.settling = true
		return true
	}
	return false
}

// estimate returns λ̂ (the mean over the window), the most recent sample's rate and the
// time the samples span (in seconds). now is the decision time: samples that aged out of
// the window since the last add are ignored.
func (e *rateEstimator) estimate(cfg Config, now time.Time) (long, last, span float64) {
	cut := now.Add(-cfg.RateWindow)
	var n, t float64
	for _, s := range e.samples {
		if !s.at.After(cut) {
			continue
		}
		n += s.rate * s.dt
		t += s.dt
		last = s.rate
	}
	if t == 0 {
		return 0, 0, 0
	}
	return n / t, last, t
}
