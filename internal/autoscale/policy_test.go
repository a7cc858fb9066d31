package autoscale

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// The tests drive the policy with a tiny fluid world: λ messages per second of 2 s tasks
// (μ = 0.5 per slot) on pods of 4 slots; the decision's count is applied before the next
// observation, every 5 s, as the loop would.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testConfig() Config {
	c := DefaultConfig()
	c.Concurrency = 4
	c.MinReplicas = 0
	return c
}

// world is the observed state; obs renders it.
type world struct {
	now      time.Duration
	spec     int
	lambda   float64
	mu       float64
	ready    int
	busy     int // total running tasks; -1: spread λ/μ over the pods
	cpu      float64
	queueOK  bool
	stale    bool
	stop     bool
	paused   bool
	asyncOff bool
	rolling  bool
	writers  []string
	p99      time.Duration
	// pods overrides the generated pods.
	pods []PodSignal
}

func newWorld(spec int, lambda float64) *world {
	return &world{spec: spec, lambda: lambda, mu: 0.5, busy: -1, queueOK: true, p99: 9 * time.Second}
}

func (w *world) obs() Observation {
	now := t0.Add(w.now)
	sampled := now
	if w.stale {
		sampled = now.Add(-time.Minute)
	}
	q := QueueSignal{Name: "celery", Available: w.queueOK, SampledAt: sampled, Ready: w.ready,
		ArrivalRate: w.lambda, ServiceRate: w.mu, TaskP99: w.p99}
	if !w.queueOK {
		q.Error = "connection refused"
	}
	busy := w.busy
	if busy < 0 {
		busy = int(math.Round(w.lambda / w.mu))
	}
	q.InFlight = busy
	pods := w.pods
	if pods == nil {
		for i := 0; i < w.spec; i++ {
			a := 0
			if w.spec > 0 {
				a = min(4, busy/w.spec)
				if i < busy%w.spec {
					a = min(4, a+1)
				}
			}
			cpu := w.cpu
			if cpu == 0 {
				cpu = 0.05 + 0.75*float64(a)/4
			}
			pods = append(pods, PodSignal{Name: fmt.Sprintf("w-%02d", i), Ready: true, Slots: 4, Active: a,
				HeartbeatAt: now, OldestTask: time.Second, CPU: cpu, CPUAt: now})
		}
	}
	return Observation{
		Time:   now,
		Queues: []QueueSignal{q},
		Pods:   pods,
		Workload: Workload{Name: "worker", SpecReplicas: w.spec, StatusReplicas: w.spec, Paused: w.paused,
			RollingOut: w.rolling, OtherWriters: w.writers, GracePeriod: 30 * time.Second},
		Flags: Flags{EmergencyStop: w.stop, AsyncOff: w.asyncOff},
	}
}

// run decides every 5 s for d, applying each decision, and returns the decisions.
func run(t *testing.T, p *Policy, w *world, d time.Duration) []Decision {
	t.Helper()
	var ds []Decision
	for end := w.now + d; w.now < end; w.now += 5 * time.Second {
		dec := p.Decide(w.obs())
		ds = append(ds, dec)
		if dec.Changed() {
			w.spec = dec.Desired
		}
	}
	return ds
}

func newPolicy(t *testing.T, cfg Config) *Policy {
	t.Helper()
	p, err := NewPolicy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func last(ds []Decision) Decision { return ds[len(ds)-1] }

func writes(ds []Decision) (n int) {
	for _, d := range ds {
		if d.Changed() {
			n++
		}
	}
	return n
}

func rules(ds []Decision) map[Rule]int {
	m := map[Rule]int{}
	for _, d := range ds {
		m[d.Rule]++
	}
	return m
}

func TestConfig(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	cases := []struct {
		lambda, base, want float64
	}{
		{10, 10, 1 / (2 - 80.0/(10*40))}, // §6.4 at λ0: 0.556, 9 pods of 2/s
		{20, 10, 0.7},                    // at 2λ0 the planned step is λ0: capped by MaxUtilization
		{15, 10, 15.0 / (15 + 10 - 2)},   // between: 0.652
		{0.5, 0.5, 0.7},                  // a step cannot fill the depth: MaxUtilization
		{0, 0, 0.7},
	}
	for _, tc := range cases {
		if got := c.TargetUtilizationFor(tc.lambda, tc.base); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("ρ*(%v, base %v) = %v, want %v", tc.lambda, tc.base, got, tc.want)
		}
	}
	fixed := c
	fixed.TargetUtilization = 0.6
	if got := fixed.TargetUtilizationFor(10, 10); got != 0.6 {
		t.Errorf("fixed ρ* = %v", got)
	}
	bad := []func(*Config){
		func(c *Config) { c.MinReplicas = -1 },
		func(c *Config) { c.MaxReplicas = 0 },
		func(c *Config) { c.Interval = 0 },
		func(c *Config) { c.MinUtilization = 0.8 },
		func(c *Config) { c.ChangeWindow = c.RateWindow },
		func(c *Config) { c.ScaleDownPercent = 101 },
		func(c *Config) { c.FailStaticFloor = 99 },
	}
	for i, f := range bad {
		c := DefaultConfig()
		f(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("bad config %d accepted", i)
		}
		if _, err := NewPolicy(c); err == nil {
			t.Errorf("NewPolicy accepted bad config %d", i)
		}
	}
}

// TestRules checks each sizing and limiting rule on its own.
func TestRules(t *testing.T) {
	cases := []struct {
		name  string
		cfg   func(*Config)
		setup func(w *world)
		warm  time.Duration // run before the checked decision
		check func(t *testing.T, ds []Decision, w *world)
	}{
		{"queueing: Little's law at ρ*", nil, func(w *world) { w.spec = 4 }, time.Minute, func(t *testing.T, ds []Decision, w *world) {
			// 10/s ÷ (0.5 × 4 × 0.556) = 9 pods.
			if w.spec != 9 || rules(ds)[RuleQueueing] == 0 {
				t.Fatalf("spec %d, rules %v", w.spec, rules(ds))
			}
			d := last(ds)
			if d.Inputs.Lambda != 10 || d.Inputs.Mu != 0.5 || d.Inputs.Slots != 4 || math.Abs(d.Needs.Queueing-9) > 0.01 {
				t.Fatalf("inputs %+v needs %+v", d.Inputs, d.Needs)
			}
		}},
		{"backlog: drains the ready backlog within DrainTime", nil, func(w *world) { w.spec = 9; w.ready = 600 }, 30 * time.Second, func(t *testing.T, ds []Decision, w *world) {
			// 9 + 600 ÷ (0.5 × 4 × 60) = 14 pods.
			d := ds[len(ds)-1]
			if w.spec != 14 || !slices.ContainsFunc(ds, func(d Decision) bool { return d.Rule == RuleBacklog && d.Changed() }) {
				t.Fatalf("spec %d, last %s %s", w.spec, d.Rule, d.Reason)
			}
		}},
		{"in-flight: never below a slot for every running task", nil, func(w *world) { w.spec = 12; w.lambda = 1; w.busy = 24; w.cpu = 0.2 }, 10 * time.Minute, func(t *testing.T, ds []Decision, w *world) {
			// λ needs 1 pod, but 24 tasks run (long ones): 6 pods.
			if w.spec != 6 || last(ds).Needs.InFlight != 6 || rules(ds)[RuleInFlight] == 0 {
				t.Fatalf("spec %d rules %v needs %+v", w.spec, rules(ds), last(ds).Needs)
			}
		}},
		{"cpu: the HPA formula against 70 %", nil, func(w *world) { w.spec = 6; w.lambda = 2; w.cpu = 0.95 }, 5 * time.Second, func(t *testing.T, ds []Decision, w *world) {
			// 6 × 0.95 ÷ 0.7 = 8.1 → 9.
			if w.spec != 9 || ds[0].Rule != RuleCPU {
				t.Fatalf("spec %d rules %v", w.spec, rules(ds))
			}
		}},
		{"hysteresis: a pod of need above the count is held", nil, func(w *world) { w.spec = 9; w.lambda = 11 }, 5 * time.Minute, func(t *testing.T, ds []Decision, w *world) {
			// need 11 ÷ (2 × ρ*(11)) = 9.9: within the band of 9 + 1.
			if writes(ds) != 0 || last(ds).Rule != RuleHysteresis {
				t.Fatalf("%d writes, last %s: %s", writes(ds), last(ds).Rule, last(ds).Reason)
			}
		}},
		{"max clamps", func(c *Config) { c.MaxReplicas = 12 }, func(w *world) { w.spec = 9; w.lambda = 30 }, time.Minute, func(t *testing.T, ds []Decision, w *world) {
			if w.spec != 12 || rules(ds)[RuleMax] == 0 {
				t.Fatalf("spec %d rules %v", w.spec, rules(ds))
			}
		}},
		{"min clamps", func(c *Config) { c.MinReplicas = 3 }, func(w *world) { w.spec = 1; w.lambda = 0 }, 10 * time.Second, func(t *testing.T, ds []Decision, w *world) {
			if w.spec != 3 || rules(ds)[RuleMin] == 0 {
				t.Fatalf("spec %d rules %v", w.spec, rules(ds))
			}
		}},
		{"scale from zero on ready messages", nil, func(w *world) { w.spec = 0; w.lambda = 0; w.ready = 3; w.busy = 0 }, 0, func(t *testing.T, ds []Decision, w *world) {
			d := ds[0] // the very first decision, with no rate history at all
			if d.Desired != 1 || d.Rule != RuleFromZero {
				t.Fatalf("from zero: %d %s %s", d.Desired, d.Rule, d.Reason)
			}
		}},
		{"warming up: no scale-down before λ and μ are known", nil, func(w *world) { w.spec = 20; w.lambda = 1; w.mu = 0 }, time.Minute, func(t *testing.T, ds []Decision, w *world) {
			if writes(ds) != 0 || last(ds).Rule != RuleWarmingUp {
				t.Fatalf("%d writes, last %s", writes(ds), last(ds).Rule)
			}
		}},
		{"one writer: refuses and says why", nil, func(w *world) { w.spec = 2; w.writers = []string{"HorizontalPodAutoscaler/prod/worker"} }, time.Minute, func(t *testing.T, ds []Decision, w *world) {
			d := last(ds)
			c, _ := d.Condition(ConditionScalingActive)
			if w.spec != 2 || !d.Refused || d.Changed() || d.Rule != RuleOneWriter || c.Status || !strings.Contains(d.Reason, "HorizontalPodAutoscaler/prod/worker") {
				t.Fatalf("spec %d, %+v", w.spec, d)
			}
		}},
		{"ASYNC_ENABLED=false: down to the need without headroom or window", nil, func(w *world) { w.spec = 12; w.lambda = 2; w.asyncOff = true }, 10 * time.Second, func(t *testing.T, ds []Decision, w *world) {
			// 2 ÷ (0.5 × 4 × 0.7) = 1.4 → 2, bounded to 6 by the 50 % step.
			if w.spec != 6 || ds[0].Rule != RuleScaleDownLimit || !ds[0].State.AsyncOff {
				t.Fatalf("spec %d, first %s %s", w.spec, ds[0].Rule, ds[0].Reason)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			p := newPolicy(t, cfg)
			w := newWorld(9, 10)
			tc.setup(w)
			ds := run(t, p, w, max(tc.warm, 5*time.Second))
			tc.check(t, ds, w)
			for _, d := range ds {
				if d.Reason == "" || d.Rule == "" || len(d.Conditions) != 3 {
					t.Fatalf("decision without explanation: %+v", d)
				}
			}
		})
	}
}

// TestStepUpAndDown: a 2× step is one or two writes within seconds; the way back waits for
// the stabilisation window after the step and goes down by a bounded step.
func TestStepUpAndDown(t *testing.T) {
	p := newPolicy(t, testConfig())
	w := newWorld(9, 10)
	run(t, p, w, 5*time.Minute)
	if w.spec != 9 {
		t.Fatalf("steady at λ0: %d", w.spec)
	}
	w.lambda = 20
	up := run(t, p, w, 30*time.Second)
	if w.spec < 14 || writes(up) > 2 {
		t.Fatalf("after the step: %d pods in %d writes", w.spec, writes(up))
	}
	run(t, p, w, 15*time.Minute)
	high := w.spec
	w.lambda = 10
	ds := run(t, p, w, cfgWindow(p)-10*time.Second)
	if writes(ds) != 0 || last(ds).Rule != RuleStabilization {
		t.Fatalf("scaled down within the window: %d writes, %s", writes(ds), last(ds).Rule)
	}
	ds = run(t, p, w, 5*time.Minute)
	if w.spec != 9 || writes(ds) > 2 {
		t.Fatalf("after the window: %d pods (from %d) in %d writes", w.spec, high, writes(ds))
	}
	for i, d := range ds {
		if d.Changed() && float64(d.Desired) < math.Floor(float64(d.Current)*0.5) {
			t.Fatalf("decision %d stepped down more than 50 %%: %d → %d", i, d.Current, d.Desired)
		}
	}
}

func cfgWindow(p *Policy) time.Duration { return p.Config().ScaleDownWindow }

// TestReversalGuard: no scale-down within 10 minutes of a scale-up, and noise right after a
// scale-down does not undo it.
func TestReversalGuard(t *testing.T) {
	p := newPolicy(t, testConfig())
	w := newWorld(9, 10)
	run(t, p, w, 5*time.Minute)
	w.lambda = 14 // a real rise: need 11.7
	run(t, p, w, time.Minute)
	if w.spec < 11 {
		t.Fatalf("did not scale up: %d", w.spec)
	}
	upAt := w.now
	w.lambda = 9 // fall back below the original level
	ds := run(t, p, w, 10*time.Minute-time.Minute-5*time.Second)
	if writes(ds) != 0 || rules(ds)[RuleReversalGuard] == 0 {
		t.Fatalf("scaled down %v after a scale-up: rules %v", w.now-upAt, rules(ds))
	}
	ds = run(t, p, w, 3*time.Minute)
	if writes(ds) == 0 {
		t.Fatal("never scaled down after the guard")
	}
	// Right after the scale-down, a wobble of a pod of need does not scale back up.
	down := w.spec
	w.lambda = 10.5
	ds = run(t, p, w, 5*time.Minute)
	if w.spec != down {
		t.Fatalf("flapped back up: %d → %d (%v)", down, w.spec, rules(ds))
	}
}

// TestFailStatic: with broker signals missing or stale, never scale in; hold the floor from
// zero; scale up on the signals that remain; report MetricsUnavailable at once.
func TestFailStatic(t *testing.T) {
	for _, mode := range []string{"unreachable", "stale"} {
		t.Run(mode, func(t *testing.T) {
			p := newPolicy(t, testConfig())
			w := newWorld(20, 20)
			run(t, p, w, 5*time.Minute)
			w.lambda = 2 // the load falls while the broker cannot be read
			if mode == "unreachable" {
				w.queueOK = false
			} else {
				w.stale = true
			}
			ds := run(t, p, w, 10*time.Minute)
			c, _ := ds[0].Condition(ConditionMetricsUnavailable)
			if !c.Status || !ds[0].State.MetricsUnavailable || c.Message == "" {
				t.Fatalf("first decision of the outage: %+v", c)
			}
			for _, d := range ds {
				if d.Desired < d.Current {
					t.Fatalf("scaled in during the outage: %d → %d (%s)", d.Current, d.Desired, d.Reason)
				}
			}
			if last(ds).Rule != RuleFailStatic {
				t.Fatalf("rule %s", last(ds).Rule)
			}
			// Valid signals still scale up: CPU at 95 %.
			w.cpu = 0.95
			run(t, p, w, 30*time.Second)
			if w.spec <= 20 {
				t.Fatalf("no scale-up on CPU during the outage: %d", w.spec)
			}
		})
	}
	t.Run("floor from zero", func(t *testing.T) {
		p := newPolicy(t, testConfig())
		w := newWorld(0, 0)
		w.busy = 0
		run(t, p, w, 5*time.Minute)
		if w.spec != 0 {
			t.Fatalf("idle fleet at %d", w.spec)
		}
		w.queueOK = false
		d := run(t, p, w, 5*time.Second)[0]
		if d.Desired != 1 || d.Rule != RuleFloor {
			t.Fatalf("outage from zero: %d %s", d.Desired, d.Rule)
		}
	})
}

// TestEmergencyStop: 0 at once, never up while held (whatever the backlog), and a ramp back
// to the pre-stop count at the scale-up rate when cleared; the paused annotation and a
// manual scale to 0 work the same way.
func TestEmergencyStop(t *testing.T) {
	for _, how := range []string{"flag", "annotation"} {
		t.Run(how, func(t *testing.T) {
			p := newPolicy(t, testConfig())
			w := newWorld(9, 10)
			run(t, p, w, 5*time.Minute)
			if how == "flag" {
				w.stop = true
			} else {
				w.paused = true
			}
			first := p.Decide(w.obs())
			if first.Desired != 0 || first.Rule != RuleEmergencyStop || !first.State.Stopped {
				t.Fatalf("stop: %+v", first)
			}
			c, _ := first.Condition(ConditionStopped)
			if !c.Status || c.Reason != "EmergencyStop" {
				t.Fatalf("condition %+v", c)
			}
			w.spec = 0
			w.ready = 5000 // the backlog grows while stopped
			ds := run(t, p, w, 5*time.Minute)
			for _, d := range ds {
				if d.Desired != 0 {
					t.Fatalf("scaled up while stopped: %+v", d)
				}
			}
			w.stop, w.paused = false, false
			ds = run(t, p, w, 45*time.Second)
			var ramp []int
			for _, d := range ds {
				if d.Changed() && d.Rule == RuleResume {
					ramp = append(ramp, d.Desired)
				}
			}
			// 0 → 4 → 8 → 9 at the scale-up rate; only then does the backlog count.
			if !slices.Equal(ramp, []int{4, 8, 9}) || w.spec < 9 {
				t.Fatalf("resume ramp %v (spec %d)", ramp, w.spec)
			}
		})
	}
	t.Run("manual scale to 0", func(t *testing.T) {
		p := newPolicy(t, testConfig())
		w := newWorld(9, 10)
		run(t, p, w, 5*time.Minute)
		w.spec = 0 // kubectl scale --replicas=0
		w.ready = 500
		ds := run(t, p, w, 5*time.Minute)
		for _, d := range ds {
			if d.Desired != 0 || d.Rule != RuleManualStop {
				t.Fatalf("reverted a manual stop: %+v", d)
			}
		}
		w.spec = 5 // the operator scales back up: normal sizing resumes from there
		run(t, p, w, time.Minute)
		if w.spec <= 5 {
			t.Fatalf("did not resume after a manual scale-up: %d", w.spec)
		}
	})
}

// TestDrainAwareScaleIn: pods not ready yet and idle pods go first; never a busy pod while an
// idle one is left; with long tasks no busy pod at all.
func TestDrainAwareScaleIn(t *testing.T) {
	mk := func(w *world, active []int, oldest time.Duration) {
		now := t0.Add(w.now)
		w.pods = nil
		for i, a := range active {
			ready := a >= 0
			w.pods = append(w.pods, PodSignal{Name: fmt.Sprintf("p%d", i), Ready: ready, Slots: 4, Active: max(a, 0),
				HeartbeatAt: now, OldestTask: oldest, CPU: 0.3, CPUAt: now})
		}
		w.spec = len(active)
	}
	cases := []struct {
		name   string
		active []int // -1: not ready yet
		p99    time.Duration
		oldest time.Duration
		want   []string // victims in order
		spec   int      // count after the decision
	}{
		{"not ready and idle first", []int{2, 0, 3, -1, 0, 1, 2, 1}, 9 * time.Second, time.Second, []string{"p3", "p1", "p4", "p5"}, 4},
		{"busy only when no idle pod is left, least busy first", []int{2, 3, 1, 0, 2, 4, 3, 1}, 9 * time.Second, time.Second, []string{"p3", "p2", "p7", "p0"}, 4},
		{"long tasks: idle pods only", []int{2, 3, 1, 0, 2, 4, 3, 1}, 10 * time.Minute, 5 * time.Minute, []string{"p3"}, 7},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPolicy(t, testConfig())
			w := newWorld(8, 2)
			w.p99 = tc.p99
			mk(w, tc.active, tc.oldest)
			var d Decision
			for i := 0; i < 60; i++ { // 5 minutes at λ = 2: need 2 pods
				mk(w, tc.active, tc.oldest)
				d = p.Decide(w.obs())
				if d.Changed() {
					break
				}
				w.now += 5 * time.Second
			}
			if !slices.Equal(d.Victims, tc.want) || d.Desired != tc.spec {
				t.Fatalf("victims %v → %d (%s: %s), want %v → %d", d.Victims, d.Desired, d.Rule, d.Reason, tc.want, tc.spec)
			}
			if len(tc.want) == 1 && d.Rule != RuleDrain {
				t.Fatalf("rule %s", d.Rule)
			}
		})
	}
}

// TestRollout: no scale-in while rolling out, and surge pods (status.replicas above spec)
// are never counted as the current count.
func TestRollout(t *testing.T) {
	p := newPolicy(t, testConfig())
	w := newWorld(20, 20)
	run(t, p, w, 5*time.Minute)
	w.rolling = true
	w.lambda = 4
	ds := run(t, p, w, 15*time.Minute)
	if writes(ds) != 0 || rules(ds)[RuleRollout] == 0 {
		t.Fatalf("scaled in during a rollout: %d writes, %v", writes(ds), rules(ds))
	}
	// Surge: 6 more pods exist than spec; the policy sizes from spec, not from pods.
	spec := w.spec
	w.lambda = 20
	o := w.obs()
	for i := 0; i < 6; i++ {
		o.Pods = append(o.Pods, PodSignal{Name: fmt.Sprintf("canary-%d", i), Revision: "canary", Slots: 4})
	}
	o.Workload.StatusReplicas = spec + 6
	d := p.Decide(o)
	if d.Current != spec || d.Desired != spec {
		t.Fatalf("surge counted: %d → %d, spec %d", d.Current, d.Desired, spec)
	}
	w.rolling = false
	w.lambda = 4
	ds = run(t, p, w, 5*time.Minute)
	if writes(ds) == 0 {
		t.Fatal("no scale-in after the rollout")
	}
}

// TestRateEstimator: a 2× step is seen on the first full sample after it; ±20 % noise for an
// hour is never taken for a step.
func TestRateEstimator(t *testing.T) {
	cfg := testConfig()
	var e rateEstimator
	at := t0
	for i := 0; i < 60; i++ {
		at = at.Add(5 * time.Second)
		if e.add(cfg, at, 10) {
			t.Fatal("step in a flat rate")
		}
	}
	at = at.Add(5 * time.Second)
	if !e.add(cfg, at, 20) {
		t.Fatal("2× step not seen on its first sample")
	}
	if l, last, _ := e.estimate(cfg, at); l != 20 || last != 20 {
		t.Fatalf("after the step: %v %v", l, last)
	}
	if e.add(cfg, at, 30) {
		t.Fatal("a repeated sample counted")
	}

	r := rand.New(rand.NewPCG(1, 2))
	var n rateEstimator
	for i := 0; i < 720; i++ {
		at = at.Add(5 * time.Second)
		// A Poisson count over 5 s at 10/s ± 20 %, as the management API reports it.
		lam := 10 * (0.8 + 0.4*r.Float64()) * 5
		rate := poisson(r, lam) / 5
		if n.add(cfg, at, rate) {
			t.Fatalf("noise taken for a step at sample %d (rate %v)", i, rate)
		}
	}
}

// poisson draws a Poisson count with mean lam (normal approximation; lam is large here).
func poisson(r *rand.Rand, lam float64) float64 {
	return math.Max(0, math.Round(lam+math.Sqrt(lam)*r.NormFloat64()))
}

// TestDecisionJSON: a decision is a self-contained JSON record (for DecisionTrace).
func TestDecisionJSON(t *testing.T) {
	p := newPolicy(t, testConfig())
	w := newWorld(4, 10)
	ds := run(t, p, w, time.Minute)
	b, err := json.Marshal(ds[len(ds)-1])
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"rule"`, `"reason"`, `"inputs"`, `"lambda"`, `"needs"`, `"conditions"`, `"MetricsUnavailable"`} {
		if !strings.Contains(string(b), k) {
			t.Fatalf("%s missing in %s", k, b)
		}
	}
}
