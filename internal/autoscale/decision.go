package autoscale

import (
	"log/slog"
	"time"
)

// Rule names what decided (or limited) a Decision. It is the label of the decisions metric.
type Rule string

// The rules, in the words the logs, Events and metrics use.
const (
	RuleQueueing       Rule = "queueing"         // Little's law: λ ÷ (μ·c·ρ*)
	RuleBacklog        Rule = "backlog"          // queueing plus draining the ready backlog within DrainTime
	RuleInFlight       Rule = "in-flight"        // a slot for every running task
	RuleCPU            Rule = "cpu"              // the HPA formula against CPUTarget
	RuleFromZero       Rule = "scale-from-zero"  // ready messages and no pod
	RuleHysteresis     Rule = "hysteresis"       // need within the dead band: hold
	RuleWarmingUp      Rule = "warming-up"       // too few rate samples to size from λ yet: hold
	RuleStabilization  Rule = "stabilization"    // scale-down waits for its window
	RuleReversalGuard  Rule = "reversal-guard"   // no scale-down within ReversalGuard of a scale-up
	RuleScaleUpLimit   Rule = "scale-up-limit"   // growth capped by the scale-up rate
	RuleScaleDownLimit Rule = "scale-down-limit" // shrinking capped by the scale-down rate
	RuleDrain          Rule = "drain-wait"       // scale-in capped by the pods that can go without killing a task
	RuleMin            Rule = "min"
	RuleMax            Rule = "max"
	RuleFailStatic     Rule = "fail-static"       // signals missing: never scale in
	RuleFloor          Rule = "fail-static-floor" // signals missing: the configured floor
	RuleEmergencyStop  Rule = "emergency-stop"    // paused annotation or FLEET_EMERGENCY_STOP
	RuleManualStop     Rule = "manual-stop"       // someone set 0 while not paused: taken as a stop
	RuleResume         Rule = "resume-ramp"       // back towards the pre-stop count, rate limited
	RuleRollout        Rule = "rollout-freeze"    // no scale-in while rolling out
	RuleOneWriter      Rule = "one-writer"        // another autoscaler targets the workload: refuse
	RuleAsyncOff       Rule = "async-off"         // ASYNC_ENABLED=false
)

// Condition types the decision reports (as status conditions on the workload).
const (
	ConditionMetricsUnavailable = "MetricsUnavailable"
	ConditionStopped            = "Stopped"
	ConditionScalingActive      = "ScalingActive"
)

// Decision is one reconcile's outcome with everything needed to explain and replay it.
type Decision struct {
	Time     time.Time `json:"time"`
	Workload string    `json:"workload"`
	// Current is the observed spec.replicas; Desired is what to write (Desired == Current
	// means no write).
	Current int `json:"current"`
	Desired int `json:"desired"`
	// Rule is the limiting rule; Reason says it in a sentence.
	Rule   Rule   `json:"rule"`
	Reason string `json:"reason"`
	// Refused is true when the policy will not act at all (another writer).
	Refused bool `json:"refused,omitempty"`
	// Victims are the pods to mark cheapest to delete (pod-deletion-cost) before lowering
	// replicas, best victim first; set only on a scale-in.
	Victims    []string    `json:"victims,omitempty"`
	Inputs     Inputs      `json:"inputs"`
	Needs      Needs       `json:"needs"`
	State      State       `json:"state"`
	Conditions []Condition `json:"conditions"`
}

// Inputs are the aggregated signals the decision used.
type Inputs struct {
	Ready    int `json:"ready"`
	InFlight int `json:"in_flight"`
	Held     int `json:"held"`
	// Lambda is the estimated arrival rate λ̂; LambdaShort the most recent sample's rate
	// (a scale-up goes to the need of the larger of the two).
	Lambda      float64 `json:"lambda"`
	LambdaShort float64 `json:"lambda_short"`
	// LambdaBase is the learned baseline rate the planned step is relative to.
	LambdaBase float64 `json:"lambda_base"`
	// Mu is the per-slot service rate used (weighted over queues by their arrivals).
	Mu float64 `json:"mu"`
	// Slots is the concurrency per pod used.
	Slots int `json:"slots"`
	// ReadyPods and BusySlots come from the pods and their heartbeats.
	ReadyPods int `json:"ready_pods"`
	BusySlots int `json:"busy_slots"`
	// CPU is the mean CPU ÷ request over ready pods with a sample.
	CPU float64 `json:"cpu"`
	// TargetUtilization is ρ* for Lambda.
	TargetUtilization float64 `json:"target_utilization"`
	// SignalAge is the age of the oldest queue sample, in seconds.
	SignalAge float64 `json:"signal_age_s"`
}

// Needs are the candidate pod counts (real numbers, before rounding) the rules produced.
type Needs struct {
	Queueing float64 `json:"queueing"`
	Backlog  float64 `json:"backlog"`
	InFlight float64 `json:"in_flight"`
	CPU      float64 `json:"cpu"`
	// Need is the largest of them (and 1 when scaling from zero).
	Need float64 `json:"need"`
}

// State is the policy's own state at the decision.
type State struct {
	Stopped    bool   `json:"stopped"`
	StopReason string `json:"stop_reason,omitempty"`
	// PreStop is the count before the current or last stop; Resuming is true while ramping
	// back to it.
	PreStop            int  `json:"pre_stop,omitempty"`
	Resuming           bool `json:"resuming,omitempty"`
	RollingOut         bool `json:"rolling_out"`
	MetricsUnavailable bool `json:"metrics_unavailable"`
	AsyncOff           bool `json:"async_off,omitempty"`
}

// Condition is a status condition in the Kubernetes style.
type Condition struct {
	Type    string `json:"type"`
	Status  bool   `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// Changed reports whether the decision writes a new replica count.
func (d Decision) Changed() bool { return d.Desired != d.Current && !d.Refused }

// Condition returns the condition of the given type.
func (d Decision) Condition(typ string) (Condition, bool) {
	for _, c := range d.Conditions {
		if c.Type == typ {
			return c, true
		}
	}
	return Condition{}, false
}

// LogValue renders the decision's inputs and outcome as one log record's attributes.
func (d Decision) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Time("at", d.Time),
		slog.String("workload", d.Workload),
		slog.Int("current", d.Current),
		slog.Int("desired", d.Desired),
		slog.String("rule", string(d.Rule)),
		slog.String("reason", d.Reason),
		slog.Int("ready", d.Inputs.Ready),
		slog.Int("in_flight", d.Inputs.InFlight),
		slog.Float64("lambda", round3(d.Inputs.Lambda)),
		slog.Float64("mu", round3(d.Inputs.Mu)),
		slog.Float64("cpu", round3(d.Inputs.CPU)),
		slog.Float64("rho_target", round3(d.Inputs.TargetUtilization)),
		slog.Float64("need", round3(d.Needs.Need)),
		slog.Bool("stopped", d.State.Stopped),
		slog.Bool("rolling_out", d.State.RollingOut),
		slog.Bool("metrics_unavailable", d.State.MetricsUnavailable),
		slog.Any("victims", d.Victims),
	)
}
