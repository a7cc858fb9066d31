package autoscale

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"denis.io/fleet/internal/events"
)

// The real Signals: Source joins the broker (QueueProbe), the workers' heartbeats
// (WorkerLister), the workload and its pods (WorkloadReader: a Deployment or the local
// supervisor) and the fleet flags (FlagReader) into one Observation per reconcile, and
// measures what none of them reports directly: the arrival rate λ where the broker has no
// publish counter, and the per-slot service rate μ from the workers' processed counters.

// QueueSample is one read of a queue's broker truth.
type QueueSample struct {
	// At is when the sample was taken.
	At time.Time
	// Ready is the runnable backlog (RabbitMQ messages_ready; Redis: the sum over the
	// priority sub-lists).
	Ready int
	// InFlight is delivered and not acknowledged (RabbitMQ messages_unacknowledged; Redis:
	// the queue's leases in kombu's unacked hash); -1 when the probe cannot tell (AMQP
	// passive declare), and the workers' running tasks are used instead.
	InFlight int
	// PublishRate is the broker's own publish rate in messages per second when RateKnown
	// (RabbitMQ management API); otherwise Source derives λ from the queue's growth plus
	// the workers' completions.
	PublishRate float64
	RateKnown   bool
}

// QueueProbe reads one queue from the broker.
type QueueProbe interface {
	Probe(ctx context.Context, queue string) (QueueSample, error)
}

// WorkerLister lists the live workers' heartbeat records (the Redis worker_seen keys).
type WorkerLister interface {
	ListWorkers(ctx context.Context) ([]events.WorkerStatus, error)
}

// WorkloadState is the workload and its pods as the API server (or the local supervisor)
// shows them; CPU fields of the pods are filled when the reader has a CPU source.
type WorkloadState struct {
	Workload Workload
	Pods     []PodSignal
}

// WorkloadReader reads the scaled workload. An error means there is no observation.
type WorkloadReader interface {
	ReadWorkload(ctx context.Context) (WorkloadState, error)
}

// FlagReader reads the fleet flags the policy needs.
type FlagReader interface {
	PolicyFlags() Flags
}

// SourceConfig configures a Source.
type SourceConfig struct {
	// Queues are the queues the workload's workers consume.
	Queues []string
	// Broker, Workload are required; Workers and Flags are optional (without heartbeats
	// no pod counts as idle, so nothing scales in; without flags there is no stop flag).
	Broker   QueueProbe
	Workers  WorkerLister
	Workload WorkloadReader
	Flags    FlagReader
	// ServiceTime is the mean task run time assumed until μ is measured (μ = 1 ÷ it per
	// slot); 0 leaves μ unknown until measured, so the queueing and backlog needs wait.
	ServiceTime time.Duration
	// MuWindow is the window μ is measured over (default 5 min); MuMinBusy and MuMinTasks
	// are the busy slot-seconds and completed tasks it needs before it replaces
	// ServiceTime (defaults 30 slot-s and 10 tasks).
	MuWindow   time.Duration
	MuMinBusy  float64
	MuMinTasks float64
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
}

// Ages are the ages, in seconds, of the signals of the last observation (NaN: none).
type Ages struct {
	Broker     float64 `json:"broker"`
	Heartbeats float64 `json:"heartbeats"`
	CPU        float64 `json:"cpu"`
}

// Source is the real Signals implementation for one workload. It is safe for concurrent
// use, though one Loop normally owns it.
type Source struct {
	cfg SourceConfig
	log *slog.Logger

	mu      sync.Mutex
	queues  map[string]*queueTrack
	workers map[string]workerMark // by hostname
	muWin   []muSample
	last    Observation
	ages    Ages
	hbErr   string
}

// queueTrack is the previous sample of a queue and what happened since.
type queueTrack struct {
	primed    bool
	at        time.Time
	ready     int
	inFlight  int     // as resolved at that sample (heartbeats when the broker cannot tell)
	completed float64 // tasks the pool's workers completed since, attributed to this queue
}

func (t *queueTrack) set(smp QueueSample, inFlight int) {
	t.primed, t.at, t.ready, t.inFlight, t.completed = true, smp.At, smp.Ready, max(0, inFlight), 0
}

type workerMark struct {
	started   float64
	at        float64
	processed int64
	active    int64
}

type muSample struct {
	at        time.Time
	completed float64
	busy      float64 // slot-seconds
}

// NewSource returns a Source, or an error when a required part is missing.
func NewSource(cfg SourceConfig) (*Source, error) {
	if cfg.Broker == nil || cfg.Workload == nil || len(cfg.Queues) == 0 {
		return nil, fmt.Errorf("autoscale: a source needs a broker probe, a workload reader and queues")
	}
	if cfg.MuWindow <= 0 {
		cfg.MuWindow = 5 * time.Minute
	}
	if cfg.MuMinBusy <= 0 {
		cfg.MuMinBusy = 30
	}
	if cfg.MuMinTasks <= 0 {
		cfg.MuMinTasks = 10
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: log, queues: map[string]*queueTrack{}, workers: map[string]workerMark{}}, nil
}

// Prime takes a first sample of every queue, so that the first Observe has a rate. Errors
// are only logged: Observe reports a queue it could not prime as unavailable.
func (s *Source) Prime(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.cfg.Queues {
		smp, err := s.cfg.Broker.Probe(ctx, q)
		if err != nil {
			s.log.Warn("autoscale: first broker sample failed", "queue", q, "err", err)
			continue
		}
		tr := &queueTrack{}
		tr.set(smp, smp.InFlight)
		s.queues[q] = tr
	}
	if s.cfg.Workers != nil {
		if ws, err := s.cfg.Workers.ListWorkers(ctx); err == nil {
			for _, w := range ws {
				s.workers[w.Hostname] = workerMark{started: w.Started, at: w.Timestamp, processed: w.Processed, active: w.Active}
			}
		}
	}
}

// Last returns the last observation and its signal ages.
func (s *Source) Last() (Observation, Ages) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.ages
}

// PodName maps a worker's node name to its pod: "fleet@web-7d9f-abcde" → "web-7d9f-abcde"
// (Kubernetes sets the host name to the pod name; the chart's workers use fleet@%h).
func PodName(hostname string) string {
	if i := strings.LastIndexByte(hostname, '@'); i >= 0 {
		return hostname[i+1:]
	}
	return hostname
}

// Observe implements Signals.
func (s *Source) Observe(ctx context.Context) (Observation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws, err := s.cfg.Workload.ReadWorkload(ctx)
	if err != nil {
		return Observation{}, fmt.Errorf("read workload: %w", err)
	}
	now := s.cfg.Now()
	obs := Observation{Time: now, Workload: ws.Workload, Pods: ws.Pods}
	if s.cfg.Flags != nil {
		obs.Flags = s.cfg.Flags.PolicyFlags()
	}
	ages := Ages{Broker: math.NaN(), Heartbeats: math.NaN(), CPU: math.NaN()}

	// Heartbeats: running tasks per pod, and completions since the last look.
	byPod := map[string]int{}
	for i, p := range obs.Pods {
		byPod[p.Name] = i
	}
	var completed, busy float64
	activeByQueue := map[string]float64{}
	completedByQueue := map[string]float64{}
	seen := map[string]bool{}
	if s.cfg.Workers != nil {
		list, err := s.cfg.Workers.ListWorkers(ctx)
		if err != nil {
			if s.hbErr == "" {
				s.log.Warn("autoscale: worker heartbeats unreadable: no pod counts as idle", "err", err)
			}
			s.hbErr = err.Error()
		} else {
			if s.hbErr != "" {
				s.log.Info("autoscale: worker heartbeats readable again")
			}
			s.hbErr = ""
		}
		newest := time.Time{}
		for _, w := range list {
			i, ok := byPod[PodName(w.Hostname)]
			if !ok {
				continue // another workload's worker
			}
			seen[w.Hostname] = true
			at := fromEpoch(w.Timestamp)
			if at.After(newest) {
				newest = at
			}
			p := &obs.Pods[i]
			p.Active, p.HeartbeatAt = int(w.Active), at
			if w.Concurrency > 0 {
				p.Slots = w.Concurrency
			}
			if w.Draining {
				p.Terminating = true
			}
			shared := poolQueues(w.Queues, s.cfg.Queues)
			for _, q := range shared {
				activeByQueue[q] += float64(w.Active) / float64(len(shared))
			}
			prev, had := s.workers[w.Hostname]
			s.workers[w.Hostname] = workerMark{started: w.Started, at: w.Timestamp, processed: w.Processed, active: w.Active}
			if !had || prev.started != w.Started || w.Timestamp <= prev.at {
				continue // new worker, restarted, or no new heartbeat
			}
			done := float64(max(0, w.Processed-prev.processed))
			completed += done
			busy += float64(prev.active+w.Active) / 2 * (w.Timestamp - prev.at)
			for _, q := range shared {
				completedByQueue[q] += done / float64(len(shared))
			}
		}
		if err == nil {
			for h := range s.workers {
				if !seen[h] {
					delete(s.workers, h)
				}
			}
		}
		if !newest.IsZero() {
			ages.Heartbeats = now.Sub(newest).Seconds()
		}
	}
	s.muWin = append(s.muWin, muSample{at: now, completed: completed, busy: busy})
	cut := 0
	for cut < len(s.muWin) && now.Sub(s.muWin[cut].at) > s.cfg.MuWindow {
		cut++
	}
	s.muWin = s.muWin[cut:]
	mu := s.serviceRate()

	// Broker: per queue.
	for _, q := range s.cfg.Queues {
		tr := s.queues[q]
		if tr == nil {
			tr = &queueTrack{}
			s.queues[q] = tr
		}
		tr.completed += completedByQueue[q]
		qs := QueueSignal{Name: q, ServiceRate: mu}
		smp, err := s.cfg.Broker.Probe(ctx, q)
		switch {
		case err != nil:
			qs.Error = err.Error()
		case !tr.primed:
			// The first sample has no rate yet: report the queue missing for this one
			// reconcile (fail-static), and measure from here.
			tr.set(smp, smp.InFlight)
			qs.Error = "first sample: no rate measured yet"
		default:
			qs.Available, qs.SampledAt, qs.Ready = true, smp.At, smp.Ready
			qs.InFlight = smp.InFlight
			if smp.InFlight < 0 {
				qs.InFlight = int(math.Round(activeByQueue[q]))
			}
			qs.ArrivalRate = arrivalRate(tr, smp, qs.InFlight)
			if smp.At.After(tr.at) {
				tr.set(smp, qs.InFlight)
			}
			age := now.Sub(smp.At).Seconds()
			if math.IsNaN(ages.Broker) || age > ages.Broker {
				ages.Broker = age
			}
		}
		obs.Queues = append(obs.Queues, qs)
	}

	// CPU ages.
	for _, p := range obs.Pods {
		if p.CPUAt.IsZero() {
			continue
		}
		if a := now.Sub(p.CPUAt).Seconds(); math.IsNaN(ages.CPU) || a > ages.CPU {
			ages.CPU = a
		}
	}
	s.last, s.ages = obs, ages
	return obs, nil
}

// arrivalRate is λ over the interval since the previous sample: the broker's publish rate
// when it has one, else the growth of ready + in-flight plus the tasks completed meanwhile.
func arrivalRate(tr *queueTrack, smp QueueSample, inFlight int) float64 {
	if smp.RateKnown {
		return math.Max(0, smp.PublishRate)
	}
	dt := smp.At.Sub(tr.at).Seconds()
	if dt <= 0 {
		return 0
	}
	growth := float64(smp.Ready+inFlight) - float64(tr.ready+tr.inFlight)
	return math.Max(0, (growth+tr.completed)/dt)
}

// serviceRate is μ per slot: tasks completed per busy slot-second over the window, once
// enough was seen; else 1 ÷ ServiceTime; else 0 (unknown).
func (s *Source) serviceRate() float64 {
	var c, b float64
	for _, m := range s.muWin {
		c += m.completed
		b += m.busy
	}
	if b >= s.cfg.MuMinBusy && c >= s.cfg.MuMinTasks {
		return c / b
	}
	if s.cfg.ServiceTime > 0 {
		return 1 / s.cfg.ServiceTime.Seconds()
	}
	return 0
}

// poolQueues returns the queues of the worker that the pool scales on (all of the pool's
// queues when the heartbeat names none).
func poolQueues(workerQueues, pool []string) []string {
	if len(workerQueues) == 0 {
		return pool
	}
	var out []string
	for _, q := range workerQueues {
		for _, p := range pool {
			if q == p {
				out = append(out, q)
				break
			}
		}
	}
	if len(out) == 0 {
		return pool
	}
	return out
}

func fromEpoch(f float64) time.Time {
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9))
}
