package autoscale

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Recorders hands every decision to each of its recorders in order.
type Recorders []Recorder

// Record implements Recorder.
func (rs Recorders) Record(ctx context.Context, d Decision, applied bool, err error) {
	for _, r := range rs {
		if r != nil {
			r.Record(ctx, d, applied, err)
		}
	}
}

// ---- Prometheus ----

// Metrics are the autoscaler's Prometheus series, shared by its pools.
type Metrics struct {
	desired, current, conditions, ages *prometheus.GaugeVec
	decisions, writes                  *prometheus.CounterVec
	leader                             prometheus.Gauge
}

// NewMetrics registers the series on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_autoscaler_desired_replicas",
			Help: "Replicas the last decision asked for, per Deployment."}, []string{"deployment"}),
		current: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_autoscaler_current_replicas",
			Help: "spec.replicas the last decision observed, per Deployment."}, []string{"deployment"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_autoscaler_decisions_total",
			Help: "Decisions by the rule that decided or limited them."}, []string{"deployment", "rule"}),
		ages: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_autoscaler_signal_age_seconds",
			Help: "Age of the oldest sample of each signal (broker, heartbeats, cpu) at the last decision; absent when the signal had none."},
			[]string{"deployment", "signal"}),
		conditions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_autoscaler_condition",
			Help: "Status conditions of the last decision (MetricsUnavailable, Stopped, ScalingActive): 1 true, 0 false."},
			[]string{"deployment", "type"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_autoscaler_scale_writes_total",
			Help: "Replica count writes, by result (applied, failed, dry-run)."}, []string{"deployment", "result"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleet_autoscaler_leader",
			Help: "1 while this replica holds the leader Lease (or runs without election), else 0."}),
	}
	for _, c := range []prometheus.Collector{m.desired, m.current, m.decisions, m.ages, m.conditions, m.writes, m.leader} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("autoscale metrics: %w", err)
		}
	}
	return m, nil
}

// SetLeader sets fleet_autoscaler_leader.
func (m *Metrics) SetLeader(on bool) {
	if on {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

// MetricsRecorder records one pool's decisions into Metrics; Ages (optional) gives the
// signal ages of the observation the decision was made from.
type MetricsRecorder struct {
	M      *Metrics
	Ages   func() Ages
	DryRun bool
}

// Record implements Recorder.
func (r MetricsRecorder) Record(_ context.Context, d Decision, applied bool, err error) {
	m, w := r.M, d.Workload
	m.desired.WithLabelValues(w).Set(float64(d.Desired))
	m.current.WithLabelValues(w).Set(float64(d.Current))
	m.decisions.WithLabelValues(w, string(d.Rule)).Inc()
	for _, c := range d.Conditions {
		v := 0.0
		if c.Status {
			v = 1
		}
		m.conditions.WithLabelValues(w, c.Type).Set(v)
	}
	if d.Changed() {
		switch {
		case r.DryRun:
			m.writes.WithLabelValues(w, "dry-run").Inc()
		case applied:
			m.writes.WithLabelValues(w, "applied").Inc()
		case err != nil:
			m.writes.WithLabelValues(w, "failed").Inc()
		}
	}
	if r.Ages != nil {
		a := r.Ages()
		for sig, v := range map[string]float64{"broker": a.Broker, "heartbeats": a.Heartbeats, "cpu": a.CPU} {
			if math.IsNaN(v) {
				m.ages.DeleteLabelValues(w, sig)
			} else {
				m.ages.WithLabelValues(w, sig).Set(v)
			}
		}
	}
}

// ---- Kubernetes Events ----

// EventRecorder writes a Kubernetes Event on the Deployment for every replica change (and
// every failed write), and for every change of a status condition, so that `kubectl
// describe deployment` shows why it was scaled. It needs only create on events.
type EventRecorder struct {
	Client    kubernetes.Interface
	Namespace string
	// Workload gives the Deployment's UID (the last observation's).
	Workload *KubeWorkload
	// Instance names this autoscaler replica (reportingInstance).
	Instance string
	Log      *slog.Logger

	mu      sync.Mutex
	conds   map[string]bool
	lastErr string
	errAt   time.Time
	failing bool
}

// Record implements Recorder.
func (r *EventRecorder) Record(ctx context.Context, d Decision, applied bool, err error) {
	type ev struct{ typ, reason, msg string }
	var evs []ev
	r.mu.Lock()
	if r.conds == nil {
		r.conds = map[string]bool{}
	}
	for _, c := range d.Conditions {
		prev, seen := r.conds[c.Type]
		r.conds[c.Type] = c.Status
		if seen && prev == c.Status {
			continue
		}
		if !seen && c.Status == (c.Type == ConditionScalingActive) {
			continue // the normal state at start: nothing to report
		}
		typ := corev1.EventTypeNormal
		if c.Status == (c.Type != ConditionScalingActive) {
			typ = corev1.EventTypeWarning
		}
		state := "False"
		if c.Status {
			state = "True"
		}
		msg := fmt.Sprintf("%s=%s (%s)", c.Type, state, c.Reason)
		if c.Message != "" {
			msg += ": " + c.Message
		}
		evs = append(evs, ev{typ, c.Type + state, msg})
	}
	switch {
	case d.Changed() && applied:
		reason := "ScaledUp"
		switch {
		case d.Rule == RuleEmergencyStop:
			reason = "EmergencyStop"
		case d.Desired < d.Current:
			reason = "ScaledDown"
		}
		evs = append(evs, ev{corev1.EventTypeNormal, reason, fmt.Sprintf("%d → %d replicas (rule %s): %s; inputs: %s",
			d.Current, d.Desired, d.Rule, d.Reason, inputsLine(d))})
	case d.Changed() && err != nil:
		if msg := err.Error(); msg != r.lastErr || time.Since(r.errAt) > 5*time.Minute {
			r.lastErr, r.errAt = msg, time.Now()
			evs = append(evs, ev{corev1.EventTypeWarning, "ScaleFailed", fmt.Sprintf("%d → %d replicas not written: %s", d.Current, d.Desired, msg)})
		}
	}
	r.mu.Unlock()
	if len(evs) == 0 || r.Workload == nil {
		return
	}
	obs := r.Workload.observedState()
	now := metav1.NewTime(time.Now())
	for _, e := range evs {
		event := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{GenerateName: d.Workload + ".", Namespace: r.Namespace},
			InvolvedObject: corev1.ObjectReference{Kind: "Deployment", APIVersion: "apps/v1", Namespace: r.Namespace,
				Name: d.Workload, UID: obs.uid},
			Reason: e.reason, Message: truncate(e.msg, 1000), Type: e.typ,
			Source:         corev1.EventSource{Component: "fleet-autoscaler"},
			FirstTimestamp: now, LastTimestamp: now, Count: 1,
			ReportingController: "fleet.denis.io/autoscaler", ReportingInstance: r.Instance, Action: "Scale",
		}
		_, err := r.Client.CoreV1().Events(r.Namespace).Create(ctx, event, metav1.CreateOptions{})
		r.mu.Lock()
		was := r.failing
		r.failing = err != nil
		r.mu.Unlock()
		if err != nil && !was && r.Log != nil {
			r.Log.Warn("autoscale: cannot write Events on the Deployment", "err", err)
		}
	}
}

func inputsLine(d Decision) string {
	in := d.Inputs
	return fmt.Sprintf("ready=%d in_flight=%d λ=%.2f/s μ=%.3f/s c=%d busy=%d cpu=%.2f ρ*=%.2f need=%.2f stopped=%t rolling_out=%t metrics_unavailable=%t",
		in.Ready, in.InFlight, in.Lambda, in.Mu, in.Slots, in.BusySlots, in.CPU, in.TargetUtilization, d.Needs.Need,
		d.State.Stopped, d.State.RollingOut, d.State.MetricsUnavailable)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

// ---- Decision traces ----

// DefaultTraceStream is the Redis stream decision traces go to; DefaultTraceMaxLen bounds it.
const (
	DefaultTraceStream = "fleet:decisions"
	DefaultTraceMaxLen = 10000
)

// DecisionTrace is one decision with everything it was made from, as written to the
// decision stream: replaying the observations in order through a Policy with the same
// Config reproduces the decisions.
type DecisionTrace struct {
	Pool        string      `json:"pool"`
	Instance    string      `json:"instance,omitempty"`
	DryRun      bool        `json:"dry_run,omitempty"`
	Applied     bool        `json:"applied"`
	Error       string      `json:"error,omitempty"`
	Decision    Decision    `json:"decision"`
	Observation Observation `json:"observation"`
}

// TraceRecorder appends a DecisionTrace per decision to a bounded Redis stream (XADD MAXLEN
// ~) while Enabled says so (the DECISION_TRACE_ENABLED flag). Each entry has the fields
// pool, rule, current, desired and trace (the JSON).
type TraceRecorder struct {
	Client   goredis.UniversalClient
	Stream   string // default fleet:decisions
	MaxLen   int64  // default 10000
	Pool     string
	Instance string
	DryRun   bool
	// Enabled is read per decision; nil means always.
	Enabled func() bool
	// Observation returns the observation the decision was made from.
	Observation func() Observation
	Log         *slog.Logger

	mu      sync.Mutex
	failing bool
}

// Record implements Recorder.
func (r *TraceRecorder) Record(ctx context.Context, d Decision, applied bool, err error) {
	if r.Enabled != nil && !r.Enabled() {
		return
	}
	tr := DecisionTrace{Pool: r.Pool, Instance: r.Instance, DryRun: r.DryRun, Applied: applied, Decision: d}
	if err != nil {
		tr.Error = err.Error()
	}
	if r.Observation != nil {
		tr.Observation = r.Observation()
	}
	data, jerr := json.Marshal(tr)
	if jerr != nil {
		return
	}
	stream, maxLen := r.Stream, r.MaxLen
	if stream == "" {
		stream = DefaultTraceStream
	}
	if maxLen <= 0 {
		maxLen = DefaultTraceMaxLen
	}
	werr := r.Client.XAdd(ctx, &goredis.XAddArgs{Stream: stream, MaxLen: maxLen, Approx: true,
		Values: []any{"pool", r.Pool, "rule", string(d.Rule), "current", d.Current, "desired", d.Desired, "trace", string(data)}}).Err()
	r.mu.Lock()
	was := r.failing
	r.failing = werr != nil
	r.mu.Unlock()
	switch {
	case werr != nil && !was && r.Log != nil:
		r.Log.Warn("autoscale: cannot write decision traces", "stream", stream, "err", werr)
	case werr == nil && was && r.Log != nil:
		r.Log.Info("autoscale: decision traces written again", "stream", stream)
	}
}

// ---- JSON lines ----

// FileRecorder writes every decision as one JSON line (the Decision object) to W, e.g.
// for the load test's report.
type FileRecorder struct {
	mu sync.Mutex
	W  io.Writer
}

// Record implements Recorder.
func (r *FileRecorder) Record(_ context.Context, d Decision, _ bool, _ error) {
	data, err := json.Marshal(d)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.W.Write(append(data, '\n'))
}

// ---- status ----

// PoolStatus is a pool's last decision, for the /status endpoint.
type PoolStatus struct {
	Pool     string    `json:"pool"`
	At       time.Time `json:"at"`
	Applied  bool      `json:"applied"`
	Error    string    `json:"error,omitempty"`
	Decision Decision  `json:"decision"`
}

// StatusRecorder keeps the last decision of a pool.
type StatusRecorder struct {
	Pool string
	mu   sync.Mutex
	last *PoolStatus
}

// Record implements Recorder.
func (r *StatusRecorder) Record(_ context.Context, d Decision, applied bool, err error) {
	st := &PoolStatus{Pool: r.Pool, At: d.Time, Applied: applied, Decision: d}
	if err != nil {
		st.Error = err.Error()
	}
	r.mu.Lock()
	r.last = st
	r.mu.Unlock()
}

// Last returns the last decision's status (false before the first).
func (r *StatusRecorder) Last() (PoolStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		return PoolStatus{}, false
	}
	return *r.last, true
}

// ConditionsLine renders a decision's conditions for a log line or a table.
func ConditionsLine(d Decision) string {
	var parts []string
	for _, c := range d.Conditions {
		parts = append(parts, fmt.Sprintf("%s=%t", c.Type, c.Status))
	}
	return strings.Join(parts, " ")
}
