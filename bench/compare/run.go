package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
)

// lockKey (in the broker DB) keeps two comparisons from sharing DBs 9/10 at once.
const lockKey = "fleet-bench-compare:lock"

// errLocked: another comparison holds the lock for longer than --lock-wait.
var errLocked = errors.New("bench lock: another bench-compare is running")

// stopGrace is how long a contender gets to exit after SIGTERM.
const stopGrace = 30 * time.Second

// bench holds the connections and state of one comparison.
type bench struct {
	cfg     *config
	bin     binaries
	brokerR *goredis.Client // broker DB
	resultR *goredis.Client // results DB
	amqp    *amqp091.Connection
	vhost   string
	monitor *rabbitMonitor // nil: rabbitmqctl unusable, AMQP drains by the ready count
	id      string         // of this comparison, in queue and node names
	prefix  string         // of every queue name
	seq     int            // runs so far
	replyTo string         // the "client oid" of our producer, as Python's send_task sets reply_to
	lockTok string
	// cleanups run at close, last registered first.
	cleanups []func()
}

// run executes the comparison and prints (and optionally writes) the report.
func run(ctx context.Context, cfg config) (*report, error) {
	cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	id := randHex(3)
	b := &bench{cfg: &cfg, replyTo: protocol.NewUUID(), id: id, prefix: "fleet_bench_" + id + "_"}
	defer b.close()
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	var sink *spanSink
	if cfg.usesOverhead() {
		var err error
		if sink, err = startSpanSink(); err != nil {
			return nil, err
		}
		defer sink.close()
		for i, v := range cfg.Variants {
			for k, e := range v.Env {
				if e == obsEndpointPlaceholder {
					cfg.Variants[i].Env = append(slices.Clone(v.Env[:k]), append([]string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + sink.endpoint()}, v.Env[k+1:]...)...)
				}
			}
		}
	}
	cs, err := contenders(&cfg, b.bin)
	if err != nil {
		return nil, err
	}
	rep := newReport(&cfg, cs, b.meta(ctx))

	nextN := map[string]int{}
	for round := 1; round <= cfg.Rounds; round++ {
		order := rotate(cs, round-1)
		for _, broker := range cfg.Brokers {
			for _, results := range cfg.Results {
				for _, c := range order {
					key := cellKey(broker, results, c.Name)
					n := nextN[key]
					if n == 0 {
						n = cfg.NGo
						if c.Python {
							n = cfg.NPy
						}
					}
					var spansBefore int64
					if sink != nil {
						spansBefore = sink.spans.Load()
					}
					r := b.runOne(ctx, c, broker, results, n, round)
					if sink != nil && c.Name == cObsOn {
						r.SpansExported = sink.spans.Load() - spansBefore
						if r.Error == "" && r.SpansExported < int64(r.N) {
							cfg.Log.Warn("obs-on exported fewer spans than it ran tasks", "spans", r.SpansExported, "n", r.N)
						}
					}
					rep.add(r)
					if r.Error != "" {
						cfg.Log.Error("run failed", "round", round, "broker", broker, "results", results,
							"contender", c.Name, "err", r.Error)
					} else {
						cfg.Log.Info("run", "round", round, "broker", broker, "results", results, "contender", c.Name,
							"n", n, "tasks_per_s", math.Round(r.TasksPerSec), "drain_s", fmt.Sprintf("%.2f", r.DrainSeconds),
							"peak_rss_mib", fmt.Sprintf("%.1f", r.PeakRSSMiB), "cpu_us_per_task", fmt.Sprintf("%.1f", r.CPUMicrosPerTask),
							"servers_cpu_us_per_task", fmt.Sprintf("%.1f", r.ServerCPUMicrosPerTask))
						if !cfg.Quick && cfg.MinDrain > 0 && r.DrainSeconds < cfg.MinDrain.Seconds() {
							grown := int(float64(n) * 1.25 * cfg.MinDrain.Seconds() / max(r.DrainSeconds, 0.01))
							nextN[key] = (grown + 999) / 1000 * 1000
						}
					}
					if ctx.Err() != nil {
						return rep, ctx.Err()
					}
				}
			}
		}
	}
	rep.Meta.LoadEnd = loadAvg()
	rep.summarize()
	rep.print(cfg.Out)
	if cfg.JSONPath != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return rep, fmt.Errorf("report: %w", err)
		}
		if err := os.WriteFile(cfg.JSONPath, append(data, '\n'), 0o644); err != nil {
			return rep, fmt.Errorf("report: %w", err)
		}
	}
	if n := rep.failures(); n > 0 {
		return rep, fmt.Errorf("%d of %d runs failed", n, len(rep.Runs))
	}
	return rep, nil
}

func cellKey(broker, results, contender string) string {
	return broker + "/" + results + "/" + contender
}

func rotate[T any](xs []T, k int) []T {
	if len(xs) == 0 {
		return xs
	}
	k %= len(xs)
	return append(append([]T(nil), xs[k:]...), xs[:k]...)
}

func (b *bench) uses(broker string) bool {
	for _, x := range b.cfg.Brokers {
		if x == broker {
			return true
		}
	}
	return false
}

// setup builds the binaries, connects, takes the lock and probes rabbitmqctl.
func (b *bench) setup(ctx context.Context) error {
	cfg := b.cfg
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "fleet-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	b.atClose(func() { _ = os.RemoveAll(tmp) })
	b.bin = binaries{Root: root, Python: cfg.Python, Worker: cfg.WorkerBin, Ceiling: filepath.Join(tmp, "ceiling")}
	pkgs := []string{"./bench/ceiling"}
	if b.bin.Worker == "" {
		b.bin.Worker = filepath.Join(tmp, "worker")
		pkgs = append(pkgs, "./cmd/worker")
	} else if b.bin.Worker, err = filepath.Abs(b.bin.Worker); err != nil {
		return fmt.Errorf("worker binary: %w", err)
	}
	if cfg.ProfileDir != "" {
		b.bin.ProfWorker = filepath.Join(tmp, "profworker")
		pkgs = append(pkgs, "./bench/profworker")
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return fmt.Errorf("profile dir: %w", err)
		}
	}
	if err := goBuild(ctx, root, tmp, pkgs...); err != nil {
		return err
	}

	b.brokerR = goredis.NewClient(&goredis.Options{Addr: cfg.RedisAddr, DB: cfg.BrokerDB})
	b.resultR = goredis.NewClient(&goredis.Options{Addr: cfg.RedisAddr, DB: cfg.ResultsDB})
	if err := b.brokerR.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis %s: %w (run `make services`)", cfg.RedisAddr, err)
	}
	if err := b.lock(ctx); err != nil {
		return err
	}
	if b.uses("amqp") {
		uri, err := amqp091.ParseURI(cfg.AMQPURL)
		if err != nil {
			return fmt.Errorf("amqp URL: %w", err)
		}
		b.vhost = uri.Vhost
		if b.amqp, err = amqp091.Dial(cfg.AMQPURL); err != nil {
			return fmt.Errorf("rabbitmq: %w (run `make services`)", err)
		}
		// One loop inside the node watches every run's queue (see rabbitMonitor); without
		// rabbitmqctl the ready count is all we can see.
		m, err := startRabbitMonitor(ctx, b.vhost, b.prefix, 24*time.Hour)
		if err != nil {
			cfg.Log.Warn("rabbitmqctl eval is not usable: AMQP drains fall back to the ready count (results off: approximate)", "err", err)
		} else {
			b.monitor = m
			b.atClose(m.Close)
		}
	}
	return nil
}

// atClose registers f to run at close (last registered first).
func (b *bench) atClose(f func()) { b.cleanups = append(b.cleanups, f) }

func (b *bench) close() {
	if b.brokerR != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if b.lockTok != "" {
			b.emptyRedis(ctx)
		}
		b.unlock(ctx)
		cancel()
	}
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	if b.brokerR != nil {
		_ = b.brokerR.Close()
		_ = b.resultR.Close()
	}
	if b.amqp != nil {
		_ = b.amqp.Close()
	}
}

var unlockScript = goredis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`)
var refreshScript = goredis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0`)

// lock takes the comparison lock (waiting up to LockWait) and keeps it fresh.
func (b *bench) lock(ctx context.Context) error {
	tok := randHex(8)
	deadline := time.Now().Add(b.cfg.LockWait)
	for {
		ok, err := b.brokerR.SetNX(ctx, lockKey, tok, time.Minute).Result()
		if err != nil {
			return fmt.Errorf("bench lock: %w", err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s in Redis DB %d (waited %s)", errLocked, lockKey, b.cfg.BrokerDB, b.cfg.LockWait)
		}
		b.cfg.Log.Warn("another bench-compare is running; waiting for its lock", "key", lockKey)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	b.lockTok = tok
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = refreshScript.Run(context.Background(), b.brokerR, []string{lockKey}, tok, time.Minute.Milliseconds()).Err()
			}
		}
	}()
	b.atClose(func() { close(stop); <-done })
	return nil
}

func (b *bench) unlock(ctx context.Context) {
	if b.lockTok != "" {
		_ = unlockScript.Run(ctx, b.brokerR, []string{lockKey}, b.lockTok).Err()
	}
}

// emptyRedis removes every key of the broker DB (but the lock) and of the results DB.
func (b *bench) emptyRedis(ctx context.Context) {
	for _, c := range []*goredis.Client{b.brokerR, b.resultR} {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, "*", 1000).Result()
			if err != nil {
				b.cfg.Log.Warn("emptying a bench Redis DB", "db", c.Options().DB, "err", err)
				break
			}
			del := keys[:0]
			for _, k := range keys {
				if k != lockKey {
					del = append(del, k)
				}
			}
			if len(del) > 0 {
				_ = c.Unlink(ctx, del...).Err()
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func randHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}

// meta describes the machine and the software versions.
func (b *bench) meta(ctx context.Context) reportMeta {
	m := reportMeta{
		Started: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
		Quick: b.cfg.Quick, Rounds: b.cfg.Rounds, Prefetch: b.cfg.Prefetch,
		BrokerDB: b.cfg.BrokerDB, ResultsDB: b.cfg.ResultsDB,
	}
	if k, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(k))
	}
	m.LoadStart = loadAvg()
	if out, err := exec.CommandContext(ctx, b.cfg.Python, "-c",
		"import celery, kombu; print(celery.__version__, kombu.__version__)").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) == 2 {
			m.Celery, m.Kombu = f[0], f[1]
		}
	}
	if info, err := b.brokerR.Info(ctx, "server").Result(); err == nil {
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				m.Redis = v
			}
		}
	}
	if b.amqp != nil {
		if v, ok := b.amqp.Properties["version"].(string); ok {
			m.RabbitMQ = v
		}
		if b.monitor != nil {
			m.AMQPWatch = "rabbitmqctl eval (exact)"
		} else {
			m.AMQPWatch = "passive declare (fallback)"
		}
	}
	return m
}

// runOne pre-fills a fresh queue with n messages, lets contender c drain it and checks
// the outcome. Failures are recorded in the result, never fatal for the comparison.
func (b *bench) runOne(ctx context.Context, c contender, broker, results string, n, round int) runResult {
	r := runResult{Round: round, Broker: broker, Results: results, Contender: c.Name, N: n}
	if err := b.measure(ctx, c, &r); err != nil {
		r.Error = err.Error()
	}
	return r
}

func (b *bench) measure(ctx context.Context, c contender, r *runResult) (err error) {
	cfg := b.cfg
	b.seq++
	seq := b.seq
	// The rabbit monitor finds the queue by this name: <prefix><seq>_<n>_<contender>.
	queue := fmt.Sprintf("%s%d_%d_%s", b.prefix, seq, r.N, strings.Map(safeRune, c.Name))
	r.Queue = queue
	e := runEnv{Broker: r.Broker, Queue: queue, Prefetch: cfg.Prefetch, Hostname: fmt.Sprintf("bench-%s-%d@%%h", b.id, seq)}
	switch r.Broker {
	case "amqp":
		e.BrokerURL = cfg.AMQPURL
	case "redis":
		e.BrokerURL = fmt.Sprintf("redis://%s/%d", cfg.RedisAddr, cfg.BrokerDB)
	}
	if r.Results == "on" {
		e.ResultURL = fmt.Sprintf("redis://%s/%d", cfg.RedisAddr, cfg.ResultsDB)
	}
	if cfg.ProfileDir != "" && c.Profiles {
		e.ProfileDir = filepath.Join(cfg.ProfileDir, fmt.Sprintf("r%d-%s-results-%s-%s", r.Round, r.Broker, r.Results, c.Name))
		if err := os.MkdirAll(e.ProfileDir, 0o755); err != nil {
			return fmt.Errorf("profile dir: %w", err)
		}
	}

	b.emptyRedis(ctx)
	defer b.emptyRedis(context.WithoutCancel(ctx))
	var w watcher
	switch r.Broker {
	case "amqp":
		defer b.deleteAMQPQueue(queue)
		if b.monitor != nil {
			rw := b.monitor.watch(seq)
			w = rw
			if err := prefillAMQP(ctx, b.amqp, queue, r.N, b.replyTo); err != nil {
				w.Close()
				return err
			}
			err = rw.Armed(ctx)
		} else {
			if err := prefillAMQP(ctx, b.amqp, queue, r.N, b.replyTo); err != nil {
				return err
			}
			var rc *goredis.Client
			if r.Results == "on" {
				rc = b.resultR
			}
			aw, werr := newAMQPReadyWatcher(b.amqp, queue, r.N, rc)
			if werr != nil {
				return werr
			}
			w = aw
		}
	case "redis":
		if err := prefillRedis(ctx, b.brokerR, queue, r.N, b.replyTo); err != nil {
			return err
		}
		rw, werr := newRedisWatcher(ctx, b.brokerR, queue, r.N)
		if werr != nil {
			return werr
		}
		w = rw
	}
	if err != nil { // the rabbit watcher did not arm
		w.Close()
		return err
	}
	defer w.Close()
	statsBefore := b.redisCalls(ctx)
	log := cfg.Log.With("contender", c.Name, "broker", r.Broker, "results", r.Results, "queue", queue)
	log.Debug("pre-filled; watcher armed", "n", r.N)

	argv, env, dir := c.Command(e)
	serverBefore := serverCPU()
	started := time.Now()
	p, err := startProc(c.Name, argv, env, dir)
	if err != nil {
		return err
	}
	rss := newRSSSampler(p.pid(), 100*time.Millisecond)
	stopped := false
	defer func() {
		if !stopped {
			rss.finish()
			if serr := p.stop(stopSignal(c), stopGrace); serr != nil {
				cfg.Log.Warn("stopping contender", "err", serr)
			}
		}
		if err != nil {
			err = fmt.Errorf("%w\n--- %s output (tail) ---\n%s", err, c.Name, p.output.String())
		}
	}()

	wctx, cancel := context.WithTimeout(ctx, cfg.RunTimeout)
	defer cancel()
	type waitResult struct {
		d   drain
		err error
	}
	got := make(chan waitResult, 1)
	go func() {
		d, err := w.Wait(wctx)
		got <- waitResult{d, err}
	}()
	var d drain
	select {
	case wr := <-got:
		if wr.err != nil {
			return fmt.Errorf("waiting for the drain: %w", wr.err)
		}
		d = wr.d
	case <-p.done:
		cancel()
		<-got
		return fmt.Errorf("%s exited before draining the queue: %v", c.Name, p.err)
	}
	var cpu time.Duration
	r.PeakRSSMiB, r.PeakAnonMiB, r.Processes, cpu = rss.finish()
	r.CPUMicrosPerTask = float64(cpu.Microseconds()) / float64(r.N)
	r.ServerCPUMicrosPerTask = float64((serverCPU() - serverBefore).Microseconds()) / float64(r.N)
	stopped = true
	log.Debug("drained", "drain", d.Done.Sub(d.First), "since_start", time.Since(started))
	if err := p.stop(stopSignal(c), stopGrace); err != nil {
		return err
	}
	log.Debug("contender stopped", "since_start", time.Since(started))
	r.DrainSeconds = d.Done.Sub(d.First).Seconds()
	if r.DrainSeconds <= 0 {
		return fmt.Errorf("implausible drain %v → %v", d.First, d.Done)
	}
	r.TasksPerSec = float64(r.N) / r.DrainSeconds
	r.Criterion = d.Criterion
	r.RedisCallsPerTask = perTask(statsBefore, b.redisCalls(ctx), r.N)

	// Checks, after the contender has exited (anything it held unacked is back by now).
	if err := b.verify(ctx, r, queue); err != nil {
		return err
	}
	if c.Reports {
		var out struct {
			Acked int64 `json:"acked"`
			First int64 `json:"first_unix_ns"`
			Last  int64 `json:"last_unix_ns"`
		}
		lines := strings.Split(strings.TrimSpace(p.stdout.String()), "\n")
		if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &out); jerr != nil {
			return fmt.Errorf("%s: unreadable report %q: %w", c.Name, lines[len(lines)-1], jerr)
		}
		log.Debug("contender's own count", "acked", out.Acked, "first_to_last_ack", time.Duration(out.Last-out.First),
			"watched_first_to_own_first", time.Unix(0, out.First).Sub(d.First), "own_last_to_watched_done", d.Done.Sub(time.Unix(0, out.Last)))
		if out.Acked != int64(r.N) {
			return fmt.Errorf("%s acked %d messages, want %d", c.Name, out.Acked, r.N)
		}
	}
	r.Consumed = r.N
	return nil
}

func stopSignal(c contender) syscall.Signal {
	if c.Stop == 0 {
		return syscall.SIGTERM
	}
	return c.Stop
}

func safeRune(r rune) rune {
	if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
		return r
	}
	return '_'
}

// verify checks that every message was consumed and settled (and, with results, stored).
func (b *bench) verify(ctx context.Context, r *runResult, queue string) error {
	var errs []error
	switch r.Broker {
	case "amqp":
		ch, err := b.amqp.Channel()
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		_ = ch.Close()
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if q.Messages != 0 {
			errs = append(errs, fmt.Errorf("%d messages left in %s after the contender stopped (unacked ones come back)", q.Messages, queue))
		}
	case "redis":
		w := redisWatcher{rdb: b.brokerR, keys: []string{queue, queue + sep + "3", queue + sep + "6", queue + sep + "9"}}
		ready, unacked, _, err := w.poll(ctx)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if ready != 0 || unacked != 0 {
			errs = append(errs, fmt.Errorf("%d messages left in %s and %d leases in unacked after the contender stopped", ready, queue, unacked))
		}
	}
	if r.Results == "on" {
		k, err := countResults(ctx, b.resultR)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if k != int64(r.N) {
			errs = append(errs, fmt.Errorf("%d results stored, want %d", k, r.N))
		}
	}
	return errors.Join(errs...)
}

// countResults counts the result keys (celery-task-meta-*) in the results DB; the worker
// may keep other state there (heartbeats, revoked ids).
func countResults(ctx context.Context, rdb *goredis.Client) (int64, error) {
	var n int64
	var cursor uint64
	for {
		keys, next, err := rdb.Scan(ctx, cursor, "celery-task-meta-*", 10000).Result()
		if err != nil {
			return 0, fmt.Errorf("count results: %w", err)
		}
		n += int64(len(keys))
		if cursor = next; cursor == 0 {
			return n, nil
		}
	}
}

func (b *bench) deleteAMQPQueue(queue string) {
	ch, err := b.amqp.Channel()
	if err != nil {
		b.cfg.Log.Warn("cleanup: channel", "err", err)
		return
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		b.cfg.Log.Warn("cleanup: delete queue", "queue", queue, "err", err)
		return
	}
	if err := ch.ExchangeDelete(queue, false, false); err != nil {
		b.cfg.Log.Warn("cleanup: delete exchange", "exchange", queue, "err", err)
	}
}

// redisCalls reads Redis's per-command call counters (INFO commandstats).
func (b *bench) redisCalls(ctx context.Context) map[string]int64 {
	info, err := b.brokerR.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				var n int64
				if _, err := fmt.Sscan(v, &n); err == nil {
					out[strings.TrimPrefix(name, "cmdstat_")] = n
				}
			}
		}
	}
	return out
}

// perTask is the per-task Redis command mix between two commandstats readings, without
// the commands the bench itself issues (its polls) — approximate if anything else uses
// this Redis server meanwhile.
func perTask(before, after map[string]int64, n int) map[string]float64 {
	if before == nil || after == nil || n == 0 {
		return nil
	}
	skip := map[string]bool{"llen": true, "hlen": true, "info": true, "ping": true, "dbsize": true,
		"scan": true, "unlink": true}
	out := map[string]float64{}
	for k, v := range after {
		if skip[k] {
			continue
		}
		if d := v - before[k]; d > 0 {
			out[k] = math.Round(float64(d)/float64(n)*100) / 100
		}
	}
	return out
}
