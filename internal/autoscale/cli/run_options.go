package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"denis.io/fleet/internal/autoscale"
	"denis.io/fleet/internal/connect"
)

// Targets of `autoscaler run`.
const (
	TargetKubernetes = "kubernetes"
	TargetLocal      = "local"
)

// runOptions is the parsed `run` command line (and --config file).
type runOptions struct {
	target     string
	kubeconfig string
	namespace  string

	broker        string
	managementURL string
	resultBackend string
	stateRedis    string
	statePrefix   string
	flagsFile     string
	flagsRedis    string

	dryRun        bool
	leaderElect   bool
	leaseName     string
	identity      string
	leaseDuration time.Duration
	renewDeadline time.Duration
	retryPeriod   time.Duration
	otherScalers  bool
	cpu           bool

	metricsAddr   string
	decisionsFile string
	traceStream   string
	traceMaxLen   int64
	logLevel      string
	logFormat     string

	workerCmd    []string
	workerLogDir string
	workerCPU    float64

	pools []poolOptions
}

// poolOptions is one scaled workload: a Deployment (or the local fleet) and its queues.
type poolOptions struct {
	name       string
	deployment string
	queues     []string
	cfg        autoscale.Config
	// serviceTime is the assumed mean task run time until μ is measured.
	serviceTime time.Duration
}

const runUsageHead = `Usage: autoscaler run [options]
       autoscaler --target=kubernetes --config=FILE [options]   (the chart's form)

Runs the fleet autoscaler: every interval it reads the broker (ready, in-flight, arrival
rate), the workers' heartbeats (running tasks, completions: μ), pod CPU (metrics.k8s.io), the
Deployment (paused annotation, rollout, other autoscalers) and the fleet flags
(FLEET_EMERGENCY_STOP, ASYNC_ENABLED), decides with the policy the simulator runs, explains the
decision (log, Event, metrics, decision trace) and writes /scale — or, with --target local,
starts and stops worker processes on this machine.

  kubernetes:  autoscaler run --deployment fleet-default -Q celery -b amqp://… [--kubeconfig F]
  local:       autoscaler run --target local --worker-cmd "bin/worker -c 4" -b URL -Q q --min 1 --max 8

Options (an environment variable shown with an option is its default):
`

// fileConfig is the --config YAML the Helm chart renders (templates/autoscaler-config.yaml).
type fileConfig struct {
	Target          string  `yaml:"target"`
	Namespace       string  `yaml:"namespace"`
	IntervalSeconds float64 `yaml:"intervalSeconds"`
	DryRun          *bool   `yaml:"dryRun"`
	LeaderElection  struct {
		Enabled              *bool   `yaml:"enabled"`
		LeaseName            string  `yaml:"leaseName"`
		LeaseDurationSeconds float64 `yaml:"leaseDurationSeconds"`
		RenewDeadlineSeconds float64 `yaml:"renewDeadlineSeconds"`
		RetryPeriodSeconds   float64 `yaml:"retryPeriodSeconds"`
	} `yaml:"leaderElection"`
	Pools []filePool `yaml:"pools"`
}

type filePool struct {
	Name                   string   `yaml:"name"`
	Deployment             string   `yaml:"deployment"`
	Queues                 []string `yaml:"queues"`
	Concurrency            int      `yaml:"concurrency"`
	MinReplicas            *int     `yaml:"minReplicas"`
	MaxReplicas            *int     `yaml:"maxReplicas"`
	TargetDepth            float64  `yaml:"targetDepth"`
	CPUTarget              float64  `yaml:"cpuTarget"`
	ScaleDownWindowSeconds float64  `yaml:"scaleDownWindowSeconds"`
	DrainTimeSeconds       float64  `yaml:"drainTimeSeconds"`
	TaskSeconds            float64  `yaml:"taskSeconds"`
	PodStartSeconds        float64  `yaml:"podStartSeconds"`
	FailStaticFloor        *int     `yaml:"failStaticFloor"`
	ReversalGuardSeconds   float64  `yaml:"reversalGuardSeconds"`
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// parseRun parses the `run` arguments with env (KEY=VALUE) as the fallback of every flag.
func parseRun(args, env []string, helpOut io.Writer) (runOptions, error) {
	envMap := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && v != "" {
			envMap[k] = v
		}
	}
	def := autoscale.DefaultConfig()
	var o runOptions
	var (
		configFile, deployment, name, workerCmd                        string
		queues                                                         []string
		minR, maxR, conc, floor                                        int
		interval, taskTime, podStart, drain, sdWindow, sdPeriod, guard time.Duration
		stale, grace                                                   time.Duration
		depth, cpuTarget, rho                                          float64
	)
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.StringVar(&configFile, "config", "", "YAML file with the pools to scale (the chart's autoscaler.yaml); flags set on the command line override it (env FLEET_AUTOSCALER_CONFIG)")
	fs.StringVar(&o.target, "target", TargetKubernetes, "kubernetes (a Deployment's /scale) or local (worker processes on this machine) (env FLEET_AUTOSCALER_TARGET)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty: the in-cluster config, else $KUBECONFIG or ~/.kube/config")
	fs.StringVar(&o.namespace, "namespace", "", "namespace of the Deployments and the Lease; empty: the kubeconfig's or the pod's (env POD_NAMESPACE)")
	fs.StringVar(&deployment, "deployment", "", "the worker Deployment to scale, when there is no --config (env FLEET_AUTOSCALER_DEPLOYMENT)")
	fs.StringVar(&name, "name", "", "pool name (metrics and logs); default: the Deployment's name, or \"worker\" for --target local")
	fs.StringVarP(&o.broker, "broker", "b", connect.DefaultBrokerURL, "broker URL: amqp://, amqps://, redis://, rediss:// (env FLEET_BROKER, CELERY_BROKER_URL)")
	fs.StringVar(&o.managementURL, "management-url", "", "RabbitMQ management API; default http://<broker host>:15672 with the broker's credentials (env FLEET_RABBITMQ_MANAGEMENT_URL)")
	fs.StringSliceVarP(&queues, "queues", "Q", []string{"celery"}, "queues the workers consume, when there is no --config (env FLEET_QUEUES)")
	fs.StringVar(&o.resultBackend, "result-backend", "", "the workers' result backend; only used to find the Redis of the heartbeats (env FLEET_RESULT_BACKEND, CELERY_RESULT_BACKEND)")
	fs.StringVar(&o.stateRedis, "state-redis", "", "Redis with the fleet state: the workers' heartbeat records (fleet:worker:*) and the decision stream; default: the broker, else the result backend, when Redis — as the worker's --state-redis (env FLEET_STATE_REDIS)")
	fs.StringVar(&o.statePrefix, "state-prefix", "", "key prefix of the heartbeat records (env FLEET_STATE_PREFIX)")
	fs.StringVar(&o.flagsFile, "flags-file", "", "flags file or ConfigMap directory (env FLEET_FLAGS_FILE)")
	fs.StringVar(&o.flagsRedis, "flags-redis", "", "Redis with the fleet:flags hash (env FLEET_FLAGS_REDIS)")
	fs.IntVar(&minR, "min", def.MinReplicas, "fewest replicas (0 allows scale to zero)")
	fs.IntVar(&maxR, "max", def.MaxReplicas, "most replicas")
	fs.IntVarP(&conc, "concurrency", "c", def.Concurrency, "task slots per worker, until the heartbeats report theirs")
	fs.DurationVar(&interval, "interval", def.Interval, "reconcile period (bounds the emergency-stop latency)")
	fs.DurationVar(&taskTime, "task-seconds", time.Second, "mean task run time assumed until μ is measured from the workers' counters (0: none)")
	fs.DurationVar(&podStart, "pod-start", def.PodStartTime, "time from a replica write to a new worker consuming; sets ρ* (autoscaling.md §6.4)")
	fs.Float64Var(&depth, "depth-target", def.DepthTarget, "queue depth that must not be reached (ready + delivered, not started)")
	fs.Float64Var(&cpuTarget, "cpu-target", def.CPUTarget, "pod CPU ÷ request the CPU need plans for")
	fs.Float64Var(&rho, "target-utilization", def.TargetUtilization, "fixed ρ*; 0 derives it from --pod-start, --depth-target and the load")
	fs.DurationVar(&drain, "drain-time", def.DrainTime, "time the backlog term plans to empty the ready backlog in")
	fs.DurationVar(&sdWindow, "scale-down-window", def.ScaleDownWindow, "stabilisation window before a scale-down")
	fs.DurationVar(&sdPeriod, "scale-down-period", def.ScaleDownPeriod, "at most one scale-down step per this period")
	fs.DurationVar(&guard, "reversal-guard", def.ReversalGuard, "no scale-down this long after a scale-up")
	fs.DurationVar(&stale, "stale-after", def.StaleAfter, "a broker sample or heartbeat older than this is missing")
	fs.IntVar(&floor, "fail-static-floor", def.FailStaticFloor, "replicas held while broker signals are missing (from zero too)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "decide and explain, write nothing (no /scale, annotations, Events or Lease) (env FLEET_AUTOSCALER_DRY_RUN)")
	fs.BoolVar(&o.leaderElect, "leader-elect", true, "kubernetes: act only while holding the Lease (off with --dry-run)")
	fs.StringVar(&o.leaseName, "lease-name", "fleet-autoscaler", "name of the coordination.k8s.io Lease")
	fs.StringVar(&o.identity, "identity", "", "this replica's identity in the Lease; default: the pod name, else host name + random suffix (env POD_NAME)")
	fs.DurationVar(&o.leaseDuration, "lease-duration", 15*time.Second, "Lease duration")
	fs.DurationVar(&o.renewDeadline, "renew-deadline", 10*time.Second, "Lease renew deadline")
	fs.DurationVar(&o.retryPeriod, "retry-period", 2*time.Second, "Lease retry period")
	fs.BoolVar(&o.otherScalers, "check-other-scalers", false, "list HPAs and KEDA ScaledObjects and refuse to act on a Deployment one of them targets (needs the chart's readOtherScalers RBAC)")
	fs.BoolVar(&o.cpu, "cpu", true, "read pod CPU: from metrics.k8s.io (kubernetes), from /proc of the worker processes (local)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":9809", "address of /metrics, /healthz, /readyz and /status; empty: off (env FLEET_METRICS_ADDR)")
	fs.StringVar(&o.decisionsFile, "decisions-file", "", "append every decision as a JSON line to this file")
	fs.StringVar(&o.traceStream, "trace-stream", autoscale.DefaultTraceStream, "Redis stream of decision traces, written while DECISION_TRACE_ENABLED is true")
	fs.Int64Var(&o.traceMaxLen, "trace-maxlen", autoscale.DefaultTraceMaxLen, "approximate bound of the trace stream")
	fs.StringVarP(&o.logLevel, "log-level", "l", "info", "debug, info, warning or error (env FLEET_LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or text (env FLEET_LOG_FORMAT)")
	fs.StringVar(&workerCmd, "worker-cmd", "", "local: the worker command, split on spaces; --broker, --queues, --hostname fleet@<name> and --metrics-addr= (off: workers share the host's ports) go right after the program, so its own options win (env FLEET_WORKER_CMD)")
	fs.StringVar(&o.workerLogDir, "worker-log-dir", "", "local: write each worker's output to <dir>/<name>.log instead of stderr")
	fs.Float64Var(&o.workerCPU, "worker-cpu-request", 1, "local: the cores a worker process may use, the \"request\" its CPU is measured against (--cpu-target)")
	fs.DurationVar(&grace, "grace", def.GracePeriod, "local: drain time after SIGTERM before SIGKILL; kubernetes: the pods' grace period when the Deployment does not set one")

	envNames := map[string][]string{
		"config": {"FLEET_AUTOSCALER_CONFIG"}, "target": {"FLEET_AUTOSCALER_TARGET"},
		"namespace": {"POD_NAMESPACE"}, "deployment": {"FLEET_AUTOSCALER_DEPLOYMENT"},
		"broker": {"FLEET_BROKER", "CELERY_BROKER_URL"}, "management-url": {"FLEET_RABBITMQ_MANAGEMENT_URL"},
		"queues": {"FLEET_QUEUES"}, "result-backend": {"FLEET_RESULT_BACKEND", "CELERY_RESULT_BACKEND"},
		"state-redis": {"FLEET_STATE_REDIS"}, "state-prefix": {"FLEET_STATE_PREFIX"},
		"flags-file": {"FLEET_FLAGS_FILE"}, "flags-redis": {"FLEET_FLAGS_REDIS"},
		"dry-run": {"FLEET_AUTOSCALER_DRY_RUN"}, "identity": {"POD_NAME"}, "metrics-addr": {"FLEET_METRICS_ADDR"},
		"log-level": {"FLEET_LOG_LEVEL"}, "log-format": {"FLEET_LOG_FORMAT"}, "worker-cmd": {"FLEET_WORKER_CMD"},
	}
	// The command line first; the environment fills what it did not set. Only the command
	// line overrides the --config file.
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(helpOut, runUsageHead+fs.FlagUsages())
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cmdline := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { cmdline[f.Name] = true })
	envSet := map[string]bool{}
	for flagName, names := range envNames {
		if cmdline[flagName] {
			continue
		}
		for _, n := range names {
			if v, ok := envMap[n]; ok {
				if err := fs.Set(flagName, v); err != nil {
					return o, fmt.Errorf("bad value %q in $%s: %w", v, n, err)
				}
				envSet[flagName] = true
				break
			}
		}
	}
	given := func(n string) bool { return cmdline[n] }

	// The file, then the command line over it.
	var fc fileConfig
	if configFile != "" {
		data, err := os.ReadFile(configFile)
		if err != nil {
			return o, fmt.Errorf("--config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
			return o, fmt.Errorf("--config %s: %w", configFile, err)
		}
		if fc.Target != "" && !given("target") {
			o.target = fc.Target
		}
		if fc.Namespace != "" && !given("namespace") {
			o.namespace = fc.Namespace
		}
		if fc.IntervalSeconds > 0 && !given("interval") {
			interval = seconds(fc.IntervalSeconds)
		}
		if fc.DryRun != nil && !given("dry-run") && !envSet["dry-run"] {
			o.dryRun = *fc.DryRun
		}
		le := fc.LeaderElection
		if le.Enabled != nil && !given("leader-elect") {
			o.leaderElect = *le.Enabled
		}
		if le.LeaseName != "" && !given("lease-name") {
			o.leaseName = le.LeaseName
		}
		if le.LeaseDurationSeconds > 0 && !given("lease-duration") {
			o.leaseDuration = seconds(le.LeaseDurationSeconds)
		}
		if le.RenewDeadlineSeconds > 0 && !given("renew-deadline") {
			o.renewDeadline = seconds(le.RenewDeadlineSeconds)
		}
		if le.RetryPeriodSeconds > 0 && !given("retry-period") {
			o.retryPeriod = seconds(le.RetryPeriodSeconds)
		}
	}
	switch o.target {
	case TargetKubernetes, TargetLocal:
	default:
		return o, fmt.Errorf("--target must be kubernetes or local, got %q", o.target)
	}
	if err := connect.CheckBrokerURL(o.broker); err != nil {
		return o, err
	}
	if o.target == TargetLocal {
		o.workerCmd = strings.Fields(workerCmd)
		if len(o.workerCmd) == 0 {
			return o, errors.New("--target local needs --worker-cmd (e.g. \"bin/worker -c 4\")")
		}
		o.leaderElect = false
	}
	if o.dryRun {
		o.leaderElect = false // a shadow must never take the Lease from the real autoscaler
	}
	if o.leaseDuration <= o.renewDeadline || o.renewDeadline <= o.retryPeriod || o.retryPeriod <= 0 {
		return o, errors.New("need --lease-duration > --renew-deadline > --retry-period > 0")
	}

	base := func(p *poolOptions) {
		c := def
		c.MinReplicas, c.MaxReplicas, c.Concurrency, c.Interval = minR, maxR, conc, interval
		c.PodStartTime, c.DepthTarget, c.CPUTarget, c.TargetUtilization = podStart, depth, cpuTarget, rho
		c.DrainTime, c.ScaleDownWindow, c.ScaleDownPeriod, c.ReversalGuard = drain, sdWindow, sdPeriod, guard
		c.StaleAfter, c.FailStaticFloor, c.GracePeriod = stale, floor, grace
		if c.FailStaticFloor > c.MaxReplicas {
			c.FailStaticFloor = c.MaxReplicas
		}
		p.cfg, p.serviceTime = c, taskTime
	}
	if len(fc.Pools) == 0 {
		p := poolOptions{name: name, deployment: deployment}
		for _, q := range queues {
			if q = strings.TrimSpace(q); q != "" {
				p.queues = append(p.queues, q)
			}
		}
		if o.target == TargetKubernetes && p.deployment == "" {
			return o, errors.New("--target kubernetes needs --deployment or a --config with pools")
		}
		if p.name == "" {
			p.name = p.deployment
		}
		if p.name == "" {
			p.name = "worker"
		}
		base(&p)
		o.pools = append(o.pools, p)
	} else {
		if o.target == TargetLocal && len(fc.Pools) != 1 {
			return o, errors.New("--target local scales exactly one pool")
		}
		for i, fp := range fc.Pools {
			p := poolOptions{name: fp.Name, deployment: fp.Deployment, queues: fp.Queues}
			base(&p)
			c := &p.cfg
			set := func(flag string, fromFile bool, apply func()) {
				if fromFile && !given(flag) {
					apply()
				}
			}
			set("concurrency", fp.Concurrency > 0, func() { c.Concurrency = fp.Concurrency })
			set("min", fp.MinReplicas != nil, func() { c.MinReplicas = *fp.MinReplicas })
			set("max", fp.MaxReplicas != nil, func() { c.MaxReplicas = *fp.MaxReplicas })
			set("depth-target", fp.TargetDepth > 0, func() { c.DepthTarget = fp.TargetDepth })
			set("cpu-target", fp.CPUTarget > 0, func() { c.CPUTarget = fp.CPUTarget })
			set("scale-down-window", fp.ScaleDownWindowSeconds > 0, func() { c.ScaleDownWindow = seconds(fp.ScaleDownWindowSeconds) })
			set("drain-time", fp.DrainTimeSeconds > 0, func() { c.DrainTime = seconds(fp.DrainTimeSeconds) })
			set("pod-start", fp.PodStartSeconds > 0, func() { c.PodStartTime = seconds(fp.PodStartSeconds) })
			set("reversal-guard", fp.ReversalGuardSeconds > 0, func() { c.ReversalGuard = seconds(fp.ReversalGuardSeconds) })
			set("fail-static-floor", fp.FailStaticFloor != nil, func() { c.FailStaticFloor = *fp.FailStaticFloor })
			set("task-seconds", fp.TaskSeconds > 0, func() { p.serviceTime = seconds(fp.TaskSeconds) })
			if c.FailStaticFloor > c.MaxReplicas {
				c.FailStaticFloor = c.MaxReplicas
			}
			if p.deployment == "" && o.target == TargetKubernetes {
				return o, fmt.Errorf("--config: pool %d has no deployment", i)
			}
			if p.name == "" {
				p.name = p.deployment
			}
			if len(p.queues) == 0 {
				return o, fmt.Errorf("--config: pool %s has no queues", p.name)
			}
			o.pools = append(o.pools, p)
		}
	}
	seen := map[string]bool{}
	for _, p := range o.pools {
		if len(p.queues) == 0 {
			return o, fmt.Errorf("pool %s: --queues needs at least one queue", p.name)
		}
		if err := p.cfg.Validate(); err != nil {
			return o, fmt.Errorf("pool %s: %w", p.name, err)
		}
		if seen[p.name] {
			return o, fmt.Errorf("pool %s appears twice", p.name)
		}
		seen[p.name] = true
	}
	if o.stateRedis == "" {
		for _, u := range []string{o.broker, o.resultBackend} {
			if strings.HasPrefix(u, "redis://") || strings.HasPrefix(u, "rediss://") {
				o.stateRedis = u
				break
			}
		}
	}
	return o, nil
}
