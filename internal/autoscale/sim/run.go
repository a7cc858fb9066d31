package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sort"
	"sync"
	"time"

	"denis.io/fleet/internal/autoscale"
)

// Setup is everything a run needs besides the trace and the seed: the workload, our
// policy's configuration and the baselines' settings.
type Setup struct {
	Params   Params
	Fleet    autoscale.Config
	HPA      HPASettings
	KEDAQL   KEDASettings
	KEDARate KEDASettings
}

// FleetConfig is autoscale.DefaultConfig with the simulated workload's facts filled in:
// concurrency, pod start time, grace period and the common maximum. MinReplicas is 0 (like
// KEDA's default) so that T5 can start an outage from zero.
func FleetConfig(p Params) autoscale.Config {
	c := autoscale.DefaultConfig()
	c.Concurrency = p.Concurrency
	c.PodStartTime = p.PodStartMean()
	c.GracePeriod = p.Grace
	c.MinReplicas = 0
	c.MaxReplicas = p.MaxReplicas
	return c
}

// DefaultSetup is DefaultParams, FleetConfig and the baseline settings that Tune selects on
// the training seeds (recorded in RESULTS.md; TestTuneRecorded checks them). Where min 0
// and min 1 tie on the training trace (it never idles), the grid's order picks 0, KEDA's
// default.
func DefaultSetup() Setup {
	p := DefaultParams()
	return Setup{
		Params:   p,
		Fleet:    FleetConfig(p),
		HPA:      HPASettings{Min: 1, DownWindow: 300 * time.Second},
		KEDAQL:   KEDASettings{Target: 4, Min: 0, DownWindow: 300 * time.Second},
		KEDARate: KEDASettings{Target: 20, RateTarget: 1.4, Min: 0, DownWindow: 300 * time.Second},
	}
}

// Options tune a Run.
type Options struct {
	// Controllers to run (default all). The oracle always runs: the cost ratio needs it.
	Controllers []string
	// Workers is the parallelism (default GOMAXPROCS).
	Workers int
	// Decisions, when set, receives every decision of ours (with the trace and seed).
	Decisions func(trace string, seed uint64, d autoscale.Decision)
}

// Validate checks the setup.
func (s Setup) Validate() error {
	if err := s.Fleet.Validate(); err != nil {
		return fmt.Errorf("sim: fleet: %w", err)
	}
	p := s.Params
	if p.Lambda0 <= 0 || p.MeanService <= 0 || p.Concurrency < 1 || p.Prefetch < 1 ||
		p.PodStartMin < 0 || p.PodStartMax < p.PodStartMin || p.Grace < 0 ||
		p.SampleEvery <= 0 || p.HeartbeatEvery <= 0 || p.ScrapeEvery <= 0 || p.MaxReplicas < 1 || p.ServiceWindow <= 0 {
		return fmt.Errorf("sim: bad params %+v", p)
	}
	for _, k := range []KEDASettings{s.KEDAQL, s.KEDARate} {
		if k.Target <= 0 || k.RateTarget < 0 || k.Min < 0 {
			return fmt.Errorf("sim: bad KEDA settings %+v", k)
		}
	}
	return nil
}

func (s Setup) controller(name string, tail func(autoscale.Decision)) (controller, error) {
	switch name {
	case HPACPU:
		return newHPACPU(s.HPA, s.Params), nil
	case KEDAQL:
		return newKEDA(KEDAQL, s.KEDAQL, s.Params), nil
	case KEDAQLRate:
		return newKEDA(KEDAQLRate, s.KEDARate, s.Params), nil
	case Fleet:
		return &fleetCtl{cfg: s.Fleet, decisions: tail}, nil
	case Oracle:
		return &oracle{cfg: s.Fleet}, nil
	}
	return nil, fmt.Errorf("sim: unknown controller %q (want one of %v)", name, Controllers())
}

// initialReplicas is where every controller starts: the oracle's count for the first load.
func (s Setup) initialReplicas(ld *load) int {
	o := &oracle{cfg: s.Fleet}
	w := &world{p: s.Params, tr: ld.tr, ld: ld}
	return max(1, o.count(w, s.Params.PodStartMean()))
}

// runOne simulates one controller on a realised trace.
func (s Setup) runOne(ld *load, name string, seed uint64, tail func(autoscale.Decision)) (Result, error) {
	ctl, err := s.controller(name, tail)
	if err != nil {
		return Result{}, err
	}
	p, tr := s.Params, ld.tr
	initial := s.initialReplicas(ld)
	w := newWorld(p, ld, seed, initial)
	w.rec.react = s.Fleet.DetectionDelay + p.PodStartMean()
	end := tr.Duration
	ph := rand.New(rand.NewPCG(seed, streamPhases))
	samplePh, hbPh, scrapePh, ctlPh := ph.Float64(), ph.Float64(), ph.Float64(), ph.Float64()

	if len(ld.arrivals) > 0 {
		w.push(event{at: ld.arrivals[0].at, kind: evArrival})
	}
	w.every(time.Duration(samplePh*float64(p.SampleEvery)), p.SampleEvery, end, w.takeSample)
	w.every(30*time.Second, 30*time.Second, end, w.updateTaskP99)
	w.every(time.Duration(hbPh*float64(p.HeartbeatEvery)), p.HeartbeatEvery, end, w.heartbeat)
	w.every(time.Duration(scrapePh*float64(p.ScrapeEvery)), p.ScrapeEvery, end, w.scrape)
	w.every(time.Second, time.Second, end, w.monitor)
	for _, st := range tr.Stops {
		w.at(st.From, func() { w.stopped = true; ctl.stop(w) })
		w.at(st.To, func() { w.stopped = false; ctl.resume(w) })
	}
	for _, o := range tr.Outages {
		w.at(o.From, func() { w.outage = true })
		w.at(o.To, func() { w.outage = false })
	}
	if tr.Canary != nil {
		for _, cp := range tr.Changes {
			w.at(cp, w.reconcile)
		}
	}
	if err := ctl.attach(w, ctlPh); err != nil {
		return Result{}, err
	}
	w.runUntil(end)
	return w.finish(tr.Name, name, seed, initial), nil
}

// monitor runs every simulated second: T3's capacity-against-demand bookkeeping.
func (w *world) monitor() {
	tr := w.tr
	if tr.Canary == nil || len(tr.Changes) == 0 || w.now < tr.Changes[0] {
		return
	}
	total, stable := w.readyCapacity()
	lam := w.ld.rate(w.now)
	if w.now >= tr.Rollback && w.rec.coverAt < 0 && stable >= lam {
		w.rec.coverAt = w.now
	}
	for _, cp := range tr.Changes {
		if w.now >= cp && w.now < cp+w.rec.react {
			return
		}
	}
	if total < lam {
		w.rec.capShort++
	}
}

// Run simulates every trace × seed with the chosen controllers (and the oracle) and returns
// the per-run results in a fixed order: trace, seed, controller.
func Run(ctx context.Context, s Setup, traces []*Trace, seeds []uint64, opt Options) ([]Result, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	ctls := opt.Controllers
	if len(ctls) == 0 {
		ctls = Controllers()
	}
	hasOracle := false
	for _, c := range ctls {
		if _, err := s.controller(c, nil); err != nil {
			return nil, err
		}
		hasOracle = hasOracle || c == Oracle
	}
	if !hasOracle {
		ctls = append(append([]string(nil), ctls...), Oracle)
	}
	type job struct {
		tr   *Trace
		seed uint64
	}
	var jobs []job
	for _, tr := range traces {
		for _, sd := range seeds {
			jobs = append(jobs, job{tr, sd})
		}
	}
	out := make([][]Result, len(jobs))
	errs := make([]error, len(jobs))
	workers := opt.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	var mu sync.Mutex // serialises the Decisions callback
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, max(1, len(jobs))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				j := jobs[i]
				ld := realise(s.Params, j.tr, j.seed)
				var tail func(autoscale.Decision)
				if opt.Decisions != nil {
					tail = func(d autoscale.Decision) {
						mu.Lock()
						defer mu.Unlock()
						opt.Decisions(j.tr.Name, j.seed, d)
					}
				}
				rs := make([]Result, 0, len(ctls))
				for _, c := range ctls {
					r, err := s.runOne(ld, c, j.seed, tail)
					if err != nil {
						errs[i] = fmt.Errorf("sim: %s %s seed %d: %w", j.tr.Name, c, j.seed, err)
						break
					}
					rs = append(rs, r)
				}
				var ow float64
				for _, r := range rs {
					if r.Controller == Oracle {
						ow = r.WorkerMinutes
					}
				}
				for k := range rs {
					rs[k].WorkerMinutesVsOr = rs[k].WorkerMinutes / ow
				}
				out[i] = rs
			}
		}()
	}
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	var all []Result
	for i := range jobs {
		if errs[i] != nil {
			return nil, errs[i]
		}
		all = append(all, out[i]...)
	}
	return all, nil
}

// Seeds returns n seeds starting at first.
func Seeds(first uint64, n int) []uint64 {
	s := make([]uint64, n)
	for i := range s {
		s[i] = first + uint64(i)
	}
	return s
}

// Row is the median over seeds of one trace and controller (with the 95th percentile of
// the main metrics), as the report and the JSON show it.
type Row struct {
	Trace      string
	Controller string
	Seeds      int
	Median     Result
	P95        Result
}

// metricFields lists the Result fields summarised over seeds.
func metricFields() []func(*Result) *float64 {
	return []func(*Result) *float64{
		func(r *Result) *float64 { return &r.Qmax },
		func(r *Result) *float64 { return &r.SecondsAbove100 },
		func(r *Result) *float64 { return &r.WaitP99 },
		func(r *Result) *float64 { return &r.WorkerMinutes },
		func(r *Result) *float64 { return &r.WorkerMinutesVsOr },
		func(r *Result) *float64 { return &r.ScaleEvents },
		func(r *Result) *float64 { return &r.Reversals },
		func(r *Result) *float64 { return &r.TTR },
		func(r *Result) *float64 { return &r.CPUP95 },
		func(r *Result) *float64 { return &r.KilledInFlight },
		func(r *Result) *float64 { return &r.StopLatency },
		func(r *Result) *float64 { return &r.StopViolations },
		func(r *Result) *float64 { return &r.ScaleUps },
		func(r *Result) *float64 { return &r.ScaleDowns },
		func(r *Result) *float64 { return &r.RampEvents },
		func(r *Result) *float64 { return &r.RampReversals },
		func(r *Result) *float64 { return &r.AbortDown },
		func(r *Result) *float64 { return &r.KilledAfterAbort },
		func(r *Result) *float64 { return &r.CapacityShort },
		func(r *Result) *float64 { return &r.RollbackCover },
		func(r *Result) *float64 { return &r.OutageScaleIns },
		func(r *Result) *float64 { return &r.UnavailableAfter },
		func(r *Result) *float64 { return &r.OutageFloor },
		func(r *Result) *float64 { return &r.ResumeFirst },
		func(r *Result) *float64 { return &r.PreStop },
		func(r *Result) *float64 { return &r.ResumeOvershoot },
		func(r *Result) *float64 { return &r.EventsAfterWarmup },
	}
}

// Summarize groups results by trace and controller (in the order they first appear) and
// takes the median and the 95th percentile of every metric over the seeds.
func Summarize(results []Result) []Row {
	type key struct{ tr, ctl string }
	var order []key
	groups := map[key][]Result{}
	for _, r := range results {
		k := key{r.Trace, r.Controller}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	sort.SliceStable(order, func(i, j int) bool {
		if order[i].tr != order[j].tr {
			return order[i].tr < order[j].tr
		}
		return ctlRank(order[i].ctl) < ctlRank(order[j].ctl)
	})
	rows := make([]Row, 0, len(order))
	for _, k := range order {
		g := groups[k]
		row := Row{Trace: k.tr, Controller: k.ctl, Seeds: len(g)}
		row.Median = Result{Trace: k.tr, Controller: k.ctl}
		row.P95 = row.Median
		for _, f := range metricFields() {
			var xs []float64
			for i := range g {
				if v := *f(&g[i]); !math.IsNaN(v) {
					xs = append(xs, v)
				}
			}
			*f(&row.Median), *f(&row.P95) = median(xs), percentile(append([]float64(nil), xs...), 0.95)
			if len(xs) == 0 {
				*f(&row.P95) = math.NaN()
			}
		}
		rows = append(rows, row)
	}
	return rows
}

func ctlRank(c string) int {
	for i, n := range Controllers() {
		if n == c {
			return i
		}
	}
	return len(Controllers())
}

// median of xs (NaN for none); xs is sorted in place.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sort.Float64s(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}
