package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/testutil/redisclean"
)

// The tests of this file run the worker binary (cmd/worker), built once, as separate
// processes that they SIGKILL, and scrape their /metrics.

var workerBinary struct {
	once sync.Once
	path string
	err  error
}

// TestMain removes the worker binary built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if workerBinary.path != "" {
		_ = os.RemoveAll(filepath.Dir(workerBinary.path))
	}
	os.Exit(code)
}

func workerBin(t *testing.T) string {
	t.Helper()
	workerBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "fleet-worker-test-")
		if err != nil {
			workerBinary.err = err
			return
		}
		workerBinary.path = filepath.Join(dir, "worker")
		out, err := exec.Command("go", "build", "-o", workerBinary.path, "denis.io/fleet/cmd/worker").CombinedOutput()
		if err != nil {
			workerBinary.err = fmt.Errorf("go build cmd/worker: %w\n%s", err, out)
		}
	})
	if workerBinary.err != nil {
		t.Fatal(workerBinary.err)
	}
	return workerBinary.path
}

// proc is a worker process with its JSON log lines.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	raw  strings.Builder
	done chan struct{}
}

// startProc starts the worker binary with args and, on top of the test's environment, env.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(workerBin(t), append([]string{"--log-format", "json", "--log-level", "debug"}, args...)...)
	cmd.Env = append(os.Environ(), "CELERY_BROKER_URL=", "CELERY_RESULT_BACKEND=", "FLEET_METRICS_ADDR=127.0.0.1:0")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	p := &proc{cmd: cmd, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			p.mu.Lock()
			p.raw.WriteString(sc.Text() + "\n")
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.logs = append(p.logs, m)
			}
			p.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("worker %v log:\n%s", args, p.tail(40))
		}
		redisclean.ForgetWorker(args)
	})
	p.waitLog(t, "worker ready", 30*time.Second)
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := strings.Split(strings.TrimRight(p.raw.String(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (p *proc) waitLog(t *testing.T, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	var found map[string]any
	waitUntil(t, timeout, "log line "+msg, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, l := range p.logs {
			if l["msg"] == msg {
				found = l
				return true
			}
		}
		select {
		case <-p.done:
			t.Fatalf("worker exited before logging %q", msg)
		default:
		}
		return false
	})
	return found
}

// metric scrapes the process's /metrics and returns the value of the series name{labels},
// or -1 when it is absent.
func (p *proc) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	addr := p.waitLog(t, "metrics listening", 10*time.Second)["addr"].(string)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{([^}]*)\} (\S+)$`)
	for _, m := range line.FindAllStringSubmatch(string(body), -1) {
		got := map[string]string{}
		for _, kv := range strings.Split(m[1], ",") {
			k, v, _ := strings.Cut(kv, "=")
			got[k] = strings.Trim(v, `"`)
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if match {
			f, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// TestWorkerLostKilledProcesses is worker_lost end to end, on both brokers: a task is
// started by a worker process that is then SIGKILLed, limit+1 times in a row (on Redis the
// next worker restores it after the visibility timeout); the next worker does not run it
// again but dead-letters it with reason worker_lost. The count lives in the Redis the
// workers share (the result backend's). That worker's /metrics shows
// fleet_dead_lettered_total for it and for a poison message, fleet_dlq_messages, and
// fleet_dlq_replayed_total for a replayed message it received.
func TestWorkerLostKilledProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes")
	}
	const limit = 2
	cfg := filepath.Join(t.TempDir(), "tasks.yaml")
	if err := os.WriteFile(cfg, []byte("tasks:\n  diag.sleep:\n    track_started: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ropts, _ := goredis.ParseURL(testRedisURL)
	c := goredis.NewClient(ropts)
	defer c.Close()
	for _, bc := range brokerCases {
		t.Run(bc.name, func(t *testing.T) {
			ctx := context.Background()
			o := envOpts{amqp: bc.amqp, vt: time.Hour}
			q := uniqueName("wtk")
			url := testRedisURL
			if bc.amqp {
				url = testAMQPURL
				t.Cleanup(func() { deleteAMQPQueues(q, q+".dlq") })
			} else {
				t.Cleanup(func() { c.Del(ctx, q, q+".dlq", "_kombu.binding."+q, "_kombu.binding."+q+".dlq") })
			}
			b := openBroker(t, o, q, slog.New(slog.NewTextHandler(io.Discard, nil)))
			defer b.Close()
			args := func(n int) []string {
				return []string{"-b", url, "--result-backend", testRedisURL, "-Q", q, "-c", "1", "--config", cfg,
					"--visibility-timeout", "2s", "--max-redeliveries", strconv.Itoa(limit),
					"-n", fmt.Sprintf("wtk%d-%s@%%h", n, q), "--without-heartbeat"}
			}
			sleeper := task(tasks.DiagSleep, 300)
			counter := dlq.DefaultRedeliveryPrefix + sleeper.ID
			t.Cleanup(func() { c.Del(ctx, result.Key(sleeper.ID), counter) })
			for i := 0; i <= limit; i++ {
				c.Del(ctx, result.Key(sleeper.ID))
				p := startProc(t, nil, args(i)...)
				if i == 0 {
					publish(t, b, q, sleeper)
				}
				waitUntil(t, 30*time.Second, fmt.Sprintf("worker %d runs the task", i), func() bool {
					raw, err := c.Get(ctx, result.Key(sleeper.ID)).Result()
					return err == nil && strings.Contains(raw, `"STARTED"`)
				})
				if n, _ := c.Get(ctx, counter).Int(); n != i {
					t.Errorf("worker %d: redelivery count %d, want %d", i, n, i)
				}
				p.kill()
			}
			last := startProc(t, nil, args(limit+1)...)
			poison := task("wtk.no.such.task")
			replayed := task(tasks.DiagAdd, 1, 1)
			replayed.Headers = map[string]any{dlq.HeaderReplayed: 1}
			publish(t, b, q, poison, replayed)
			t.Cleanup(func() { c.Del(ctx, result.Key(poison.ID), result.Key(replayed.ID)) })
			browser := b.(broker.Browser)
			waitUntil(t, 30*time.Second, "two dead letters", func() bool {
				n, err := browser.Depth(ctx, q+".dlq")
				return err == nil && n == 2
			})
			raw, err := c.Get(ctx, result.Key(sleeper.ID)).Result()
			if err != nil || !strings.Contains(raw, `"WorkerLostError"`) || !strings.Contains(raw, `"FAILURE"`) {
				t.Errorf("result of the lost task: %s %v", raw, err)
			}
			// The count is dropped after the dead letter is acked, and acks may be coalesced:
			// the dead-letter queue can show the letter a moment before the count is gone.
			waitUntil(t, 10*time.Second, "the count dropped after the dead-lettering", func() bool {
				n, err := c.Exists(ctx, counter).Result()
				return err == nil && n == 0
			})

			want := []struct {
				name   string
				labels map[string]string
				value  float64
			}{
				{"fleet_dead_lettered_total", map[string]string{"queue": q, "task": tasks.DiagSleep, "reason": dlq.ReasonWorkerLost}, 1},
				{"fleet_dead_lettered_total", map[string]string{"queue": q, "task": poison.Name, "reason": dlq.ReasonUnknownTask}, 1},
				{"fleet_dlq_replayed_total", map[string]string{"queue": q}, 1},
				{"fleet_dlq_messages", map[string]string{"queue": q}, 2},
			}
			waitUntil(t, 10*time.Second, "the replayed task done", func() bool {
				return c.Exists(ctx, result.Key(replayed.ID)).Val() == 1
			})
			for _, w := range want {
				if got := last.metric(t, w.name, w.labels); got != w.value {
					t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.value)
				}
			}

			letters := map[string]map[string]any{}
			err = browser.Walk(ctx, q+".dlq", func(s *broker.Stored) (broker.Decision, error) {
				id, _ := s.Message.Headers["id"].(string)
				letters[id] = s.Message.Headers
				return broker.Decision{Verdict: broker.Keep}, nil
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			h := letters[sleeper.ID]
			if h[dlq.HeaderReason] != dlq.ReasonWorkerLost || h[dlq.HeaderQueue] != q ||
				!strings.HasPrefix(fmt.Sprint(h[dlq.HeaderWorker]), fmt.Sprintf("wtk%d-", limit+1)) ||
				!strings.Contains(fmt.Sprint(h[dlq.HeaderError]), "WorkerLostError") || h[dlq.HeaderTime] == nil {
				t.Errorf("worker_lost dead letter headers %v", h)
			}
			if letters[poison.ID][dlq.HeaderReason] != dlq.ReasonUnknownTask {
				t.Errorf("poison dead letter headers %v", letters[poison.ID])
			}
		})
	}

	// With RabbitMQ and rpc:// results the worker has no Redis: it says it does not count.
	q := uniqueName("wtk_noredis")
	t.Cleanup(func() { deleteAMQPQueues(q, q+".dlq") })
	p := startProc(t, []string{"FLEET_MAX_REDELIVERIES=7"},
		"-b", testAMQPURL, "--result-backend", "rpc://", "-Q", q, "-n", "wtk-"+q+"@%h", "--without-heartbeat")
	ready := p.waitLog(t, "worker ready", time.Second)
	if ready["redelivery_counting"] != "not counted (no counter: no Redis)" || ready["max_redeliveries"] != float64(7) {
		t.Errorf("worker ready without Redis, FLEET_MAX_REDELIVERIES=7: %v", ready)
	}
}

func publish(t *testing.T, b broker.Broker, q string, ts ...*protocol.Task) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, task := range ts {
		m, err := protocol.EncodeTask(task)
		if err == nil {
			err = b.Publish(ctx, broker.Publishing{RoutingKey: q, Message: m})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
