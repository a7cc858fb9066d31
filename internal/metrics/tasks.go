package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/worker"
)

// Outcomes of fleet_task_outcomes_total. A handler may record another one through
// tasks.SetOutcome (e.g. "stubbed"), which then replaces "success".
const (
	OutcomeSuccess  = "success"
	OutcomeFailure  = "failure"
	OutcomeRetry    = "retry"
	OutcomeRejected = "rejected"
	OutcomeRevoked  = "revoked"
	OutcomeExpired  = "expired"
)

// TaskMetrics counts task events: celery-exporter's celery_task_* series (when celery
// compatibility is on) and the fleet's outcome and dead-letter counters. It is a
// worker.Observer; Middleware adds the queue wait time and handler-recorded outcomes.
type TaskMetrics struct {
	host   string // hostname label
	celery bool

	received, started, succeeded, rejected, revoked, retried *prometheus.CounterVec
	failed                                                   *prometheus.CounterVec
	runtime, wait                                            *prometheus.HistogramVec
	outcomes, deadLettered                                   *prometheus.CounterVec

	mu     sync.RWMutex
	byTask map[seriesKey]*taskSeries // resolved series of each task name and queue
	custom sync.Map                  // task id → outcome recorded by the handler
}

type seriesKey struct{ name, queue string }

// taskSeries are the series of one task name and queue, looked up once (label hashing
// per event would cost more than the increments). The celery_* ones are nil when those
// metrics are off.
type taskSeries struct {
	received, started, succeeded, rejected, revoked, retried prometheus.Counter
	runtime, wait                                            prometheus.Observer
	success                                                  prometheus.Counter // fleet_task_outcomes_total{outcome="success"}
}

var _ worker.Observer = (*TaskMetrics)(nil)

// NewTaskMetrics registers the task series on reg. celery selects the celery-exporter
// compatible series; turn it off where celery-exporter itself runs, so nobody counts twice.
func NewTaskMetrics(reg prometheus.Registerer, nodename string, celery bool) *TaskMetrics {
	m := &TaskMetrics{host: HostLabel(nodename), celery: celery, byTask: map[seriesKey]*taskSeries{}}
	labels := []string{"name", "hostname", "queue_name"}
	counter := func(name, help string, l []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, l)
	}
	m.outcomes = counter("fleet_task_outcomes_total", "Tasks run to an outcome, by queue, task name and outcome (success, failure, retry, rejected, revoked, expired, or one a handler recorded such as stubbed).", []string{"queue", "task", "outcome"})
	m.deadLettered = counter("fleet_dead_lettered_total", "Messages this worker moved to a dead-letter queue, by source queue, task name and reason.", []string{"queue", "task", "reason"})
	reg.MustRegister(m.outcomes, m.deadLettered)
	if !celery {
		return m
	}
	m.received = counter("celery_task_received_total", "Sent when the worker receives a task.", labels)
	m.started = counter("celery_task_started_total", "Sent just before the worker executes the task.", labels)
	m.succeeded = counter("celery_task_succeeded_total", "Sent if the task executed successfully.", labels)
	m.failed = counter("celery_task_failed_total", "Sent if the execution of the task failed.", []string{"name", "hostname", "exception", "queue_name"})
	m.rejected = counter("celery_task_rejected_total", "The task was rejected by the worker, possibly to be re-queued or moved to a dead letter queue.", labels)
	m.revoked = counter("celery_task_revoked_total", "Sent if the task has been revoked.", labels)
	m.retried = counter("celery_task_retried_total", "Sent if the task failed, but will be retried in the future.", labels)
	m.runtime = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "celery_task_runtime",
		Help: "Histogram of task runtime measurements.", Buckets: RuntimeBuckets}, labels)
	m.wait = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "celery_task_queue_wait_time",
		Help: "Histogram of task queue wait time measurements.", Buckets: QueueWaitBuckets}, labels)
	reg.MustRegister(m.received, m.started, m.succeeded, m.failed, m.rejected, m.revoked, m.retried, m.runtime, m.wait)
	return m
}

// zero creates every celery counter of (name, queue) at 0 the first time they are seen,
// series returns the series of task name in queue, creating them on first use: the
// celery_* counters start at zero (celery-exporter lists a task once it has been seen),
// celery_task_failed_total with an empty exception label.
func (m *TaskMetrics) series(name, queue string) *taskSeries {
	k := seriesKey{name, queue}
	m.mu.RLock()
	s := m.byTask[k]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s = m.byTask[k]; s != nil {
		return s
	}
	s = &taskSeries{success: m.outcomes.WithLabelValues(queue, name, OutcomeSuccess)}
	if m.celery {
		s.received = m.received.WithLabelValues(name, m.host, queue)
		s.started = m.started.WithLabelValues(name, m.host, queue)
		s.succeeded = m.succeeded.WithLabelValues(name, m.host, queue)
		s.rejected = m.rejected.WithLabelValues(name, m.host, queue)
		s.revoked = m.revoked.WithLabelValues(name, m.host, queue)
		s.retried = m.retried.WithLabelValues(name, m.host, queue)
		s.runtime = m.runtime.WithLabelValues(name, m.host, queue)
		s.wait = m.wait.WithLabelValues(name, m.host, queue)
		m.failed.WithLabelValues(name, m.host, "", queue)
	}
	m.byTask[k] = s
	return s
}

// celerySeries is i's series while the celery_* metrics are on, else nil.
func (m *TaskMetrics) celerySeries(i *worker.TaskInfo) *taskSeries {
	if !m.celery {
		return nil
	}
	return m.series(i.DisplayName(), i.Queue)
}

func (m *TaskMetrics) outcome(i *worker.TaskInfo, o string) {
	if o == OutcomeSuccess {
		m.series(i.DisplayName(), i.Queue).success.Inc()
		return
	}
	m.outcomes.WithLabelValues(i.Queue, i.DisplayName(), o).Inc()
}

// TaskReceived counts celery_task_received_total.
func (m *TaskMetrics) TaskReceived(i *worker.TaskInfo) {
	if s := m.celerySeries(i); s != nil {
		s.received.Inc()
	}
}

// TaskStarted counts celery_task_started_total.
func (m *TaskMetrics) TaskStarted(i *worker.TaskInfo) {
	if s := m.celerySeries(i); s != nil {
		s.started.Inc()
	}
}

// TaskSucceeded counts the success and observes celery_task_runtime.
func (m *TaskMetrics) TaskSucceeded(i *worker.TaskInfo, runtime time.Duration, _ any) {
	if s := m.celerySeries(i); s != nil {
		s.succeeded.Inc()
		s.runtime.Observe(runtime.Seconds())
	}
	o := OutcomeSuccess
	if v, ok := m.custom.LoadAndDelete(i.ID); ok {
		o = v.(string)
	}
	m.outcome(i, o)
}

// TaskFailed counts the failure with its exception class.
func (m *TaskMetrics) TaskFailed(i *worker.TaskInfo, exc protocol.ExceptionInfo, _ string) {
	m.custom.Delete(i.ID)
	if m.celery {
		name := i.DisplayName()
		m.series(name, i.Queue)
		m.failed.WithLabelValues(name, m.host, exc.Type, i.Queue).Inc()
	}
	m.outcome(i, OutcomeFailure)
}

// TaskRetried counts the retry.
func (m *TaskMetrics) TaskRetried(i *worker.TaskInfo, _ protocol.ExceptionInfo, _ string) {
	m.custom.Delete(i.ID)
	if s := m.celerySeries(i); s != nil {
		s.retried.Inc()
	}
	m.outcome(i, OutcomeRetry)
}

// TaskRejected counts the rejection.
func (m *TaskMetrics) TaskRejected(i *worker.TaskInfo, _ bool) {
	m.custom.Delete(i.ID)
	if s := m.celerySeries(i); s != nil {
		s.rejected.Inc()
	}
	m.outcome(i, OutcomeRejected)
}

// TaskRevoked counts the revocation (outcome "expired" for an expired task).
func (m *TaskMetrics) TaskRevoked(i *worker.TaskInfo, _, expired bool) {
	m.custom.Delete(i.ID)
	if s := m.celerySeries(i); s != nil {
		s.revoked.Inc()
	}
	if expired {
		m.outcome(i, OutcomeExpired)
	} else {
		m.outcome(i, OutcomeRevoked)
	}
}

// TaskDeadLettered counts fleet_dead_lettered_total.
func (m *TaskMetrics) TaskDeadLettered(i *worker.TaskInfo, _ string, reason string) {
	name := i.DisplayName()
	if name == "" {
		name = "unknown"
	}
	m.deadLettered.WithLabelValues(i.Queue, name, reason).Inc()
}

// Middleware observes celery_task_queue_wait_time when the producer's publish time is
// known (the x-fleet-sent-at header): the handler's start minus the later of that time and
// the ETA. It also lets the handler record a custom outcome with tasks.SetOutcome.
func (m *TaskMetrics) Middleware(next tasks.Handler) tasks.Handler {
	return tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
		if m.celery {
			if sent, ok := broker.ParseSentAt(r.Headers[broker.HeaderSentAt]); ok {
				from := sent
				if r.ETA != nil && r.ETA.After(from) {
					from = *r.ETA
				}
				if w := time.Since(from); w >= 0 {
					m.series(r.Name, r.Delivery.Queue).wait.Observe(w.Seconds())
				}
			}
		}
		ctx, o := tasks.WithOutcome(ctx)
		v, err := next.ServeTask(ctx, r)
		if got := o.Get(); got != "" && err == nil {
			m.custom.Store(r.ID, got)
		}
		return v, err
	})
}
