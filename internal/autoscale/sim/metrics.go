package sim

import (
	"math"
	"time"
)

// recorder collects the raw measurements of a run (autoscaling.md §6.3).
type recorder struct {
	tr          *Trace
	react       time.Duration
	qmax        int
	above       float64
	lastDepth   int
	lastAt      time.Duration
	secMax      []int // per-second maximum depth
	filled      int
	waitAt      []float64
	waits       []float64
	cpus        []float64
	killed      int
	killedAt    []time.Duration
	lastKilled  int
	podSeconds  float64
	events      []scaleEvent
	unavailable []time.Duration // decisions of ours that reported MetricsUnavailable
	capShort    float64         // T3: seconds with ready capacity below demand, outside the reaction time
	coverAt     time.Duration   // T3: when the stable pods covered the demand after the rollback
}

func (r *recorder) init(tr *Trace) {
	r.tr = tr
	r.secMax = make([]int, int(tr.Duration/time.Second)+2)
	r.coverAt = -1
}

// depth records the queue depth (ready + delivered-not-started) after a change.
func (r *recorder) depth(w *world) {
	d := w.depth()
	now := w.now
	if r.lastDepth > 100 {
		r.above += (now - r.lastAt).Seconds()
	}
	sec := min(int(now/time.Second), len(r.secMax)-1)
	for r.filled < sec {
		r.filled++
		r.secMax[r.filled] = max(r.secMax[r.filled], r.lastDepth)
	}
	r.secMax[sec] = max(r.secMax[sec], d)
	r.qmax = max(r.qmax, d)
	r.lastDepth, r.lastAt = d, now
	if r.killed != r.lastKilled {
		for ; r.lastKilled < r.killed; r.lastKilled++ {
			r.killedAt = append(r.killedAt, now)
		}
	}
}

func (r *recorder) wait(at, d time.Duration) {
	r.waitAt = append(r.waitAt, at.Seconds())
	r.waits = append(r.waits, d.Seconds())
}

// cpu records a pod's CPU sample unless it falls in the reaction time after a load increase.
func (r *recorder) cpu(at time.Duration, v float64) {
	for _, inc := range r.tr.Increases {
		if at >= inc && at < inc+r.react {
			return
		}
	}
	r.cpus = append(r.cpus, v)
}

// Result is one run's metrics: one trace, one controller, one seed.
type Result struct {
	Trace      string
	Controller string
	Seed       uint64

	Qmax              float64
	SecondsAbove100   float64
	WaitP99           float64
	WorkerMinutes     float64
	WorkerMinutesVsOr float64
	ScaleEvents       float64
	Reversals         float64
	// TTR is NaN when the trace has no change point.
	TTR            float64
	CPUP95         float64
	KilledInFlight float64
	// StopLatency is NaN when the trace has no stop.
	StopLatency    float64
	StopViolations float64

	// Per-trace checks of the goals table (NaN where they do not apply).
	ScaleUps          float64 // writes that raised the count
	ScaleDowns        float64 // writes that lowered it
	RampEvents        float64 // T2: writes before the abort
	RampReversals     float64 // T2: reversals before the abort
	AbortDown         float64 // T2: seconds from the abort to the λ0 level (+1 pod)
	KilledAfterAbort  float64 // T2
	CapacityShort     float64 // T3: seconds of ready capacity < demand outside T_react
	RollbackCover     float64 // T3: seconds from the rollback until stable pods cover demand
	OutageScaleIns    float64 // T5: scale-ins during outages
	UnavailableAfter  float64 // T5 (ours): seconds from an outage's start to MetricsUnavailable
	OutageFloor       float64 // T5: seconds from an outage that starts at 0 to ≥ 1 replica
	ResumeFirst       float64 // T4: the first count written after the resume
	PreStop           float64 // T4: the count before the stop
	ResumeOvershoot   float64 // T4: writes after the resume above the pre-stop count before reaching it
	EventsAfterWarmup float64 // T0: writes after the first 5 minutes

	events []scaleEvent
}

// finish computes the metrics from the recorder at the end of a run.
func (w *world) finish(trace, ctl string, seed uint64, initial int) Result {
	r := &w.rec
	end := w.tr.Duration
	w.now = end
	r.depth(w) // close the depth integral and the per-second series
	for _, pd := range w.live {
		r.podSeconds += (end - pd.created).Seconds()
	}
	// Tasks still waiting at the end count with their wait so far.
	for i := w.head; i < len(w.ready); i++ {
		if t := w.ready[i]; !t.began {
			r.wait(end, end-t.published)
		}
	}
	nan := math.NaN()
	res := Result{
		Trace: trace, Controller: ctl, Seed: seed,
		Qmax:            float64(r.qmax),
		SecondsAbove100: math.Round(r.above*10) / 10,
		WaitP99:         percentile(append([]float64(nil), r.waits...), 0.99),
		WorkerMinutes:   r.podSeconds / 60,
		ScaleEvents:     float64(len(r.events)),
		TTR:             nan,
		CPUP95:          percentile(r.cpus, 0.95),
		KilledInFlight:  float64(r.killed),
		StopLatency:     nan,
		RampEvents:      nan, RampReversals: nan, AbortDown: nan, KilledAfterAbort: nan,
		CapacityShort: nan, RollbackCover: nan,
		OutageScaleIns: nan, UnavailableAfter: nan, OutageFloor: nan,
		ResumeFirst: nan, PreStop: nan, ResumeOvershoot: nan,
		events: r.events,
	}
	for _, e := range r.events {
		if e.to > e.from {
			res.ScaleUps++
		} else {
			res.ScaleDowns++
		}
		if e.at >= 5*time.Minute {
			res.EventsAfterWarmup++
		}
	}
	res.Reversals = float64(reversals(r.events, w.tr.Stops, end))

	// Time to recover, the worst over the change points.
	if len(w.tr.Changes) > 0 {
		worst := 0.0
		for _, cp := range w.tr.Changes {
			worst = math.Max(worst, r.ttr(cp, end))
		}
		res.TTR = worst
	}

	specAt := func(t time.Duration) int {
		n := initial
		for _, e := range r.events {
			if e.at > t {
				break
			}
			n = e.to
		}
		return n
	}

	// Emergency stops.
	if len(w.tr.Stops) > 0 {
		lat, viol := 0.0, 0
		for _, s := range w.tr.Stops {
			l := (s.To - s.From).Seconds()
			if specAt(s.From) == 0 {
				l = 0
			} else {
				for _, e := range r.events {
					if e.at >= s.From && e.at < s.To && e.to == 0 {
						l = (e.at - s.From).Seconds()
						break
					}
				}
			}
			lat = math.Max(lat, l)
			for _, e := range r.events {
				if e.at >= s.From && e.at < s.To && e.to > e.from {
					viol++
				}
			}
			pre := specAt(s.From - time.Nanosecond)
			res.PreStop = float64(pre)
			res.ResumeOvershoot = 0
			first := true
			for _, e := range r.events {
				if e.at < s.To {
					continue
				}
				if first {
					res.ResumeFirst = float64(e.to)
					first = false
				}
				if e.from < pre && e.to > pre {
					res.ResumeOvershoot++
				}
				if e.to >= pre {
					break
				}
			}
		}
		res.StopLatency, res.StopViolations = lat, float64(viol)
	}

	// T2: the ramp and the abort.
	if w.tr.AbortAt > 0 {
		var ramp []scaleEvent
		for _, e := range r.events {
			if e.at < w.tr.AbortAt {
				ramp = append(ramp, e)
			}
		}
		res.RampEvents = float64(len(ramp))
		res.RampReversals = float64(reversals(ramp, nil, w.tr.AbortAt))
		level := (&oracle{cfg: FleetConfig(w.p)}).countFor(w, w.p.Lambda0) + 1
		res.AbortDown = (end - w.tr.AbortAt).Seconds()
		if specAt(w.tr.AbortAt) <= level {
			res.AbortDown = 0
		} else {
			for _, e := range r.events {
				if e.at >= w.tr.AbortAt && e.to <= level {
					res.AbortDown = (e.at - w.tr.AbortAt).Seconds()
					break
				}
			}
		}
		k := 0
		for _, at := range r.killedAt {
			if at >= w.tr.AbortAt {
				k++
			}
		}
		res.KilledAfterAbort = float64(k)
	}

	// T3: capacity against demand.
	if w.tr.Canary != nil {
		res.CapacityShort = r.capShort
		res.RollbackCover = (end - w.tr.Rollback).Seconds()
		if r.coverAt >= 0 {
			res.RollbackCover = (r.coverAt - w.tr.Rollback).Seconds()
		}
	}

	// T5: outages.
	if len(w.tr.Outages) > 0 {
		ins, floor := 0, nan
		unavail := 0.0
		for _, o := range w.tr.Outages {
			for _, e := range r.events {
				if o.contains(e.at) && e.to < e.from {
					ins++
				}
			}
			if specAt(o.From) == 0 {
				floor = (o.To - o.From).Seconds()
				for _, e := range r.events {
					if e.at >= o.From && e.at < o.To && e.to >= 1 {
						floor = (e.at - o.From).Seconds()
						break
					}
				}
			}
			if ctl == Fleet {
				lat := (o.To - o.From).Seconds()
				for _, at := range r.unavailable {
					if at >= o.From {
						lat = math.Min(lat, (at - o.From).Seconds())
						break
					}
				}
				unavail = math.Max(unavail, lat)
			}
		}
		res.OutageScaleIns, res.OutageFloor = float64(ins), floor
		if ctl == Fleet {
			res.UnavailableAfter = unavail
		}
	}
	return res
}

// reversals counts direction changes less than 10 minutes after the previous change.
// Writes during an emergency stop are left out, and the stop and its resume start a new
// chain: stopping is not flapping.
func reversals(events []scaleEvent, stops []Window, end time.Duration) int {
	n, prevDir := 0, 0
	var prevAt time.Duration
	inStop := func(t time.Duration) bool {
		for _, s := range stops {
			if s.contains(t) {
				return true
			}
		}
		return false
	}
	lastStop := -1
	for _, e := range events {
		if e.at >= end {
			break
		}
		if inStop(e.at) {
			prevDir = 0
			continue
		}
		for i, s := range stops {
			if e.at >= s.To && i > lastStop {
				lastStop = i
				prevDir = 0
			}
		}
		dir := 1
		if e.to < e.from {
			dir = -1
		}
		if prevDir != 0 && dir != prevDir && e.at-prevAt < 10*time.Minute {
			n++
		}
		prevDir, prevAt = dir, e.at
	}
	return n
}

// ttr is the time from cp until the depth stays < 100 and the rolling 30 s wait p99 stays
// within the pre-change band (p99 of the 5 minutes before, + 2 s) for 120 s. It is capped at
// the end of the trace.
func (r *recorder) ttr(cp, end time.Duration) float64 {
	cpS, endS := int(cp/time.Second), int(end/time.Second)
	var before []float64
	for i, at := range r.waitAt {
		if at >= cp.Seconds()-300 && at < cp.Seconds() {
			before = append(before, r.waits[i])
		}
	}
	band := percentile(before, 0.99) + 2
	// Sliding window over the waits started in (s-30, s].
	lo, hi, n, above := 0, 0, 0, 0
	for lo < len(r.waitAt) && r.waitAt[lo] <= float64(cpS-30) {
		lo++
	}
	hi = lo
	run := 0
	for s := cpS; s < endS; s++ {
		for hi < len(r.waitAt) && r.waitAt[hi] <= float64(s) {
			n++
			if r.waits[hi] > band {
				above++
			}
			hi++
		}
		for lo < hi && r.waitAt[lo] <= float64(s-30) {
			n--
			if r.waits[lo] > band {
				above--
			}
			lo++
		}
		ok := s < len(r.secMax) && r.secMax[s] < 100 && (n == 0 || above <= n-int(math.Ceil(0.99*float64(n))))
		if ok {
			run++
			if run >= 120 {
				return float64(s - 119 - cpS)
			}
		} else {
			run = 0
		}
	}
	return float64(endS - cpS)
}
