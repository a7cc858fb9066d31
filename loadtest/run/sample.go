package run

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/procstat"
	"denis.io/fleet/loadtest/observe"
	"denis.io/fleet/loadtest/stats"
)

// timeline holds what was sampled over time, for the criteria and the charts.
type timeline struct {
	mu       sync.Mutex
	sentB    stats.Bucketed // publishes by offset
	doneB    stats.Bucketed // completions by date_done offset
	latB     stats.Bucketed // end-to-end latency by completion offset
	lat      []float64      // every end-to-end latency so far (progress line)
	depth    map[string]*stats.Series
	maxDepth map[string]int // after warm-up
	workers  stats.Series
	desired  stats.Series
	cpu      map[string]*stats.Series // percent of the worker's CPU
	rss      map[string]*stats.Series // MiB
	cpuAfter []float64                // CPU samples after warm-up
	// scraped holds the last /metrics values of each worker that exposes them.
	scraped map[string]map[string]float64
}

func newTimeline() *timeline {
	return &timeline{depth: map[string]*stats.Series{}, maxDepth: map[string]int{},
		cpu: map[string]*stats.Series{}, rss: map[string]*stats.Series{}, scraped: map[string]map[string]float64{},
		workers: stats.Series{Name: "workers"}, desired: stats.Series{Name: "desired replicas (autoscaler)"}}
}

func (t *timeline) setWidth(w time.Duration) {
	t.sentB.Width, t.doneB.Width, t.latB.Width = w, w, w
}

func (t *timeline) sent(off time.Duration) {
	t.mu.Lock()
	t.sentB.Add(off, 1)
	t.mu.Unlock()
}

func (t *timeline) done(start time.Time, r *record) {
	if r.outcome.DateDone.IsZero() {
		return
	}
	off := r.outcome.DateDone.Sub(start)
	lat := r.outcome.DateDone.Sub(r.due).Seconds()
	t.mu.Lock()
	t.doneB.Add(off, 1)
	t.latB.Add(off, lat)
	t.lat = append(t.lat, lat)
	t.mu.Unlock()
}

func (t *timeline) p99() (float64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lat) == 0 {
		return 0, false
	}
	s := slices.Clone(t.lat)
	slices.Sort(s)
	return stats.Percentile(s, 99), true
}

func series(m map[string]*stats.Series, name string) *stats.Series {
	s, ok := m[name]
	if !ok {
		s = &stats.Series{Name: name}
		m[name] = s
	}
	return s
}

// sample runs every cfg.SampleEvery until ctx ends: outcomes, depths, workers,
// autoscaler decisions, and the progress line.
func (r *runner) sample(ctx context.Context) {
	width := max(time.Second, (r.cfg.Profile.Duration() / 150).Round(time.Second))
	r.tl.setWidth(width)
	var dl *observe.DecisionLog
	if r.cfg.DecisionsFile != "" {
		var err error
		if dl, err = observe.NewDecisionLog(r.cfg.DecisionsFile); err != nil {
			r.log.Warn("autoscaler decisions", "err", err)
		}
	}
	var qs []string
	for _, q := range r.queues() {
		qs = append(qs, q, dlq.QueueName(q))
	}
	meter := &procstat.CPUMeter{}
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(r.cfg.SampleEvery)
	defer tick.Stop()
	lastLine := 0
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r.refresh(sctx)
		now := time.Now()
		off := now.Sub(r.start)
		warm := off >= r.cfg.Warmup
		depthNow := 0
		dlqNow := 0
		for _, d := range observe.ReadDepths(sctx, r.tr, qs) {
			if d.Err != nil {
				continue
			}
			r.tl.mu.Lock()
			series(r.tl.depth, d.Queue).Add(off, float64(d.Ready))
			if cur, seen := r.tl.maxDepth[d.Queue]; warm && !dlq.IsDLQ(d.Queue) && (!seen || int(d.Ready) > cur) {
				r.tl.maxDepth[d.Queue] = int(d.Ready)
			}
			r.tl.mu.Unlock()
			if dlq.IsDLQ(d.Queue) {
				dlqNow += int(d.Ready)
			} else {
				depthNow = max(depthNow, int(d.Ready))
			}
		}
		nWorkers := r.sampleWorkers(sctx, client, meter, now, off, warm)
		if dl != nil {
			if ds, err := dl.Poll(); err != nil {
				r.log.Warn("autoscaler decisions", "err", err)
			} else {
				r.chaosMu.Lock()
				r.decisions = append(r.decisions, ds...)
				r.chaosMu.Unlock()
				for _, d := range ds {
					r.tl.mu.Lock()
					r.tl.desired.Add(d.Time.Sub(r.start), float64(d.Desired))
					r.tl.mu.Unlock()
				}
			}
		}
		cancel()
		if r.cfg.Progress != nil {
			lastLine = r.progress(off, depthNow, dlqNow, nWorkers, lastLine)
		}
		select {
		case <-ctx.Done():
			if r.cfg.Progress != nil && lastLine > 0 {
				fmt.Fprint(r.cfg.Progress, "\r\x1b[K")
			}
			return
		case <-tick.C:
		}
	}
}

// sampleWorkers records each worker's CPU and memory: local workers from /proc, others
// from their /metrics. It returns how many workers are up.
func (r *runner) sampleWorkers(ctx context.Context, client *http.Client, meter *procstat.CPUMeter, now time.Time, off time.Duration, warm bool) int {
	n := 0
	record := func(name string, cpuSeconds float64, rssBytes int64) {
		n++
		r.tl.mu.Lock()
		defer r.tl.mu.Unlock()
		if rssBytes > 0 {
			series(r.tl.rss, name).Add(off, float64(rssBytes)/(1<<20))
		}
		if cores, ok := meter.Observe(name, now, cpuSeconds); ok {
			pct := cores / r.cfg.WorkerCPU * 100
			series(r.tl.cpu, name).Add(off, pct)
			if warm {
				r.tl.cpuAfter = append(r.tl.cpuAfter, pct)
			}
		}
	}
	var members []string
	if r.fleet != nil {
		for _, m := range r.fleet.Members() {
			members = append(members, strconv.Itoa(m.Slot))
			s, err := procstat.ReadProc(m.PID)
			if err != nil {
				continue // it has just died
			}
			record(m.Name, s.CPUSeconds, s.RSSBytes)
			if m.MetricsURL != "" {
				if vals, err := observe.Scrape(ctx, client, m.MetricsURL); err == nil {
					r.tl.mu.Lock()
					r.tl.scraped[m.Name] = vals
					r.tl.mu.Unlock()
				}
			}
		}
	}
	for _, u := range r.metricsURLs(members) {
		vals, err := observe.Scrape(ctx, client, u)
		if err != nil {
			continue
		}
		cpu, ok := vals["process_cpu_seconds_total"]
		if !ok {
			continue
		}
		record(u, cpu, int64(vals["process_resident_memory_bytes"]))
		r.tl.mu.Lock()
		r.tl.scraped[u] = vals
		r.tl.mu.Unlock()
	}
	r.tl.mu.Lock()
	r.tl.workers.Add(off, float64(n))
	r.tl.mu.Unlock()
	return n
}

// metricsURLs expands "{i}" in the configured /metrics URLs to every local worker slot.
func (r *runner) metricsURLs(slots []string) []string {
	var out []string
	for _, u := range r.cfg.MetricsURLs {
		if !strings.Contains(u, "{i}") {
			out = append(out, u)
			continue
		}
		for _, s := range slots {
			out = append(out, strings.ReplaceAll(u, "{i}", s))
		}
	}
	return out
}

func (r *runner) progress(off time.Duration, depth, dlqDepth, workers, lastLen int) int {
	c := r.track.counts()
	p99 := "-"
	if v, ok := r.tl.p99(); ok {
		p99 = strconv.FormatFloat(v, 'f', 2, 64) + "s"
	}
	r.lagMu.Lock()
	lag := 0.0
	if n := len(r.lags); n > 0 {
		lag = r.lags[n-1]
	}
	r.lagMu.Unlock()
	behind := ""
	if lag > 0.1 {
		behind = fmt.Sprintf("  BEHIND %.1fs", lag)
	}
	line := fmt.Sprintf("%s/%s  %s  sent %d  done %d  depth %d  dlq %d  workers %d  p99 %s%s",
		off.Round(time.Second), r.cfg.Profile.Duration().Round(time.Second), r.cfg.Profile.PhaseAt(off),
		c.published, c.published-c.pending, depth, dlqDepth, workers, p99, behind)
	fmt.Fprint(r.cfg.Progress, "\r"+line+"\x1b[K")
	return len(line)
}
