package autoscale

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Config holds every knob of the policy. DefaultConfig documents each default and the
// reasoning behind it; Validate checks the ranges.
type Config struct {
	// MinReplicas and MaxReplicas clamp every decision except an emergency stop (always 0).
	// MinReplicas may be 0: the policy then scales to zero when there is no work and back
	// from zero as soon as ready messages appear.
	MinReplicas int
	MaxReplicas int

	// Interval is the reconcile period. It bounds the stop latency (a stop is acted on at the
	// next reconcile) and the detection delay of a load step.
	Interval time.Duration

	// Concurrency is the task slots per pod (c) assumed when no pod reports its own, e.g.
	// when scaling from zero. The worker's own default is 8.
	Concurrency int

	// TargetUtilization fixes ρ*, the busy fraction of the slots the queueing need plans for.
	// 0 (the default) derives it from the numbers below; see TargetUtilizationFor.
	TargetUtilization float64
	// StepFactor is the sudden load step the fleet must absorb without the queue passing
	// DepthTarget (the seed's go/no-go uses 2×).
	StepFactor float64
	// DepthTarget is the queue depth (ready + delivered but not started) that must not be
	// reached: the seed's "queue length stable < 100".
	DepthTarget float64
	// StepDepthShare is the share of DepthTarget a step may use up deterministically. The rest
	// absorbs the randomness of arrivals and service times during the reaction time.
	StepDepthShare float64
	// PodStartTime is the time from a replica write to a new pod consuming (schedule, image
	// pull, boot, readiness).
	PodStartTime time.Duration
	// DetectionDelay is the time the policy needs to see a step (the rate change detector's
	// window plus a poll).
	DetectionDelay time.Duration
	// BaselineWindow is the time constant of the learned baseline arrival rate λ_base (the
	// "normal" load the step is relative to; see TargetUtilizationFor).
	BaselineWindow time.Duration
	// MinUtilization and MaxUtilization clamp the derived ρ*.
	MinUtilization float64
	MaxUtilization float64

	// DrainTime is the time within which the backlog term plans to empty the ready backlog.
	DrainTime time.Duration
	// CPUTarget is the CPU need's target: mean pod CPU ÷ request (the seed's "CPU < 70 %").
	CPUTarget float64

	// ScaleUpBand and ScaleDownBand are the dead band, in pods: the fleet grows only when the
	// need exceeds the current count by more than ScaleUpBand; it shrinks to
	// ceil(mean need over ScaleDownWindow + ScaleDownBand) when that is below the current
	// count.
	ScaleUpBand   float64
	ScaleDownBand float64

	// Scale-up rate limit: within any ScaleUpPeriod the count may grow by the larger of
	// ScaleUpPods and ScaleUpPercent % of the count at the period's start (the HPA default).
	ScaleUpPods    int
	ScaleUpPercent int
	ScaleUpPeriod  time.Duration
	// ScaleDownWindow is the stabilisation window: a scale-down happens only after the
	// policy has watched a settled arrival rate for this long (since its start and since the
	// last step), and goes to the mean need over it.
	ScaleDownWindow time.Duration
	// Scale-down rate limit: within any ScaleDownPeriod the count may shrink by the larger of
	// ScaleDownPods and ScaleDownPercent % of the count at the period's start.
	ScaleDownPods    int
	ScaleDownPercent int
	ScaleDownPeriod  time.Duration
	// ReversalGuard is the time after a scale-up during which no scale-down happens (a
	// reversal, or flap, is a direction change within 10 min of the previous change).
	ReversalGuard time.Duration
	// ReversalBand widens ScaleUpBand within ReversalGuard of a scale-down, unless the
	// arrival rate stepped since or the ready backlog has used the depth's noise reserve
	// ((1 − StepDepthShare) × DepthTarget): noise must not undo a scale-down.
	ReversalBand float64

	// RateWindow is the arrival-rate estimator's window; ChangeWindow its short window. When
	// the short window's mean differs from the older samples' by more than ChangeSigmas
	// standard deviations of a Poisson count inflated by Overdispersion, and by more than
	// ChangeMinRatio of the old rate, the estimator forgets the older samples (a step).
	RateWindow     time.Duration
	ChangeWindow   time.Duration
	ChangeSigmas   float64
	Overdispersion float64
	ChangeMinRatio float64

	// StaleAfter is the age beyond which a broker sample, heartbeat or CPU sample counts as
	// missing.
	StaleAfter time.Duration
	// FailStaticFloor is the count held while queue signals are missing (0: no floor). It
	// works from zero replicas too.
	FailStaticFloor int

	// GracePeriod is the pods' terminationGracePeriodSeconds when the workload does not
	// report it.
	GracePeriod time.Duration
	// BusyScaleInShare: a busy pod may be chosen for scale-in (when no idle one is left) only
	// if the p99 task duration and its oldest running task are within this share of the grace
	// period, so that the worker's graceful SIGTERM finishes them.
	BusyScaleInShare float64
}

// DefaultConfig returns the defaults, with the reasoning:
//
//   - MinReplicas 1, MaxReplicas 50: one warm pod (a cold start costs PodStartTime of
//     latency); 0 is allowed. FailStaticFloor 1 keeps one consumer through a broker API
//     outage even from zero.
//   - Interval 5 s: the emergency-stop goal is "0 within one reconcile, ≤ 5 s"; the
//     RabbitMQ management API samples every 5 s, so polling faster sees nothing new.
//   - ρ* is derived (TargetUtilization 0) from StepFactor 2, DepthTarget 100,
//     StepDepthShare 0.8, PodStartTime 30 s and DetectionDelay 10 s, i.e. from
//     autoscaling.md §6.4: after a step to k·λ, the backlog grows at (k·λ − C) for the
//     reaction time T = DetectionDelay + PodStartTime, so keeping it under Q needs a ready
//     capacity C ≥ k·λ − Q/T, i.e. ρ* = λ/C = 1/(k − Q/(λ·T)). With λ = 10/s, T = 40 s and
//     Q = 0.8 × 100 = 80 that is ρ* = 0.56 and 9 pods of 2/s, the doc's 9 pods; the other 20
//     messages, and the first new pods being ready after 20 s rather than 30, absorb the
//     Poisson noise of the ~800 arrivals in the reaction time.
//     MaxUtilization 0.7 keeps pod CPU under 70 % (≈ 0.8 CPU per busy slot) and queueing
//     delay low when λ is so small that any ρ would survive a step; MinUtilization 0.3
//     stops a huge fleet from being planned for a tiny λ with a long start time.
//   - DrainTime 60 s: a backlog of 100 adds 100 ÷ (μ·c·60) pods, so a growing queue adds
//     pods before it reaches the target, and a big backlog (after a stop) drains in about a
//     minute of full capacity.
//   - CPUTarget 0.7: the seed's "worker CPU < 70 %", with the HPA's formula.
//   - ScaleUpBand 1 and ScaleDownBand 0 pods: the fleet grows when the need exceeds it by
//     more than a pod and shrinks when the mean need over the window is a pod below it, so
//     the dead band is two pods wide in real units (not 10 % of a ratio, which is several
//     pods on a big fleet and less than one on a small one). With λ over 2 min and μ over
//     5 min the need's noise at λ = 10/s is about 0.4 pod, so noise alone rarely crosses
//     it; ρ* already carries the step headroom, so sitting up to a pod under the need costs
//     some of the depth margin, not the goal.
//   - Scale-up: 100 % or 4 pods per 15 s, no stabilisation (the HPA default): a 2× step is
//     one write.
//   - ScaleDownWindow 2 min, at most one step of 50 % (or 1 pod) per minute, ReversalGuard
//     10 min: a halving is one write after two minutes of consistently lower need, and no
//     scale-down follows a scale-up within the 10 minutes that would count as a flap. The
//     cost is holding a scale-up for 10 minutes; the HPA's default window is 5.
//   - RateWindow 2 min, ChangeWindow 20 s, ChangeSigmas 3, Overdispersion 2,
//     ChangeMinRatio 0.2: the long window keeps the need steady; a 2× step is detected on
//     the first one or two samples after it (the 10 s DetectionDelay), a ±20 % wobble is not.
//   - BaselineWindow 1 h: the planned step is k× the normal load, learned as a one-hour
//     moving average of λ̂ (autoscaling.md §6.4: "a real deployment must re-derive ρ* from
//     its own λ0").
//   - StaleAfter 15 s: three missed polls.
//   - GracePeriod 30 s (Kubernetes' default), BusyScaleInShare 0.5.
func DefaultConfig() Config {
	return Config{
		MinReplicas:       1,
		MaxReplicas:       50,
		Interval:          5 * time.Second,
		Concurrency:       8,
		TargetUtilization: 0,
		StepFactor:        2,
		DepthTarget:       100,
		StepDepthShare:    0.8,
		PodStartTime:      30 * time.Second,
		DetectionDelay:    10 * time.Second,
		BaselineWindow:    time.Hour,
		MinUtilization:    0.3,
		MaxUtilization:    0.7,
		DrainTime:         60 * time.Second,
		CPUTarget:         0.7,
		ScaleUpBand:       1,
		ScaleDownBand:     0,
		ScaleUpPods:       4,
		ScaleUpPercent:    100,
		ScaleUpPeriod:     15 * time.Second,
		ScaleDownWindow:   2 * time.Minute,
		ScaleDownPods:     1,
		ScaleDownPercent:  50,
		ScaleDownPeriod:   time.Minute,
		ReversalGuard:     10 * time.Minute,
		ReversalBand:      1,
		RateWindow:        2 * time.Minute,
		ChangeWindow:      20 * time.Second,
		ChangeSigmas:      3,
		Overdispersion:    2,
		ChangeMinRatio:    0.2,
		StaleAfter:        15 * time.Second,
		FailStaticFloor:   1,
		GracePeriod:       30 * time.Second,
		BusyScaleInShare:  0.5,
	}
}

// ReactionTime is DetectionDelay + PodStartTime: how long a step runs on the capacity that
// was ready before it.
func (c Config) ReactionTime() time.Duration { return c.DetectionDelay + c.PodStartTime }

// TargetUtilizationFor returns ρ* for an arrival rate of lambda messages per second when
// the normal (baseline) rate is base: the fixed TargetUtilization if set, otherwise
//
//	ρ* = λ / (λ + (k−1)·min(λ, base) − Q/T)
//
// with k = StepFactor, Q = StepDepthShare × DepthTarget and T = ReactionTime, clamped to
// [MinUtilization, MaxUtilization]. At or below the baseline this is autoscaling.md §6.4's
// 1/(k − Q/(λ·T)): the ready capacity absorbs a sudden k× step for T while the backlog stays
// under Q. Above the baseline the step planned for is k× the normal load, not k× the peak:
// a fleet already at 2λ0 keeps room for another λ0, not for 4λ0. A λ so small that a step
// cannot fill Q within T gets MaxUtilization.
func (c Config) TargetUtilizationFor(lambda, base float64) float64 {
	if c.TargetUtilization > 0 {
		return c.TargetUtilization
	}
	t := c.ReactionTime().Seconds()
	if lambda <= 0 || t <= 0 {
		return c.MaxUtilization
	}
	capacity := lambda + (c.StepFactor-1)*math.Min(lambda, math.Max(base, 0)) - c.StepDepthShare*c.DepthTarget/t
	if capacity <= lambda/c.MaxUtilization {
		return c.MaxUtilization
	}
	return math.Min(c.MaxUtilization, math.Max(c.MinUtilization, lambda/capacity))
}

// Validate reports every knob that is out of range.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.MinReplicas >= 0, "MinReplicas must be ≥ 0, got %d", c.MinReplicas)
	check(c.MaxReplicas >= 1 && c.MaxReplicas >= c.MinReplicas, "MaxReplicas must be ≥ 1 and ≥ MinReplicas, got %d", c.MaxReplicas)
	check(c.Interval > 0, "Interval must be positive, got %v", c.Interval)
	check(c.Concurrency >= 1, "Concurrency must be ≥ 1, got %d", c.Concurrency)
	check(c.TargetUtilization >= 0 && c.TargetUtilization <= 1, "TargetUtilization must be in [0, 1], got %v", c.TargetUtilization)
	check(c.StepFactor >= 1, "StepFactor must be ≥ 1, got %v", c.StepFactor)
	check(c.DepthTarget > 0, "DepthTarget must be positive, got %v", c.DepthTarget)
	check(c.StepDepthShare > 0 && c.StepDepthShare <= 1, "StepDepthShare must be in (0, 1], got %v", c.StepDepthShare)
	check(c.PodStartTime >= 0 && c.DetectionDelay >= 0, "PodStartTime and DetectionDelay must not be negative")
	check(c.BaselineWindow > 0, "BaselineWindow must be positive, got %v", c.BaselineWindow)
	check(c.MinUtilization > 0 && c.MinUtilization <= c.MaxUtilization && c.MaxUtilization <= 1,
		"need 0 < MinUtilization ≤ MaxUtilization ≤ 1, got %v and %v", c.MinUtilization, c.MaxUtilization)
	check(c.DrainTime > 0, "DrainTime must be positive, got %v", c.DrainTime)
	check(c.CPUTarget > 0 && c.CPUTarget <= 1, "CPUTarget must be in (0, 1], got %v", c.CPUTarget)
	check(c.ScaleUpBand >= 0 && c.ScaleDownBand >= 0, "ScaleUpBand and ScaleDownBand must not be negative")
	check(c.ScaleUpPods >= 1 || c.ScaleUpPercent >= 1, "ScaleUpPods or ScaleUpPercent must allow growth")
	check(c.ScaleUpPods >= 0 && c.ScaleUpPercent >= 0 && c.ScaleUpPeriod > 0, "scale-up policy must not be negative and its period positive")
	check(c.ScaleDownPods >= 1 || c.ScaleDownPercent >= 1, "ScaleDownPods or ScaleDownPercent must allow shrinking")
	check(c.ScaleDownPods >= 0 && c.ScaleDownPercent >= 0 && c.ScaleDownPercent <= 100 && c.ScaleDownPeriod > 0,
		"scale-down policy must be within range and its period positive")
	check(c.ScaleDownWindow >= 0 && c.ReversalGuard >= 0 && c.ReversalBand >= 0, "ScaleDownWindow, ReversalGuard and ReversalBand must not be negative")
	check(c.RateWindow > 0 && c.ChangeWindow > 0 && c.ChangeWindow < c.RateWindow, "need 0 < ChangeWindow < RateWindow")
	check(c.ChangeSigmas > 0 && c.Overdispersion >= 1 && c.ChangeMinRatio >= 0, "change detector: ChangeSigmas > 0, Overdispersion ≥ 1, ChangeMinRatio ≥ 0")
	check(c.StaleAfter > 0, "StaleAfter must be positive, got %v", c.StaleAfter)
	check(c.FailStaticFloor >= 0 && c.FailStaticFloor <= c.MaxReplicas, "FailStaticFloor must be in [0, MaxReplicas], got %d", c.FailStaticFloor)
	check(c.GracePeriod >= 0, "GracePeriod must not be negative")
	check(c.BusyScaleInShare >= 0 && c.BusyScaleInShare <= 1, "BusyScaleInShare must be in [0, 1], got %v", c.BusyScaleInShare)
	if len(errs) > 0 {
		return fmt.Errorf("autoscale config: %w", errors.Join(errs...))
	}
	return nil
}
