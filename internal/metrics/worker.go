package metrics

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// WorkerState is what the worker collector reads at scrape time.
type WorkerState struct {
	Up        bool           // consuming (false once shutdown started)
	Active    int            // tasks executing now
	Reserved  map[string]int // prefetched, not started, by queue
	Scheduled map[string]int // held for their ETA, by queue
	Draining  bool           // shutdown or drain in progress: no new work is taken
	Abandoned int            // handler goroutines still running after their hard time limit
}

// WorkerCollector exports the worker's own state at scrape time: celery-exporter's
// celery_worker_up and celery_worker_tasks_active, and fleet_worker_* gauges.
type WorkerCollector struct {
	host     string
	celery   bool
	state    func() WorkerState
	lastBeat atomic.Uint64 // math.Float64bits of epoch seconds

	up, active, reserved, scheduled, draining, abandoned, beat *prometheus.Desc
}

// NewWorkerCollector returns the collector for the worker named nodename; state is called
// on every scrape and must be cheap.
func NewWorkerCollector(nodename string, celery bool, state func() WorkerState) *WorkerCollector {
	host := HostLabel(nodename)
	hl := prometheus.Labels{"hostname": host}
	return &WorkerCollector{
		host: host, celery: celery, state: state,
		up:        prometheus.NewDesc("celery_worker_up", "Indicates if a worker has recently sent a heartbeat.", nil, hl),
		active:    prometheus.NewDesc("celery_worker_tasks_active", "The number of tasks the worker is currently processing", nil, hl),
		reserved:  prometheus.NewDesc("fleet_worker_reserved_messages", "Messages this worker holds unacknowledged, prefetched but not started, by queue.", []string{"queue"}, hl),
		scheduled: prometheus.NewDesc("fleet_worker_eta_held_messages", "Messages this worker holds unacknowledged until their ETA (countdown, retry delay), by queue.", []string{"queue"}, hl),
		draining:  prometheus.NewDesc("fleet_worker_draining", "1 while the worker drains (shutdown or drain in progress): it takes no new work.", nil, hl),
		abandoned: prometheus.NewDesc("fleet_worker_abandoned_goroutines", "Task handler goroutines still running after their hard time limit expired.", nil, hl),
		beat:      prometheus.NewDesc("fleet_worker_last_heartbeat_timestamp_seconds", "When the worker last sent its heartbeat (events and the Redis worker_seen key), epoch seconds.", nil, hl),
	}
}

// Heartbeat records a heartbeat tick (an events Beat callback).
func (c *WorkerCollector) Heartbeat(now time.Time) {
	c.lastBeat.Store(math.Float64bits(float64(now.UnixMicro()) / 1e6))
}

// Describe implements prometheus.Collector.
func (c *WorkerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.active, c.reserved, c.scheduled, c.draining, c.abandoned, c.beat} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *WorkerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.state()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if c.celery {
		gauge(c.up, b2f(st.Up))
		gauge(c.active, float64(st.Active))
	}
	for q, n := range st.Reserved {
		gauge(c.reserved, float64(n), q)
	}
	for q, n := range st.Scheduled {
		gauge(c.scheduled, float64(n), q)
	}
	gauge(c.draining, b2f(st.Draining))
	gauge(c.abandoned, float64(st.Abandoned))
	if b := c.lastBeat.Load(); b != 0 {
		gauge(c.beat, math.Float64frombits(b))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
