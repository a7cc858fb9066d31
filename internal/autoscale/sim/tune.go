package sim

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"
)

// TrainingTrace is the trace the baselines are tuned on: the 2× step, the scenario the
// depth goal is about, so that each baseline gets its best shot at it (on seeds that are
// not the evaluation seeds).
const TrainingTrace = "T1"

// TrainingSeeds are the seeds the grid search uses; evaluation uses 1, 2, ….
func TrainingSeeds() []uint64 { return Seeds(1001, 5) }

// Candidate is one baseline setting with its score on the training seeds (medians).
type Candidate struct {
	Controller    string
	HPA           HPASettings
	KEDA          KEDASettings
	Qmax          float64
	Above100      float64
	WorkerMinutes float64
}

// Meets is the training objective's constraint: the depth goal on the median seed.
func (c Candidate) Meets() bool { return c.Qmax < 100 && c.Above100 == 0 }

// String describes the setting.
func (c Candidate) String() string {
	if c.Controller == HPACPU {
		return fmt.Sprintf("%s min=%d down-window=%v", c.Controller, c.HPA.Min, c.HPA.DownWindow)
	}
	s := fmt.Sprintf("%s target=%g/pod min=%d down-window=%v", c.Controller, c.KEDA.Target, c.KEDA.Min, c.KEDA.DownWindow)
	if c.KEDA.RateTarget > 0 {
		s += fmt.Sprintf(" rate-target=%g/s/pod", c.KEDA.RateTarget)
	}
	return s
}

// better orders candidates: those meeting the depth goal first, by worker-minutes; then the
// others by time above 100, Qmax and worker-minutes.
func better(a, b Candidate) bool {
	if a.Meets() != b.Meets() {
		return a.Meets()
	}
	if a.Meets() {
		return a.WorkerMinutes < b.WorkerMinutes
	}
	if a.Above100 != b.Above100 {
		return a.Above100 < b.Above100
	}
	if a.Qmax != b.Qmax {
		return a.Qmax < b.Qmax
	}
	return a.WorkerMinutes < b.WorkerMinutes
}

// Grid is autoscaling.md §6.1's small grid: per-pod queue target ∈ {c, 2c, 5c, 20}, min ∈
// {0, 1}, scale-down window ∈ {60, 300} s; the MessageRate trigger's per-pod target ∈
// {0.5, 0.7, 1} × μ_pod; the HPA on CPU keeps its 70 % target (min is 1: a CPU metric
// cannot scale to zero).
func Grid(p Params) []Candidate {
	c := float64(p.Concurrency)
	muPod := c / p.MeanService.Seconds()
	var targets []float64
	for _, t := range []float64{c, 2 * c, 5 * c, 20} {
		if len(targets) == 0 || targets[len(targets)-1] != t {
			targets = append(targets, t)
		}
	}
	windows := []time.Duration{60 * time.Second, 300 * time.Second}
	var out []Candidate
	for _, wnd := range windows {
		out = append(out, Candidate{Controller: HPACPU, HPA: HPASettings{Min: 1, DownWindow: wnd}})
	}
	for _, t := range targets {
		for _, mn := range []int{0, 1} {
			for _, wnd := range windows {
				out = append(out, Candidate{Controller: KEDAQL, KEDA: KEDASettings{Target: t, Min: mn, DownWindow: wnd}})
				for _, r := range []float64{0.5, 0.7, 1} {
					out = append(out, Candidate{Controller: KEDAQLRate, KEDA: KEDASettings{Target: t, RateTarget: r * muPod, Min: mn, DownWindow: wnd}})
				}
			}
		}
	}
	return out
}

// Tuning is the grid search's outcome.
type Tuning struct {
	Best       Setup
	Candidates []Candidate // sorted best first within each controller
}

// Tune runs the grid (usually Grid(s.Params)) on the training trace and seeds and returns s
// with each baseline at its best setting.
func Tune(ctx context.Context, s Setup, grid []Candidate, seeds []uint64, workers int) (Tuning, error) {
	if err := s.Validate(); err != nil {
		return Tuning{}, err
	}
	tr, ok := TraceByName(s.Params, TrainingTrace)
	if !ok {
		return Tuning{}, fmt.Errorf("sim: no training trace %s", TrainingTrace)
	}
	loads := make([]*load, len(seeds))
	for i, sd := range seeds {
		loads[i] = realise(s.Params, tr, sd)
	}
	cands := append([]Candidate(nil), grid...)
	results := make([][]Result, len(cands))
	for i := range results {
		results[i] = make([]Result, len(seeds))
	}
	errs := make([]error, len(cands)*len(seeds))
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				ci, si := j/len(seeds), j%len(seeds)
				c := cands[ci]
				ss := s
				switch c.Controller {
				case HPACPU:
					ss.HPA = c.HPA
				case KEDAQL:
					ss.KEDAQL = c.KEDA
				default:
					ss.KEDARate = c.KEDA
				}
				r, err := ss.runOne(loads[si], c.Controller, seeds[si], nil)
				results[ci][si], errs[j] = r, err
			}
		}()
	}
	for j := 0; j < len(cands)*len(seeds) && ctx.Err() == nil; j++ {
		select {
		case jobs <- j:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return Tuning{}, fmt.Errorf("sim: tune: %w", err)
	}
	for _, err := range errs {
		if err != nil {
			return Tuning{}, fmt.Errorf("sim: tune: %w", err)
		}
	}
	for i := range cands {
		var q, a, wm []float64
		for _, r := range results[i] {
			q, a, wm = append(q, r.Qmax), append(a, r.SecondsAbove100), append(wm, r.WorkerMinutes)
		}
		cands[i].Qmax, cands[i].Above100, cands[i].WorkerMinutes = median(q), median(a), median(wm)
	}
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].Controller != cands[j].Controller {
			return ctlRank(cands[i].Controller) < ctlRank(cands[j].Controller)
		}
		return better(cands[i], cands[j])
	})
	t := Tuning{Best: s, Candidates: cands}
	seen := map[string]bool{}
	for _, c := range cands {
		if seen[c.Controller] {
			continue
		}
		seen[c.Controller] = true
		switch c.Controller {
		case HPACPU:
			t.Best.HPA = c.HPA
		case KEDAQL:
			t.Best.KEDAQL = c.KEDA
		case KEDAQLRate:
			t.Best.KEDARate = c.KEDA
		}
	}
	return t, nil
}
