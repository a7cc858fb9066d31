package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"denis.io/fleet/internal/autoscale"
	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/flags"
	"denis.io/fleet/internal/logging"
)

// runCmd runs `autoscaler run` until ctx ends.
func runCmd(ctx context.Context, args, env []string, stdout, stderr io.Writer) int {
	o, err := parseRun(args, env, stdout)
	if errors.Is(err, pflag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "autoscaler run: %v\n", err)
		return ExitUsage
	}
	log, err := logging.New(stderr, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "autoscaler run: %v\n", err)
		return ExitUsage
	}
	if err := run(ctx, o, log); err != nil {
		log.Error("autoscaler stopped", "err", err)
		fmt.Fprintf(stderr, "autoscaler run: %v\n", err)
		return ExitFailure
	}
	return ExitOK
}

// app is a running autoscaler: the shared clients and the pools.
type app struct {
	o        runOptions
	log      *slog.Logger
	identity string
	reg      *prometheus.Registry
	metrics  *autoscale.Metrics
	flags    *flags.Flags
	status   goredis.UniversalClient
	probe    autoscale.QueueProbe
	decFile  *autoscale.FileRecorder

	kube    kubernetes.Interface
	dyn     dynamic.Interface
	kubeCfg *rest.Config

	local *autoscale.LocalFleet

	wakeMu sync.Mutex
	wakes  []chan struct{}

	leading  atomic.Bool
	standby  atomic.Bool
	mu       sync.Mutex
	pools    map[string]*poolRun
	closers  []func() error
	interval time.Duration
}

// poolRun is one pool's live loop state, for /status and /healthz.
type poolRun struct {
	hb     autoscale.Heartbeat
	status *autoscale.StatusRecorder
}

func run(ctx context.Context, o runOptions, log *slog.Logger) error {
	a := &app{o: o, log: log, reg: prometheus.NewRegistry(), pools: map[string]*poolRun{}}
	defer a.close()
	a.identity = o.identity
	if a.identity == "" {
		host, _ := os.Hostname()
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		a.identity = host + "-" + hex.EncodeToString(b)
	}
	for _, p := range o.pools {
		a.interval = max(a.interval, p.cfg.Interval)
	}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := autoscale.NewMetrics(a.reg)
	if err != nil {
		return err
	}
	a.metrics = m
	if err := a.setup(ctx); err != nil {
		return err
	}
	srvErr := make(chan error, 1)
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener %s: %w", o.metricsAddr, err)
		}
		srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { srvErr <- srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		log.Info("autoscaler: serving /metrics, /healthz, /readyz, /status", "addr", ln.Addr().String())
	}
	pools := make([]string, len(o.pools))
	for i, p := range o.pools {
		pools[i] = p.name
	}
	log.Info("autoscaler starting", "version", Version, "target", o.target, "pools", pools, "identity", a.identity,
		"dry_run", o.dryRun, "leader_elect", o.leaderElect, "broker", connect.Redact(o.broker),
		"state_redis", connect.Redact(o.stateRedis))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case err := <-srvErr:
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("autoscaler: metrics server failed", "err", err)
			}
		case <-ctx.Done():
		}
	}()

	if o.target == TargetLocal {
		var wg sync.WaitGroup
		wg.Go(func() { _ = a.local.Run(ctx) })
		err := a.lead(ctx)
		cancel()
		wg.Wait() // the workers drain before the autoscaler exits
		return ignoreCanceled(err)
	}
	if !o.leaderElect {
		return ignoreCanceled(a.lead(ctx))
	}
	a.standby.Store(true)
	return autoscale.RunElected(ctx, autoscale.ElectionConfig{
		Client: a.kube, Namespace: a.namespace(), Lease: o.leaseName, Identity: a.identity,
		LeaseDuration: o.leaseDuration, RenewDeadline: o.renewDeadline, RetryPeriod: o.retryPeriod,
		OnLeader: func(on bool) { a.leading.Store(on); a.metrics.SetLeader(on) },
		Log:      log,
	}, func(ctx context.Context) error { return ignoreCanceled(a.lead(ctx)) })
}

func ignoreCanceled(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (a *app) namespace() string { return a.o.namespace }

// setup opens the shared clients: flags, status Redis, the broker probe, Kubernetes or the
// local fleet.
func (a *app) setup(ctx context.Context) error {
	o, log := a.o, a.log
	var flagsRedis goredis.UniversalClient
	if o.flagsRedis != "" {
		c, err := redisClient(o.flagsRedis)
		if err != nil {
			return fmt.Errorf("--flags-redis: %w", err)
		}
		flagsRedis = c
		a.closers = append(a.closers, c.Close)
	}
	f, err := flags.New(flags.Options{Logger: log, File: o.flagsFile, Redis: flagsRedis})
	if err != nil {
		return fmt.Errorf("flags: %w", err)
	}
	if err := f.Start(ctx); err != nil {
		return fmt.Errorf("flags: %w", err)
	}
	a.flags = f
	a.closers = append(a.closers, f.Close)
	f.Subscribe(func(c flags.Change) {
		if c.ValueChanged() && (c.New.Name == flags.EmergencyStop || c.New.Name == flags.AsyncEnabled) {
			log.Info("autoscaler: flag changed: reconciling now", "flag", c.New.Name, "value", c.New.Value, "source", c.New.Source)
			a.wakeAll()
		}
	})

	if o.stateRedis != "" {
		c, err := redisClient(o.stateRedis)
		if err != nil {
			return fmt.Errorf("--state-redis: %w", err)
		}
		a.status = c
		a.closers = append(a.closers, c.Close)
	} else {
		log.Warn("autoscaler: no Redis for the workers' heartbeats (--state-redis): μ stays assumed, no pod counts as idle, so nothing scales in; no decision traces")
	}

	probe, closeProbe, err := brokerProbe(o, log)
	if err != nil {
		return err
	}
	a.probe = probe
	a.closers = append(a.closers, closeProbe)

	if o.decisionsFile != "" {
		fh, err := os.OpenFile(o.decisionsFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("--decisions-file: %w", err)
		}
		a.decFile = &autoscale.FileRecorder{W: fh}
		a.closers = append(a.closers, fh.Close)
	}

	if o.target == TargetLocal {
		p := o.pools[0]
		lf, err := autoscale.NewLocalFleet(autoscale.LocalConfig{
			Name:    p.name,
			Command: o.workerCmd,
			Args: []string{"--broker", o.broker, "--queues", strings.Join(p.queues, ","), "--hostname", "fleet@{name}",
				"--metrics-addr="},
			LogDir:     o.workerLogDir,
			Grace:      p.cfg.GracePeriod,
			CPU:        o.cpu,
			CPURequest: o.workerCPU,
			Log:        log,
		})
		if err != nil {
			return err
		}
		a.local = lf
		a.metrics.SetLeader(true)
		return lf.Scale(ctx, p.cfg.MinReplicas)
	}
	cfg, ns, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	if a.o.namespace == "" {
		a.o.namespace = ns
	}
	cfg.UserAgent = "fleet-autoscaler/" + Version
	if a.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if a.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		return fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	a.kubeCfg = cfg
	if !o.leaderElect {
		a.metrics.SetLeader(true)
	}
	return nil
}

func redisClient(raw string) (*goredis.Client, error) {
	ro, err := goredis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("redis URL %s: %w", connect.Redact(raw), err)
	}
	return goredis.NewClient(ro), nil
}

// brokerProbe builds the broker's QueueProbe; the broker may be down at start (the probe
// connects on first use and fails static until then).
func brokerProbe(o runOptions, log *slog.Logger) (autoscale.QueueProbe, func() error, error) {
	raw := o.broker
	if strings.HasPrefix(raw, "pyamqp://") {
		raw = "amqp://" + strings.TrimPrefix(raw, "pyamqp://")
	}
	if strings.HasPrefix(raw, "redis://") || strings.HasPrefix(raw, "rediss://") {
		client, err := redisClient(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("broker: %w", err)
		}
		lazy := &autoscale.LazyInspector{Open: func(ctx context.Context) (autoscale.QueueInspector, error) {
			return redis.New(ctx, redis.Options{URL: raw, Logger: log})
		}}
		closeAll := func() error { return errors.Join(lazy.Close(), client.Close()) }
		return &autoscale.RedisProbe{Stats: lazy, Client: client}, closeAll, nil
	}
	mgmt, err := autoscale.NewManagementClient(raw, o.managementURL)
	if err != nil {
		return nil, nil, fmt.Errorf("broker: %w", err)
	}
	lazy := &autoscale.LazyInspector{Open: func(ctx context.Context) (autoscale.QueueInspector, error) {
		return amqp.New(ctx, amqp.Options{URL: raw, Logger: log})
	}}
	p := &autoscale.RabbitProbe{Management: mgmt, AMQP: lazy}
	p.OnDegraded(func(degraded bool, err error) {
		if degraded {
			log.Warn("autoscaler: RabbitMQ management API unreachable: ready counts over AMQP, in-flight from the heartbeats, λ from the queue's growth",
				"endpoint", mgmt.Endpoint(), "err", err)
		} else {
			log.Info("autoscaler: RabbitMQ management API reachable again", "endpoint", mgmt.Endpoint())
		}
	})
	return p, lazy.Close, nil
}

// kubeConfig loads --kubeconfig, else the in-cluster config, else the default loading rules,
// and the namespace that goes with it.
func kubeConfig(path string) (*rest.Config, string, error) {
	ns := "default"
	if path == "" {
		if cfg, err := rest.InClusterConfig(); err == nil {
			if data, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
				ns = strings.TrimSpace(string(data))
			}
			return cfg, ns, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes config: %w", err)
	}
	if n, _, err := cc.Namespace(); err == nil && n != "" {
		ns = n
	}
	return cfg, ns, nil
}

// lead runs every pool's loop until ctx ends: a fresh policy per term of leadership.
func (a *app) lead(ctx context.Context) error {
	a.standby.Store(false)
	defer a.standby.Store(a.o.leaderElect)
	a.wakeMu.Lock()
	a.wakes = nil
	a.wakeMu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, len(a.o.pools))
	for _, p := range a.o.pools {
		loop, wake, pr, err := a.newLoop(ctx, p)
		if err != nil {
			return err
		}
		wg.Go(func() {
			if err := loop.RunWoken(ctx, wake, &pr.hb); err != nil && !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("pool %s: %w", p.name, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	return errors.Join(func() []error {
		var out []error
		for e := range errs {
			out = append(out, e)
		}
		return out
	}()...)
}

func (a *app) newLoop(ctx context.Context, p poolOptions) (*autoscale.Loop, chan struct{}, *poolRun, error) {
	log := a.log.With("pool", p.name)
	pol, err := autoscale.NewPolicy(p.cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pool %s: %w", p.name, err)
	}
	var (
		reader   autoscale.WorkloadReader
		actuator autoscale.Actuator
		recs     autoscale.Recorders
	)
	if a.o.target == TargetLocal {
		reader, actuator = a.local, a.local
	} else {
		kw := &autoscale.KubeWorkload{Client: a.kube, Dynamic: a.dyn, Namespace: a.o.namespace, Name: p.deployment,
			CPU: a.o.cpu, Writers: a.o.otherScalers, Log: log}
		reader, actuator = kw, autoscale.NewKubeActuator(kw, log)
		if !a.o.dryRun {
			recs = append(recs, &autoscale.EventRecorder{Client: a.kube, Namespace: a.o.namespace, Workload: kw, Instance: a.identity, Log: log})
		}
	}
	srcCfg := autoscale.SourceConfig{Queues: p.queues, Broker: a.probe, Workload: reader,
		Flags: autoscale.FleetFlags{Flags: a.flags}, ServiceTime: p.serviceTime, Log: log}
	if a.status != nil {
		srcCfg.Workers = autoscale.RedisWorkers{Client: a.status, Prefix: a.o.statePrefix}
	}
	src, err := autoscale.NewSource(srcCfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pool %s: %w", p.name, err)
	}
	pctx, cancel := context.WithTimeout(ctx, p.cfg.Interval)
	src.Prime(pctx)
	cancel()

	pr := &poolRun{status: &autoscale.StatusRecorder{Pool: p.name}}
	recs = append(recs, autoscale.MetricsRecorder{M: a.metrics, DryRun: a.o.dryRun, Ages: func() autoscale.Ages {
		_, ages := src.Last()
		return ages
	}}, pr.status)
	if a.status != nil {
		recs = append(recs, &autoscale.TraceRecorder{Client: a.status, Stream: a.o.traceStream, MaxLen: a.o.traceMaxLen,
			Pool: p.name, Instance: a.identity, DryRun: a.o.dryRun,
			Enabled:     func() bool { return a.flags.Bool(flags.DecisionTraceEnabled) },
			Observation: func() autoscale.Observation { o, _ := src.Last(); return o },
			Log:         log})
	}
	if a.decFile != nil {
		recs = append(recs, a.decFile)
	}
	wake := make(chan struct{}, 1)
	a.wakeMu.Lock()
	a.wakes = append(a.wakes, wake)
	a.wakeMu.Unlock()
	a.mu.Lock()
	a.pools[p.name] = pr
	a.mu.Unlock()
	loop := &autoscale.Loop{Policy: pol, Signals: src, Actuator: actuator, Recorder: recs, Log: log, DryRun: a.o.dryRun}
	return loop, wake, pr, nil
}

func (a *app) wakeAll() {
	a.wakeMu.Lock()
	defer a.wakeMu.Unlock()
	for _, w := range a.wakes {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i](); err != nil {
			a.log.Warn("autoscaler: close", "err", err)
		}
	}
}

// handler serves /metrics, /healthz (every pool reconciled within three intervals, or this
// replica stands by), /readyz and /status (each pool's last decision as JSON).
func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.healthy(time.Now()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		type status struct {
			Identity string                 `json:"identity"`
			Target   string                 `json:"target"`
			Leader   bool                   `json:"leader"`
			DryRun   bool                   `json:"dry_run"`
			Pools    []autoscale.PoolStatus `json:"pools"`
		}
		st := status{Identity: a.identity, Target: a.o.target, Leader: a.leading.Load() || !a.o.leaderElect, DryRun: a.o.dryRun}
		a.mu.Lock()
		for _, p := range a.o.pools {
			if pr := a.pools[p.name]; pr != nil {
				if last, ok := pr.status.Last(); ok {
					st.Pools = append(st.Pools, last)
				}
			}
		}
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	return mux
}

func (a *app) healthy(now time.Time) error {
	if a.standby.Load() {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	limit := 3*a.interval + 30*time.Second
	for name, pr := range a.pools {
		last := pr.hb.Last()
		if !last.IsZero() && now.Sub(last) > limit {
			return fmt.Errorf("pool %s: no reconcile for %s", name, now.Sub(last).Round(time.Second))
		}
	}
	return nil
}
