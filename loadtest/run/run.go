// Package run is the load test itself: it publishes an open-loop schedule of Celery
// messages, watches outcomes, queues and workers while they are processed, injects the
// chaos asked for, accounts for every message at the end and judges the run against the
// go/no-go criteria.
package run

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/loadtest/chaos"
	"denis.io/fleet/loadtest/localfleet"
	"denis.io/fleet/loadtest/mix"
	"denis.io/fleet/loadtest/observe"
	"denis.io/fleet/loadtest/report"
)

// transport is what the load test needs from a broker: confirmed publishing, depths, and
// reading queues at rest for the final accounting. Both of the fleet's transports have it.
type transport interface {
	Publish(ctx context.Context, p broker.Publishing) error
	Depth(ctx context.Context, queue string) (int64, error)
	Walk(ctx context.Context, queue string, visit func(*broker.Stored) (broker.Decision, error),
		applied func(*broker.Stored, broker.Decision)) error
	DeclareDLQ(ctx context.Context, queue string) error
	Close() error
}

// outcomes is where task outcomes are read.
type outcomes interface {
	Fetch(ctx context.Context, ids []string) (map[string]observe.Outcome, error)
	Follow(ctx context.Context, fn func(observe.Notice)) (<-chan struct{}, error)
	Close() error
}

// fleet is the set of local workers the run started.
type fleet interface {
	Members() []localfleet.Member
	KillRandom(ctx context.Context, r *rand.Rand) (localfleet.Member, error)
	Stop(grace time.Duration) error
}

// Outcome of Run: the result and where it was written.
type Outcome struct {
	Result *report.Result
	// TaskIDs are the ids of every message scheduled, published or not.
	TaskIDs    []string
	JSONPath   string
	ReportPath string
	PNGs       []string
}

type runner struct {
	cfg   Config
	log   *slog.Logger
	tr    transport
	res   outcomes
	fleet fleet
	proxy *chaos.Proxy
	track *tracker
	tl    *timeline
	start time.Time

	lagMu         sync.Mutex
	lags          []float64
	publishErrors atomic.Int64
	chaosMu       sync.Mutex
	chaos         report.Chaos
	decisions     []observe.Decision
	notes         []string
	workerDesc    string
}

// Run runs the load test. ctx ending stops the producer early; the run still drains
// (briefly), accounts and reports.
func Run(ctx context.Context, cfg Config) (*Outcome, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, log: cfg.Logger, track: newTracker(), tl: newTimeline()}
	if cfg.OutDir != "" {
		if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
			return nil, fmt.Errorf("run: out dir: %w", err)
		}
	}
	setupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := r.open(setupCtx); err != nil {
		r.close()
		return nil, err
	}
	defer r.close()
	if err := r.startFleet(setupCtx); err != nil {
		return nil, err
	}

	// Follow result notices for duplicate detection.
	followCtx, stopFollow := context.WithCancel(context.WithoutCancel(ctx))
	followDone, err := r.res.Follow(followCtx, r.track.notice)
	if err != nil {
		stopFollow()
		r.stopFleet()
		return nil, err
	}

	r.start = time.Now()
	sampleCtx, stopSampling := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	bg.Go(func() { r.sample(sampleCtx) })
	chaosCtx, stopChaos := context.WithCancel(ctx)
	r.startChaos(chaosCtx, &bg)

	r.produce(ctx)
	sendEnd := time.Since(r.start)
	// Chaos belongs to the load: the drain lets the fleet recover.
	stopChaos()
	r.log.Info("schedule done, draining", "published", r.track.counts().published, "after", sendEnd.Round(time.Millisecond))
	r.drain(ctx)
	stopSampling()
	bg.Wait()
	drainEnd := time.Since(r.start)

	// Stop local workers gracefully: running tasks finish, prefetched ones go back to the
	// queue where the accounting finds them.
	r.stopFleet()
	finalCtx, cancelFinal := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancelFinal()
	r.refresh(finalCtx)
	// Let the last PUBLISH notices arrive before counting duplicates.
	time.Sleep(200 * time.Millisecond)
	stopFollow()
	<-followDone

	res, err := r.account(finalCtx, sendEnd, drainEnd)
	if err != nil {
		return nil, err
	}
	out := &Outcome{Result: res}
	for _, rec := range r.track.snapshot() {
		out.TaskIDs = append(out.TaskIDs, rec.id)
	}
	if cfg.OutDir != "" {
		if out.JSONPath, err = report.WriteJSON(cfg.OutDir, res); err != nil {
			return out, err
		}
		if out.PNGs, err = report.WritePNGs(cfg.OutDir, res); err != nil {
			return out, err
		}
		if out.ReportPath, err = report.WriteHTML(cfg.OutDir, res); err != nil {
			return out, err
		}
	}
	return out, nil
}

func (r *runner) open(ctx context.Context) error {
	b, err := connect.Broker(ctx, r.cfg.Broker, connect.BrokerOptions{VisibilityTimeout: r.cfg.VisibilityTimeout, Logger: r.log})
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	tr, ok := b.(transport)
	if !ok {
		_ = b.Close()
		return fmt.Errorf("run: broker %T cannot be browsed for the accounting", b)
	}
	r.tr = tr
	if err := r.declareQueues(ctx); err != nil {
		return err
	}
	res, err := observe.OpenResults(ctx, r.cfg.ResultBackend, r.log)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	r.res = res
	if r.cfg.DecisionsFile != "" {
		if _, err := observe.NewDecisionLog(r.cfg.DecisionsFile); err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	return nil
}

// declareQueues makes sure every queue of the mix exists before the first publish, as
// Celery's producer does, and their dead-letter queues too (so that their depth reads 0).
func (r *runner) declareQueues(ctx context.Context) error {
	for _, q := range r.queues() {
		if err := declareTaskQueue(ctx, r.cfg.Broker, r.tr, q); err != nil {
			return fmt.Errorf("run: declare queue %s: %w", q, err)
		}
		if err := r.tr.DeclareDLQ(ctx, dlq.QueueName(q)); err != nil {
			return fmt.Errorf("run: declare %s: %w", dlq.QueueName(q), err)
		}
	}
	return nil
}

// queues are the task queues: -Q's and every queue the mix sends to.
func (r *runner) queues() []string {
	qs := slices.Clone(r.cfg.Queues)
	for _, c := range r.cfg.Mix.Classes {
		if !slices.Contains(qs, c.Queue) {
			qs = append(qs, c.Queue)
		}
	}
	return qs
}

func (r *runner) close() {
	if r.res != nil {
		_ = r.res.Close()
	}
	if r.tr != nil {
		_ = r.tr.Close()
	}
	if r.proxy != nil {
		_ = r.proxy.Close()
	}
}

func (r *runner) startFleet(ctx context.Context) error {
	if r.cfg.LocalWorkers == 0 {
		r.workerDesc = "an existing fleet (not started by the load test)"
		return nil
	}
	brokerURL := r.cfg.Broker
	if len(r.cfg.CutAt) > 0 {
		target, err := chaos.HostPort(r.cfg.Broker)
		if err != nil {
			return err
		}
		if r.proxy, err = chaos.StartProxy(target, r.log); err != nil {
			return err
		}
		if brokerURL, err = chaos.WithHost(r.cfg.Broker, r.proxy.Addr()); err != nil {
			return err
		}
	}
	logDir := ""
	if r.cfg.OutDir != "" {
		logDir = filepath.Join(r.cfg.OutDir, "workers")
		if err := os.MkdirAll(logDir, 0o755); err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	cfgFile, err := r.writeWorkerConfig()
	if err != nil {
		return err
	}
	args := []string{"-b", brokerURL, "--result-backend", r.cfg.ResultBackend,
		"-Q", strings.Join(r.queues(), ","), "-c", strconv.Itoa(r.cfg.WorkerConcurrency),
		"--visibility-timeout", r.cfg.VisibilityTimeout.String(), "--config", cfgFile,
		"--log-format", "json"}
	args = append(args, r.cfg.WorkerArgs...)
	metricsFlag := ""
	if localfleet.SupportsFlag(ctx, r.cfg.WorkerBin, "--metrics-addr") && !hasFlag(r.cfg.WorkerArgs, "--metrics-addr") {
		metricsFlag = "--metrics-addr" // each worker its own port, scraped
	}
	f, err := localfleet.Start(ctx, localfleet.Config{Bin: r.cfg.WorkerBin, Count: r.cfg.LocalWorkers, Args: args,
		LogDir: logDir, Restart: r.cfg.RestartKilled, RestartDelay: r.cfg.RestartDelay, MetricsAddrFlag: metricsFlag, Logger: r.log})
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	r.fleet = f
	r.workerDesc = fmt.Sprintf("%d local workers (%s, -c %d), each measured against %g CPU", r.cfg.LocalWorkers,
		filepath.Base(r.cfg.WorkerBin), r.cfg.WorkerConcurrency, r.cfg.WorkerCPU)
	return nil
}

// writeWorkerConfig writes the local workers' --config: track_started for every task the
// mix sends, so that each run of a task writes STARTED (how duplicates are counted).
func (r *runner) writeWorkerConfig() (string, error) {
	names := map[string]bool{mix.TaskFail: true, mix.TaskFlaky: true}
	for _, c := range r.cfg.Mix.Classes {
		names[c.Task] = true
	}
	var b strings.Builder
	b.WriteString("# written by loadtest: every task writes STARTED, so that repeated runs show\ntasks:\n")
	for _, n := range slices.Sorted(maps.Keys(names)) {
		fmt.Fprintf(&b, "  %q:\n    track_started: true\n", n)
	}
	dir := r.cfg.OutDir
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, "worker-config-*.yaml")
	if err != nil {
		return "", fmt.Errorf("run: worker config: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(b.String()); err != nil {
		return "", fmt.Errorf("run: worker config: %w", err)
	}
	return f.Name(), nil
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

func (r *runner) stopFleet() {
	if r.fleet == nil {
		return
	}
	if err := r.fleet.Stop(30 * time.Second); err != nil {
		r.log.Warn("local workers did not all stop cleanly", "err", err)
	}
	r.fleet = nil
}

// produce publishes the schedule, open loop: each message is due at its scheduled time
// whatever happened to the previous ones; publishes run concurrently (cfg.Publishers), and
// a message that cannot go out on time goes out late, its lag recorded.
func (r *runner) produce(ctx context.Context) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, r.cfg.Seed+1))
	replyTo := protocol.NewUUID()
	type job struct {
		rec  *record
		task *protocol.Task
	}
	jobs := make(chan job, r.cfg.Publishers)
	var wg sync.WaitGroup
	for range r.cfg.Publishers {
		wg.Go(func() {
			for j := range jobs {
				r.publish(ctx, j.rec, j.task)
			}
		})
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
loop:
	for off := range r.cfg.Profile.Times(r.cfg.Arrivals, r.cfg.Seed) {
		due := r.start.Add(off)
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break loop
			}
		}
		msg := r.cfg.Mix.Draw(rng)
		t := protocol.NewTask(msg.Task, msg.Args, msg.Kwargs)
		t.Priority = msg.Priority
		t.ReplyTo = replyTo
		nominal := -1.0
		if msg.NominalKnown {
			nominal = msg.Nominal
		}
		rec := &record{id: t.ID, class: msg.Class, task: msg.Task, queue: msg.Queue, injected: msg.Injected,
			nominal: nominal, due: due}
		r.track.add(rec)
		select {
		case jobs <- job{rec, t}:
		case <-ctx.Done():
			break loop
		}
	}
	close(jobs)
	wg.Wait()
}

// publish sends one message, retrying (with backoff) until it is confirmed or the run
// is stopped: a message that was never confirmed is not counted as published.
func (r *runner) publish(ctx context.Context, rec *record, t *protocol.Task) {
	sent := time.Now()
	lag := sent.Sub(rec.due).Seconds()
	r.lagMu.Lock()
	r.lags = append(r.lags, lag)
	r.lagMu.Unlock()
	t.Headers[broker.HeaderSentAt] = json.Number(strconv.FormatFloat(float64(sent.UnixMicro())/1e6, 'f', 6, 64))
	m, err := protocol.EncodeTask(t)
	if err != nil {
		r.log.Error("encode task", "task", t.Name, "err", err)
		r.publishErrors.Add(1)
		return
	}
	backoff := 100 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = r.tr.Publish(pctx, broker.Publishing{RoutingKey: rec.queue, Message: m})
		cancel()
		if err == nil {
			break
		}
		r.publishErrors.Add(1)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("publish failed, retrying", "task_id", rec.id, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(backoff*2, 2*time.Second)
	}
	r.track.markPublished(rec, sent)
	r.tl.sent(sent.Sub(r.start))
}

// drain waits until every published task has a ready outcome, or cfg.Drain has passed
// (30 s at most once ctx has ended).
func (r *runner) drain(ctx context.Context) {
	limit := r.cfg.Drain
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if r.track.counts().pending == 0 {
			return
		}
		if ctx.Err() != nil && time.Until(deadline) > 30*time.Second {
			deadline = time.Now().Add(30 * time.Second)
		}
		if time.Now().After(deadline) {
			r.addNote(fmt.Sprintf("Drain timeout (%s) reached with %d tasks without an outcome.", limit, r.track.counts().pending))
			return
		}
		<-tick.C
	}
}

// refresh reads the outcomes of every pending task once.
func (r *runner) refresh(ctx context.Context) {
	ids := r.track.pendingIDs()
	if len(ids) == 0 {
		return
	}
	got, err := r.res.Fetch(ctx, ids)
	if err != nil {
		r.log.Warn("read outcomes", "err", err)
	}
	for _, rec := range r.track.setOutcomes(got) {
		r.tl.done(r.start, rec)
	}
}

func (r *runner) addNote(s string) {
	r.chaosMu.Lock()
	r.notes = append(r.notes, s)
	r.chaosMu.Unlock()
}

func (r *runner) startChaos(ctx context.Context, wg *sync.WaitGroup) {
	if r.cfg.KillEvery > 0 && r.fleet != nil {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(r.cfg.Seed^0xc4a05, 7))
			t := time.NewTicker(r.cfg.KillEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				m, err := r.fleet.KillRandom(ctx, rng)
				if err != nil {
					r.log.Warn("chaos: kill", "err", err)
					continue
				}
				r.chaosMu.Lock()
				r.chaos.WorkersKilled = append(r.chaos.WorkersKilled, m.Name)
				r.chaos.KillTimesS = append(r.chaos.KillTimesS, time.Since(r.start).Seconds())
				r.chaosMu.Unlock()
			}
		})
	}
	at := func(times []time.Duration, fn func()) {
		for _, d := range times {
			wg.Go(func() {
				t := time.NewTimer(time.Until(r.start.Add(d)))
				defer t.Stop()
				select {
				case <-ctx.Done():
				case <-t.C:
					fn()
				}
			})
		}
	}
	if r.proxy != nil {
		at(r.cfg.CutAt, func() {
			n := r.proxy.Cut()
			r.log.Warn("chaos: broker connections of local workers cut", "connections", n)
			r.chaosMu.Lock()
			r.chaos.ConnectionCuts = append(r.chaos.ConnectionCuts, time.Since(r.start).Seconds())
			r.chaosMu.Unlock()
		})
	}
	at(r.cfg.RestartBrokerAt, func() {
		err := chaos.RestartBroker(ctx, r.cfg.BrokerRestartCmd, 2*time.Minute, r.log)
		r.chaosMu.Lock()
		defer r.chaosMu.Unlock()
		if err != nil {
			r.chaos.RestartFailures = append(r.chaos.RestartFailures, err.Error())
			return
		}
		r.chaos.BrokerRestarts = append(r.chaos.BrokerRestarts, time.Since(r.start).Seconds())
	})
}
