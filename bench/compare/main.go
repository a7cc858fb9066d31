// Command compare is `make bench-compare`: it measures, on the same broker and queue layout
// and interleaved in the same run, how fast three contenders drain a queue pre-filled with
// no-op `diag.echo` tasks, and how much memory each needs:
//
//  1. worker:  the fleet worker (bin/worker), defaults except a prefetch equal to the
//     ceiling's;
//  2. celery:  Python Celery 5.2.6, prefork -c 2, acks_late, the diag.* tasks of
//     internal/interop/py/diagapp.py;
//  3. ceiling: bench/ceiling, a minimal Go consumer doing only the broker work with the
//     same ack discipline: the broker's ceiling on this machine.
//
// Every contender is a separate process. The matrix is brokers (RabbitMQ, Redis) × results
// (off, on: Redis backend), repeated over rounds with the contender order rotated each
// round; the report gives medians. Extra worker variants (--variant name='flags') run as
// further contenders and are reported as a ratio to the plain worker.
//
// Measurement (per run; see the README section printed with the table):
//   - pre-fill: N messages byte-identical in shape to Python's `diag.echo.delay(i)`
//     (protocol.EncodeTask; kombu's Redis envelope with json.dumps formatting), pipelined
//     LPUSH on Redis, publisher-confirmed batches on RabbitMQ, all before the contender
//     starts;
//   - drain: from the first message consumed to the queue empty and every delivery
//     settled. Redis: LLEN of every priority sub-list and HLEN of kombu's `unacked`,
//     polled every 2 ms (done = two zero polls in a row, timed at the first). RabbitMQ: a
//     watcher inside the broker (`rabbitmqctl eval`, the rabbit_amqqueue:info call behind
//     `rabbitmqctl list_queues messages_ready messages_unacknowledged`) polls every 2 ms,
//     so acks are seen without adding a consumer;
//   - check: after the contender stops, the queue is empty (nothing came back unacked),
//     no lease is left and, with results, exactly N results exist;
//   - memory: peak RSS is VmHWM from /proc/<pid>/status, summed over the process and its
//     children (Python prefork), sampled every 100 ms.
//
// Redis DB 9 is the broker and DB 10 the result backend; both are emptied before and after
// each run, and a lock key in DB 9 keeps two comparisons from running at once.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-compare: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// Under `go run` a signal to the go command does not reach us; without this an
	// interrupted comparison would go on, holding the lock and the CPUs, as an orphan.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0); errno != 0 {
		fmt.Fprintf(os.Stderr, "bench-compare: prctl(PR_SET_PDEATHSIG): %v\n", errno)
	}
	if os.Getppid() == 1 {
		fmt.Fprintln(os.Stderr, "bench-compare: parent already gone")
		os.Exit(1)
	}
	if _, err := run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "bench-compare: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	cfg := defaultConfig()
	fs := pflag.NewFlagSet("bench-compare", pflag.ContinueOnError)
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "rounds; each runs every contender once per broker × results cell")
	fs.IntVar(&cfg.NGo, "n-go", cfg.NGo, "messages per run for Go contenders (grown in later rounds if a drain is shorter than --min-drain)")
	fs.IntVar(&cfg.NPy, "n-py", cfg.NPy, "messages per run for Python Celery (grown likewise)")
	fs.StringSliceVar(&cfg.Brokers, "brokers", cfg.Brokers, "brokers: amqp, redis")
	fs.StringSliceVar(&cfg.Results, "results", cfg.Results, "result modes: off, on (Redis backend, DB 10)")
	fs.StringSliceVar(&cfg.Contenders, "contenders", cfg.Contenders, "contenders to run: worker, celery, ceiling and any --variant names")
	variants := fs.StringArray("variant", nil, "extra worker contender NAME='[ENV=value ...] --flag ...': the worker's flags plus these, and the\n"+
		"environment variables given first, reported as NAME/worker; repeatable\n"+
		"(e.g. --variant lean='--without-events --without-heartbeat --without-tracing --without-control --metrics-addr=')")
	fs.IntVar(&cfg.Prefetch, "prefetch", cfg.Prefetch, "unacked deliveries per consumer (ceiling --prefetch; worker and celery get the multiplier that matches)")
	fs.DurationVar(&cfg.MinDrain, "min-drain", cfg.MinDrain, "a drain shorter than this grows N for that cell's later rounds (and is flagged)")
	fs.BoolVar(&cfg.Overhead, "overhead", cfg.Overhead, "also run the worker with events, heartbeat, remote control, metrics and tracing all off (obs-off)\n"+
		"and all on with spans exported over OTLP/HTTP to a receiver in the driver (obs-on), and print obs-on/obs-off")
	quick := fs.Bool("quick", false, "fast smoke run: 1 round, small N (no speed meaning)")
	fs.StringVar(&cfg.JSONPath, "json", "", "also write the report as JSON to this file")
	fs.StringVar(&cfg.AMQPURL, "amqp-url", cfg.AMQPURL, "RabbitMQ URL")
	fs.StringVar(&cfg.RedisAddr, "redis-addr", cfg.RedisAddr, "Redis host:port")
	fs.IntVar(&cfg.BrokerDB, "redis-broker-db", cfg.BrokerDB, "Redis DB used as the broker (emptied before and after every run)")
	fs.IntVar(&cfg.ResultsDB, "redis-results-db", cfg.ResultsDB, "Redis DB used as the result backend (emptied before and after every run)")
	fs.StringVar(&cfg.Python, "python", cfg.Python, "python with Celery 5.2.6")
	fs.StringVar(&cfg.WorkerBin, "worker-bin", "", "worker binary to measure (default: build ./cmd/worker as `make build` does)")
	fs.StringVar(&cfg.ProfileDir, "profile", "", "run the worker contender under bench/profworker and write CPU and alloc profiles per run to this directory")
	fs.DurationVar(&cfg.RunTimeout, "run-timeout", cfg.RunTimeout, "longest a single drain may take")
	fs.DurationVar(&cfg.LockWait, "lock-wait", cfg.LockWait, "how long to wait for another comparison holding the lock")
	verbose := fs.BoolP("verbose", "v", false, "log every step")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.Overhead {
		cfg.addOverhead(fs.Changed("contenders"))
	}
	for _, spec := range *variants {
		v, err := parseVariant(spec)
		if err != nil {
			return cfg, err
		}
		cfg.Variants = append(cfg.Variants, v)
		if !fs.Changed("contenders") {
			cfg.Contenders = append(cfg.Contenders, v.Name)
		}
	}
	if *quick {
		cfg.applyQuick(fs.Changed)
	}
	if *verbose {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg, cfg.validate()
}

// applyQuick turns the configuration into a smoke run; flags given explicitly win.
func (c *config) applyQuick(changed func(string) bool) {
	c.Quick = true
	if !changed("rounds") {
		c.Rounds = 1
	}
	if !changed("n-go") {
		c.NGo = 2000
	}
	if !changed("n-py") {
		c.NPy = 200
	}
	if !changed("min-drain") {
		c.MinDrain = 0
	}
	if !changed("run-timeout") {
		c.RunTimeout = time.Minute
	}
}

// quickConfig is the configuration of a plain `--quick`.
func quickConfig() config {
	c := defaultConfig()
	c.addOverhead(false)
	c.applyQuick(func(string) bool { return false })
	return c
}
