package sim

import (
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

// Params are the workload and cluster parameters every trace shares (autoscaling.md §6.2
// and §6.1).
type Params struct {
	// Lambda0 is the base arrival rate (messages per second).
	Lambda0 float64
	// MeanService is the mean task run time S (exponential); μ per slot is 1/S.
	MeanService time.Duration
	// Concurrency c is the task slots per pod; Prefetch the prefetch multiplier m (a pod
	// holds at most c·m unacked messages).
	Concurrency int
	Prefetch    int
	// A pod is ready a uniform PodStartMin..PodStartMax after its creation (30 ± 10 s).
	PodStartMin time.Duration
	PodStartMax time.Duration
	// CPUBusy and CPUIdle are the CPU ÷ request of a busy and an idle slot.
	CPUBusy float64
	CPUIdle float64
	// Grace is terminationGracePeriodSeconds: a terminating pod's running tasks are killed
	// (and redelivered) after it.
	Grace time.Duration
	// SampleEvery is the broker management API's sampling period; HeartbeatEvery the
	// workers' heartbeat period; ScrapeEvery the metrics-server resolution (CPU is the mean
	// over that window).
	SampleEvery    time.Duration
	HeartbeatEvery time.Duration
	ScrapeEvery    time.Duration
	// MaxReplicas is every controller's maximum.
	MaxReplicas int
	// ServiceWindow is the window over which the workers' μ is measured (from their
	// processed counters and busy time; reported once half of it has run).
	ServiceWindow time.Duration
}

// DefaultParams are autoscaling.md §6.2's base parameters: λ0 = 10/s, S = 2 s, c = 4 (so
// μ_pod = 2/s), T_ready = 30 ± 10 s, 0.8 CPU per busy slot and 0.05 idle; plus a prefetch
// multiplier of 1 (the setting the doc recommends), Kubernetes' 30 s grace period, the
// RabbitMQ management API's 5 s sampling, Celery's 2 s heartbeat, metrics-server's 15 s and
// μ measured over 5 minutes.
func DefaultParams() Params {
	return Params{
		Lambda0:        10,
		MeanService:    2 * time.Second,
		Concurrency:    4,
		Prefetch:       1,
		PodStartMin:    20 * time.Second,
		PodStartMax:    40 * time.Second,
		CPUBusy:        0.8,
		CPUIdle:        0.05,
		Grace:          30 * time.Second,
		SampleEvery:    5 * time.Second,
		HeartbeatEvery: 2 * time.Second,
		ScrapeEvery:    15 * time.Second,
		MaxReplicas:    50,
		ServiceWindow:  5 * time.Minute,
	}
}

// PodStartMean is the mean pod start time.
func (p Params) PodStartMean() time.Duration { return (p.PodStartMin + p.PodStartMax) / 2 }

// Window is a time interval [From, To) of a trace.
type Window struct {
	From, To time.Duration
}

func (w Window) contains(t time.Duration) bool { return t >= w.From && t < w.To }

// Trace is one load scenario of autoscaling.md §6.2.
type Trace struct {
	Name     string
	Title    string
	Duration time.Duration
	// Rate is the noiseless arrival rate λ(t).
	Rate func(t time.Duration) float64
	// Noise wobbles the rate by a uniform ±Noise share, redrawn every NoiseEvery.
	Noise      float64
	NoiseEvery time.Duration
	// LongShare of the tasks take LongTask instead of an exponential MeanService.
	LongShare float64
	LongTask  time.Duration
	// Canary is the worker-canary's share of the pods at t (nil: no rollout);
	// CanarySlowdown its run-time factor; Rollback when it is rolled back to 0.
	Canary         func(t time.Duration) float64
	CanarySlowdown float64
	Rollback       time.Duration
	// Stops are the emergency stops; Outages the broker API outages.
	Stops   []Window
	Outages []Window
	// Changes are the change points time-to-recover is measured from; Increases the ones
	// that raise the load on the pods (CPU p95 leaves out the reaction time after them).
	Changes   []time.Duration
	Increases []time.Duration
	// AbortAt is T2's abort (the load falls back to λ0).
	AbortAt time.Duration
}

// Traces returns T0–T6 for p.
func Traces(p Params) []*Trace {
	l0 := p.Lambda0
	minute := time.Minute
	step := func(points ...float64) func(time.Duration) float64 {
		// points: t0 (minutes), rate0, t1, rate1, ... (rate holds from its t on)
		return func(t time.Duration) float64 {
			r := points[1]
			for i := 0; i+1 < len(points); i += 2 {
				if t >= time.Duration(points[i]*float64(minute)) {
					r = points[i+1]
				}
			}
			return r
		}
	}
	phases := []float64{0.01, 0.05, 0.10, 0.25, 0.50, 1.00}
	t2 := func(t time.Duration) float64 {
		i := int(t / (5 * minute))
		if i < len(phases) {
			return l0 * (1 + phases[i])
		}
		return l0
	}
	t3 := func(t time.Duration) float64 {
		switch {
		case t < 5*minute:
			return 0
		case t >= 27*minute+30*time.Second:
			return 0
		}
		i := int((t - 5*minute) / (5 * minute))
		return []float64{0.01, 0.05, 0.10, 0.25, 0.50}[min(i, 4)]
	}
	longMean := 0.9*p.MeanService.Seconds() + 0.1*600
	t6hi := 25 / longMean // ≈ 25 busy slots, like λ0's 20
	return []*Trace{
		{Name: "T0", Title: "steady λ0 with ±20 % noise (flapping test)", Duration: 60 * minute,
			Rate: step(0, l0), Noise: 0.2, NoiseEvery: p.SampleEvery},
		{Name: "T1", Title: "2× step: λ0 10 min, 2λ0 20 min, λ0 20 min", Duration: 50 * minute,
			Rate: step(0, l0, 10, 2*l0, 30, l0), Changes: []time.Duration{10 * minute}, Increases: []time.Duration{10 * minute}},
		{Name: "T2", Title: "canary traffic ramp 1→100 % of λ0 (5 min phases), then abort", Duration: 45 * minute,
			Rate: t2, AbortAt: 30 * minute,
			Changes:   []time.Duration{5 * minute, 10 * minute, 15 * minute, 20 * minute, 25 * minute},
			Increases: []time.Duration{5 * minute, 10 * minute, 15 * minute, 20 * minute, 25 * minute}},
		{Name: "T3", Title: "worker canary 1→50 % (1.3× slower), rolled back at 50 %", Duration: 45 * minute,
			Rate: step(0, l0), Canary: t3, CanarySlowdown: 1.3, Rollback: 27*minute + 30*time.Second,
			Changes:   []time.Duration{5 * minute, 10 * minute, 15 * minute, 20 * minute, 25 * minute, 27*minute + 30*time.Second},
			Increases: []time.Duration{5 * minute, 10 * minute, 15 * minute, 20 * minute, 25 * minute, 27*minute + 30*time.Second}},
		{Name: "T4", Title: "emergency stop at 15 min for 5 min", Duration: 35 * minute,
			Rate: step(0, l0), Stops: []Window{{15 * minute, 20 * minute}},
			Changes: []time.Duration{20 * minute}, Increases: []time.Duration{20 * minute}},
		{Name: "T5", Title: "broker API outage at high load (15–20 min), again at low load (40–45 min, from idle)", Duration: 50 * minute,
			Rate:    step(0, l0, 10, 2*l0, 25, 0, 41, 0.2*l0),
			Outages: []Window{{15 * minute, 20 * minute}, {40 * minute, 45 * minute}},
			Changes: []time.Duration{10 * minute}, Increases: []time.Duration{10 * minute, 41 * minute}},
		{Name: "T6", Title: "10 % of tasks take 10 min; load drop at 20 min forces scale-in", Duration: 50 * minute,
			Rate: step(0, t6hi, 20, t6hi/4), LongShare: 0.1, LongTask: 10 * minute},
	}
}

// TraceByName returns the named trace of Traces(p).
func TraceByName(p Params, name string) (*Trace, bool) {
	for _, t := range Traces(p) {
		if t.Name == name {
			return t, true
		}
	}
	return nil, false
}

// MeanServiceAt is the mean task run time of the fleet at t given the canary share.
func (tr *Trace) MeanServiceAt(p Params, t time.Duration) float64 {
	s := p.MeanService.Seconds()
	if tr.LongShare > 0 {
		s = (1-tr.LongShare)*s + tr.LongShare*tr.LongTask.Seconds()
	}
	if tr.Canary != nil {
		w := tr.Canary(t)
		s *= 1 + w*(tr.CanarySlowdown-1)
	}
	return s
}

// arrival is one published task: when, and its base run time.
type arrival struct {
	at   time.Duration
	work time.Duration
}

// load is a trace realised for one seed: the rate with its noise, and every arrival. It is
// shared by the controllers of a seed, so they all see the same tasks.
type load struct {
	tr       *Trace
	noise    []float64 // per NoiseEvery slot
	arrivals []arrival
}

// realise draws the trace's noise and arrivals for seed.
func realise(p Params, tr *Trace, seed uint64) *load {
	l := &load{tr: tr}
	if tr.Noise > 0 && tr.NoiseEvery > 0 {
		r := rand.New(rand.NewPCG(seed, streamNoise))
		n := int(tr.Duration/tr.NoiseEvery) + 2
		l.noise = make([]float64, n)
		for i := range l.noise {
			l.noise[i] = 1 + tr.Noise*(2*r.Float64()-1)
		}
	}
	// Thinning: candidates at the peak rate, kept with probability λ(t)/peak.
	peak := 0.0
	for t := time.Duration(0); t <= tr.Duration; t += time.Second {
		peak = math.Max(peak, l.rate(t))
	}
	if peak == 0 {
		return l
	}
	r := rand.New(rand.NewPCG(seed, streamArrivals))
	t := 0.0
	end := tr.Duration.Seconds()
	for {
		t += r.ExpFloat64() / peak
		if t >= end {
			break
		}
		at := time.Duration(t * float64(time.Second))
		if r.Float64()*peak >= l.rate(at) {
			continue
		}
		var work time.Duration
		if tr.LongShare > 0 && r.Float64() < tr.LongShare {
			work = tr.LongTask
		} else {
			work = time.Duration(r.ExpFloat64() * float64(p.MeanService))
		}
		l.arrivals = append(l.arrivals, arrival{at: at, work: work})
	}
	return l
}

// rate is the realised λ(t), noise included.
func (l *load) rate(t time.Duration) float64 {
	r := l.tr.Rate(t)
	if l.noise != nil {
		i := int(t / l.tr.NoiseEvery)
		if i >= 0 && i < len(l.noise) {
			r *= l.noise[i]
		}
	}
	return r
}

// Random streams: each purpose has its own, so that one controller's choices never shift
// another purpose's draws.
const (
	streamNoise uint64 = iota + 1
	streamArrivals
	streamPods
	streamPhases
)

// percentile returns the q-quantile (0..1) of xs (sorted in place), 0 for none.
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[max(0, min(i, len(xs)-1))]
}
