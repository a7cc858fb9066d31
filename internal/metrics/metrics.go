// Package metrics is the worker's Prometheus side: the registry behind /metrics, the
// health endpoints (/healthz, /readyz) and optional pprof, the celery-exporter compatible
// task and worker series (same names, types, label keys and bucket edges, so the
// celery-mixin dashboards and alerts work on Go workers unchanged; peers.md §2a), and the
// fleet's own fleet_* series for what those tools cannot see: queue depth per priority,
// the age of the oldest message, messages held for an ETA, broker connection state,
// draining, abandoned goroutines, and per-task outcomes.
//
// Queue depth is never read per scrape: a sampler reads the broker at a bounded rate, and
// on a Redis broker at most one worker per queue at a time (the others read its result).
package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Bucket edges of celery-exporter (Python prometheus_client's defaults for the runtime,
// its own for the queue wait), so dashboard quantiles match.
var (
	RuntimeBuckets   = []float64{.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10}
	QueueWaitBuckets = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}
)

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// HostLabel is celery-exporter's hostname label: the part of the node name after the
// first "@" (celery@pod-x → pod-x); the whole name when it has none.
func HostLabel(nodename string) string {
	if _, host, ok := strings.Cut(nodename, "@"); ok {
		return host
	}
	return nodename
}
