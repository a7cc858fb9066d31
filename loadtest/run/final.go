package run

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/loadtest/mix"
	"denis.io/fleet/loadtest/report"
	"denis.io/fleet/loadtest/stats"
)

// found is what a walk of the queues and dead-letter queues found for our tasks.
type found struct {
	queued map[string]bool
	dlq    map[string]string // id → dead-letter reason
}

// walkQueues reads the dead-letter queues (always) and, when some tasks have no outcome,
// the task queues, collecting the ids of this run's messages. Nothing is changed.
func (r *runner) walkQueues(ctx context.Context, alsoQueues bool) (found, error) {
	f := found{queued: map[string]bool{}, dlq: map[string]string{}}
	ours := func(s *broker.Stored) (string, bool) {
		id, _ := s.Message.Headers["id"].(string)
		if id == "" {
			return "", false
		}
		r.track.mu.Lock()
		_, ok := r.track.byID[id]
		r.track.mu.Unlock()
		return id, ok
	}
	for _, q := range r.queues() {
		err := r.tr.Walk(ctx, dlq.QueueName(q), func(s *broker.Stored) (broker.Decision, error) {
			if id, ok := ours(s); ok {
				reason, _ := s.Message.Headers[dlq.HeaderReason].(string)
				f.dlq[id] = reason
			}
			return broker.Decision{Verdict: broker.Keep}, nil
		}, nil)
		if err != nil {
			return f, fmt.Errorf("run: read %s: %w", dlq.QueueName(q), err)
		}
		if !alsoQueues {
			continue
		}
		err = r.tr.Walk(ctx, q, func(s *broker.Stored) (broker.Decision, error) {
			if id, ok := ours(s); ok {
				f.queued[id] = true
			}
			return broker.Decision{Verdict: broker.Keep}, nil
		}, nil)
		if err != nil {
			return f, fmt.Errorf("run: read %s: %w", q, err)
		}
	}
	return f, nil
}

// account classifies every published task, computes the measures and judges them.
func (r *runner) account(ctx context.Context, sendEnd, drainEnd time.Duration) (*report.Result, error) {
	recs := r.track.snapshot()
	pending := r.track.counts().pending
	f, err := r.walkQueues(ctx, pending > 0)
	if err != nil {
		return nil, err
	}
	cfg := r.cfg
	res := &report.Result{
		Profile: cfg.Profile.Name, ExpectedRate: cfg.Level.Expected, Multiplier: cfg.Level.Multiplier,
		Broker: redact(cfg.Broker), Backend: redact(cfg.ResultBackend), Queues: r.queues(),
		Started: r.start, DurationS: cfg.Profile.Duration().Seconds(), WarmupS: cfg.Warmup.Seconds(),
		Workers: r.workerDesc, FailuresByReason: map[string]int{}, DLQByReason: map[string]int{},
		MaxDepth: map[string]int{},
		DuplicatesSource: "STARTED states written more often than the task's own retries explain, or its outcome written twice " +
			"(the result backend's PUBLISH; local workers run with track_started; workers without it show only repeated outcomes)",
	}
	classes := map[string]*report.ClassStats{}
	for _, c := range cfg.Mix.Classes {
		classes[c.Name] = &report.ClassStats{Name: c.Name, Kind: c.Kind, Task: c.Task}
	}
	classLat := map[string][]float64{}
	classOver := map[string][]float64{}
	var lat, overhead []float64
	var matTotal, matOK int
	var missing []string
	var lastDone time.Time
	for _, rec := range recs {
		if !rec.published {
			res.Producer.Unpublished++
			continue
		}
		res.Published++
		cs := classes[rec.class.Name]
		cs.Published++
		reason, inDLQ := f.dlq[rec.id]
		rec.final = Classify(Final{Outcome: rec.outcome, InQueue: f.queued[rec.id], InDLQ: inDLQ})
		if rec.injected != mix.InjectedNone {
			res.Injected++
			cs.Injected++
			if rec.injected == mix.InjectedFailure {
				res.InjectedFailures++
			}
		}
		if rec.duplicate() {
			res.Duplicates++
		}
		switch rec.final {
		case Succeeded:
			res.Succeeded++
			cs.Succeeded++
		case Failed:
			res.Failed++
			cs.Failed++
			key := rec.outcome.Reason
			if rec.injected == mix.InjectedFailure {
				key = "injected: " + key
			}
			res.FailuresByReason[key]++
		case DeadLettered:
			res.DeadLettered++
			cs.DeadLettered++
			if reason == "" {
				reason = "unknown"
			}
			if rec.injected == mix.InjectedFailure {
				reason = "injected: " + reason
			}
			res.DLQByReason[reason]++
		case Revoked:
			res.Revoked++
		case Queued:
			res.Queued++
		case InFlight:
			res.InFlight++
		case Missing:
			res.Missing++
			missing = append(missing, rec.id)
		}
		if rec.class.Kind == mix.KindMaterializer && rec.injected == mix.InjectedNone {
			matTotal++
			if rec.final == Succeeded {
				matOK++
			}
		}
		if rec.outcome.Ready() && !rec.outcome.DateDone.IsZero() {
			l := rec.outcome.DateDone.Sub(rec.due).Seconds()
			lat = append(lat, l)
			classLat[rec.class.Name] = append(classLat[rec.class.Name], l)
			if rec.outcome.DateDone.After(lastDone) {
				lastDone = rec.outcome.DateDone
			}
			if rec.injected == mix.InjectedNone && rec.nominal >= 0 {
				overhead = append(overhead, l-rec.nominal)
				classOver[rec.class.Name] = append(classOver[rec.class.Name], l-rec.nominal)
			}
		}
	}
	if len(missing) > 100 {
		missing = missing[:100]
	}
	res.MissingIDs = missing
	for _, c := range cfg.Mix.Classes {
		cs := classes[c.Name]
		cs.LatencyS = stats.Summarize(classLat[c.Name])
		cs.OverheadS = stats.Summarize(classOver[c.Name])
		res.Classes = append(res.Classes, *cs)
	}
	res.LatencyS = stats.Summarize(lat)
	res.OverheadS = stats.Summarize(overhead)
	if sendEnd > 0 {
		res.SentPerS = float64(res.Published) / sendEnd.Seconds()
	}
	if !lastDone.IsZero() {
		if span := lastDone.Sub(r.start).Seconds(); span > 0 {
			res.ThroughputPerS = float64(len(lat)) / span
		}
	}

	// Producer.
	r.lagMu.Lock()
	lags := slices.Clone(r.lags)
	r.lagMu.Unlock()
	res.Producer.Scheduled = len(recs)
	res.Producer.LagS = stats.Summarize(lags)
	for _, l := range lags {
		if l > 0.1 {
			res.Producer.Late++
		}
	}
	res.Producer.PublishErrors = int(r.publishErrors.Load())
	res.Producer.FellBehind = res.Producer.LagS.P99 > cfg.Thresholds.ProducerLagP99 || res.Producer.Unpublished > 0
	if res.Producer.FellBehind {
		r.addNote(fmt.Sprintf("The producer fell behind its schedule: lag p99 %.3f s, max %.3f s, %d publishes more than 100 ms late, %d never published. "+
			"The fleet was offered less than the planned load; run the load test on another machine or with more --publishers.",
			res.Producer.LagS.P99, res.Producer.LagS.Max, res.Producer.Late, res.Producer.Unpublished))
	}

	// Measures and verdict.
	r.tl.mu.Lock()
	maps.Copy(res.MaxDepth, r.tl.maxDepth)
	cpuAfter := slices.Clone(r.tl.cpuAfter)
	var waitSum, waitCount float64
	for _, vals := range r.tl.scraped {
		waitSum += vals["celery_task_queue_wait_time_sum"]
		waitCount += vals["celery_task_queue_wait_time_count"]
	}
	res.WorkersScraped = len(r.tl.scraped)
	r.tl.mu.Unlock()
	if waitCount > 0 {
		res.WorkerQueueWaitMeanS = ptr(waitSum / waitCount)
		r.addNote(fmt.Sprintf("The workers' own celery_task_queue_wait_time (from the %s header, scraped from %d /metrics endpoints): mean %.3f s over %.0f tasks.",
			broker.HeaderSentAt, res.WorkersScraped, waitSum/waitCount, waitCount))
	}
	m := Measured{Notes: map[string]string{}}
	if res.LatencyS.Count > 0 {
		m.E2EP99 = ptr(res.LatencyS.P99)
	} else {
		m.Notes[CritE2E] = "no task completed"
	}
	maxQ := 0
	for _, q := range cfg.Queues {
		maxQ = max(maxQ, res.MaxDepth[q])
	}
	for q, d := range res.MaxDepth {
		if !dlq.IsDLQ(q) {
			maxQ = max(maxQ, d)
		}
	}
	m.QueueMax = ptr(float64(maxQ))
	dlqOurs := 0
	for id := range f.dlq {
		if rec := r.track.byID[id]; rec != nil && rec.injected == mix.InjectedNone {
			dlqOurs++
		}
	}
	m.DLQ = ptr(float64(dlqOurs))
	if len(cpuAfter) > 0 {
		c := stats.Summarize(cpuAfter)
		m.CPUP95 = ptr(c.P95)
	} else {
		m.Notes[CritCPU] = "no worker CPU sample: start local workers (--local-workers) or give their --metrics-url"
	}
	if matTotal > 0 {
		m.MaterializerSuccess = ptr(float64(matOK) / float64(matTotal) * 100)
	} else {
		m.Notes[CritMaterializer] = "the mix has no materializer class"
	}
	if res.OverheadS.Count > 0 {
		m.OverheadP99 = ptr(res.OverheadS.P99)
	} else {
		m.Notes[CritOverhead] = "no completed task with a known service time (diag.sleep / diag.cpu)"
	}
	m.Missing = ptr(float64(res.Missing))
	if len(lags) > 0 {
		m.ProducerLagP99 = ptr(res.Producer.LagS.P99)
	}
	m.Notes[CritOverhead] = joinNote(m.Notes[CritOverhead], "end to end minus the work the task was asked to do (diag.sleep seconds, diag.cpu ms), injected tasks excluded")
	m.Notes[CritCPU] = joinNote(m.Notes[CritCPU], fmt.Sprintf("percent of %g core(s) per worker, samples after warm-up", cfg.WorkerCPU))
	res.Criteria, res.Verdict = Judge(m, cfg.Thresholds)

	r.chaosMu.Lock()
	res.Chaos = r.chaos
	res.Decisions = r.decisions
	notes := slices.Clone(r.notes)
	r.chaosMu.Unlock()
	if cfg.MixNote != "" {
		notes = append([]string{cfg.MixNote}, notes...)
	}
	if res.Missing == 0 && pending > 0 {
		notes = append(notes, fmt.Sprintf("%d tasks had no outcome when the drain ended; they were found in their queues or running.", pending))
	}
	notes = append(notes, fmt.Sprintf("Latency is measured from each message's scheduled send time (open loop, no coordinated omission) to the date_done its worker wrote; "+
		"messages carry their actual send time in the %s header, which the worker reads for celery_task_queue_wait_time.", broker.HeaderSentAt))
	res.Notes = notes
	res.Charts = r.charts(drainEnd)
	return res, nil
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func ptr(v float64) *float64 { return &v }

// charts builds the report's charts from the timeline.
func (r *runner) charts(_ time.Duration) []report.Chart {
	t := r.tl
	t.mu.Lock()
	defer t.mu.Unlock()
	target := stats.Series{Name: "target rate"}
	step := max(time.Second, r.cfg.Profile.Duration()/300)
	for off := time.Duration(0); off < r.cfg.Profile.Duration(); off += step {
		target.Add(off, r.cfg.Profile.RateAt(off))
	}
	if segs := r.cfg.Profile.Segments; len(segs) > 0 {
		target.Add(r.cfg.Profile.Duration(), segs[len(segs)-1].To)
	}
	sorted := func(m map[string]*stats.Series) []stats.Series {
		keys := slices.Collect(maps.Keys(m))
		sort.Strings(keys)
		out := make([]stats.Series, 0, len(keys))
		for _, k := range keys {
			out = append(out, *m[k])
		}
		return out
	}
	workers := []stats.Series{t.workers}
	if len(t.desired.Points) > 0 {
		workers = append(workers, t.desired)
	}
	return []report.Chart{
		{ID: "rate", Title: "Rate: target, sent and completed (tasks/s)", YLabel: "tasks/s",
			Series: []stats.Series{target, t.sentB.Rate("sent"), t.doneB.Rate("completed")}},
		{ID: "depth", Title: "Queue depth (ready messages) and dead-letter queues", YLabel: "messages",
			Series: sorted(t.depth), Threshold: r.cfg.Thresholds.QueueMax},
		{ID: "latency", Title: "End-to-end latency percentiles (by completion time)", YLabel: "seconds",
			Series: []stats.Series{t.latB.Percentile("p50", 50), t.latB.Percentile("p95", 95), t.latB.Percentile("p99", 99)}},
		{ID: "workers", Title: "Workers up (and autoscaler's desired replicas)", YLabel: "workers", Series: workers},
		{ID: "cpu", Title: "Worker CPU (% of each worker's CPU)", YLabel: "% CPU", Series: sorted(t.cpu), Threshold: r.cfg.Thresholds.CPUP95},
		{ID: "memory", Title: "Worker memory (RSS)", YLabel: "MiB", Series: sorted(t.rss)},
	}
}

func redact(raw string) string { return connect.Redact(raw) }
