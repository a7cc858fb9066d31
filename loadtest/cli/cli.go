// Package cli is the `loadtest` command line: flags (connection flags as the worker's),
// the run, the verdict table on stdout and the exit code.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/logging"
	"denis.io/fleet/loadtest/mix"
	"denis.io/fleet/loadtest/report"
	"denis.io/fleet/loadtest/run"
	"denis.io/fleet/loadtest/schedule"
)

// Exit codes.
const (
	ExitPass  = 0  // every criterion passed
	ExitFail  = 1  // the verdict is FAIL
	ExitError = 2  // the run could not be carried out
	ExitUsage = 64 // bad flags
)

const usageHead = `Usage: loadtest [options]

Drives a mix of Celery tasks at a multiple of the expected rate (2x by default) through the
broker into a fleet of workers, open loop, watches outcomes, queues and workers, accounts
for every task and prints a verdict against the go/no-go criteria. Exit 0 only when every
criterion passes (1: FAIL, 2: the run could not be carried out).

Profiles: steady, step (1x → 2x → 1x), ramp (canary 1 %…100 % of a new producer, then
rollback), spike, soak, or a YAML profile file. --time-scale compresses a profile's
natural length; --duration sets it.

Options:
`

type options struct {
	broker, backend      string
	queues               []string
	visibility           time.Duration
	profile              string
	expected, multiplier float64
	duration             time.Duration
	timeScale            float64
	arrivals             string
	seed                 uint64
	mixFile              string
	publishers           int
	warmup, drain        time.Duration
	warmupSet            bool

	maxP99, maxOverhead, maxLag      time.Duration
	maxQueue, maxDLQ, maxCPU, minMat float64
	maxMissing                       float64
	allowUnmeasured                  bool
	localWorkers, workerConc         int
	workerBin                        string
	workerArgs, metricsURLs          []string
	workerCPU                        float64
	decisions                        string
	killEvery, restartDelay          time.Duration
	noRestart                        bool
	restartBrokerAt, cutAt           []time.Duration
	brokerRestartCmd                 string
	out, logLevel, logFormat         string
	progress                         string
}

func parse(args, env []string, helpOut io.Writer) (*options, error) {
	envMap := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && v != "" {
			envMap[k] = v
		}
	}
	first := func(def string, names ...string) string {
		for _, n := range names {
			if v, ok := envMap[n]; ok {
				return v
			}
		}
		return def
	}
	o := &options{}
	fs := pflag.NewFlagSet("loadtest", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "queue" {
			name = "queues"
		}
		return pflag.NormalizedName(name)
	})
	fs.StringVarP(&o.broker, "broker", "b", first(connect.DefaultBrokerURL, "FLEET_BROKER", "CELERY_BROKER_URL"), "broker URL, as the worker's (env FLEET_BROKER, CELERY_BROKER_URL)")
	fs.StringVar(&o.backend, "result-backend", first("", "FLEET_RESULT_BACKEND", "CELERY_RESULT_BACKEND"), "Redis result backend the workers write to; outcomes are read there (env FLEET_RESULT_BACKEND, CELERY_RESULT_BACKEND)")
	fs.StringSliceVarP(&o.queues, "queues", "Q", []string{first("celery", "FLEET_QUEUES")}, "queues to send to (mix classes without a queue use the first); --queue works too")
	fs.DurationVar(&o.visibility, "visibility-timeout", time.Hour, "Redis broker: kombu's visibility_timeout (also given to local workers)")
	fs.StringVar(&o.profile, "profile", schedule.Step, "steady, step, ramp, spike, soak, or a profile YAML file")
	fs.Float64Var(&o.expected, "expected-rate", 10, "expected production rate, tasks/s (1x)")
	fs.Float64Var(&o.multiplier, "multiplier", 2, "load level to prove, times the expected rate")
	fs.DurationVar(&o.duration, "duration", 0, "total length of the profile (default: its natural length)")
	fs.Float64Var(&o.timeScale, "time-scale", 1, "run the profile this many times faster (same rates, shorter phases)")
	fs.StringVar(&o.arrivals, "arrivals", "uniform", "uniform (evenly spaced) or poisson")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the mix and arrival draws")
	fs.StringVar(&o.mixFile, "mix", "", "mix YAML file (default: materializer jobs and crew runs modelled with diag tasks)")
	fs.IntVar(&o.publishers, "publishers", 16, "publishes in flight at once")
	fs.DurationVar(&o.warmup, "warmup", 0, "excluded from the queue-length and CPU criteria (default 10 % of the run, at most 1m)")
	fs.DurationVar(&o.drain, "drain", 2*time.Minute, "how long to wait for outcomes after the last send")

	fs.DurationVar(&o.maxP99, "max-p99", 5*time.Minute, "criterion: p99 end-to-end latency below")
	fs.Float64Var(&o.maxQueue, "max-queue", 100, "criterion: deepest queue after warm-up below")
	fs.Float64Var(&o.maxDLQ, "max-dlq", 0, "criterion: dead letters (injected failures excluded) at most")
	fs.Float64Var(&o.maxCPU, "max-cpu", 70, "criterion: p95 worker CPU below, % of --worker-cpu")
	fs.Float64Var(&o.minMat, "min-materializer-success", 95, "criterion: materializer success above, %")
	fs.DurationVar(&o.maxOverhead, "max-overhead-p99", 500*time.Millisecond, "criterion: p99 latency overhead (F1) below")
	fs.Float64Var(&o.maxMissing, "max-missing", 0, "criterion: lost tasks at most")
	fs.DurationVar(&o.maxLag, "max-producer-lag", time.Second, "criterion: p99 producer lag behind schedule below")
	fs.BoolVar(&o.allowUnmeasured, "allow-unmeasured", false, "let criteria that could not be measured pass")

	fs.IntVar(&o.localWorkers, "local-workers", 0, "start this many local workers (0: test a fleet that is already running)")
	fs.StringVar(&o.workerBin, "worker-bin", "", "worker binary for local workers (default: worker beside loadtest)")
	fs.IntVar(&o.workerConc, "worker-concurrency", 8, "local workers' -c")
	fs.StringArrayVar(&o.workerArgs, "worker-arg", nil, "extra flag for local workers (repeatable; {i} = the worker's slot)")
	fs.Float64Var(&o.workerCPU, "worker-cpu", 1, "CPU given to each worker, cores (CPU % is measured against it)")
	fs.StringArrayVar(&o.metricsURLs, "metrics-url", nil, "a worker's /metrics to scrape for CPU and memory (repeatable; {i} = local worker slot)")
	fs.StringVar(&o.decisions, "autoscaler-decisions", "", "the autoscaler's JSON-lines decision log to follow")

	fs.DurationVar(&o.killEvery, "kill-worker-every", 0, "chaos: SIGKILL a random local worker this often")
	fs.BoolVar(&o.noRestart, "no-restart-killed", false, "chaos: do not start a replacement for a killed worker")
	fs.DurationVar(&o.restartDelay, "restart-delay", 2*time.Second, "chaos: delay before a killed worker's replacement starts")
	fs.DurationSliceVar(&o.restartBrokerAt, "restart-broker-at", nil, "chaos: run --broker-restart-cmd at these offsets (e.g. 1m,2m)")
	fs.StringVar(&o.brokerRestartCmd, "broker-restart-cmd", "", "chaos: shell command that restarts the broker (only ever a broker of your own)")
	fs.DurationSliceVar(&o.cutAt, "cut-connections-at", nil, "chaos: cut the local workers' broker connections (through a proxy) at these offsets")

	fs.StringVar(&o.out, "out", "", "write result.json, report.html, PNGs and worker logs to this directory")
	fs.StringVar(&o.progress, "progress", "auto", "live progress line on stderr: auto (terminal only), always, never")
	fs.StringVarP(&o.logLevel, "log-level", "l", "warning", "debug, info, warning or error (logs go to stderr)")
	fs.StringVar(&o.logFormat, "log-format", "text", "json or text")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprint(helpOut, usageHead+fs.FlagUsages())
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (options start with -)", fs.Arg(0))
	}
	o.warmupSet = fs.Changed("warmup")
	if err := connect.CheckBrokerURL(o.broker); err != nil {
		return nil, err
	}
	if o.backend == "" {
		return nil, errors.New("--result-backend is required: outcomes are read from the Redis result backend the workers write to")
	}
	if err := connect.CheckResultURL(o.backend); err != nil {
		return nil, err
	}
	if o.expected <= 0 || o.multiplier <= 0 || o.timeScale <= 0 {
		return nil, errors.New("--expected-rate, --multiplier and --time-scale must be positive")
	}
	switch o.progress {
	case "auto", "always", "never":
	default:
		return nil, fmt.Errorf("--progress %q: want auto, always or never", o.progress)
	}
	return o, nil
}

// Main runs the command and returns its exit code.
func Main(args, env []string, stdout, stderr io.Writer) int {
	o, err := parse(args, env, stdout)
	if errors.Is(err, pflag.ErrHelp) {
		return ExitPass
	}
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return ExitUsage
	}
	log, err := logging.New(stderr, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return ExitUsage
	}
	cfg, err := o.config()
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return ExitUsage
	}
	cfg.Logger = log
	if o.progress == "always" || (o.progress == "auto" && isTerminal(stderr)) {
		cfg.Progress = stderr
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(stdout, "loadtest: profile %s, %s at up to %.4g tasks/s (%gx of %g/s), %s\n", cfg.Profile.Name,
		cfg.Profile.Duration().Round(time.Second), cfg.Profile.MaxRate(), o.multiplier, o.expected, describeWorkers(cfg))
	out, err := run.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return ExitError
	}
	printVerdict(stdout, out)
	if out.Result.Verdict != report.Pass {
		return ExitFail
	}
	return ExitPass
}

func describeWorkers(cfg run.Config) string {
	if cfg.LocalWorkers > 0 {
		return fmt.Sprintf("%d local workers", cfg.LocalWorkers)
	}
	return "against the running fleet"
}

func (o *options) config() (run.Config, error) {
	level := schedule.Level{Expected: o.expected, Multiplier: o.multiplier}
	var p schedule.Profile
	var err error
	if isFile(o.profile) {
		p, err = schedule.LoadFile(o.profile, level)
	} else {
		p, err = schedule.Builtin(o.profile, level)
	}
	if err != nil {
		return run.Config{}, err
	}
	if o.duration > 0 {
		p = p.Stretched(o.duration)
	}
	p = p.Scaled(o.timeScale)
	arr, err := schedule.ParseArrivals(o.arrivals)
	if err != nil {
		return run.Config{}, err
	}
	m, err := mix.Load(o.mixFile, o.queues[0])
	if err != nil {
		return run.Config{}, err
	}
	note := ""
	if o.mixFile == "" {
		note = "Default mix: materializer jobs and crew runs in an 8:2 ratio, modelled with diag.cpu / diag.sleep " +
			"(the real crew and materializer runners are not configured on these workers; give --mix to send the real task names)."
	}
	th := run.DefaultThresholds()
	th.E2EP99 = o.maxP99.Seconds()
	th.QueueMax = o.maxQueue
	th.DLQMax = o.maxDLQ
	th.CPUP95 = o.maxCPU
	th.MaterializerSuccess = o.minMat
	th.OverheadP99 = o.maxOverhead.Seconds()
	th.Missing = o.maxMissing
	th.ProducerLagP99 = o.maxLag.Seconds()
	th.AllowUnmeasured = o.allowUnmeasured
	warmup := o.warmup
	if !o.warmupSet {
		warmup = run.DefaultWarmup(p)
	}
	bin := o.workerBin
	if bin == "" && o.localWorkers > 0 {
		bin = defaultWorkerBin()
	}
	return run.Config{
		Broker: o.broker, ResultBackend: o.backend, Queues: o.queues, VisibilityTimeout: o.visibility,
		Profile: p, Level: level, Arrivals: arr, Seed: o.seed, Mix: m, MixNote: note,
		Publishers: o.publishers, Warmup: warmup, Drain: o.drain, Thresholds: th,
		LocalWorkers: o.localWorkers, WorkerBin: bin, WorkerConcurrency: o.workerConc, WorkerArgs: o.workerArgs,
		WorkerCPU: o.workerCPU, MetricsURLs: o.metricsURLs, DecisionsFile: o.decisions,
		KillEvery: o.killEvery, RestartKilled: !o.noRestart, RestartDelay: o.restartDelay,
		RestartBrokerAt: o.restartBrokerAt, BrokerRestartCmd: o.brokerRestartCmd, CutAt: o.cutAt,
		OutDir: o.out,
	}, nil
}

func isFile(s string) bool {
	if strings.HasSuffix(s, ".yaml") || strings.HasSuffix(s, ".yml") {
		return true
	}
	fi, err := os.Stat(s)
	return err == nil && fi.Mode().IsRegular()
}

func defaultWorkerBin() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "worker")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join("bin", "worker")
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func printVerdict(w io.Writer, out *run.Outcome) {
	r := out.Result
	fmt.Fprintf(w, "\nVERDICT: %s\n\n", r.Verdict)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\tcriterion\tmeasured\tthreshold\t")
	for _, c := range r.Criteria {
		res := "PASS"
		if !c.Pass {
			res = "FAIL"
		}
		val := "not measured"
		if c.Value != nil {
			val = fmt.Sprintf("%.4g %s", *c.Value, c.Unit)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s %.4g %s\t\n", res, c.Name, val, c.Op, c.Threshold, c.Unit)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\npublished %d: succeeded %d, failed %d, dead-lettered %d, revoked %d, queued %d, in flight %d, missing %d; duplicates %d; injected %d\n",
		r.Published, r.Succeeded, r.Failed, r.DeadLettered, r.Revoked, r.Queued, r.InFlight, r.Missing, r.Duplicates, r.Injected)
	fmt.Fprintf(w, "latency p50 %.3fs p95 %.3fs p99 %.3fs max %.3fs; sent %.2f/s, completed %.2f/s; producer lag p99 %.3fs\n",
		r.LatencyS.P50, r.LatencyS.P95, r.LatencyS.P99, r.LatencyS.Max, r.SentPerS, r.ThroughputPerS, r.Producer.LagS.P99)
	for _, c := range r.Classes {
		fmt.Fprintf(w, "  %-18s %5d sent  p99 %.3fs  overhead p99 %.3fs\n", c.Name, c.Published, c.LatencyS.P99, c.OverheadS.P99)
	}
	if r.Producer.FellBehind {
		fmt.Fprintln(w, "WARNING: the producer fell behind its schedule; the fleet was offered less than the planned load")
	}
	if out.ReportPath != "" {
		fmt.Fprintf(w, "report: %s\nresult: %s\n", out.ReportPath, out.JSONPath)
	}
}
