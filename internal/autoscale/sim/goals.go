package sim

import (
	"fmt"
	"math"
	"time"
)

// Goal is one check of autoscaling.md §6.5's goals table for our controller, on the median
// over seeds.
type Goal struct {
	Trace string
	What  string
	Got   string
	Pass  bool
}

// CheckGoals evaluates every row of the goals table that the rows (from Summarize) cover.
// T1's cost goal compares ours with each baseline that also kept Qmax < 100.
func CheckGoals(s Setup, rows []Row) []Goal {
	find := func(trace, ctl string) (Result, bool) {
		for _, r := range rows {
			if r.Trace == trace && r.Controller == ctl {
				return r.Median, true
			}
		}
		return Result{}, false
	}
	var gs []Goal
	add := func(trace, what string, got float64, pass bool) {
		gs = append(gs, Goal{Trace: trace, What: what, Got: fmtNum(got), Pass: pass && !math.IsNaN(got)})
	}
	cfg := s.Fleet
	tReady := s.Params.PodStartMean()

	if f, ok := find("T0", Fleet); ok {
		add("T0", "0 reversals in 60 min", f.Reversals, f.Reversals == 0)
		add("T0", "≤ 2 scale events after the 5 min warm-up", f.EventsAfterWarmup, f.EventsAfterWarmup <= 2)
		add("T0", "CPU p95 < 70 %", f.CPUP95, f.CPUP95 < 0.70)
		add("T0", "worker-minutes ≤ 1.15 × oracle", f.WorkerMinutesVsOr, f.WorkerMinutesVsOr <= 1.15)
	}
	if f, ok := find("T1", Fleet); ok {
		add("T1", "Qmax < 100", f.Qmax, f.Qmax < 100)
		add("T1", "0 s above 100", f.SecondsAbove100, f.SecondsAbove100 == 0)
		add("T1", "TTR ≤ 90 s", f.TTR, f.TTR <= 90)
		add("T1", "≤ 3 scale-up events for the step up", f.ScaleUps, f.ScaleUps <= 3)
		add("T1", "≤ 3 scale-down events for the step down", f.ScaleDowns, f.ScaleDowns <= 3)
		add("T1", "0 reversals", f.Reversals, f.Reversals == 0)
		add("T1", "CPU p95 < 70 % outside the first T_react", f.CPUP95, f.CPUP95 < 0.70)
		add("T1", "worker-minutes ≤ 1.10 × oracle", f.WorkerMinutesVsOr, f.WorkerMinutesVsOr <= 1.10)
		for _, b := range []string{HPACPU, KEDAQL, KEDAQLRate} {
			r, ok := find("T1", b)
			if !ok || r.Qmax >= 100 {
				continue
			}
			add("T1", fmt.Sprintf("worker-minutes ≤ %s's %.1f (it kept Qmax < 100)", b, r.WorkerMinutes), f.WorkerMinutes, f.WorkerMinutes <= r.WorkerMinutes)
		}
	}
	if f, ok := find("T2", Fleet); ok {
		add("T2", "Qmax < 100 in every phase", f.Qmax, f.Qmax < 100)
		add("T2", "wait p99 ≤ 10 s", f.WaitP99, f.WaitP99 <= 10)
		add("T2", "scale events ≤ phases + 2 = 8", f.ScaleEvents, f.ScaleEvents <= 8)
		add("T2", "0 reversals during the ramp", f.RampReversals, f.RampReversals == 0)
		add("T2", "down to the λ0 level (+1 pod) within 10 min of the abort (s)", f.AbortDown, f.AbortDown <= 600)
		add("T2", "0 tasks killed in flight after the abort", f.KilledAfterAbort, f.KilledAfterAbort == 0)
	}
	if f, ok := find("T3", Fleet); ok {
		add("T3", "ready capacity ≥ demand after T_react (s short)", f.CapacityShort, f.CapacityShort == 0)
		add("T3", fmt.Sprintf("stable covers demand within T_ready + 15 s = %v after the rollback (s)", tReady+15*time.Second), f.RollbackCover, f.RollbackCover <= (tReady+15*time.Second).Seconds())
		add("T3", "Qmax < 100", f.Qmax, f.Qmax < 100)
		add("T3", "no flip-flop: 0 reversals", f.Reversals, f.Reversals == 0)
	}
	if f, ok := find("T4", Fleet); ok {
		add("T4", fmt.Sprintf("stop latency ≤ 1 reconcile (%v)", cfg.Interval), f.StopLatency, f.StopLatency <= cfg.Interval.Seconds())
		add("T4", "0 stop violations", f.StopViolations, f.StopViolations == 0)
		add("T4", fmt.Sprintf("first write after the resume ≤ the scale-up step from 0 (%d)", cfg.ScaleUpPods), f.ResumeFirst, f.ResumeFirst <= float64(cfg.ScaleUpPods))
		add("T4", "ramp to the pre-stop count without jumping past it", f.ResumeOvershoot, f.ResumeOvershoot == 0)
	}
	if f, ok := find("T5", Fleet); ok {
		add("T5", "0 scale-in actions during an outage", f.OutageScaleIns, f.OutageScaleIns == 0)
		add("T5", fmt.Sprintf("outage from 0 replicas: at the floor (%d) within one poll (s)", cfg.FailStaticFloor), f.OutageFloor, f.OutageFloor <= cfg.Interval.Seconds())
		add("T5", "MetricsUnavailable=True within one poll (s)", f.UnavailableAfter, f.UnavailableAfter <= cfg.Interval.Seconds())
	}
	if f, ok := find("T6", Fleet); ok {
		add("T6", "0 tasks killed in flight", f.KilledInFlight, f.KilledInFlight == 0)
		add("T6", "drain overhead: worker-minutes vs oracle (reported)", f.WorkerMinutesVsOr, true)
	}
	return gs
}

func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v == math.Trunc(v) && math.Abs(v) < 1e6:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) < 10:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.1f", v)
}
