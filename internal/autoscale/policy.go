package autoscale

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Policy is the scaling policy: a deterministic function of the observations it is given and
// its own small state (rate history, recent recommendations and writes, stop state). It does
// no I/O and reads no clock; Decide assumes that its previous decision was applied (the next
// observation's spec.replicas corrects it if not). A Policy is not safe for concurrent use:
// one Loop owns it.
type Policy struct {
	cfg Config
	st  policyState
}

type policyState struct {
	started    bool
	firstAt    time.Time
	rates      map[string]*rateEstimator
	mu         map[string]float64
	p99        map[string]time.Duration
	needs      []timedNeed   // settled needs within ScaleDownWindow, for scale-down
	changes    []timedChange // replica changes this policy decided, for the rate limits
	lastUpAt   time.Time
	lastDownAt time.Time
	// pendingUp is the count a scale-up was heading for when the rate limit capped it.
	pendingUp int
	// lastChangeAt is when the rate estimator last saw a step: scale-down recommendations
	// from before it are void.
	lastChangeAt time.Time
	// base is the learned baseline arrival rate λ_base (an exponential moving average of
	// λ̂ with BaselineWindow as time constant); baseAt its last update.
	base        float64
	baseAt      time.Time
	prevCurrent int
	lastDesired int
	stopped     bool
	manualStop  bool
	preStop     int
	resuming    bool
}

type timedNeed struct {
	at   time.Time
	need float64
}

type timedChange struct {
	at       time.Time
	from, to int
}

// NewPolicy returns a policy with cfg, or the reason cfg is invalid.
func NewPolicy(cfg Config) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Policy{cfg: cfg, st: policyState{
		rates: map[string]*rateEstimator{},
		mu:    map[string]float64{},
		p99:   map[string]time.Duration{},
	}}, nil
}

// Config returns the policy's configuration.
func (p *Policy) Config() Config { return p.cfg }

// signals is an Observation reduced to what the rules need.
type signals struct {
	queueOK     bool
	missing     []string
	ready       int
	inFlight    int
	held        int
	lambda      float64 // long window, all queues
	lambdaShort float64
	lambdaKnown bool    // every queue's estimator is warm
	changed     bool    // a queue's estimator saw a step in this observation
	settling    bool    // a queue's estimator is still settling after a step
	slotsLong   float64 // busy slots the arrivals need at full utilisation: Σ λ_q/μ_q
	backlog     float64 // Σ ready_q / (μ_q · DrainTime): slots to drain the backlog in time
	muKnown     bool
	slots       float64 // concurrency per pod
	readyPods   int
	pods        int // not terminating
	busy        int
	busyKnown   bool
	cpuSum      float64
	cpuPods     int
	taskP99     time.Duration
	age         float64
}

// Decide returns the decision for obs and advances the policy's state as if it were applied.
func (p *Policy) Decide(obs Observation) Decision {
	st := &p.st
	now := obs.Time
	current := max(0, obs.Workload.SpecReplicas)
	if !st.started {
		st.started, st.firstAt = true, now
		st.prevCurrent, st.lastDesired = current, current
	}
	sig := p.aggregate(obs)
	if sig.changed {
		st.lastChangeAt, st.needs = now, nil
	}
	if sig.queueOK && sig.lambdaKnown {
		if st.baseAt.IsZero() {
			st.base = sig.lambda
		} else {
			a := 1 - math.Exp(-now.Sub(st.baseAt).Seconds()/p.cfg.BaselineWindow.Seconds())
			st.base += a * (sig.lambda - st.base)
		}
		st.baseAt = now
	}
	d := Decision{Time: now, Workload: obs.Workload.Name, Current: current, Desired: current}
	d.Inputs = Inputs{
		Ready: sig.ready, InFlight: sig.inFlight, Held: sig.held,
		Lambda: sig.lambda, LambdaShort: sig.lambdaShort, LambdaBase: st.base,
		Slots: int(math.Round(sig.slots)), ReadyPods: sig.readyPods, BusySlots: sig.busy,
		TargetUtilization: p.rho(sig.lambda, obs.Flags.AsyncOff), SignalAge: round3(sig.age),
	}
	if sig.slotsLong > 0 {
		d.Inputs.Mu = sig.lambda / sig.slotsLong
	}
	if sig.cpuPods > 0 {
		d.Inputs.CPU = sig.cpuSum / float64(sig.cpuPods)
	}
	d.State.RollingOut = obs.Workload.RollingOut
	d.State.MetricsUnavailable = !sig.queueOK
	d.State.AsyncOff = obs.Flags.AsyncOff

	p.decide(&d, obs, sig)

	// Bookkeeping: what the next decision needs to know.
	if d.Changed() {
		st.changes = append(st.changes, timedChange{at: now, from: current, to: d.Desired})
		switch {
		case d.Desired > current:
			st.lastUpAt = now
		case d.Rule != RuleEmergencyStop && d.Rule != RuleManualStop:
			st.lastDownAt = now // a stop is not a scale-down the flap guard protects
		}
	}
	keep := max(p.cfg.ScaleUpPeriod, p.cfg.ScaleDownPeriod)
	i := 0
	for i < len(st.changes) && now.Sub(st.changes[i].at) >= keep {
		i++
	}
	st.changes = st.changes[i:]
	st.lastDesired = d.Desired
	st.prevCurrent = current
	d.State.Stopped = st.stopped || st.manualStop
	d.State.PreStop = st.preStop
	d.State.Resuming = st.resuming
	d.Conditions = p.conditions(d, sig)
	return d
}

// decide applies the rules in order of precedence.
func (p *Policy) decide(d *Decision, obs Observation, sig signals) {
	cfg, st := p.cfg, &p.st
	now, current := obs.Time, d.Current

	// One writer: another HPA or ScaledObject on the same workload means two controllers
	// fighting over /scale. Refuse to act at all and say why.
	if len(obs.Workload.OtherWriters) > 0 {
		d.Refused, d.Rule = true, RuleOneWriter
		d.Reason = fmt.Sprintf("refusing to scale: %s also target(s) the workload; remove it or this autoscaler (one writer on /scale)",
			strings.Join(obs.Workload.OtherWriters, ", "))
		return
	}

	// Emergency stop: 0 at once, and nothing but 0 while it holds.
	if obs.Workload.Paused || obs.Flags.EmergencyStop {
		if !st.stopped {
			st.stopped = true
			if !st.manualStop {
				st.preStop = current
			}
			st.manualStop, st.resuming = false, false
		}
		var why []string
		if obs.Workload.Paused {
			w := "annotation fleet.denis.io/paused=true"
			if obs.Workload.PausedReason != "" {
				w += " (" + obs.Workload.PausedReason + ")"
			}
			why = append(why, w)
		}
		if obs.Flags.EmergencyStop {
			why = append(why, "flag FLEET_EMERGENCY_STOP=true")
		}
		d.State.StopReason = strings.Join(why, " and ")
		d.Desired, d.Rule = 0, RuleEmergencyStop
		d.Reason = fmt.Sprintf("emergency stop by %s: 0 replicas, held until cleared; will ramp back to %d", d.State.StopReason, st.preStop)
		return
	}
	if st.stopped {
		st.stopped = false
		st.resuming = st.preStop > 0
	}

	// A manual scale to 0 while not paused is an operator's stop (the HPA's "implicit
	// maintenance mode"), not drift to revert.
	if !st.manualStop && current == 0 && st.prevCurrent > 0 && st.lastDesired != 0 {
		st.manualStop, st.preStop, st.resuming = true, st.prevCurrent, false
	}
	if st.manualStop {
		if current == 0 {
			d.Desired, d.Rule = 0, RuleManualStop
			d.State.StopReason = "spec.replicas set to 0 by hand"
			d.Reason = fmt.Sprintf("spec.replicas was set to 0 by someone else while not paused (was %d): taken as an emergency stop and not reverted; scale up by hand, or set and clear the paused annotation to ramp back", st.preStop)
			return
		}
		st.manualStop = false
	}

	need, needRule := p.needs(d, obs, sig)

	// Resume after a stop: ramp back to the pre-stop count in steps the scale-up rate allows,
	// not straight to what the backlog that built up during the stop would ask for.
	if st.resuming {
		if current >= st.preStop {
			st.resuming = false
		} else {
			target := min(st.preStop, cfg.MaxReplicas)
			if lim := p.upLimit(now, current); target > lim {
				target = max(lim, current) // wait for the next period, never step back
			}
			d.Desired, d.Rule = target, RuleResume
			d.Reason = fmt.Sprintf("resuming after a stop: ramping towards the pre-stop count %d at the scale-up rate (now %d)", st.preStop, target)
			return
		}
	}

	// Scale-down looks at the mean need over the stabilisation window, counting only needs
	// sized from a settled rate estimate.
	sized := sig.queueOK && sig.lambdaKnown && sig.muKnown
	if sized && !sig.settling {
		p.record(now, need)
	}
	// Flap guard: within ReversalGuard of a scale-down, noise must not undo it. A scale-up
	// then needs a wider band, unless the arrival rate stepped since or a backlog builds.
	band := cfg.ScaleUpBand
	backlogBuilds := float64(sig.ready) >= (1-cfg.StepDepthShare)*cfg.DepthTarget
	guarded := !st.lastDownAt.IsZero() && now.Sub(st.lastDownAt) < cfg.ReversalGuard &&
		!st.lastChangeAt.After(st.lastDownAt) && !backlogBuilds
	if guarded {
		band += cfg.ReversalBand
	}
	if current == 0 || (st.pendingUp > current && need > float64(current)) {
		// The first pod, or finishing a scale-up the rate limit capped: no dead band.
		band = 0
	}
	if sized && sig.slotsLong/sig.slots > float64(current) {
		// Overloaded: the arrivals exceed what the pods serve flat out, so the queue grows
		// without bound; no dead band.
		band = 0
	}
	target, rule := current, RuleHysteresis
	reason := ""
	switch {
	case need > float64(current)+band:
		// Fast scale-up: straight to the need, no window.
		target, rule = int(math.Ceil(need-1e-9)), needRule
		reason = fmt.Sprintf("%s need %.2f pods > current %d + band %.1f: scale up to %d", needRule, need, current, band, target)
	case obs.Flags.AsyncOff && int(math.Ceil(need+cfg.ScaleDownBand-1e-9)) < current:
		target, rule = max(0, int(math.Ceil(need+cfg.ScaleDownBand-1e-9))), RuleAsyncOff
		reason = fmt.Sprintf("ASYNC_ENABLED=false: need %.2f pods (no step headroom, no stabilisation): scale down to %d", need, target)
	default:
		mean, ok := p.windowMean(now)
		cand := current
		if ok {
			cand = max(0, int(math.Ceil(mean+cfg.ScaleDownBand-1e-9)))
		}
		switch {
		case sig.queueOK && !sized:
			rule = RuleWarmingUp
			reason = fmt.Sprintf("λ (%.0f s of samples) or μ not measured yet: not sizing down", p.lambdaSpan(obs))
		case cand >= current:
			reason = fmt.Sprintf("%s need %.2f pods within the dead band of current %d (+%.1f pods, or a mean need over %v above %d): hold",
				needRule, need, current, band, cfg.ScaleDownWindow, current-1)
		case now.Sub(st.firstAt) < cfg.ScaleDownWindow:
			rule = RuleStabilization
			reason = fmt.Sprintf("observing for less than the %v stabilisation window: hold", cfg.ScaleDownWindow)
		case now.Sub(st.lastChangeAt) < cfg.ScaleDownWindow:
			rule = RuleStabilization
			reason = fmt.Sprintf("the arrival rate stepped %v ago: scale-down to %d waits for %v of the new rate", now.Sub(st.lastChangeAt).Round(time.Second), cand, cfg.ScaleDownWindow)
		case !st.lastUpAt.IsZero() && now.Sub(st.lastUpAt) < cfg.ReversalGuard:
			rule = RuleReversalGuard
			reason = fmt.Sprintf("scale-down to %d waits %v after the last scale-up (%v ago) so it is not a reversal", cand, cfg.ReversalGuard, now.Sub(st.lastUpAt).Round(time.Second))
		case !st.lastDownAt.IsZero() && now.Sub(st.lastDownAt) < cfg.ScaleDownPeriod:
			rule = RuleScaleDownLimit
			reason = fmt.Sprintf("one scale-down step per %v: the last was %v ago", cfg.ScaleDownPeriod, now.Sub(st.lastDownAt).Round(time.Second))
		default:
			target, rule = cand, needRule
			reason = fmt.Sprintf("%s need %.2f pods, %.2f on average over the last %v: scale down to %d", needRule, need, mean, cfg.ScaleDownWindow, cand)
		}
	}

	// Fail-static: with broker signals missing, never scale in; hold the floor, from zero too.
	if !sig.queueOK {
		if target <= current {
			target, rule = current, RuleFailStatic
		}
		if target < cfg.FailStaticFloor {
			target, rule = cfg.FailStaticFloor, RuleFloor
		}
		reason = fmt.Sprintf("queue signals missing (%s): no scale-in, floor %d; %s", strings.Join(sig.missing, "; "), cfg.FailStaticFloor, reason)
	}
	// Rollout: while old and new pods coexist, capacity is in flux; never scale in.
	if obs.Workload.RollingOut && target < current {
		target, rule = current, RuleRollout
		reason = "rolling out: no scale-in until the rollout is done; " + reason
	}
	// Rate limits.
	st.pendingUp = 0
	if target > current {
		if lim := p.upLimit(now, current); target > lim {
			st.pendingUp = target
			target, rule = max(lim, current), RuleScaleUpLimit
			reason += fmt.Sprintf("; capped at %d by the scale-up rate", target)
		}
	} else if target < current {
		if lim := p.downLimit(now, current); target < lim {
			target, rule = lim, RuleScaleDownLimit
			reason += fmt.Sprintf("; capped at %d by the scale-down step", lim)
		}
	}
	// Clamp.
	if target > cfg.MaxReplicas {
		target, rule = cfg.MaxReplicas, RuleMax
		reason += fmt.Sprintf("; clamped to max %d", cfg.MaxReplicas)
	}
	if target < cfg.MinReplicas {
		target, rule = cfg.MinReplicas, RuleMin
		reason += fmt.Sprintf("; clamped to min %d", cfg.MinReplicas)
	}
	// Drain-aware scale-in: only as many pods as can go without killing a running task,
	// idle (or not yet started) pods first.
	if target < current {
		remove := sig.pods - target // pods that must go (spec may exceed the pods that exist)
		if remove > 0 {
			victims, eligible := p.victims(obs, sig)
			if eligible < remove {
				target = min(current, sig.pods-eligible)
				remove = eligible
				rule = RuleDrain
				reason += fmt.Sprintf("; only %d pod(s) can go without killing a running task: %d", eligible, target)
			}
			if target < current && remove > 0 {
				d.Victims = victims[:remove]
			}
		}
	}
	d.Desired, d.Rule, d.Reason = target, rule, reason
}

// needs computes the candidate pod counts (recorded in d.Needs), the largest of them and
// the rule that produced it.
func (p *Policy) needs(d *Decision, obs Observation, sig signals) (need float64, rule Rule) {
	cfg := p.cfg
	asyncOff := obs.Flags.AsyncOff
	var queueing, backlog float64
	if sig.queueOK && sig.muKnown {
		if sig.lambdaKnown {
			queueing = sig.slotsLong / (sig.slots * p.rho(sig.lambda, asyncOff))
		}
		backlog = queueing + sig.backlog/sig.slots
	}
	inFlight := float64(sig.busy) / sig.slots
	if !sig.busyKnown {
		inFlight = 0
		if sig.queueOK {
			inFlight = float64(sig.inFlight) / sig.slots
		}
	}
	cpu := sig.cpuSum / cfg.CPUTarget
	switch {
	case sig.queueOK && sig.busyKnown && sig.busy == 0 && sig.ready == 0 && sig.inFlight == 0:
		cpu = 0 // idle pods' CPU is not demand: it must not hold the last pod when there is no work
	case sig.queueOK && float64(sig.ready) >= (1-cfg.StepDepthShare)*cfg.DepthTarget:
		// With a backlog every slot is busy and CPU says so whatever the count; the backlog
		// term sizes the fleet then, and CPU would only feed on itself (the HPA's runaway).
		cpu = 0
	}
	d.Needs = Needs{Queueing: round3(queueing), Backlog: round3(backlog), InFlight: round3(inFlight), CPU: round3(cpu)}

	need, rule = queueing, RuleQueueing
	if math.Ceil(backlog-1e-9) > math.Ceil(queueing-1e-9) {
		need, rule = backlog, RuleBacklog
	} else {
		need = math.Max(need, backlog)
	}
	if inFlight > need {
		need, rule = inFlight, RuleInFlight
	}
	if cpu > need {
		need, rule = cpu, RuleCPU
	}
	if d.Current == 0 && sig.queueOK && sig.ready > 0 && need < 1 {
		need, rule = 1, RuleFromZero
	}
	if asyncOff && rule == RuleQueueing {
		rule = RuleAsyncOff
	}
	d.Needs.Need = round3(need)
	return need, rule
}

// rho is ρ* for lambda; with ASYNC_ENABLED=false no step is coming, so the most the pods
// may be loaded.
func (p *Policy) rho(lambda float64, asyncOff bool) float64 {
	if asyncOff {
		return p.cfg.MaxUtilization
	}
	return p.cfg.TargetUtilizationFor(lambda, p.st.base)
}

// aggregate reduces obs to signals and feeds the rate estimators.
func (p *Policy) aggregate(obs Observation) signals {
	cfg, st := p.cfg, &p.st
	now := obs.Time
	s := signals{queueOK: len(obs.Queues) > 0, lambdaKnown: true, muKnown: true}
	if len(obs.Queues) == 0 {
		s.missing = append(s.missing, "no queue observed")
	}
	for _, q := range obs.Queues {
		e := st.rates[q.Name]
		if e == nil {
			e = &rateEstimator{}
			st.rates[q.Name] = e
		}
		e.lastSeen = now
		age := now.Sub(q.SampledAt)
		switch {
		case !q.Available:
			s.queueOK = false
			msg := q.Name + ": broker unreachable"
			if q.Error != "" {
				msg = q.Name + ": " + q.Error
			}
			s.missing = append(s.missing, msg)
			continue
		case q.SampledAt.IsZero() || age > cfg.StaleAfter:
			s.queueOK = false
			s.missing = append(s.missing, fmt.Sprintf("%s: sample %v old", q.Name, age.Round(time.Second)))
			continue
		}
		s.age = math.Max(s.age, age.Seconds())
		if e.add(cfg, q.SampledAt, q.ArrivalRate) {
			s.changed = true
		}
		if q.ServiceRate > 0 {
			st.mu[q.Name] = q.ServiceRate
		}
		if q.TaskP99 > 0 {
			st.p99[q.Name] = q.TaskP99
		}
		s.taskP99 = max(s.taskP99, st.p99[q.Name])
		s.ready += q.Ready
		s.inFlight += q.InFlight
		s.held += q.Held
		long, last, _ := e.estimate(cfg, now)
		s.lambda += long
		s.lambdaShort += last
		if !e.warm {
			s.lambdaKnown = false
		}
		if e.settling {
			s.settling = true
		}
		mu := st.mu[q.Name]
		if mu <= 0 {
			s.muKnown = false
			continue
		}
		s.slotsLong += long / mu
		s.backlog += float64(q.Ready) / (mu * cfg.DrainTime.Seconds())
	}
	for name, e := range st.rates {
		if now.Sub(e.lastSeen) > cfg.RateWindow {
			delete(st.rates, name) // a queue no longer observed
		}
	}
	var slotSum, slotPods int
	for _, pod := range obs.Pods {
		if pod.Terminating {
			continue
		}
		s.pods++
		if pod.Slots > 0 {
			slotSum += pod.Slots
			slotPods++
		}
		if pod.Ready {
			s.readyPods++
			if !pod.CPUAt.IsZero() && now.Sub(pod.CPUAt) <= 2*cfg.StaleAfter+time.Minute {
				s.cpuSum += pod.CPU
				s.cpuPods++
			}
		}
		if fresh(now, pod.HeartbeatAt, cfg.StaleAfter) {
			s.busy += pod.Active
			s.busyKnown = true
		}
	}
	s.slots = float64(cfg.Concurrency)
	if slotPods > 0 {
		s.slots = float64(slotSum) / float64(slotPods)
	}
	return s
}

// lambdaSpan is the seconds of rate samples of the least-known queue, for explanations.
func (p *Policy) lambdaSpan(obs Observation) float64 {
	least := math.Inf(1)
	for _, q := range obs.Queues {
		if e := p.st.rates[q.Name]; e != nil {
			_, _, span := e.estimate(p.cfg, obs.Time)
			least = math.Min(least, span)
		}
	}
	if math.IsInf(least, 1) {
		return 0
	}
	return least
}

// record stores a need for the stabilisation window and forgets those older than it.
func (p *Policy) record(now time.Time, need float64) {
	st := &p.st
	st.needs = append(st.needs, timedNeed{at: now, need: need})
	i := 0
	for i < len(st.needs) && now.Sub(st.needs[i].at) > p.cfg.ScaleDownWindow {
		i++
	}
	st.needs = st.needs[i:]
}

// windowMean is the mean need within the stabilisation window (false: none recorded).
func (p *Policy) windowMean(now time.Time) (float64, bool) {
	var sum float64
	n := 0
	for _, r := range p.st.needs {
		if now.Sub(r.at) <= p.cfg.ScaleDownWindow {
			sum += r.need
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return sum / float64(n), true
}

// upLimit is the most replicas the scale-up rate allows now: the larger of +ScaleUpPods and
// +ScaleUpPercent % of the count at the start of the period (the HPA's rule).
func (p *Policy) upLimit(now time.Time, current int) int {
	base := current
	for _, c := range p.st.changes {
		if now.Sub(c.at) < p.cfg.ScaleUpPeriod {
			base -= c.to - c.from
		}
	}
	base = max(0, base)
	return max(base+p.cfg.ScaleUpPods, int(math.Ceil(float64(base)*(1+float64(p.cfg.ScaleUpPercent)/100))))
}

// downLimit is the fewest replicas the scale-down step allows now: the larger change of
// -ScaleDownPods and -ScaleDownPercent % of the count at the start of the period.
func (p *Policy) downLimit(now time.Time, current int) int {
	base := current
	for _, c := range p.st.changes {
		if now.Sub(c.at) < p.cfg.ScaleDownPeriod {
			base -= c.to - c.from
		}
	}
	base = max(0, base)
	lim := min(base-p.cfg.ScaleDownPods, int(math.Floor(float64(base)*(1-float64(p.cfg.ScaleDownPercent)/100))))
	return max(0, lim)
}

// victims ranks the pods that may go without killing a running task: pods not ready yet
// first, then idle pods, then (only when tasks are known to finish well within the grace
// period) busy pods, least busy first. It returns the ranked names and their number.
func (p *Policy) victims(obs Observation, sig signals) ([]string, int) {
	cfg := p.cfg
	grace := obs.Workload.GracePeriod
	if grace <= 0 {
		grace = cfg.GracePeriod
	}
	limit := time.Duration(cfg.BusyScaleInShare * float64(grace))
	allowBusy := sig.taskP99 > 0 && sig.taskP99 <= limit
	type cand struct {
		name   string
		tier   int
		active int
		oldest time.Duration
	}
	var cs []cand
	for _, pod := range obs.Pods {
		if pod.Terminating {
			continue
		}
		hb := fresh(obs.Time, pod.HeartbeatAt, cfg.StaleAfter)
		switch {
		case !pod.Ready && (!hb || pod.Active == 0):
			cs = append(cs, cand{pod.Name, 0, 0, 0})
		case hb && pod.Active == 0:
			cs = append(cs, cand{pod.Name, 1, 0, 0})
		case hb && allowBusy && pod.OldestTask <= limit:
			cs = append(cs, cand{pod.Name, 2, pod.Active, pod.OldestTask})
		}
	}
	sort.Slice(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.tier != b.tier {
			return a.tier < b.tier
		}
		if a.active != b.active {
			return a.active < b.active
		}
		if a.oldest != b.oldest {
			return a.oldest < b.oldest
		}
		return a.name < b.name
	})
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.name
	}
	return names, len(cs)
}

// conditions are the status conditions the decision reports.
func (p *Policy) conditions(d Decision, sig signals) []Condition {
	mu := Condition{Type: ConditionMetricsUnavailable, Status: !sig.queueOK, Reason: "SignalsFresh"}
	if !sig.queueOK {
		mu.Reason, mu.Message = "BrokerSignalsMissing", strings.Join(sig.missing, "; ")
	}
	stop := Condition{Type: ConditionStopped, Status: d.State.Stopped, Reason: "NotStopped"}
	switch {
	case d.Rule == RuleEmergencyStop:
		stop.Reason, stop.Message = "EmergencyStop", d.State.StopReason
	case d.Rule == RuleManualStop:
		stop.Reason, stop.Message = "ManualScaleToZero", d.State.StopReason
	}
	active := Condition{Type: ConditionScalingActive, Status: !d.Refused, Reason: "ValidPolicy"}
	if d.Refused {
		active.Reason, active.Message = "AnotherWriter", d.Reason
	}
	return []Condition{mu, stop, active}
}

func fresh(now, at time.Time, staleAfter time.Duration) bool {
	return !at.IsZero() && now.Sub(at) <= staleAfter
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
