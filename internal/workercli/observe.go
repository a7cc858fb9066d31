package workercli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/control"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/metrics"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/telemetry"
	"denis.io/fleet/internal/worker"
)

// ObserveOptions are the command-line options of events, remote control, metrics and
// tracing (tracing itself is configured by the standard OTEL_* environment variables).
type ObserveOptions struct {
	WithoutEvents       bool    // no task events (Celery without -E)
	WithoutHeartbeat    bool    // no worker-online/heartbeat/offline events
	HeartbeatInterval   float64 // seconds between heartbeats (Celery's --heartbeat-interval)
	MetricsAddr         string  // /metrics, /healthz, /readyz; "" disables
	PprofAddr           string  // net/http/pprof; "" disables
	NoCeleryMetrics     bool    // leave out the celery-exporter compatible series
	AllowRemoteShutdown bool    // `celery control shutdown` may stop this worker
	StateRedis          string  // Redis for worker_seen keys, revoked ids and shared queue samples
	WithoutControl      bool    // do not answer remote control
	WithoutTracing      bool    // no spans, no trace context on messages and log lines
}

// addFlags registers the options on fs and returns their environment variable names.
func (o *ObserveOptions) addFlags(fs *pflag.FlagSet) map[string][]string {
	fs.BoolVar(&o.WithoutEvents, "without-events", false, "send no task events (worker events still go out) (env FLEET_WITHOUT_EVENTS)")
	fs.BoolVar(&o.WithoutHeartbeat, "without-heartbeat", false, "send no worker-online/heartbeat/offline events, as celery worker --without-heartbeat (env FLEET_WITHOUT_HEARTBEAT)")
	fs.Float64Var(&o.HeartbeatInterval, "heartbeat-interval", 2, "seconds between worker heartbeats (env FLEET_HEARTBEAT_INTERVAL)")
	fs.BoolVar(&o.WithoutTracing, "without-tracing", false, "no tracing at all: no spans, no traceparent on published messages, no trace ids in logs (export is configured by the OTEL_* variables and off without an endpoint) (env FLEET_WITHOUT_TRACING)")
	fs.BoolVar(&o.WithoutControl, "without-control", false, "do not answer remote control (celery inspect/control/status) (env FLEET_WITHOUT_CONTROL)")
	fs.BoolVar(&o.AllowRemoteShutdown, "allow-remote-shutdown", false, "let `celery control shutdown` stop this worker (env FLEET_ALLOW_REMOTE_SHUTDOWN)")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", metrics.DefaultAddr, "address of /metrics, /healthz and /readyz; empty disables (env FLEET_METRICS_ADDR)")
	fs.BoolVar(&o.NoCeleryMetrics, "no-celery-metrics", false, "leave out the celery-exporter compatible celery_* series, e.g. where celery-exporter runs (env FLEET_NO_CELERY_METRICS)")
	fs.StringVar(&o.PprofAddr, "pprof-addr", "", "address of net/http/pprof; empty disables (env FLEET_PPROF_ADDR)")
	fs.StringVar(&o.StateRedis, "state-redis", "", "Redis URL for fleet state: heartbeat keys, revoked ids, shared queue samples (default: the broker or result backend when it is Redis) (env FLEET_STATE_REDIS)")
	return map[string][]string{
		"without-events":        {"FLEET_WITHOUT_EVENTS"},
		"without-heartbeat":     {"FLEET_WITHOUT_HEARTBEAT"},
		"heartbeat-interval":    {"FLEET_HEARTBEAT_INTERVAL"},
		"without-control":       {"FLEET_WITHOUT_CONTROL"},
		"without-tracing":       {"FLEET_WITHOUT_TRACING"},
		"allow-remote-shutdown": {"FLEET_ALLOW_REMOTE_SHUTDOWN"},
		"metrics-addr":          {"FLEET_METRICS_ADDR"},
		"no-celery-metrics":     {"FLEET_NO_CELERY_METRICS"},
		"pprof-addr":            {"FLEET_PPROF_ADDR"},
		"state-redis":           {"FLEET_STATE_REDIS"},
	}
}

func (o *ObserveOptions) validate() error {
	if o.HeartbeatInterval <= 0 {
		return fmt.Errorf("--heartbeat-interval must be positive, got %v", o.HeartbeatInterval)
	}
	if o.StateRedis != "" && !isRedisURL(o.StateRedis) {
		return fmt.Errorf("--state-redis must be a redis:// or rediss:// URL")
	}
	return nil
}

func isRedisURL(u string) bool {
	return strings.HasPrefix(u, "redis://") || strings.HasPrefix(u, "rediss://")
}

// stateRedisURL is --state-redis, else the broker, else the result backend when Redis.
func (o *Options) stateRedisURL() string {
	for _, u := range []string{o.Observe.StateRedis, o.Broker, o.ResultBackend} {
		if isRedisURL(u) {
			return u
		}
	}
	return ""
}

// observability assembles the worker's events, remote control, metrics and tracing.
type observability struct {
	o        *Options
	hostname string
	log      *slog.Logger
	raw      broker.Broker // the transport itself (optional interfaces)

	state   *goredis.Client // nil without a state Redis
	tel     *telemetry.Telemetry
	tracker *telemetry.Tracker
	reg     *prometheus.Registry
	tasks   *metrics.TaskMetrics
	wcoll   *metrics.WorkerCollector
	sampler *metrics.Sampler
	health  *metrics.Health
	revoked worker.RevokedStore
	redisRv *control.RedisRevoked
	disp    *events.Dispatcher
	seen    *events.Seen
	ctl     *control.Server

	w        *worker.Worker
	draining atomic.Bool
	// drainRequested is set by POST /drain; shutdown (set by Start, before any server
	// runs) starts the warm shutdown.
	drainRequested atomic.Bool
	shutdown       func()
	flags          atomic.Pointer[func() map[string]events.FlagValue]
	started        time.Time

	bgCancel context.CancelFunc
	bg       sync.WaitGroup
	servers  []*metrics.Server
}

// newObservability builds the components that do not need the worker: tracing (its
// tracker wraps the logger and the broker), the metrics registry, the revoked store and
// the event dispatcher.
func newObservability(ctx context.Context, o *Options, hostname string, raw broker.Broker, log *slog.Logger) (*observability, error) {
	x := &observability{o: o, hostname: hostname, log: log, raw: raw, started: time.Now()}
	if u := o.stateRedisURL(); u != "" {
		ropts, err := goredis.ParseURL(u)
		if err != nil {
			return nil, fmt.Errorf("state Redis %s: %w", connect.Redact(u), err)
		}
		x.state = goredis.NewClient(ropts)
	}
	tel, err := telemetry.New(ctx, telemetry.Config{Version: Version, Hostname: hostname,
		System: messagingSystem(o.Broker), Enabled: true, Logger: log})
	if err != nil {
		x.close()
		return nil, err
	}
	x.tel = tel
	x.tracker = tel.NewTracker(hostname)

	x.reg = metrics.NewRegistry()
	celery := !o.Observe.NoCeleryMetrics
	x.tasks = metrics.NewTaskMetrics(x.reg, hostname, celery)
	x.wcoll = metrics.NewWorkerCollector(hostname, celery, x.workerState)
	x.reg.MustRegister(x.wcoll)
	x.health = metrics.NewHealth(x.consumerWindow(), x.ready)
	x.health.Drain = x.requestDrain

	if x.state != nil {
		x.redisRv = control.NewRedisRevoked(x.state, "", 0, 0, log)
		x.revoked = x.redisRv
		x.seen = events.NewSeen(x.state, "", max(events.DefaultSeenTTL, 5*x.freq()))
	} else {
		x.revoked = worker.NewMemoryRevoked(0, 0)
	}
	if fan, ok := raw.(broker.Fanout); ok {
		x.disp = events.New(fan, events.Config{
			Hostname: hostname, Freq: x.freq(), TaskEvents: !o.Observe.WithoutEvents,
			WithoutHeartbeat: o.Observe.WithoutHeartbeat, Software: events.Software{Version: Version},
			Stats: x.stats, Beat: []func(context.Context, time.Time){x.beat}, Logger: log,
		})
	}
	return x, nil
}

func (x *observability) freq() time.Duration {
	return time.Duration(x.o.Observe.HeartbeatInterval * float64(time.Second))
}

func messagingSystem(brokerURL string) string {
	if isRedisURL(brokerURL) {
		return "redis"
	}
	return "rabbitmq"
}

// tracing reports whether spans are made (not --without-tracing).
func (x *observability) tracing() bool { return !x.o.Observe.WithoutTracing }

// Logger wraps log so that task-scoped lines carry the trace id.
func (x *observability) Logger(log *slog.Logger) *slog.Logger {
	if !x.tracing() {
		return log
	}
	return slog.New(telemetry.LogHandler(log.Handler(), x.tracker))
}

// Broker is the broker the worker and the result backend publish through: every message
// they publish carries the task's trace context.
func (x *observability) Broker() broker.Broker {
	if !x.tracing() {
		return x.raw
	}
	return telemetry.WrapBroker(x.raw, x.tracker)
}

// Observers are told about every task event: spans end, metrics count, events go out.
func (x *observability) Observers() []worker.Observer {
	obs := []worker.Observer{x.tasks}
	if x.tracing() {
		obs = append(obs, x.tracker)
	}
	if x.disp != nil {
		obs = append(obs, x.disp.Observer())
	}
	return obs
}

// Middleware wraps every handler: the consumer span, then the queue-wait and outcome
// metrics.
func (x *observability) Middleware() []tasks.Middleware {
	if !x.tracing() {
		return []tasks.Middleware{x.tasks.Middleware}
	}
	return []tasks.Middleware{x.tracker.Middleware, x.tasks.Middleware}
}

// Redeliveries is the fleet-wide redelivery counter behind reason worker_lost, in the
// state Redis; nil without one (then only quorum queues' x-delivery-count is read).
func (x *observability) Redeliveries() worker.RedeliveryCounter {
	if x.state == nil {
		return nil
	}
	return dlq.NewRedisRedeliveries(x.state, "", 0)
}

// Revoked is the worker's revoked store (fleet-wide in Redis when a state Redis is known).
func (x *observability) Revoked() worker.RevokedStore { return x.revoked }

// Start attaches the worker and starts serving: metrics and pprof (a taken port is an
// error), the queue sampler, the revoked-set sync, remote control and events.
func (x *observability) Start(ctx context.Context, w *worker.Worker, reg *tasks.Registry, shutdown func()) error {
	x.w = w
	x.shutdown = shutdown
	o := x.o.Observe
	if o.MetricsAddr != "" {
		srv, err := metrics.Serve(o.MetricsAddr, metrics.Handler(x.reg, x.health), x.log)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		x.servers = append(x.servers, srv)
		x.log.Info("metrics listening", "addr", srv.Addr().String())
	}
	if o.PprofAddr != "" {
		srv, err := metrics.Serve(o.PprofAddr, metrics.PprofHandler(), x.log)
		if err != nil {
			return fmt.Errorf("pprof: %w", err)
		}
		x.servers = append(x.servers, srv)
	}
	bgCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	x.bgCancel = cancel
	if insp, ok := x.raw.(broker.Inspector); ok {
		health, _ := x.raw.(broker.Health)
		x.sampler = metrics.NewSampler(x.reg, metrics.SamplerConfig{Inspector: insp, Health: health,
			Queues: func() []string { return w.Snapshot().Queues }, Shared: x.shared(), Celery: !o.NoCeleryMetrics, Logger: x.log})
		x.goBG(func() { x.sampler.Run(bgCtx) })
	}
	if src, ok := x.raw.(dlq.Source); ok {
		c := dlq.NewCollector(src, dlq.CollectorOptions{Queues: w.Snapshot().Queues, Logger: x.log})
		x.reg.MustRegister(c)
		w.OnDelivery(c.ObserveDelivery) // fleet_dlq_replayed_total: replayed messages received
	}
	if x.redisRv != nil {
		sctx, cancelSync := context.WithTimeout(ctx, 5*time.Second)
		if n, err := x.redisRv.Sync(sctx); err != nil {
			x.log.Warn("revoked set: could not load the fleet-wide set at start", "err", err)
		} else if n > 0 {
			x.log.Info("revoked set: loaded revocations", "count", n)
		}
		cancelSync()
		x.goBG(func() { x.redisRv.Run(bgCtx, 10*time.Second) })
	}
	if fan, ok := x.raw.(broker.Fanout); ok && !o.WithoutControl {
		var clock *events.Clock
		if x.disp != nil {
			clock = x.disp.Clock()
		}
		x.ctl = control.NewServer(x.hostname, fan, clock, x.log)
		x.ctl.Commands(control.Deps{
			Node: w, Registered: reg.Names, Revoked: x.revoked, Events: x.disp,
			Broker: control.BrokerInfoFromURL(x.o.Broker), Conf: x.conf(), Version: Version,
			AllowRemoteShutdown: o.AllowRemoteShutdown, Shutdown: shutdown, Logger: x.log,
		})
		msgs, err := x.ctl.Listen(ctx)
		if err != nil {
			return err
		}
		x.goBG(func() { x.ctl.Serve(bgCtx, msgs) })
	}
	if x.disp != nil {
		x.disp.Start(ctx)
	} else {
		x.goBG(func() { x.beatLoop(bgCtx) })
	}
	return nil
}

// shared is the Redis the queue samplers share samples through: the state Redis when the
// broker is Redis too (so every worker of a fleet sees the same one).
func (x *observability) shared() goredis.UniversalClient {
	if x.state != nil && isRedisURL(x.o.Broker) {
		return x.state
	}
	return nil
}

func (x *observability) goBG(f func()) {
	x.bg.Add(1)
	go func() {
		defer x.bg.Done()
		f()
	}()
}

// beatLoop runs the Beat callbacks when there is no event dispatcher to run them.
func (x *observability) beatLoop(ctx context.Context) {
	t := time.NewTicker(x.freq())
	defer t.Stop()
	x.beat(ctx, time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			x.beat(ctx, now)
		}
	}
}

// SetFlagSource makes the worker_seen record carry the effective feature flags (`fleetctl
// flags --workers` reads them there).
func (x *observability) SetFlagSource(fn func() map[string]events.FlagValue) { x.flags.Store(&fn) }

// SetTracingEnabled is the live tracing switch (the TELEMETRY_ENABLED flag): while off,
// no span is recorded or exported; trace context still propagates.
func (x *observability) SetTracingEnabled(on bool) { x.tel.SetEnabled(on) }

// Drain marks the worker as draining: /readyz fails, the heartbeat says so.
func (x *observability) Drain() { x.draining.Store(true) }

// requestDrain is POST /drain (the Helm chart's preStop hook): the warm shutdown a first
// SIGTERM starts (readiness fails, the heartbeat says draining, fetching stops, prefetched
// messages go back to the broker, running tasks finish, then the worker exits). The SIGTERM
// Kubernetes sends after the hook continues that shutdown; only a second signal after it
// stops at once.
func (x *observability) requestDrain() {
	if !x.drainRequested.Swap(true) {
		x.log.Info("drain requested on /drain: warm shutdown (fetching stops, running tasks finish, then exit)")
	}
	x.Drain()
	if x.shutdown != nil {
		x.shutdown()
	}
}

// Stop sends worker-offline (after flushing task events), removes the worker_seen key,
// flushes the spans and stops the servers.
func (x *observability) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	x.draining.Store(true)
	if x.disp != nil {
		x.disp.Stop(ctx)
	}
	if x.bgCancel != nil {
		x.bgCancel()
	}
	x.bg.Wait()
	if x.seen != nil {
		if err := x.seen.Gone(ctx, x.hostname); err != nil {
			x.log.Warn("could not remove the worker_seen key", "err", err)
		}
	}
	if err := x.tel.Shutdown(ctx); err != nil {
		x.log.Warn("flushing spans failed", "err", err)
	}
	for _, s := range x.servers {
		if err := s.Shutdown(ctx); err != nil {
			x.log.Warn("stopping an http server failed", "err", err)
		}
	}
	x.close()
}

func (x *observability) close() {
	if x.state != nil {
		_ = x.state.Close()
	}
}

// stats are the heartbeat's counters.
func (x *observability) stats() events.Stats {
	if x.w == nil {
		return events.Stats{}
	}
	return events.Stats{Active: x.w.Active(), Processed: x.w.Processed()}
}

var errNotConsuming = errors.New("not consuming yet")

// ready backs /readyz: no drain is on, the broker is connected, and the consumer was alive
// within the last consumerWindow (worker.ConsumerAlive: the dispatch loop turning and the
// transport's fetch loop or consuming channel working).
func (x *observability) ready(ctx context.Context) error {
	switch {
	case x.draining.Load():
		return errors.New("draining")
	case x.w == nil || x.w.Snapshot().Started.IsZero():
		return errNotConsuming
	}
	if h, ok := x.raw.(broker.Health); ok && !h.Connected(ctx) {
		return errors.New("broker not connected")
	}
	return consumerLive(x.w.ConsumerAlive(), time.Now(), x.consumerWindow())
}

// consumerWindow is N of "consumer alive within the last N s": the /healthz silence
// window, max(30 s, 10 heartbeat periods).
func (x *observability) consumerWindow() time.Duration { return max(30*time.Second, 10*x.freq()) }

// consumerLive is nil when the consumer was alive at most window before now.
func consumerLive(alive, now time.Time, window time.Duration) error {
	switch {
	case alive.IsZero():
		return errNotConsuming
	case now.Sub(alive) > window:
		return fmt.Errorf("consumer stalled: last alive %s ago (limit %s)", now.Sub(alive).Round(time.Second), window)
	}
	return nil
}

func (x *observability) workerState() metrics.WorkerState {
	if x.w == nil {
		return metrics.WorkerState{}
	}
	snap := x.w.Snapshot()
	st := metrics.WorkerState{
		Up:        !snap.Started.IsZero() && !x.draining.Load(),
		Active:    len(snap.Active),
		Reserved:  map[string]int{},
		Scheduled: map[string]int{},
		Draining:  x.draining.Load(),
		Abandoned: int(snap.Counters.AbandonedRunning),
	}
	for _, q := range snap.Queues {
		st.Reserved[q], st.Scheduled[q] = 0, 0
	}
	for _, r := range snap.Reserved {
		st.Reserved[r.Queue]++
	}
	for _, s := range snap.Scheduled {
		st.Scheduled[s.Request.Queue]++
	}
	return st
}

// beat runs on every heartbeat tick: liveness, the last-heartbeat metric and the Redis
// worker_seen key.
func (x *observability) beat(ctx context.Context, now time.Time) {
	x.health.Beat(now)
	x.wcoll.Heartbeat(now)
	if x.seen == nil || x.w == nil {
		return
	}
	snap := x.w.Snapshot()
	st := events.WorkerStatus{
		Hostname: x.hostname, PID: os.Getpid(), Timestamp: epoch(now), Freq: x.freq().Seconds(),
		Started: epoch(x.started), Active: x.w.Active(), Processed: x.w.Processed(),
		Concurrency: snap.Concurrency, Queues: snap.Queues, Version: Version, Draining: x.draining.Load(),
	}
	if fn := x.flags.Load(); fn != nil {
		st.Flags = (*fn)()
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := x.seen.Beat(bctx, st); err != nil {
		x.log.Debug("worker_seen heartbeat failed", "err", err)
	}
}

// conf is what `celery inspect conf` shows: Celery's setting names, no secrets.
func (x *observability) conf() map[string]any {
	o := x.o
	return map[string]any{
		"broker_url": connect.Redact(o.Broker), "result_backend": connect.Redact(o.ResultBackend),
		"worker_concurrency": o.Concurrency, "worker_prefetch_multiplier": o.PrefetchMultiplier,
		"task_acks_late": true, "task_default_queue": o.DefaultQueue,
		"worker_send_task_events": !o.Observe.WithoutEvents, "worker_hostname": x.hostname,
		"broker_transport_options": map[string]any{"visibility_timeout": o.VisibilityTimeout.Seconds()},
	}
}

func epoch(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }
