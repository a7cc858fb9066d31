// Package workercli is the `worker` command: it parses a command line that mirrors
// `celery worker` (flags, FLEET_* and CELERY_* environment variables), connects to the broker
// and result backend, and runs a worker until SIGTERM/SIGINT.
package workercli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/logging"
	"denis.io/fleet/internal/ratelimit"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/worker"
)

// Version is set at build time (-ldflags "-X denis.io/fleet/internal/workercli.Version=…").
var Version = "dev"

// Exit codes, as sysexits.h (Celery uses the same).
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 64 // EX_USAGE: bad flag or value
	ExitUnavailable = 69 // EX_UNAVAILABLE: broker or result backend unreachable at start
	ExitConfig      = 78 // EX_CONFIG: bad --config file
)

// Options is the parsed command line.
type Options struct {
	Broker             string
	ResultBackend      string
	Queues             []string
	Concurrency        int
	PrefetchMultiplier int
	Hostname           string
	ConfigFile         string
	VisibilityTimeout  time.Duration
	ShutdownTimeout    time.Duration
	LogLevel           string
	LogFormat          string
	NoDiagTasks        bool
	Version            bool
	DefaultQueue       string
	MaxETATasks        int
	MaxRedeliveries    worker.RedeliveryLimit
	RateLimitRedis     string
	RateLimitFleet     bool
	FlagsFile          string         // feature flags file or mounted ConfigMap directory (flags.go)
	FlagsRedis         string         // Redis of the feature flags hash; "" the state Redis, "off" none
	FlagsKey           string         // the feature flags hash; its channel is FlagsKey + ":changed"
	Observe            ObserveOptions // events, remote control, metrics, tracing (observe.go)
}

const usageHead = `Usage: worker [options]

Runs a fleet worker: a Go process that consumes Celery task messages (protocol v2/v1, JSON)
from RabbitMQ or Redis and stores results where Python's AsyncResult.get() reads them, like
'celery -A proj worker'. Every option can also be set with the FLEET_<NAME> environment
variable shown; the broker and result backend also read Celery's CELERY_BROKER_URL and
CELERY_RESULT_BACKEND.

Options:
`

// Parse parses args with env (KEY=VALUE pairs) as the fallback for every flag. --help
// writes the usage to helpOut and returns pflag.ErrHelp.
func Parse(args []string, env []string, helpOut io.Writer) (*Options, error) {
	envMap := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			envMap[k] = v
		}
	}
	get := func(names ...string) (string, bool) {
		for _, n := range names {
			if v, ok := envMap[n]; ok && v != "" {
				return v, true
			}
		}
		return "", false
	}
	o := &Options{}
	fs := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line; usage only on --help
	fs.SortFlags = false
	fs.StringVarP(&o.Broker, "broker", "b", connect.DefaultBrokerURL, "broker URL: amqp://, amqps://, redis://, rediss:// (env FLEET_BROKER, CELERY_BROKER_URL)")
	fs.StringVar(&o.ResultBackend, "result-backend", "", "result backend URL: redis://, rediss:// or rpc://; empty disables results (env FLEET_RESULT_BACKEND, CELERY_RESULT_BACKEND)")
	fs.StringSliceVarP(&o.Queues, "queues", "Q", []string{"celery"}, "comma-separated queues to consume (env FLEET_QUEUES)")
	fs.IntVarP(&o.Concurrency, "concurrency", "c", 8, "tasks run at once (env FLEET_CONCURRENCY)")
	fs.IntVar(&o.PrefetchMultiplier, "prefetch-multiplier", 4, "unacked deliveries held = concurrency × this (env FLEET_PREFETCH_MULTIPLIER)")
	fs.StringVarP(&o.Hostname, "hostname", "n", "fleet@%h", "node name; %h is the host name, %n the name part, %d the domain (env FLEET_HOSTNAME)")
	fs.StringVar(&o.ConfigFile, "config", "", "YAML file with per-task settings (env FLEET_CONFIG)")
	fs.DurationVar(&o.VisibilityTimeout, "visibility-timeout", time.Hour, "Redis broker: kombu's visibility_timeout (env FLEET_VISIBILITY_TIMEOUT)")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 25*time.Second, "grace period for running tasks on SIGTERM (env FLEET_SHUTDOWN_TIMEOUT)")
	fs.StringVarP(&o.LogLevel, "log-level", "l", "info", "debug, info, warning or error (env FLEET_LOG_LEVEL)")
	fs.StringVar(&o.LogFormat, "log-format", "json", "json or text (env FLEET_LOG_FORMAT)")
	fs.BoolVar(&o.NoDiagTasks, "no-diag-tasks", false, "do not register the diag.* tasks (env FLEET_NO_DIAG_TASKS)")
	fs.StringVar(&o.DefaultQueue, "default-queue", "celery", "queue for callbacks, chain steps and chord bodies whose signature and task settings name none: Celery's task_default_queue (env FLEET_DEFAULT_QUEUE)")
	fs.IntVar(&o.MaxETATasks, "max-eta-tasks", 1000, "ETA/countdown messages held in memory at most; more are handed back (env FLEET_MAX_ETA_TASKS)")
	fs.StringVar(&o.RateLimitRedis, "rate-limit-redis", "", "Redis URL for fleet-wide rate limits (default: the broker or result backend when it is Redis) (env FLEET_RATE_LIMIT_REDIS)")
	fs.BoolVar(&o.RateLimitFleet, "rate-limit-fleet", false, "share each task's rate_limit across the fleet through Redis instead of per worker (env FLEET_RATE_LIMIT_FLEET)")
	fs.StringVar(&o.FlagsFile, "flags-file", "", "feature flags: a directory of one file per flag (a mounted ConfigMap) or a YAML file of NAME: value, re-read every second (env FLEET_FLAGS_FILE)")
	fs.StringVar(&o.FlagsRedis, "flags-redis", "", "feature flags: Redis URL of the flags hash, applied live (default: --state-redis, else the broker or result backend when it is Redis; \"off\": none) (env FLEET_FLAGS_REDIS)")
	fs.StringVar(&o.FlagsKey, "flags-key", "fleet:flags", "feature flags: the Redis hash; changes are announced on <key>:changed (env FLEET_FLAGS_KEY)")
	obsEnv := o.Observe.addFlags(fs)
	o.MaxRedeliveries = worker.DefaultMaxRedeliveries // worker_lost (docs/dlq.md)
	fs.Var(&o.MaxRedeliveries, "max-redeliveries", "dead-letter a message with reason worker_lost instead of running it again once it was redelivered more than this many times (its workers died or lost the broker), counted fleet-wide in the state Redis; 0: no limit (env FLEET_MAX_REDELIVERIES)")
	obsEnv["max-redeliveries"] = []string{"FLEET_MAX_REDELIVERIES"}
	fs.BoolVar(&o.Version, "version", false, "print the version and exit")

	// Environment first, so that flags given on the command line win.
	envNames := map[string][]string{
		"broker":              {"FLEET_BROKER", "CELERY_BROKER_URL"},
		"result-backend":      {"FLEET_RESULT_BACKEND", "CELERY_RESULT_BACKEND"},
		"queues":              {"FLEET_QUEUES"},
		"concurrency":         {"FLEET_CONCURRENCY"},
		"prefetch-multiplier": {"FLEET_PREFETCH_MULTIPLIER"},
		"hostname":            {"FLEET_HOSTNAME"},
		"config":              {"FLEET_CONFIG"},
		"visibility-timeout":  {"FLEET_VISIBILITY_TIMEOUT"},
		"shutdown-timeout":    {"FLEET_SHUTDOWN_TIMEOUT"},
		"log-level":           {"FLEET_LOG_LEVEL"},
		"log-format":          {"FLEET_LOG_FORMAT"},
		"no-diag-tasks":       {"FLEET_NO_DIAG_TASKS"},
		"default-queue":       {"FLEET_DEFAULT_QUEUE"},
		"max-eta-tasks":       {"FLEET_MAX_ETA_TASKS"},
		"rate-limit-redis":    {"FLEET_RATE_LIMIT_REDIS"},
		"rate-limit-fleet":    {"FLEET_RATE_LIMIT_FLEET"},
		"flags-file":          {"FLEET_FLAGS_FILE"},
		"flags-redis":         {"FLEET_FLAGS_REDIS"},
		"flags-key":           {"FLEET_FLAGS_KEY"},
	}
	for k, v := range obsEnv {
		envNames[k] = v
	}
	for flagName, names := range envNames {
		if v, ok := get(names...); ok {
			if err := fs.Set(flagName, v); err != nil {
				return nil, fmt.Errorf("bad value %q in $%s: %w", v, names[0], err)
			}
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(helpOut, usageHead+fs.FlagUsages())
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (options start with -)", fs.Arg(0))
	}
	if o.Version {
		return o, nil
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *Options) validate() error {
	if err := connect.CheckBrokerURL(o.Broker); err != nil {
		return err
	}
	if err := connect.CheckResultURL(o.ResultBackend); err != nil {
		return err
	}
	if o.Concurrency < 1 {
		return fmt.Errorf("--concurrency must be at least 1, got %d", o.Concurrency)
	}
	if o.PrefetchMultiplier < 1 {
		return fmt.Errorf("--prefetch-multiplier must be at least 1, got %d", o.PrefetchMultiplier)
	}
	var qs []string
	for _, q := range o.Queues {
		if q = strings.TrimSpace(q); q != "" {
			qs = append(qs, q)
		}
	}
	if len(qs) == 0 {
		return errors.New("--queues needs at least one queue name")
	}
	o.Queues = qs
	if o.VisibilityTimeout <= 0 || o.ShutdownTimeout < 0 {
		return errors.New("--visibility-timeout must be positive and --shutdown-timeout not negative")
	}
	if o.DefaultQueue = strings.TrimSpace(o.DefaultQueue); o.DefaultQueue == "" {
		return errors.New("--default-queue must name a queue")
	}
	if o.MaxETATasks < 1 {
		return fmt.Errorf("--max-eta-tasks must be at least 1, got %d", o.MaxETATasks)
	}
	if o.RateLimitRedis != "" {
		if u, err := url.Parse(o.RateLimitRedis); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			return fmt.Errorf("bad --rate-limit-redis URL %q: must be redis:// or rediss://", connect.Redact(o.RateLimitRedis))
		}
	}
	if err := o.validateFlags(); err != nil {
		return err
	}
	return o.Observe.validate()
}

// rateLimitRedisURL is the Redis fleet-wide rate limits use: the flag, else the broker,
// else the result backend, when it is Redis; "" when there is none.
func (o *Options) rateLimitRedisURL() string {
	for _, u := range []string{o.RateLimitRedis, o.Broker, o.ResultBackend} {
		if strings.HasPrefix(u, "redis://") || strings.HasPrefix(u, "rediss://") {
			return u
		}
	}
	return ""
}

// newRateLimiter builds the worker's rate limiter; the Redis store is opened (lazily, by
// go-redis) when a Redis URL is known, so the fleet-wide switch can be turned on later.
func newRateLimiter(o *Options, taskCfg *tasks.Config, log *slog.Logger) (*ratelimit.Limiter, func(), error) {
	var store ratelimit.Store
	closeFn := func() {}
	if u := o.rateLimitRedisURL(); u != "" {
		ropts, err := goredis.ParseURL(u)
		if err != nil {
			return nil, nil, fmt.Errorf("rate limit Redis %s: %w", connect.Redact(u), err)
		}
		client := goredis.NewClient(ropts)
		store = ratelimit.NewRedisGCRA(client, "")
		closeFn = func() { _ = client.Close() }
	} else if o.RateLimitFleet {
		return nil, nil, errors.New("--rate-limit-fleet needs a Redis: a redis:// broker or result backend, or --rate-limit-redis")
	}
	l, err := ratelimit.New(taskCfg.RateLimits(), store, log)
	if err != nil {
		closeFn()
		return nil, nil, err
	}
	l.SetFleetWide(o.RateLimitFleet)
	return l, closeFn, nil
}

// NodeName expands Celery's %h, %n and %d in a node name template.
func NodeName(template, host string) string {
	name, domain := host, ""
	if i := strings.IndexByte(host, '.'); i >= 0 {
		name, domain = host[:i], host[i+1:]
	}
	r := strings.NewReplacer("%h", host, "%n", name, "%d", domain, "%%", "%")
	return r.Replace(template)
}

// Main runs the worker command and returns its exit code. A first SIGTERM/SIGINT starts a
// graceful shutdown; a second one aborts it (running tasks are handed back at once).
//
// Start-up order: the task configuration and its handlers (a mistake exits 78 before any
// connection), the broker, the result backend, then the feature flags start (file and Redis
// read once, then watched) before the worker consumes. Shutdown order: fetching stops,
// prefetched messages are handed back, running tasks finish (they read the last flag
// values); then worker-offline, the worker_seen key removed, spans flushed, the HTTP servers
// stopped; then the feature flags stop watching their sources; then the rate limiter's
// Redis, the result backend and the broker are closed.
func Main(args []string, env []string, stdout, stderr io.Writer) int {
	o, err := Parse(args, env, stdout)
	if errors.Is(err, pflag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitUsage
	}
	if o.Version {
		fmt.Fprintf(stdout, "fleet worker %s\n", Version)
		return ExitOK
	}
	log, err := logging.New(stdout, o.LogLevel, o.LogFormat)
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitUsage
	}
	var taskCfg *tasks.Config
	if o.ConfigFile != "" {
		if taskCfg, err = tasks.LoadConfig(o.ConfigFile); err != nil {
			fmt.Fprintf(stderr, "worker: %v\n", err)
			return ExitConfig
		}
	}
	lookupEnv := envLookup(env)
	fl, closeFlagsRedis, err := newFlags(o, lookupEnv, log)
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitUsage
	}
	defer closeFlagsRedis()
	reg := tasks.NewRegistry()
	if err := registerTasks(reg, taskCfg, o.NoDiagTasks, tasks.RunnerOptions{Logger: log, Flags: fl, LookupEnv: lookupEnv}); err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitConfig
	}
	host, _ := os.Hostname()
	hostname := NodeName(o.Hostname, host)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	startCtx, cancelStart := context.WithTimeout(ctx, 15*time.Second)
	b, err := connect.Broker(startCtx, o.Broker, connect.BrokerOptions{VisibilityTimeout: o.VisibilityTimeout,
		QueueArguments: taskCfg.QueueArguments(), Logger: log})
	cancelStart()
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitUnavailable
	}
	defer b.Close()
	obs, err := newObservability(ctx, o, hostname, b, log)
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitConfig
	}
	log = obs.Logger(log)
	pub := obs.Broker() // b, writing the task's trace context on what it publishes
	startCtx, cancelStart = context.WithTimeout(ctx, 15*time.Second)
	rb, err := connect.Results(startCtx, o.ResultBackend, pub, result.Options{Logger: log})
	cancelStart()
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitUnavailable
	}
	if rb != nil {
		defer rb.Close()
	}

	queues := o.Queues
	for _, q := range taskCfg.Queues() {
		if !contains(queues, q) {
			queues = append(queues, q)
		}
	}
	limiter, closeLimiter, err := newRateLimiter(o, taskCfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitConfig
	}
	defer closeLimiter()
	reg.Use(obs.Middleware()...)
	if taskCfg != nil {
		reg.Use(taskCfg.FlagGate(fl)) // requires_flag, inside the metrics and the span
	}
	w := worker.New(worker.Config{
		Hostname: hostname, Queues: queues, Concurrency: o.Concurrency,
		PrefetchMultiplier: o.PrefetchMultiplier, ShutdownTimeout: o.ShutdownTimeout,
		Tasks: taskCfg, Logger: log, DefaultQueue: o.DefaultQueue, MaxETATasks: o.MaxETATasks,
		RateLimiter: limiter, Revoked: obs.Revoked(), Observers: obs.Observers(),
		MaxRedeliveries: int(o.MaxRedeliveries), Redeliveries: obs.Redeliveries(),
	}, pub, rb, reg)
	defer wireFlags(fl, o, hostname, obs, limiter)()
	if err := fl.Start(context.WithoutCancel(ctx)); err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitFailure
	}
	defer func() {
		if err := fl.Close(); err != nil {
			log.Warn("closing the feature flags", "err", err)
		}
	}()
	log.Info("starting fleet worker", "version", Version, "hostname", hostname,
		"broker", connect.Redact(o.Broker), "result_backend", connect.Redact(o.ResultBackend))
	if err := obs.Start(ctx, w, reg, func() { obs.Drain(); stop() }); err != nil {
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitUnavailable
	}
	defer obs.Stop()

	go func() {
		n := 0
		for s := range sigs {
			n++
			if n == 1 {
				log.Info("signal received: warm shutdown (send again to stop now)", "signal", s.String())
				obs.Drain()
				stop()
				continue
			}
			log.Warn("second signal: cold shutdown, handing back running tasks", "signal", s.String())
			w.Abort()
		}
	}()
	if err := w.Run(ctx); err != nil {
		log.Error("worker failed", "error", err)
		fmt.Fprintf(stderr, "worker: %v\n", err)
		return ExitFailure
	}
	return ExitOK
}

// envLookup looks names up in env (KEY=VALUE pairs, the last one winning as in exec).
func envLookup(env []string) func(string) (string, bool) {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
