package workercli

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/flags"
	"denis.io/fleet/internal/metrics"
	"denis.io/fleet/internal/ratelimit"
	"denis.io/fleet/internal/tasks"
)

// FlagsRedisOff as --flags-redis turns the Redis source of the feature flags off.
const FlagsRedisOff = "off"

// flagsRedisURL is the Redis of the feature flags: --flags-redis, else the state Redis
// (--state-redis, else a Redis broker, else a Redis result backend), so that the worker
// reads the hash `fleetctl flags` and `fleetctl rollback` write by default; "" for none.
func (o *Options) flagsRedisURL() string {
	switch o.FlagsRedis {
	case FlagsRedisOff:
		return ""
	case "":
		return o.stateRedisURL()
	}
	return o.FlagsRedis
}

func (o *Options) validateFlags() error {
	if o.FlagsRedis != "" && o.FlagsRedis != FlagsRedisOff && !isRedisURL(o.FlagsRedis) {
		return fmt.Errorf("bad --flags-redis %q: must be a redis:// or rediss:// URL, or %q", connect.Redact(o.FlagsRedis), FlagsRedisOff)
	}
	if strings.TrimSpace(o.FlagsKey) == "" {
		return errors.New("--flags-key must name a Redis key")
	}
	return nil
}

// newFlags returns the worker's feature flags (defaults and lookupEnv now; the file and
// Redis sources once started) and a function closing its Redis client.
func newFlags(o *Options, lookupEnv func(string) (string, bool), log *slog.Logger) (*flags.Flags, func(), error) {
	opts := flags.Options{Logger: log, LookupEnv: lookupEnv, File: o.FlagsFile,
		RedisKey: o.FlagsKey, RedisChannel: o.FlagsKey + ":changed"}
	closeFn := func() {}
	if u := o.flagsRedisURL(); u != "" {
		ropts, err := goredis.ParseURL(u)
		if err != nil {
			return nil, nil, fmt.Errorf("flags Redis %s: %w", connect.Redact(u), err)
		}
		client := goredis.NewClient(ropts)
		opts.Redis = client
		closeFn = func() { _ = client.Close() }
	}
	fl, err := flags.New(opts)
	if err != nil {
		closeFn()
		return nil, nil, err
	}
	return fl, closeFn, nil
}

// flagEffects applies the flags that switch worker machinery: RATE_LIMIT_STRICT (fleet-wide
// or per-worker rate limits) and TELEMETRY_ENABLED (tracing export). While a flag is at its
// built-in default (set by no source) the command line decides: --rate-limit-fleet, and
// tracing on (export then follows the OTEL_* configuration).
type flagEffects struct {
	fl      *flags.Flags
	limiter *ratelimit.Limiter
	tracing func(on bool) // nil with --without-tracing
	strict  bool          // --rate-limit-fleet

	mu                    sync.Mutex
	applied               bool
	lastStrict, lastTrace bool
}

// resolve is the value of a Bool flag, or def while the flag is at its built-in default.
func (e *flagEffects) resolve(name string, def bool) bool {
	st, ok := e.fl.Get(name)
	if !ok || st.Source == flags.SourceDefault {
		return def
	}
	return st.Bool()
}

// apply sets the machinery to the current flags; it only touches what changed.
func (e *flagEffects) apply() {
	e.mu.Lock()
	defer e.mu.Unlock()
	strict := e.resolve(flags.RateLimitStrict, e.strict)
	trace := e.resolve(flags.TelemetryEnabled, true)
	if !e.applied || strict != e.lastStrict {
		e.limiter.SetFleetWide(strict)
	}
	if e.tracing != nil && (!e.applied || trace != e.lastTrace) {
		e.tracing(trace)
	}
	e.applied, e.lastStrict, e.lastTrace = true, strict, trace
}

// wireFlags connects the flags to the worker: the effects of RATE_LIMIT_STRICT and
// TELEMETRY_ENABLED (now and on every change), the heartbeat record (`fleetctl flags
// --workers` and `fleetctl rollback` read each worker's effective values there) and the
// fleet_flag_* metrics. Each change is logged by the flags themselves, with its source.
// The returned function ends the subscription.
func wireFlags(fl *flags.Flags, o *Options, hostname string, obs *observability, limiter *ratelimit.Limiter) func() {
	e := &flagEffects{fl: fl, limiter: limiter, strict: o.RateLimitFleet}
	if obs.tracing() {
		e.tracing = obs.SetTracingEnabled
	}
	cancel := fl.Subscribe(func(flags.Change) { e.apply() })
	e.apply()
	obs.SetFlagSource(func() map[string]events.FlagValue {
		eff := fl.Effective()
		m := make(map[string]events.FlagValue, len(eff))
		for _, s := range eff {
			m[s.Name] = events.FlagValue{Value: s.Value, Source: string(s.Source)}
		}
		return m
	})
	obs.reg.MustRegister(flags.NewCollector(fl.Snapshot, prometheus.Labels{"hostname": metrics.HostLabel(hostname)}))
	return cancel
}

// registerTasks registers the built-in diag tasks (unless --no-diag-tasks) and a handler for
// every task of a runner kind in the configuration (crew, materializer, exec, http), with
// the flags as their FlagReader. requires_flag is enforced by the registry middleware
// cfg.FlagGate, for tasks of any kind. Mistakes are *tasks.ConfigError values.
func registerTasks(reg *tasks.Registry, cfg *tasks.Config, noDiag bool, opts tasks.RunnerOptions) error {
	if !noDiag {
		tasks.RegisterDiag(reg)
	}
	registered := reg.Names()
	for _, name := range cfg.TaskNames() {
		tc := cfg.For(name)
		switch {
		case tc.Kind == tasks.KindDiag && noDiag:
			return cfg.Errorf("tasks."+name+".kind", "diag tasks are off (--no-diag-tasks)")
		case !tasks.IsJobKind(tc.Kind):
			continue
		}
		for _, r := range registered {
			if r == name {
				return cfg.Errorf("tasks."+name+".kind", "%s is a built-in task; a %s task needs another name (or --no-diag-tasks)", name, tc.Kind)
			}
		}
		h, err := tasks.NewJobHandler(tc.Kind, tc.Job, opts)
		if err != nil {
			return cfg.Errorf("tasks."+name, "%v", err)
		}
		reg.Register(name, h)
	}
	return nil
}
