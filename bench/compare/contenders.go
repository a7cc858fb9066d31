package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// runEnv is what a contender needs to know about one run.
type runEnv struct {
	Broker     string // "amqp" or "redis"
	BrokerURL  string
	ResultURL  string // empty: results off
	Queue      string
	Prefetch   int
	Hostname   string // unique node name for this run
	ProfileDir string // non-empty: the worker runs under profworker and profiles here
}

// contender is one kind of consumer under test. Adding one (or a worker variant with
// extra flags, see --variant) is adding an entry to the list contenders() returns.
type contender struct {
	Name string
	// Python reports whether N is sized for Python Celery (--n-py) rather than Go.
	Python bool
	// Reports is true for the ceiling, which prints its own acked count at exit.
	Reports bool
	// Profiles is true for the worker and its variants: --profile runs them under
	// bench/profworker.
	Profiles bool
	// Stop is the signal that ends it once the queue is drained (default SIGTERM).
	Stop syscall.Signal
	// Command returns argv, environment and working directory for one run.
	Command func(e runEnv) (argv, env []string, dir string)
	// Describe is the command line shown in the report, with placeholders.
	Describe string
}

// binaries are the executables the contenders run.
type binaries struct {
	Root       string // module root
	Worker     string
	ProfWorker string // built only with --profile
	Ceiling    string
	Python     string
}

// contenders returns the contender definitions in cfg's order.
func contenders(cfg *config, bin binaries) ([]contender, error) {
	all := map[string]contender{
		cWorker:  workerContender(variant{Name: cWorker}, cfg, bin),
		cCelery:  celeryContender(cfg, bin),
		cCeiling: ceilingContender(cfg, bin),
	}
	for _, v := range cfg.Variants {
		all[v.Name] = workerContender(v, cfg, bin)
	}
	out := make([]contender, 0, len(cfg.Contenders))
	for _, n := range cfg.Contenders {
		c, ok := all[n]
		if !ok {
			return nil, fmt.Errorf("unknown contender %q", n)
		}
		out = append(out, c)
	}
	return out, nil
}

// cleanEnv is the driver's environment without the variables that would change a
// contender's defaults (Celery's and the worker's own).
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CELERY_") || strings.HasPrefix(kv, "FLEET_") || strings.HasPrefix(kv, "PYTHONPATH=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// workerContender is the fleet worker with its defaults (-c 8, acks_late, JSON logs at
// info, whatever observability it has on by default) except --prefetch-multiplier, chosen
// so that 8 × it equals the prefetch. Two flags only keep it from colliding with other
// workers on this machine: a unique node name (-n) and an ephemeral metrics port (the
// metrics server still runs).
func workerContender(v variant, cfg *config, bin binaries) contender {
	name, extra := v.Name, v.Args
	mult := strconv.Itoa(cfg.Prefetch / workerDefaultConcurrency)
	desc := "worker -b BROKER [--result-backend REDIS/10] -Q QUEUE -n NODE --metrics-addr 127.0.0.1:0 --prefetch-multiplier " + mult
	if len(v.Env) > 0 {
		desc = strings.Join(v.Env, " ") + " " + desc
	}
	if len(extra) > 0 {
		desc += " " + strings.Join(extra, " ")
	}
	desc += fmt.Sprintf("   (defaults otherwise: -c %d → prefetch %d, acks_late)", workerDefaultConcurrency, cfg.Prefetch)
	return contender{
		Name:     name,
		Profiles: true,
		Describe: desc,
		Command: func(e runEnv) ([]string, []string, string) {
			exe := bin.Worker
			env := cleanEnv(v.Env...)
			if e.ProfileDir != "" && bin.ProfWorker != "" {
				exe = bin.ProfWorker
				env = append(env, "FLEET_BENCH_PROFILE_DIR="+e.ProfileDir)
				if r := os.Getenv("FLEET_BENCH_MEMPROFILE_RATE"); r != "" {
					env = append(env, "FLEET_BENCH_MEMPROFILE_RATE="+r)
				}
			}
			argv := []string{exe, "-b", e.BrokerURL}
			if e.ResultURL != "" {
				argv = append(argv, "--result-backend", e.ResultURL)
			}
			argv = append(argv, "-Q", e.Queue, "-n", e.Hostname, "--metrics-addr", "127.0.0.1:0", "--prefetch-multiplier", mult)
			argv = append(argv, extra...)
			return argv, env, bin.Root
		},
	}
}

// celeryContender is Python Celery 5.2.6 with diagapp.py: prefork -c 2, acks_late,
// worker_prefetch_multiplier chosen so that 2 × it equals the prefetch. Mingle and gossip
// are off: they only talk to other nodes at start-up and the fleet worker has neither.
func celeryContender(cfg *config, bin binaries) contender {
	mult := strconv.Itoa(cfg.Prefetch / celeryConcurrency)
	dir := filepath.Join(bin.Root, "internal", "interop", "py")
	return contender{
		Name:   cCelery,
		Python: true,
		// Everything is acked once drained, so a cold shutdown loses nothing and saves the
		// warm shutdown's seconds.
		Stop: syscall.SIGQUIT,
		Describe: fmt.Sprintf("%s -m celery -A diagapp worker -P prefork -c %d -Q QUEUE -n NODE --without-mingle --without-gossip"+
			"   (env FLEET_PY_PREFETCH=%s → prefetch %d, task_acks_late=True; FLEET_PY_BACKEND=REDIS/10 with results)",
			bin.Python, celeryConcurrency, mult, cfg.Prefetch),
		Command: func(e runEnv) ([]string, []string, string) {
			argv := []string{bin.Python, "-m", "celery", "-A", "diagapp", "worker", "-P", "prefork",
				"-c", strconv.Itoa(celeryConcurrency), "-Q", e.Queue, "-n", e.Hostname,
				"--without-mingle", "--without-gossip"}
			env := cleanEnv("PYTHONPATH="+dir, "FLEET_PY_BROKER="+e.BrokerURL, "FLEET_PY_BACKEND="+e.ResultURL,
				"FLEET_PY_PREFETCH="+mult, "PYTHONUNBUFFERED=1")
			return argv, env, dir
		},
	}
}

// ceilingContender is bench/ceiling: the broker work only, same ack discipline.
func ceilingContender(cfg *config, bin binaries) contender {
	return contender{
		Name:     cCeiling,
		Reports:  true,
		Describe: fmt.Sprintf("ceiling --broker BROKER --queue QUEUE --prefetch %d [--result-backend REDIS/10]", cfg.Prefetch),
		Command: func(e runEnv) ([]string, []string, string) {
			argv := []string{bin.Ceiling, "--broker", e.BrokerURL, "--queue", e.Queue, "--prefetch", strconv.Itoa(e.Prefetch)}
			if e.ResultURL != "" {
				argv = append(argv, "--result-backend", e.ResultURL)
			}
			return argv, cleanEnv(), bin.Root
		},
	}
}
