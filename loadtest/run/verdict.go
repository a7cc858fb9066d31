package run

import (
	"fmt"

	"denis.io/fleet/loadtest/report"
)

// Thresholds are the go/no-go criteria's limits (the seed's values by default).
type Thresholds struct {
	// E2EP99 bounds the p99 end-to-end latency, seconds ("jobs complete < 5 min").
	E2EP99 float64
	// QueueMax bounds the deepest queue after warm-up ("queue length stable < 100").
	QueueMax float64
	// DLQMax is the number of dead letters allowed, injected failures excluded.
	DLQMax float64
	// CPUP95 bounds the p95 of worker CPU, percent of the CPU each worker is given.
	CPUP95 float64
	// MaterializerSuccess is the minimum success rate of materializer jobs, percent.
	MaterializerSuccess float64
	// OverheadP99 bounds the p99 of end-to-end latency minus the task's own work, seconds (F1).
	OverheadP99 float64
	// Missing is the number of lost tasks allowed.
	Missing float64
	// ProducerLagP99 bounds how far behind schedule the producer may fall, seconds: past it
	// the fleet was not offered the load the run claims.
	ProducerLagP99 float64
	// AllowUnmeasured lets a criterion that could not be measured pass (e.g. worker CPU of
	// a remote fleet without --metrics-url).
	AllowUnmeasured bool
}

// DefaultThresholds are the seed's criteria.
func DefaultThresholds() Thresholds {
	return Thresholds{E2EP99: 300, QueueMax: 100, DLQMax: 0, CPUP95: 70, MaterializerSuccess: 95,
		OverheadP99: 0.5, Missing: 0, ProducerLagP99: 1}
}

// Measured are the values the criteria judge; nil pointers were not measured.
type Measured struct {
	E2EP99              *float64
	QueueMax            *float64
	DLQ                 *float64
	CPUP95              *float64
	MaterializerSuccess *float64
	OverheadP99         *float64
	Missing             *float64
	ProducerLagP99      *float64
	// Notes explain unmeasured values, by criterion name.
	Notes map[string]string
}

// Criterion names (result.json's criteria[].name); the seed's defaults are in
// DefaultThresholds.
const (
	CritE2E          = "jobs complete: p99 end to end"
	CritQueue        = "queue length stable: max after warm-up"
	CritDLQ          = "dead letters, injected failures excluded"
	CritCPU          = "worker CPU: p95"
	CritMaterializer = "materializer success rate"
	CritOverhead     = "latency overhead: p99 (F1)"
	CritMissing      = "lost tasks (missing)"
	CritProducer     = "producer on schedule: lag p99"
)

// Judge compares m with th and returns the criteria and the verdict.
func Judge(m Measured, th Thresholds) ([]report.Criterion, string) {
	type spec struct {
		name  string
		v     *float64
		th    float64
		op    string
		unit  string
		scale float64 // displayed value = v*scale
	}
	specs := []spec{
		{CritE2E, m.E2EP99, th.E2EP99, "<", "s", 1},
		{CritQueue, m.QueueMax, th.QueueMax, "<", "messages", 1},
		{CritDLQ, m.DLQ, th.DLQMax, "<=", "messages", 1},
		{CritCPU, m.CPUP95, th.CPUP95, "<", "%", 1},
		{CritMaterializer, m.MaterializerSuccess, th.MaterializerSuccess, ">", "%", 1},
		{CritOverhead, m.OverheadP99, th.OverheadP99 * 1000, "<", "ms", 1000},
		{CritMissing, m.Missing, th.Missing, "<=", "tasks", 1},
		{CritProducer, m.ProducerLagP99, th.ProducerLagP99, "<", "s", 1},
	}
	verdict := report.Pass
	out := make([]report.Criterion, 0, len(specs))
	for _, s := range specs {
		c := report.Criterion{Name: s.name, Threshold: s.th, Op: s.op, Unit: s.unit, Measured: s.v != nil, Note: m.Notes[s.name]}
		if s.v == nil {
			c.Pass = th.AllowUnmeasured
			if c.Note == "" {
				c.Note = "not measured"
			}
		} else {
			v := *s.v * s.scale
			c.Value = &v
			switch s.op {
			case "<":
				c.Pass = v < s.th
			case "<=":
				c.Pass = v <= s.th
			case ">":
				c.Pass = v > s.th
			default:
				panic(fmt.Sprintf("run: criterion %q: unknown op %q", s.name, s.op))
			}
		}
		if !c.Pass {
			verdict = report.Fail
		}
		out = append(out, c)
	}
	return out, verdict
}
