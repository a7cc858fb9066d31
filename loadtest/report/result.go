// Package report holds the load test's record of a run (result.json) and renders it: an
// HTML report with interactive charts (Chart.js, embedded so that the file works offline)
// and PNGs of the same charts (gonum/plot).
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"denis.io/fleet/loadtest/observe"
	"denis.io/fleet/loadtest/stats"
)

// Verdicts.
const (
	Pass = "PASS"
	Fail = "FAIL"
)

// Criterion is one go/no-go criterion with its measured value. Value is nil when it could
// not be measured (then Pass says whether unmeasured criteria were allowed).
type Criterion struct {
	Name      string   `json:"name"`
	Value     *float64 `json:"value"`
	Threshold float64  `json:"threshold"`
	Unit      string   `json:"unit"`
	// Op says how Value is compared with Threshold: "<" or "<=" or ">".
	Op       string `json:"op"`
	Pass     bool   `json:"pass"`
	Measured bool   `json:"measured"`
	Note     string `json:"note,omitempty"`
}

// ClassStats are the counts and latencies of one task class of the mix.
type ClassStats struct {
	Name         string        `json:"name"`
	Kind         string        `json:"kind"`
	Task         string        `json:"task"`
	Published    int           `json:"published"`
	Succeeded    int           `json:"succeeded"`
	Failed       int           `json:"failed"`
	DeadLettered int           `json:"dead_lettered"`
	Injected     int           `json:"injected"`
	LatencyS     stats.Summary `json:"latency_s"`
	// OverheadS is end to end minus the task's own work, injected tasks excluded.
	OverheadS stats.Summary `json:"overhead_s"`
}

// Producer describes how well the producer kept to its schedule.
type Producer struct {
	Scheduled int `json:"scheduled"`
	// LagS is the delay of each publish behind its scheduled time.
	LagS stats.Summary `json:"lag_s"`
	// Late counts publishes that started more than 100 ms behind schedule.
	Late          int  `json:"late"`
	FellBehind    bool `json:"fell_behind"`
	PublishErrors int  `json:"publish_errors"`
	Unpublished   int  `json:"unpublished"`
}

// Chaos lists the faults injected.
type Chaos struct {
	WorkersKilled   []string  `json:"workers_killed,omitempty"`
	KillTimesS      []float64 `json:"kill_times_s,omitempty"`
	BrokerRestarts  []float64 `json:"broker_restarts_s,omitempty"`
	ConnectionCuts  []float64 `json:"connection_cuts_s,omitempty"`
	RestartFailures []string  `json:"restart_failures,omitempty"`
}

// Result is everything result.json records.
type Result struct {
	Verdict      string `json:"verdict"`
	Published    int    `json:"published"`
	Succeeded    int    `json:"succeeded"`
	Failed       int    `json:"failed"`
	DeadLettered int    `json:"dead_lettered"`
	Revoked      int    `json:"revoked"`
	Queued       int    `json:"queued"`
	// InFlight: started (STARTED or RETRY written) but not finished when the run ended.
	InFlight   int `json:"in_flight"`
	Missing    int `json:"missing"`
	Duplicates int `json:"duplicates"`
	// DuplicatesSource says how duplicates were detected.
	DuplicatesSource string      `json:"duplicates_source"`
	Injected         int         `json:"injected"`
	InjectedFailures int         `json:"injected_failures"`
	Criteria         []Criterion `json:"criteria"`

	Profile      string    `json:"profile"`
	ExpectedRate float64   `json:"expected_rate"`
	Multiplier   float64   `json:"multiplier"`
	Broker       string    `json:"broker"`
	Backend      string    `json:"result_backend"`
	Queues       []string  `json:"queues"`
	Started      time.Time `json:"started"`
	DurationS    float64   `json:"duration_s"`
	WarmupS      float64   `json:"warmup_s"`
	Workers      string    `json:"workers"`

	LatencyS  stats.Summary `json:"latency_s"`
	OverheadS stats.Summary `json:"overhead_s"`
	// ThroughputPerS is completions per second over the send window.
	ThroughputPerS float64        `json:"throughput_per_s"`
	SentPerS       float64        `json:"sent_per_s"`
	MaxDepth       map[string]int `json:"max_depth"`
	// WorkersScraped is how many workers' /metrics were read; WorkerQueueWaitMeanS is the
	// mean of their celery_task_queue_wait_time (the x-fleet-sent-at header's use).
	WorkersScraped       int            `json:"workers_scraped"`
	WorkerQueueWaitMeanS *float64       `json:"worker_queue_wait_mean_s,omitempty"`
	FailuresByReason     map[string]int `json:"failures_by_reason"`
	DLQByReason          map[string]int `json:"dlq_by_reason"`
	Classes              []ClassStats   `json:"classes"`
	Producer             Producer       `json:"producer"`
	Chaos                Chaos          `json:"chaos"`
	// MissingIDs lists up to 100 missing task ids.
	MissingIDs []string           `json:"missing_ids,omitempty"`
	Decisions  []observe.Decision `json:"autoscaler_decisions,omitempty"`
	Notes      []string           `json:"notes,omitempty"`

	Charts []Chart `json:"charts"`
}

// Chart is one chart of the report: named series over time (seconds since the start).
type Chart struct {
	ID     string         `json:"id"`
	Title  string         `json:"title"`
	YLabel string         `json:"y_label"`
	Series []stats.Series `json:"series"`
	// Threshold draws a horizontal line (0: none).
	Threshold float64 `json:"threshold,omitempty"`
}

// WriteJSON writes r as dir/result.json.
func WriteJSON(dir string, r *Result) (string, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", fmt.Errorf("report: encode result: %w", err)
	}
	p := filepath.Join(dir, "result.json")
	if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	return p, nil
}
