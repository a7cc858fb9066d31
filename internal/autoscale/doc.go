// Package autoscale owns the fleet autoscaler's decisions: what it observes (Observation and
// its signals), the pure scaling Policy with its Config, the Decision it explains itself with,
// and the two seams every deployment of the policy shares: Signals (where observations come
// from) and Actuator (where decisions go). Loop joins them for the real controller; the
// simulator in package sim drives the very same Policy and Loop against simulated signals and
// a simulated /scale subresource.
//
// The policy sizes a worker Deployment from broker truth and worker load:
//
//	desired = max(queueing need, backlog drain, in-flight floor, CPU need)
//
// where the queueing need follows Little's law (N = λ ÷ (μ · c · ρ*)), the backlog drain adds
// the pods that empty the ready backlog within Config.DrainTime, the in-flight floor keeps a
// slot for every running task, and the CPU need is the HPA formula against Config.CPUTarget.
// Around that sit hysteresis in pods, fast scale-up, scale-down after a stabilisation window
// by a bounded step, fail-static on missing signals, a sticky emergency stop, drain-aware
// scale-in, rollout awareness and a one-writer check. See Config for every knob and why its
// default is what it is.
package autoscale
