package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
)

// DefaultSampleInterval is how often queue depth is read from the broker.
const DefaultSampleInterval = 15 * time.Second

// Keys the samplers of a fleet share in Redis: the lock that elects one sampler per queue
// per interval, and the sample it leaves for the others.
const (
	sampleLockPrefix = "fleet:metrics:lock:"
	sampleKeyPrefix  = "fleet:metrics:queue:"
)

// SamplerConfig configures a Sampler.
type SamplerConfig struct {
	// Inspector reads queue statistics (the broker).
	Inspector broker.Inspector
	// Health reports the broker connection; nil: fleet_broker_connected is not exported.
	Health broker.Health
	// Queues lists the queues to sample (the worker's current queues).
	Queues func() []string
	// Shared, when set, makes the workers of a fleet share samples: per queue and
	// interval only the worker that takes a Redis lock reads the broker and stores the
	// sample; the others read that sample. Without it every worker samples on its own, at
	// the interval (still never per scrape).
	Shared goredis.UniversalClient
	// KeyPrefix prefixes the shared keys.
	KeyPrefix string
	// Interval between samples (default 15 s).
	Interval time.Duration
	// Celery exports celery_queue_length and celery_active_consumer_count.
	Celery bool
	Logger *slog.Logger
}

// Sampler reads queue depth and broker state in the background and exports the last
// sample: celery_queue_length, celery_active_consumer_count, fleet_queue_messages_ready
// (per priority), fleet_queue_oldest_message_age_seconds, fleet_broker_connected and
// fleet_broker_reconnects_total.
type Sampler struct {
	cfg   SamplerConfig
	log   *slog.Logger
	owner string // lock value: unique per sampler

	length, consumers, ready, age, connected *prometheus.GaugeVec
	reconnects                               prometheus.CounterFunc

	mu          sync.Mutex
	known       map[string]bool // queues exported in the last round
	isConnected bool
	recoveries  uint64 // down → up transitions seen (transports that do not count)
	sampledOnce bool
}

// queueSample is one queue's statistics as shared through Redis.
type queueSample struct {
	Ready      int64            `json:"ready"`
	ByPriority map[string]int64 `json:"by_priority,omitempty"`
	Consumers  int64            `json:"consumers"`
	OldestAt   float64          `json:"oldest_sent_at,omitempty"`
	At         float64          `json:"at"`
}

// NewSampler registers the sampler's series on reg.
func NewSampler(reg prometheus.Registerer, cfg SamplerConfig) *Sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultSampleInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Sampler{cfg: cfg, log: cfg.Logger.With("component", "queue-sampler"), known: map[string]bool{},
		owner: strconv.FormatUint(rand.Uint64(), 36)}
	gv := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	}
	s.ready = gv("fleet_queue_messages_ready", "Messages ready in the queue, by priority (Redis: the priority sub-list step; AMQP: \"all\").", "queue", "priority")
	s.age = gv("fleet_queue_oldest_message_age_seconds", "Age of the oldest ready message, where the broker can tell (Redis, messages carrying x-fleet-sent-at).", "queue")
	reg.MustRegister(s.ready, s.age)
	if cfg.Celery {
		s.length = gv("celery_queue_length", "The number of message in broker queue.", "queue_name")
		s.consumers = gv("celery_active_consumer_count", "The number of active consumer in broker queue.", "queue_name")
		reg.MustRegister(s.length, s.consumers)
	}
	if cfg.Health != nil {
		s.connected = gv("fleet_broker_connected", "1 while the broker connection is up.")
		s.reconnects = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "fleet_broker_reconnects_total",
			Help: "Broker connections re-established after a loss."}, s.reconnectCount)
		reg.MustRegister(s.connected, s.reconnects)
	}
	return s
}

func (s *Sampler) reconnectCount() float64 {
	if rc, ok := s.cfg.Health.(broker.ReconnectCounter); ok {
		return float64(rc.Reconnects())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.recoveries)
}

// Connected is the broker state at the last sample (true before the first one).
func (s *Sampler) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.sampledOnce || s.isConnected
}

// Run samples now and then every interval (jittered by ±10 %) until ctx ends.
func (s *Sampler) Run(ctx context.Context) {
	for {
		s.Sample(ctx)
		d := s.cfg.Interval
		d += time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Sample takes one round: the broker state, then every queue.
func (s *Sampler) Sample(ctx context.Context) {
	if s.cfg.Health != nil {
		up := s.cfg.Health.Connected(ctx)
		s.mu.Lock()
		if up && s.sampledOnce && !s.isConnected {
			s.recoveries++
		}
		s.isConnected, s.sampledOnce = up, true
		s.mu.Unlock()
		s.connected.WithLabelValues().Set(b2f(up))
	}
	queues := s.cfg.Queues()
	seen := map[string]bool{}
	for _, q := range queues {
		seen[q] = true
		qs, err := s.sampleQueue(ctx, q)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("queue sample failed", "queue", q, "err", err)
			}
			continue
		}
		if qs != nil {
			s.export(q, qs)
		}
	}
	s.mu.Lock()
	for q := range s.known {
		if !seen[q] {
			s.forget(q)
		}
	}
	s.known = seen
	s.mu.Unlock()
}

// sampleQueue returns the sample of q: read from the broker when this sampler holds the
// queue's lock (or shares nothing), else the holder's sample; nil when neither exists yet.
func (s *Sampler) sampleQueue(ctx context.Context, q string) (*queueSample, error) {
	if s.cfg.Shared == nil {
		return s.read(ctx, q)
	}
	ok, err := s.cfg.Shared.SetNX(ctx, s.cfg.KeyPrefix+sampleLockPrefix+q, s.owner, s.cfg.Interval*9/10).Result()
	if err != nil {
		return nil, fmt.Errorf("sample lock: %w", err)
	}
	if ok {
		qs, err := s.read(ctx, q)
		if err != nil {
			return nil, err
		}
		data, err := json.Marshal(qs)
		if err != nil {
			return nil, err
		}
		if err := s.cfg.Shared.Set(ctx, s.cfg.KeyPrefix+sampleKeyPrefix+q, data, 3*s.cfg.Interval).Err(); err != nil {
			return nil, fmt.Errorf("store sample: %w", err)
		}
		return qs, nil
	}
	data, err := s.cfg.Shared.Get(ctx, s.cfg.KeyPrefix+sampleKeyPrefix+q).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read shared sample: %w", err)
	}
	var qs queueSample
	if err := json.Unmarshal(data, &qs); err != nil {
		return nil, fmt.Errorf("shared sample: %w", err)
	}
	return &qs, nil
}

func (s *Sampler) read(ctx context.Context, q string) (*queueSample, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := s.cfg.Inspector.QueueStats(rctx, q)
	if err != nil {
		return nil, err
	}
	qs := &queueSample{Ready: st.Ready, Consumers: st.Consumers, At: float64(time.Now().UnixMicro()) / 1e6}
	if st.ByPriority != nil {
		qs.ByPriority = map[string]int64{}
		for p, n := range st.ByPriority {
			qs.ByPriority[strconv.Itoa(p)] = n
		}
	}
	if !st.OldestSentAt.IsZero() {
		qs.OldestAt = float64(st.OldestSentAt.UnixMicro()) / 1e6
	}
	return qs, nil
}

func (s *Sampler) export(q string, qs *queueSample) {
	if s.cfg.Celery {
		s.length.WithLabelValues(q).Set(float64(qs.Ready))
		if qs.Consumers >= 0 {
			s.consumers.WithLabelValues(q).Set(float64(qs.Consumers))
		}
	}
	if qs.ByPriority == nil {
		s.ready.WithLabelValues(q, "all").Set(float64(qs.Ready))
	} else {
		for p, n := range qs.ByPriority {
			s.ready.WithLabelValues(q, p).Set(float64(n))
		}
	}
	if qs.OldestAt > 0 {
		s.age.WithLabelValues(q).Set(max(0, float64(time.Now().UnixMicro())/1e6-qs.OldestAt))
	} else {
		s.age.DeleteLabelValues(q)
	}
}

func (s *Sampler) forget(q string) {
	if s.cfg.Celery {
		s.length.DeleteLabelValues(q)
		s.consumers.DeleteLabelValues(q)
	}
	s.ready.DeletePartialMatch(prometheus.Labels{"queue": q})
	s.age.DeleteLabelValues(q)
}
