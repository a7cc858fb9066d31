package sim

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"time"

	"denis.io/fleet/internal/autoscale"
)

// Controller names, as the report and the JSON use them.
const (
	HPACPU     = "hpa-cpu"
	KEDAQL     = "keda-ql"
	KEDAQLRate = "keda-ql-rate"
	Fleet      = "fleet"
	Oracle     = "oracle"
)

// Controllers lists every controller in report order.
func Controllers() []string { return []string{HPACPU, KEDAQL, KEDAQLRate, Fleet, Oracle} }

// controller is one autoscaler under test, attached to a world.
type controller interface {
	// attach schedules the controller's loops; phase in [0, 1) offsets its first tick.
	attach(w *world, phase float64) error
	// stop and resume are the operator's emergency stop (T4) done the way this controller's
	// users do it: a manual scale to 0 for the HPA, paused-replicas for KEDA, the flag for
	// ours (which reads it itself).
	stop(w *world)
	resume(w *world)
}

// ---- the HPA (autoscaling.md §1) ----

// HPASettings are the tunable knobs of the HPA-on-CPU baseline.
type HPASettings struct {
	Min        int
	DownWindow time.Duration
}

// hpa is the horizontal-pod-autoscaler's normalisation: stabilisation, rate policies, clamp
// (the autoscaling/v2 behavior defaults except the scale-down window).
type hpa struct {
	min, max   int
	tolerance  float64
	downWindow time.Duration
	recs       []timedN
	changes    []scaleEvent
}

type timedN struct {
	at time.Duration
	n  int
}

const (
	hpaSync      = 15 * time.Second
	hpaTolerance = 0.1
)

func newHPA(min, max int, downWindow time.Duration) *hpa {
	return &hpa{min: min, max: max, tolerance: hpaTolerance, downWindow: downWindow}
}

// normalize turns a metric proposal into the count to write, as
// stabilizeRecommendationWithBehaviors and convertDesiredReplicasWithBehaviorRate do with
// the default behavior: scale-up no window, max(100 %, 4 pods) per 15 s; scale-down the
// window, 100 % per 15 s.
func (h *hpa) normalize(now time.Duration, current, proposal int) int {
	h.recs = append(h.recs, timedN{now, proposal})
	i := 0
	for i < len(h.recs) && now-h.recs[i].at > h.downWindow {
		i++
	}
	h.recs = h.recs[i:]
	up, down := proposal, proposal
	for _, r := range h.recs {
		if now-r.at <= 0 {
			up = min(up, r.n)
		}
		if now-r.at <= h.downWindow {
			down = max(down, r.n)
		}
	}
	rec := current
	if rec < up {
		rec = up
	}
	if rec > down {
		rec = down
	}
	const period = 15 * time.Second
	added, removed := 0, 0
	for _, c := range h.changes {
		if now-c.at < period {
			if c.to > c.from {
				added += c.to - c.from
			} else {
				removed += c.from - c.to
			}
		}
	}
	if rec > current {
		base := current - added + removed
		lim := max(base+4, int(math.Ceil(float64(base)*2)))
		lim = max(lim, current)
		rec = min(rec, lim)
	} else if rec < current {
		lim := 0 // 100 % per period
		rec = max(rec, lim)
	}
	return max(h.min, min(h.max, rec))
}

// warm makes the HPA look as if it had been running at the initial count already, as a
// long-running HPA would, so its first scale-down waits for the window like any later one.
func (h *hpa) warm(w *world) { h.recs = []timedN{{w.now, w.spec}} }

func (h *hpa) write(w *world, n int, by string) {
	if n == w.spec {
		return
	}
	h.changes = append(h.changes, scaleEvent{at: w.now, from: w.spec, to: n})
	if len(h.changes) > 64 {
		h.changes = h.changes[len(h.changes)-64:]
	}
	w.setSpec(n, by)
}

// hpaCPU is the HPA on CPU utilisation against a 70 % target, with the unready and missing
// pod rules of §1.4.
type hpaCPU struct {
	h       *hpa
	target  float64
	preStop int
}

func newHPACPU(s HPASettings, p Params) *hpaCPU {
	return &hpaCPU{h: newHPA(max(1, s.Min), p.MaxReplicas, s.DownWindow), target: 0.7}
}

func (c *hpaCPU) attach(w *world, phase float64) error {
	c.h.warm(w)
	w.every(time.Duration(phase*float64(hpaSync))+time.Second, hpaSync, w.tr.Duration, func() { c.tick(w) })
	return nil
}

func (c *hpaCPU) tick(w *world) {
	current := w.spec
	if current == 0 {
		return // ScalingDisabled: the implicit maintenance mode
	}
	var sum float64
	counted, missing, unready := 0, 0, 0
	for _, pd := range w.live {
		switch pd.state {
		case podStarting:
			unready++
		case podReady:
			if pd.hasCPU {
				sum += pd.cpu
				counted++
			} else {
				missing++
			}
		}
	}
	if counted == 0 {
		return // no metrics: skip the cycle
	}
	r := sum / float64(counted) / c.target
	proposal := current
	if missing == 0 && unready == 0 {
		if math.Abs(1-r) > c.h.tolerance {
			proposal = int(math.Ceil(r * float64(counted)))
		}
	} else {
		n := counted
		if missing > 0 {
			if r < 1 {
				sum += float64(missing) * 1.0 // missing pods use 100 % of their request
			}
			n += missing
		}
		if unready > 0 && r > 1 {
			n += unready // unready pods use 0
		}
		r2 := sum / float64(n) / c.target
		switch {
		case math.Abs(1-r2) <= c.h.tolerance, r < 1 && r2 > 1, r > 1 && r2 < 1:
		default:
			nr := int(math.Ceil(r2 * float64(n)))
			if !((r2 < 1 && nr > current) || (r2 > 1 && nr < current)) {
				proposal = nr
			}
		}
	}
	c.h.write(w, c.h.normalize(w.now, current, proposal), HPACPU)
}

func (c *hpaCPU) stop(w *world) {
	c.preStop = w.spec
	w.setSpec(0, "operator")
}

func (c *hpaCPU) resume(w *world) { w.setSpec(c.preStop, "operator") }

// ---- KEDA (autoscaling.md §2) ----

// KEDASettings are the tunable knobs of a KEDA ScaledObject baseline. RateTarget 0 means no
// MessageRate trigger.
type KEDASettings struct {
	Target     float64
	RateTarget float64
	Min        int
	DownWindow time.Duration
}

// keda is a ScaledObject with a RabbitMQ QueueLength trigger over HTTP (ready + unacked,
// AverageValue per pod) and optionally a MessageRate trigger, combined by max: the
// activation loop (0 ↔ 1, every 30 s, cooldown 300 s to 0) and the HPA it owns (1 ↔ N,
// every 15 s). A scaler error freezes both (no fallback can lift it from 0).
type keda struct {
	name       string
	s          KEDASettings
	h          *hpa
	p          Params
	lastActive time.Duration
	paused     bool
}

const (
	kedaPolling  = 30 * time.Second
	kedaCooldown = 300 * time.Second
)

func newKEDA(name string, s KEDASettings, p Params) *keda {
	return &keda{name: name, s: s, p: p, h: newHPA(max(1, s.Min), p.MaxReplicas, s.DownWindow)}
}

func (k *keda) attach(w *world, phase float64) error {
	k.h.warm(w)
	w.every(time.Duration(phase*float64(hpaSync))+time.Second, hpaSync, w.tr.Duration, func() { k.hpaTick(w) })
	w.every(time.Duration(phase*float64(kedaPolling))+time.Second, kedaPolling, w.tr.Duration, func() { k.activation(w) })
	return nil
}

// proposal is the HPA's External AverageValue rule.
func (k *keda) proposal(v, target float64, status int) int {
	if status == 0 {
		return int(math.Ceil(v / target))
	}
	r := v / (target * float64(status))
	if math.Abs(1-r) <= k.h.tolerance {
		return status
	}
	return int(math.Ceil(v / target))
}

func (k *keda) hpaTick(w *world) {
	current := w.spec
	smp, ok := w.api()
	if k.paused || current == 0 || !ok {
		return
	}
	total := float64(smp.ready + smp.unacked)
	status, _ := w.podCounts()
	prop := k.proposal(total, k.s.Target, status)
	if k.s.RateTarget > 0 {
		prop = max(prop, k.proposal(smp.publishRate, k.s.RateTarget, status))
	}
	k.h.write(w, k.h.normalize(w.now, current, prop), k.name)
}

func (k *keda) activation(w *world) {
	smp, ok := w.api()
	if k.paused || !ok {
		return
	}
	total := smp.ready + smp.unacked
	active := total > 0 || (k.s.RateTarget > 0 && smp.publishRate > 0)
	switch {
	case active:
		k.lastActive = w.now
		if w.spec == 0 {
			k.h.write(w, max(k.s.Min, 1), k.name)
		}
	case k.s.Min == 0 && w.spec > 0 && w.now-k.lastActive >= kedaCooldown:
		k.h.write(w, 0, k.name)
	}
}

func (k *keda) stop(w *world) {
	k.paused = true
	w.at(w.now+time.Second, func() { w.setSpec(0, "keda-paused-replicas") })
}

func (k *keda) resume(w *world) {
	k.paused = false
	k.h = newHPA(k.h.min, k.h.max, k.h.downWindow) // the HPA is recreated
	k.lastActive = w.now
}

// ---- the oracle ----

// oracle sizes with perfect foresight and no lag: replicas(t) = ceil(λ(t + T_ready) ÷
// (μ·c·ρ*)), re-evaluated every second, with the same ρ* as ours. So that it never strands
// queued work when λ falls (to 0 in T5, or after a stop), it also keeps the pods that drain
// the current backlog within the policy's DrainTime.
type oracle struct {
	cfg  autoscale.Config
	base []float64 // the baseline λ per second, as ours learns it but from the true rate
}

func (o *oracle) attach(w *world, _ float64) error {
	o.prepare(w)
	w.every(0, time.Second, w.tr.Duration, func() { o.tick(w) })
	return nil
}

// prepare computes the baseline rate the oracle's ρ* is relative to: the same exponential
// moving average ours keeps, of the true λ(t).
func (o *oracle) prepare(w *world) {
	n := int((w.tr.Duration+w.p.PodStartMax)/time.Second) + 2
	o.base = make([]float64, n)
	a := 1 - math.Exp(-1/o.cfg.BaselineWindow.Seconds())
	o.base[0] = w.ld.rate(0)
	for i := 1; i < n; i++ {
		o.base[i] = o.base[i-1] + a*(w.ld.rate(time.Duration(i)*time.Second)-o.base[i-1])
	}
}

// count is the oracle's replica count for the load at t.
func (o *oracle) count(w *world, t time.Duration) int {
	if o.base == nil {
		o.prepare(w)
	}
	i := min(int(t/time.Second), len(o.base)-1)
	return o.size(w, w.ld.rate(t), o.base[i], w.tr.MeanServiceAt(w.p, t))
}

// countFor is the count for a steady λ (which is also the baseline) of ordinary tasks.
func (o *oracle) countFor(w *world, lam float64) int {
	return o.size(w, lam, lam, w.tr.MeanServiceAt(w.p, w.tr.Duration))
}

func (o *oracle) size(w *world, lam, base, meanService float64) int {
	n := int(math.Ceil(lam*meanService/(float64(w.p.Concurrency)*o.cfg.TargetUtilizationFor(lam, base)) - 1e-9))
	return max(0, min(w.p.MaxReplicas, n))
}

func (o *oracle) tick(w *world) {
	if w.stopped {
		w.setSpec(0, Oracle)
		return
	}
	n := o.count(w, w.now+w.p.PodStartMean())
	if work := w.depth() + w.unacked; work > 0 {
		s := w.tr.MeanServiceAt(w.p, w.now)
		drain := float64(work) * s / (float64(w.p.Concurrency) * o.cfg.DrainTime.Seconds())
		n = max(n, min(w.p.MaxReplicas, int(math.Ceil(drain-1e-9))))
	}
	w.setSpec(n, Oracle)
}

func (o *oracle) stop(w *world)   { w.setSpec(0, Oracle) }
func (o *oracle) resume(w *world) { o.tick(w) }

// ---- ours ----

// fleetCtl runs autoscale.Loop with the unmodified autoscale.Policy against the simulated
// cluster through the same Signals and Actuator seams the real controller uses.
type fleetCtl struct {
	cfg  autoscale.Config
	log  *slog.Logger
	loop *autoscale.Loop
	// decisions, when non-nil, receives every decision (for --decisions).
	decisions func(autoscale.Decision)
}

// simEpoch is the wall-clock time simulated t = 0 maps to.
func simEpoch() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }

func (f *fleetCtl) attach(w *world, phase float64) error {
	pol, err := autoscale.NewPolicy(f.cfg)
	if err != nil {
		return fmt.Errorf("fleet policy: %w", err)
	}
	log := f.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f.loop = &autoscale.Loop{Policy: pol, Signals: simSignals{w}, Actuator: simActuator{w}, Recorder: simRecorder{w, f.decisions}, Log: log}
	iv := f.cfg.Interval
	w.every(w.p.SampleEvery+time.Duration(phase*float64(iv)), iv, w.tr.Duration, func() {
		// The simulated signals and actuator never fail; a decision is all there is.
		_, _ = f.loop.Step(context.Background())
	})
	return nil
}

func (f *fleetCtl) stop(*world)   {}
func (f *fleetCtl) resume(*world) {}

// simSignals observes the simulated cluster the way the real Signals would: the broker
// through its last management-API sample, pods with their last heartbeat and CPU sample.
type simSignals struct{ w *world }

func (s simSignals) Observe(context.Context) (autoscale.Observation, error) {
	w := s.w
	epoch := simEpoch()
	ts := func(d time.Duration) time.Time { return epoch.Add(d) }
	smp, ok := w.api()
	q := autoscale.QueueSignal{
		Name:        "celery",
		Available:   ok,
		SampledAt:   ts(smp.at),
		Ready:       smp.ready,
		InFlight:    smp.unacked,
		ArrivalRate: smp.publishRate,
		ServiceRate: w.serviceRate(),
		TaskP99:     w.taskP99,
	}
	if !ok {
		q.Error = "management API unreachable"
	}
	obs := autoscale.Observation{Time: ts(w.now), Queues: []autoscale.QueueSignal{q}}
	for _, pd := range w.live {
		ps := autoscale.PodSignal{
			Name:        pd.name,
			Revision:    "stable",
			Ready:       pd.state == podReady,
			Terminating: pd.state == podTerminating,
			Slots:       w.p.Concurrency,
		}
		if pd.canary {
			ps.Revision = "canary"
		}
		if pd.hasHB {
			ps.Active, ps.HeartbeatAt, ps.OldestTask = pd.hbActive, ts(pd.hbAt), pd.hbOldest
		}
		if pd.hasCPU {
			ps.CPU, ps.CPUAt = pd.cpu, ts(pd.cpuAtS)
		}
		obs.Pods = append(obs.Pods, ps)
	}
	all, ready := w.podCounts()
	obs.Workload = autoscale.Workload{
		Name:           "worker",
		SpecReplicas:   w.spec,
		StatusReplicas: all,
		ReadyReplicas:  ready,
		RollingOut:     w.rollingOut(),
		GracePeriod:    w.p.Grace,
	}
	obs.Flags.EmergencyStop = w.stopped
	return obs, nil
}

// simActuator writes the simulated /scale and pod-deletion-cost annotations.
type simActuator struct{ w *world }

func (a simActuator) MarkForDeletion(_ context.Context, pods []string) error {
	rank := map[string]int{}
	for i, n := range pods {
		rank[n] = i + 1
	}
	for _, pd := range a.w.live {
		pd.cost = 0
		if r, ok := rank[pd.name]; ok {
			pd.cost = -1000 + r
		}
	}
	return nil
}

func (a simActuator) Scale(_ context.Context, n int) error {
	a.w.setSpec(n, Fleet)
	return nil
}

// simRecorder keeps what the metrics need from the decisions.
type simRecorder struct {
	w    *world
	tail func(autoscale.Decision)
}

func (r simRecorder) Record(_ context.Context, d autoscale.Decision, _ bool, _ error) {
	if d.State.MetricsUnavailable {
		r.w.rec.unavailable = append(r.w.rec.unavailable, r.w.now)
	}
	if r.tail != nil {
		r.tail(d)
	}
}
