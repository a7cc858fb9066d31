package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"denis.io/fleet/internal/autoscale"
	"denis.io/fleet/internal/result"
)

// TestLocalTwoXStep runs `autoscaler run --target local` supervising real worker processes
// on a Redis queue and replays the 2× step of autoscaling.md §6.2 (T1) with diag.sleep(1)
// tasks on workers of 2 slots: λ0 = 4/s (3 workers at ρ* ≤ 0.7), then 8/s, then λ0 again.
// The fleet must grow, the ready queue must stay under 100 once the reaction time has passed,
// the fleet must shrink after the step, and no task may be killed or handed back by a scale-in:
// every worker that was stopped drained, and every task succeeded.
func TestLocalTwoXStep(t *testing.T) {
	if testing.Short() {
		t.Skip("local autoscaler e2e (several minutes); skipped with -short")
	}
	asBin, workerBin := binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	queue, pool := unique("as-local"), unique("lw")
	b := queueBroker(t, queue)
	rdb := redisClient(t)
	dir := t.TempDir()
	decisionsPath := filepath.Join(dir, "decisions.jsonl")
	workerLogs := filepath.Join(dir, "workers")
	if err := os.MkdirAll(workerLogs, 0o755); err != nil {
		t.Fatal(err)
	}
	// The workers' remote control declares the pidbox binding in this database; remove it
	// afterwards unless it was there before.
	if n, _ := rdb.Exists(ctx, "_kombu.binding.celery.pidbox").Result(); n == 0 {
		t.Cleanup(func() { rdb.Del(context.Background(), "_kombu.binding.celery.pidbox") })
	}
	var idsMu sync.Mutex
	var ids []string
	t.Cleanup(func() {
		idsMu.Lock()
		defer idsMu.Unlock()
		for i := 0; i < len(ids); i += 500 {
			keys := make([]string, 0, 500)
			for _, id := range ids[i:min(i+500, len(ids))] {
				keys = append(keys, result.KeyPrefix+id)
			}
			rdb.Del(context.Background(), keys...)
		}
	})

	const (
		lambda0  = 4.0
		warm     = 50 * time.Second
		step     = 60 * time.Second
		reaction = 20 * time.Second // detection (≈10 s) + a worker's start + two reconciles
	)
	as := startAutoscaler(t, asBin, "autoscaler", nil, "run", "--target", "local", "--name", pool,
		"--worker-cmd", workerBin+" -c 2 --prefetch-multiplier 1 --result-backend "+redisURL+" --shutdown-timeout 30s --heartbeat-interval 1 --log-level info",
		"-b", redisURL, "-Q", queue, "-c", "2", "--min", "1", "--max", "12",
		"--interval", "2s", "--pod-start", "3s", "--task-seconds", "1s", "--stale-after", "10s",
		"--scale-down-window", "20s", "--scale-down-period", "10s", "--reversal-guard", "30s",
		"--grace", "40s", "--metrics-addr", "", "--decisions-file", decisionsPath, "--worker-log-dir", workerLogs)

	// The load: an open-loop producer at rate(), and a depth sampler.
	start := time.Now()
	var rateMu sync.Mutex
	rate := lambda0
	setRate := func(r float64) { rateMu.Lock(); rate = r; rateMu.Unlock() }
	type sample struct {
		at    time.Duration
		depth int64
	}
	var (
		smpMu   sync.Mutex
		samples []sample
	)
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var pubErr error
	wg.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		acc := 0.0
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			rateMu.Lock()
			acc += rate / 4
			rateMu.Unlock()
			n := int(acc)
			acc -= float64(n)
			got, err := publishSleeps(loadCtx, b, queue, n, 1)
			idsMu.Lock()
			ids = append(ids, got...)
			idsMu.Unlock()
			if err != nil && loadCtx.Err() == nil {
				pubErr = err
				return
			}
		}
	})
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			d, err := b.Depth(loadCtx, queue)
			if err == nil {
				smpMu.Lock()
				samples = append(samples, sample{time.Since(start), d})
				smpMu.Unlock()
			}
		}
	})
	sleep := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}

	sleep(warm)
	stepAt := time.Since(start)
	before := lastDesired(readDecisions(t, decisionsPath), start.Add(stepAt))
	setRate(2 * lambda0)
	sleep(step)
	endAt := time.Since(start)
	setRate(lambda0)
	peak := 0
	eventually(t, 4*time.Minute, "a scale-in after the step", func() (bool, string) {
		ds := readDecisions(t, decisionsPath)
		peak = 0
		for _, d := range ds {
			if d.Time.After(start.Add(stepAt)) {
				peak = max(peak, d.Desired)
			}
		}
		for _, d := range ds {
			if d.Time.After(start.Add(endAt)) && d.Desired < d.Current && d.Desired < peak {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d decisions, peak %d", len(ds), peak)
	})
	stopLoad()
	wg.Wait()
	if pubErr != nil {
		t.Fatalf("publishing: %v", pubErr)
	}

	// Every task completes (the fleet keeps its floor of one worker).
	idsMu.Lock()
	all := append([]string(nil), ids...)
	idsMu.Unlock()
	eventually(t, 4*time.Minute, "every task's result", func() (bool, string) {
		missing, failed := 0, 0
		for i := 0; i < len(all); i += 500 {
			keys := make([]string, 0, 500)
			for _, id := range all[i:min(i+500, len(all))] {
				keys = append(keys, result.KeyPrefix+id)
			}
			vals, err := rdb.MGet(ctx, keys...).Result()
			if err != nil {
				return false, err.Error()
			}
			for _, v := range vals {
				s, ok := v.(string)
				if !ok {
					missing++
					continue
				}
				var meta struct {
					Status string `json:"status"`
				}
				if json.Unmarshal([]byte(s), &meta) != nil || meta.Status != "SUCCESS" {
					failed++
				}
			}
		}
		if failed > 0 {
			t.Fatalf("%d of %d tasks did not succeed (killed or interrupted)", failed, len(all))
		}
		return missing == 0, fmt.Sprintf("%d of %d results missing", missing, len(all))
	})
	as.stop(t, syscall.SIGTERM, 90*time.Second) // SIGTERM: the workers drain, then the autoscaler exits

	// The fleet grew for the step and came back down.
	if peak <= before {
		t.Errorf("the fleet did not grow for the 2× step: %d before, peak %d", before, peak)
	}
	// The queue stayed under 100 once the reaction time had passed.
	smpMu.Lock()
	maxDepth, maxAll := int64(0), int64(0)
	for _, s := range samples {
		maxAll = max(maxAll, s.depth)
		if s.at >= stepAt+reaction {
			maxDepth = max(maxDepth, s.depth)
		}
	}
	smpMu.Unlock()
	if maxDepth >= 100 {
		t.Errorf("ready queue reached %d after the reaction time (max over the run %d)", maxDepth, maxAll)
	}
	// No worker was killed, and no stopped worker handed a task back.
	for _, rec := range logLines(t, as.log) {
		if msg, _ := rec["msg"].(string); strings.Contains(msg, "killing it") {
			t.Errorf("a worker was killed: %v", rec)
		}
	}
	files, _ := filepath.Glob(filepath.Join(workerLogs, "*.log"))
	stopped := 0
	for _, f := range files {
		for _, rec := range logLines(t, f) {
			msg, _ := rec["msg"].(string)
			switch {
			case strings.HasPrefix(msg, "shutdown timeout"), strings.HasPrefix(msg, "shutdown aborted"):
				t.Errorf("%s: %v", filepath.Base(f), rec)
			case msg == "worker stopping: fetching stopped" && rec["handed_back"] != 0.0:
				t.Errorf("%s handed back prefetched tasks: %v", filepath.Base(f), rec)
			case msg == "worker stopped":
				stopped++
				if rec["handed_back_running"] != 0.0 {
					t.Errorf("%s handed back running tasks: %v", filepath.Base(f), rec)
				}
			}
		}
	}
	ds := readDecisions(t, decisionsPath)
	rules := map[autoscale.Rule]int{}
	for _, d := range ds {
		if d.Changed() {
			rules[d.Rule]++
		}
	}
	t.Logf("%d tasks; %d worker logs, %d clean stops; fleet %d before the step, peak %d; max ready %d after the reaction time (%d overall); writes by rule %v",
		len(all), len(files), stopped, before, peak, maxDepth, maxAll, rules)
	if stopped < len(files) {
		t.Errorf("%d of %d workers did not log a clean stop", len(files)-stopped, len(files))
	}
}

// lastDesired is the count the last decision before at asked for.
func lastDesired(ds []autoscale.Decision, at time.Time) int {
	n := 0
	for _, d := range ds {
		if d.Time.Before(at) {
			n = d.Desired
		}
	}
	return n
}
