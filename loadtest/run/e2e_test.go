package run

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/loadtest/mix"
	"denis.io/fleet/loadtest/report"
	"denis.io/fleet/loadtest/schedule"
)

const (
	amqpURL = "amqp://guest:guest@127.0.0.1:5672//"
	testDB  = 13 // Redis DB of the load test's tests
)

var (
	redisURL  = fmt.Sprintf("redis://127.0.0.1:6379/%d", testDB)
	workerBin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fleet-loadtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workerBin = filepath.Join(dir, "worker")
	build := exec.Command("go", "build", "-o", workerBin, "denis.io/fleet/cmd/worker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building worker:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func uniqueQueue(t *testing.T) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "loadtest_" + hex.EncodeToString(b)
}

// cleanup removes the queue, its dead-letter queue and the run's results.
func cleanup(t *testing.T, brokerURL, queue string, out **Outcome) {
	t.Cleanup(func() {
		ctx := context.Background()
		rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: testDB})
		defer rdb.Close()
		if *out != nil {
			ids := (*out).TaskIDs
			for lo := 0; lo < len(ids); lo += 500 {
				keys := make([]string, 0, 500)
				for _, id := range ids[lo:min(lo+500, len(ids))] {
					keys = append(keys, result.Key(id))
				}
				rdb.Del(ctx, keys...)
			}
		}
		if brokerURL == amqpURL {
			conn, err := amqp091.Dial(amqpURL)
			if err != nil {
				t.Logf("cleanup: %v", err)
				return
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				return
			}
			for _, q := range []string{queue, dlq.QueueName(queue)} {
				_, _ = ch.QueueDelete(q, false, false, false)
			}
			_ = ch.ExchangeDelete(queue, false, false)
			return
		}
		var keys []string
		for _, q := range []string{queue, dlq.QueueName(queue)} {
			keys = append(keys, "_kombu.binding."+q, q)
			for _, p := range []string{"3", "6", "9"} {
				keys = append(keys, q+"\x06\x16"+p)
			}
		}
		rdb.Del(ctx, keys...)
	})
}

func testConfig(t *testing.T, brokerURL, queue, mixYAML string, p schedule.Profile) Config {
	m, err := mix.Parse([]byte(mixYAML), queue)
	if err != nil {
		t.Fatal(err)
	}
	th := DefaultThresholds()
	// The suite runs beside other packages' tests on two cores: the latency criteria get
	// room, the accounting none.
	th.OverheadP99 = 5
	th.CPUP95 = 100
	th.ProducerLagP99 = 2
	return Config{
		Broker: brokerURL, ResultBackend: redisURL, Queues: []string{queue},
		Profile: p, Level: schedule.Level{Expected: 5, Multiplier: 2}, Seed: 7, Mix: m,
		Warmup: time.Second, Drain: 60 * time.Second, SampleEvery: 500 * time.Millisecond,
		Thresholds: th, LocalWorkers: 2, WorkerBin: workerBin, WorkerConcurrency: 8,
		OutDir: t.TempDir(),
	}
}

func checkTotals(t *testing.T, r *report.Result) {
	t.Helper()
	sum := r.Succeeded + r.Failed + r.DeadLettered + r.Revoked + r.Queued + r.InFlight + r.Missing
	if sum != r.Published {
		t.Errorf("categories add up to %d, published %d", sum, r.Published)
	}
	if r.Producer.Unpublished != 0 || r.Published != r.Producer.Scheduled {
		t.Errorf("published %d of %d scheduled (%d unpublished)", r.Published, r.Producer.Scheduled, r.Producer.Unpublished)
	}
	if r.Missing != 0 {
		t.Errorf("missing %d: %v", r.Missing, r.MissingIDs)
	}
}

func criterion(t *testing.T, r *report.Result, name string) report.Criterion {
	t.Helper()
	for _, c := range r.Criteria {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no criterion %q", name)
	return report.Criterion{}
}

// TestE2EStepProfile runs a short step profile (1x → 2x → 1x) on RabbitMQ against two
// real local workers: the verdict passes and every task is accounted for, including the
// injected failures and retries; result.json and the report are written.
func TestE2EStepProfile(t *testing.T) {
	queue := uniqueQueue(t)
	var out *Outcome
	cleanup(t, amqpURL, queue, &out)
	p, err := schedule.Builtin(schedule.Step, schedule.Level{Expected: 5, Multiplier: 2})
	if err != nil {
		t.Fatal(err)
	}
	p = p.Stretched(9 * time.Second)
	cfg := testConfig(t, amqpURL, queue, `
tasks:
  - {name: mat, kind: materializer, task: diag.cpu, weight: 6, args: [{$uniform: {min: 5, max: 20}}], fail_rate: 0.05, retry_rate: 0.05}
  - {name: crew, kind: crew, task: diag.sleep, weight: 4, args: [{$lognormal: {median: 0.3, sigma: 0.5, max: 1}}]}
`, p)
	out, err = Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := out.Result
	checkTotals(t, r)
	if r.Verdict != report.Pass {
		t.Errorf("verdict %s, want PASS: %+v", r.Verdict, r.Criteria)
	}
	// 4.5 s at 5/s… 1x, 2x, 1x thirds of 9 s: 15 + 30 + 15 = 60 messages.
	if r.Published < 59 || r.Published > 61 {
		t.Errorf("published %d, want 60", r.Published)
	}
	if r.Failed != r.InjectedFailures || r.Succeeded != r.Published-r.InjectedFailures {
		t.Errorf("succeeded %d failed %d, injected failures %d of %d", r.Succeeded, r.Failed, r.InjectedFailures, r.Published)
	}
	if r.Duplicates != 0 {
		t.Errorf("duplicates %d without chaos", r.Duplicates)
	}
	if c := criterion(t, r, CritCPU); !c.Measured {
		t.Errorf("worker CPU not measured: %+v", c)
	}
	if c := criterion(t, r, CritMaterializer); c.Value == nil || *c.Value != 100 {
		t.Errorf("materializer success %+v, want 100 %% (injected excluded)", c)
	}
	var back report.Result
	data, err := os.ReadFile(out.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	_ = json.Unmarshal(data, &keys)
	for _, k := range []string{"verdict", "published", "succeeded", "failed", "dead_lettered", "revoked", "queued", "missing", "duplicates", "criteria"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("result.json has no %q", k)
		}
	}
	if back.Published != r.Published || len(back.Criteria) != len(r.Criteria) {
		t.Errorf("result.json does not round-trip")
	}
	for _, f := range []string{"report.html", "rate.png", "depth.png", "latency.png", "workers.png", "cpu.png", "memory.png"} {
		if fi, err := os.Stat(filepath.Join(cfg.OutDir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestE2EDeadLettersAndConnectionCut sends, among normal tasks, some the workers do not
// know (dead-lettered as unknown_task) and cuts the workers' broker connections midway:
// the verdict is FAIL on the dead-letter criterion only, the dead letters are accounted
// as such, and nothing is missing.
func TestE2EDeadLettersAndConnectionCut(t *testing.T) {
	queue := uniqueQueue(t)
	var out *Outcome
	cleanup(t, amqpURL, queue, &out)
	p := schedule.Profile{Name: "steady", Segments: []schedule.Segment{{Duration: 8 * time.Second, From: 10, To: 10}}}
	cfg := testConfig(t, amqpURL, queue, `
tasks:
  - {name: ok, kind: materializer, task: diag.sleep, weight: 9, args: [0.05]}
  - {name: unknown, kind: other, task: loadtest.no_such_task, weight: 1}
`, p)
	cfg.CutAt = []time.Duration{3 * time.Second}
	var err error
	out, err = Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := out.Result
	checkTotals(t, r)
	if r.Verdict != report.Fail {
		t.Errorf("verdict %s, want FAIL", r.Verdict)
	}
	for _, c := range r.Criteria {
		if want := c.Name != CritDLQ; c.Pass != want {
			t.Errorf("criterion %q pass=%v, want %v (%v)", c.Name, c.Pass, want, c.Value)
		}
	}
	var unknown report.ClassStats
	for _, c := range r.Classes {
		if c.Name == "unknown" {
			unknown = c
		}
	}
	if unknown.Published == 0 || r.DeadLettered != unknown.Published || unknown.DeadLettered != unknown.Published {
		t.Errorf("dead-lettered %d (class %d), want every one of the %d unknown tasks", r.DeadLettered, unknown.DeadLettered, unknown.Published)
	}
	if r.DLQByReason[dlq.ReasonUnknownTask] != unknown.Published {
		t.Errorf("dead letters by reason %v", r.DLQByReason)
	}
	if len(r.Chaos.ConnectionCuts) != 1 {
		t.Errorf("connection cuts %v, want one", r.Chaos.ConnectionCuts)
	}
	if r.Succeeded != r.Published-unknown.Published {
		t.Errorf("succeeded %d of %d", r.Succeeded, r.Published-unknown.Published)
	}
}

// TestE2EKillWorker SIGKILLs a local worker midway through a run on Redis (acks_late, a
// short visibility timeout): its tasks are restored and run by the others, nothing is
// missing, and the tasks that ran twice are counted as duplicates. The broker is a
// redis-server of the test's own: kombu's unacked hash and unacked_mutex are per database,
// and a worker killed while holding the mutex blocks restores there for 5 minutes.
func TestE2EKillWorker(t *testing.T) {
	port, _, _ := dedicatedRedis(t)
	queue := uniqueQueue(t)
	var out *Outcome
	cleanup(t, redisURL, queue, &out) // the results
	p := schedule.Profile{Name: "steady", Segments: []schedule.Segment{{Duration: 8 * time.Second, From: 10, To: 10}}}
	cfg := testConfig(t, fmt.Sprintf("redis://127.0.0.1:%d/0", port), queue, `
tasks:
  - {name: crew, kind: crew, task: diag.sleep, weight: 1, args: [{$uniform: {min: 1.0, max: 2.0}}]}
`, p)
	cfg.VisibilityTimeout = 2 * time.Second
	// About five tasks run on each worker at any moment and two are killed (at 3 s and 6 s),
	// so that a kill finds none running (no duplicate to count) is very unlikely even on a
	// loaded machine; with 0.5-1.5 s tasks and one kill it happened.
	cfg.KillEvery = 3 * time.Second
	cfg.RestartKilled = true
	cfg.RestartDelay = 500 * time.Millisecond
	cfg.LocalWorkers = 3
	var err error
	out, err = Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := out.Result
	checkTotals(t, r)
	if len(r.Chaos.WorkersKilled) == 0 {
		t.Fatal("no worker was killed")
	}
	if r.Succeeded != r.Published {
		t.Errorf("succeeded %d of %d (failed %d, queued %d, in flight %d)", r.Succeeded, r.Published, r.Failed, r.Queued, r.InFlight)
	}
	if r.Duplicates == 0 {
		t.Errorf("no duplicate counted although %d workers were killed mid-task", len(r.Chaos.WorkersKilled))
	}
	if c := criterion(t, r, CritMissing); !c.Pass || c.Value == nil || *c.Value != 0 {
		t.Errorf("lost tasks criterion %+v", c)
	}
	t.Logf("killed %v; published %d, duplicates %d, p99 %.2fs", r.Chaos.WorkersKilled, r.Published, r.Duplicates, r.LatencyS.P99)
}

// TestE2EBrokerRestart restarts a dedicated Redis broker (a redis-server of the test's own
// on a free port, with an append-only file, never the shared one) midway through a run:
// producer and workers reconnect and nothing is missing.
func TestE2EBrokerRestart(t *testing.T) {
	port, start, waitUp := dedicatedRedis(t)
	firstRunID := redisRunID(t, port)

	queue := uniqueQueue(t)
	var out *Outcome
	cleanup(t, redisURL, queue, &out) // results live in the shared Redis
	p := schedule.Profile{Name: "steady", Segments: []schedule.Segment{{Duration: 8 * time.Second, From: 10, To: 10}}}
	cfg := testConfig(t, fmt.Sprintf("redis://127.0.0.1:%d/0", port), queue, `
tasks:
  - {name: mat, kind: materializer, task: diag.sleep, weight: 1, args: [{$uniform: {min: 0.05, max: 0.3}}]}
`, p)
	cfg.RestartBrokerAt = []time.Duration{3 * time.Second}
	cfg.BrokerRestartCmd = fmt.Sprintf("redis-cli -p %d shutdown && %s && %s", port, start, waitUp)
	cfg.Thresholds.ProducerLagP99 = 10 // publishes wait for the broker while it is down
	var err error
	out, err = Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := out.Result
	checkTotals(t, r)
	if len(r.Chaos.BrokerRestarts) != 1 || len(r.Chaos.RestartFailures) != 0 {
		t.Fatalf("broker restarts %v, failures %v", r.Chaos.BrokerRestarts, r.Chaos.RestartFailures)
	}
	if r.Succeeded != r.Published {
		t.Errorf("succeeded %d of %d (queued %d, in flight %d)", r.Succeeded, r.Published, r.Queued, r.InFlight)
	}
	info, err := exec.Command("redis-cli", "-p", strconv.Itoa(port), "info", "server").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(info), "uptime_in_seconds:") || strings.Contains(string(info), "run_id:"+firstRunID) {
		t.Fatalf("the dedicated broker was not restarted:\n%s", info)
	}
	t.Logf("published %d, publish errors %d, duplicates %d, p99 %.2fs", r.Published, r.Producer.PublishErrors, r.Duplicates, r.LatencyS.P99)
}

// dedicatedRedis starts a redis-server of the test's own on a free loopback port, with an
// append-only file so that a restart keeps its lists, and stops it at cleanup. It returns
// the port, the shell command that starts it and the one that waits until it answers.
func dedicatedRedis(t *testing.T) (port int, start, waitUp string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	start = fmt.Sprintf("redis-server --port %d --bind 127.0.0.1 --dir %s --appendonly yes --appendfsync always --save '' "+
		"--daemonize yes --pidfile %s/redis.pid --logfile %s/redis.log", port, dir, dir, dir)
	waitUp = fmt.Sprintf("for i in $(seq 100); do redis-cli -p %d ping >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1", port)
	if out, err := exec.Command("sh", "-c", start+" && "+waitUp).CombinedOutput(); err != nil {
		t.Fatalf("dedicated redis-server: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("redis-cli", "-p", strconv.Itoa(port), "shutdown", "nosave").Run() })
	return port, start, waitUp
}

func redisRunID(t *testing.T, port int) string {
	t.Helper()
	info, err := exec.Command("redis-cli", "-p", strconv.Itoa(port), "info", "server").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		if id, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
			return id
		}
	}
	t.Fatalf("no run_id in INFO server")
	return ""
}
