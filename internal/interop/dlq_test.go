package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
)

// The dead-letter tests use Redis DB 8 (broker and results) and their own queues.
const dlqRedisDB = 8

var fleetctlBuild struct {
	once sync.Once
	path string
	err  error
}

// fleetctlBin builds bin/fleetctl once for the package's tests.
func fleetctlBin(t *testing.T) string {
	t.Helper()
	fleetctlBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "fleet-fleetctl-")
		if err != nil {
			fleetctlBuild.err = err
			return
		}
		fleetctlBuild.path = filepath.Join(dir, "fleetctl")
		out, err := exec.Command("go", "build", "-race", "-o", fleetctlBuild.path, "denis.io/fleet/cmd/fleetctl").CombinedOutput()
		if err != nil {
			fleetctlBuild.err = &buildError{err, out}
		}
	})
	if fleetctlBuild.err != nil {
		t.Fatalf("building fleetctl: %v", fleetctlBuild.err)
	}
	return fleetctlBuild.path
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + string(e.out) }

type cmdResult struct {
	code        int
	out, stderr string
}

// fleetctl runs the binary to completion.
func fleetctl(t *testing.T, args ...string) cmdResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, fleetctlBin(t), args...)
	cmd.Env = append(os.Environ(), "CELERY_BROKER_URL=", "FLEET_BROKER=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if cmd.ProcessState != nil {
			code = cmd.ProcessState.ExitCode()
		}
	}
	return cmdResult{code, out.String(), errb.String()}
}

func mustFleetctl(t *testing.T, args ...string) cmdResult {
	t.Helper()
	r := fleetctl(t, args...)
	if r.code != 0 {
		t.Fatalf("fleetctl %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.out, r.stderr)
	}
	return r
}

// dlqEntry is what the tests read of `fleetctl dlq ls -o json`.
type dlqEntry struct {
	ID, Queue, Origin, Reason, Error, Source string
	TaskID                                   string `json:"task_id"`
	Task                                     string
	Attempts                                 int
}

func dlqList(t *testing.T, url, queue string) []dlqEntry {
	t.Helper()
	r := mustFleetctl(t, "-b", url, "-o", "json", "dlq", "ls", queue, "--limit", "0")
	var out []dlqEntry
	if err := json.Unmarshal([]byte(r.out), &out); err != nil {
		t.Fatalf("dlq ls output: %v\n%s", err, r.out)
	}
	return out
}

// dlqBroker is one broker for the DLQ tests: a fleet connection to seed and count, and
// cleanup of the test's queues.
type dlqBroker struct {
	name, url, backend string
	b                  broker.Broker
	br                 broker.Browser

	mu  sync.Mutex
	ids []string // task ids whose results to delete
}

func dlqBrokers(t *testing.T) []*dlqBroker {
	t.Helper()
	var out []*dlqBroker
	for _, u := range []string{amqpURL, redisURL(dlqRedisDB)} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		b, err := connect.Broker(ctx, u, connect.BrokerOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		out = append(out, &dlqBroker{name: strings.Split(u, ":")[0], url: u, backend: redisURL(dlqRedisDB), b: b, br: b.(broker.Browser)})
	}
	return out
}

// queue returns a unique queue name whose queues (and DLQ) are deleted at cleanup.
func (d *dlqBroker) queue(t *testing.T, prefix string) string {
	t.Helper()
	q := uniqueName(prefix)
	t.Cleanup(func() {
		if d.name == "redis" {
			c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: dlqRedisDB})
			defer c.Close()
			ctx := context.Background()
			keys, _ := c.Keys(ctx, q+"*").Result()
			more, _ := c.Keys(ctx, "fleet:metrics:queue:"+q+"*").Result()
			keys = append(append(keys, more...), "_kombu.binding."+q, "_kombu.binding."+q+".dlq")
			c.Del(ctx, keys...)
			// The workers' pidbox bindings and worker_seen entries: startWorker's cleanup.
		} else {
			amqpFixture().cleanup(q, q+".dlq")
		}
		d.forgetResults()
	})
	return q
}

// results records task ids whose results (in DB 8) are deleted at cleanup.
func (d *dlqBroker) results(ids ...string) {
	d.mu.Lock()
	d.ids = append(d.ids, ids...)
	d.mu.Unlock()
}

func (d *dlqBroker) forgetResults() {
	d.mu.Lock()
	ids := d.ids
	d.ids = nil
	d.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: dlqRedisDB})
	defer c.Close()
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = "celery-task-meta-" + id
	}
	c.Del(context.Background(), keys...)
}

func (d *dlqBroker) depth(t *testing.T, q string) int {
	t.Helper()
	n, err := d.br.Depth(context.Background(), q)
	if err != nil {
		return 0 // not declared yet
	}
	return int(n)
}

// sendTasks sends [name, args] tasks from Python and returns their ids.
func sendTasks(t *testing.T, d *dlqBroker, q string, tasks ...[]any) []string {
	t.Helper()
	spec, _ := json.Marshal(tasks)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "py/dlq.py", "send")
	cmd.Env = append(os.Environ(), "BROKER="+d.url, "BACKEND="+d.backend, "QUEUE="+q, "TASKS="+string(spec))
	out, err := cmd.Output()
	var res struct {
		OK  bool
		IDs []string
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil || json.Unmarshal([]byte(lines[len(lines)-1]), &res) != nil || !res.OK {
		t.Fatalf("py/dlq.py send: %v\n%s", err, out)
	}
	d.results(res.IDs...)
	return res.IDs
}

// Poison messages of every reason the worker produces end in the queue's DLQ with that
// reason, on both brokers: unknown task, malformed and pickled messages, and, for tasks
// configured with dead_letter_on_failure, failure, exhausted retries and the hard time
// limit; on Redis also a list element that is not a kombu envelope at all.
func TestDLQReasonsEndToEnd(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "tasks.yaml")
	if err := os.WriteFile(cfg, []byte(`tasks:
  diag.fail:
    dead_letter_on_failure: true
  diag.flaky:
    max_retries: 1
    dead_letter_on_failure: true
  diag.sleep:
    time_limit: 1s
    dead_letter_on_failure: true
`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range dlqBrokers(t) {
		t.Run(d.name, func(t *testing.T) {
			q := d.queue(t, "it_dlq_reasons")
			startWorker(t, "-b", d.url, "--result-backend", d.backend, "-Q", q, "-c", "4", "--config", cfg, "-n", "dlq-"+q+"@%h")
			ids := sendTasks(t, d, q, []any{"diag.fail", []any{"boom"}}, []any{"diag.flaky", []any{5}},
				[]any{"diag.sleep", []any{5}}, []any{"no.such.task", []any{1}})
			want := map[string]string{ids[0]: dlq.ReasonTaskFailed, ids[1]: dlq.ReasonMaxRetriesExceeded,
				ids[2]: dlq.ReasonTimeLimit, ids[3]: dlq.ReasonUnknownTask}
			poison := python(t, "poison", map[string]string{"BROKER": d.url, "BACKEND": d.backend, "QUEUE": q})
			want[poison["bad_id"].(string)] = dlq.ReasonDecodeError
			want[poison["pickle_id"].(string)] = dlq.ReasonUnsupportedContent
			d.results(poison["bad_id"].(string), poison["pickle_id"].(string))
			expect := len(want)
			if d.name == "redis" {
				c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: dlqRedisDB})
				err := c.LPush(context.Background(), q, "this is not a kombu envelope").Err()
				c.Close()
				if err != nil {
					t.Fatal(err)
				}
				expect++
			}
			waitFor(t, 60*time.Second, "every poison message in the DLQ", func() bool { return d.depth(t, q+".dlq") >= expect })
			got := dlqList(t, d.url, q)
			if len(got) != expect {
				t.Fatalf("%s.dlq holds %d messages, want %d: %+v", q, len(got), expect, got)
			}
			invalid := 0
			for _, e := range got {
				if e.Origin != q || e.Source != dlq.SourceFleet || e.Queue != q+".dlq" || e.Attempts != 1 {
					t.Errorf("entry %+v", e)
				}
				if w, ok := want[e.TaskID]; ok {
					if e.Reason != w {
						t.Errorf("task %s (%s): reason %q, want %q (error %q)", e.TaskID, e.Task, e.Reason, w, e.Error)
					}
					delete(want, e.TaskID)
					continue
				}
				if d.name == "redis" && e.Reason == dlq.ReasonDecodeError && strings.Contains(e.Error, "not a message envelope") {
					invalid++
					continue
				}
				t.Errorf("unexpected dead letter %+v", e)
			}
			if len(want) > 0 || (d.name == "redis" && invalid != 1) {
				t.Errorf("missing from the DLQ: %v; invalid elements %d", want, invalid)
			}
			if n := d.depth(t, q); n != 0 {
				t.Errorf("%d messages left in %s", n, q)
			}
		})
	}
}

// A task dead-lettered as unknown runs once a worker that knows it is up and the DLQ is
// replayed; Python's get() then returns its result.
func TestDLQReplayAfterFix(t *testing.T) {
	for _, d := range dlqBrokers(t) {
		t.Run(d.name, func(t *testing.T) {
			q := d.queue(t, "it_dlq_replay")
			old := startWorker(t, "-b", d.url, "--result-backend", d.backend, "-Q", q, "--no-diag-tasks", "-n", "old-"+q+"@%h")
			ids := sendTasks(t, d, q, []any{"diag.add", []any{2, 3}}, []any{"diag.add", []any{4, 5}}, []any{"diag.echo", []any{"é"}})
			waitFor(t, 30*time.Second, "the unknown tasks in the DLQ", func() bool { return d.depth(t, q+".dlq") == 3 })
			for _, e := range dlqList(t, d.url, q) {
				if e.Reason != dlq.ReasonUnknownTask {
					t.Fatalf("entry %+v", e)
				}
			}
			old.stop(syscall.SIGTERM)
			startWorker(t, "-b", d.url, "--result-backend", d.backend, "-Q", q, "-n", "new-"+q+"@%h")
			r := mustFleetctl(t, "-b", d.url, "dlq", "replay", q, "--all")
			if !strings.Contains(r.out, "replayed 3 of 3") {
				t.Errorf("replay printed %q", r.out)
			}
			collectAll(t, map[string]string{"BROKER": d.url, "BACKEND": d.backend, "QUEUE": q, "TIMEOUT": "60"}, []any{ids[0], ids[1], ids[2]})
			if n := d.depth(t, q+".dlq"); n != 0 {
				t.Errorf("%d messages still in the DLQ", n)
			}
		})
	}
}

// seedLetters puts n dead letters into q's DLQ and returns their task ids.
func seedLetters(t *testing.T, d *dlqBroker, q string, n int) []string {
	t.Helper()
	if err := d.br.DeclareDLQ(context.Background(), q+".dlq"); err != nil {
		t.Fatal(err)
	}
	if err := d.br.DeclareDLQ(context.Background(), q); err != nil { // the work queue, as Celery declares it
		t.Fatal(err)
	}
	var ids []string
	for i := range n {
		task := protocol.NewTask("late.task", []any{i}, nil)
		m, err := protocol.EncodeTask(task)
		if err != nil {
			t.Fatal(err)
		}
		l := dlq.Letter(&broker.Delivery{Queue: q, Message: m}, dlq.ReasonUnknownTask, "NotRegistered", "w@h", time.Now())
		if err := d.b.Publish(context.Background(), broker.Publishing{RoutingKey: q + ".dlq", Message: l}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, task.ID)
	}
	return ids
}

// Killing `fleetctl dlq replay` halfway (SIGKILL, then SIGINT) and running it again moves
// every message exactly once.
func TestDLQReplayKilledHalfway(t *testing.T) {
	for _, d := range dlqBrokers(t) {
		t.Run(d.name, func(t *testing.T) {
			q := d.queue(t, "it_dlq_kill")
			const n = 400
			ids := seedLetters(t, d, q, n)
			for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGINT} {
				cmd := exec.Command(fleetctlBin(t), "-b", d.url, "dlq", "replay", q, "--all", "--rate", "150/s")
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				before := d.depth(t, q)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 30*time.Second, "replay under way", func() bool { return d.depth(t, q) > before+20 })
				_ = cmd.Process.Signal(sig)
				err := cmd.Wait()
				code := cmd.ProcessState.ExitCode()
				if sig == syscall.SIGINT && (code != 130 || !strings.Contains(stderr.String(), "interrupted after")) {
					t.Fatalf("after SIGINT: exit %d (%v): %s", code, err, stderr.String())
				}
				waitFor(t, 10*time.Second, "nothing in flight", func() bool { return d.depth(t, q)+d.depth(t, q+".dlq") == n })
				if moved := d.depth(t, q); moved == n || moved <= before {
					t.Fatalf("after %v: %d of %d moved (was %d): not halfway", sig, moved, n, before)
				}
			}
			mustFleetctl(t, "-b", d.url, "dlq", "replay", q, "--all")
			var got []string
			if err := dlq.Scan(context.Background(), d.br, q, func(e *dlq.Entry) error {
				got = append(got, e.TaskID)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			slices.Sort(ids)
			if !slices.Equal(got, ids) || d.depth(t, q+".dlq") != 0 {
				t.Fatalf("%s holds %d messages, want each of the %d once; %d left in the DLQ", q, len(got), n, d.depth(t, q+".dlq"))
			}
		})
	}
}

// A Python worker's Reject(requeue=False) reaches Q.dlq through the policy `fleetctl dlq
// setup` applies to the queue the Python worker declared, and fleetctl reads its x-death.
func TestPythonRejectReachesDLQ(t *testing.T) {
	d := dlqBrokers(t)[0]
	q := d.queue(t, "it_dlq_reject")
	t.Cleanup(func() {
		_ = exec.Command("rabbitmqctl", "clear_policy", "-p", "/", "fleet-dlq."+q).Run()
	})
	py := startDLQPythonWorker(t, q)
	waitFor(t, 60*time.Second, "the Python worker to declare its queue", func() bool {
		_, err := d.br.Depth(context.Background(), q)
		return err == nil
	})
	r := mustFleetctl(t, "-b", d.url, "dlq", "setup", q)
	if !strings.Contains(r.out, "policy") {
		t.Fatalf("setup printed %q %q", r.out, r.stderr)
	}
	if strings.HasPrefix(strings.TrimSpace(r.out), "rabbitmqctl ") { // no management API here
		if out, err := exec.Command("sh", "-c", strings.TrimSpace(r.out)).CombinedOutput(); err != nil {
			t.Fatalf("running %q: %v\n%s", r.out, err, out)
		}
	}
	ids := sendTasks(t, d, q, []any{"dlq.reject", []any{"nope"}})
	waitFor(t, 60*time.Second, "the rejected message in the DLQ", func() bool { return d.depth(t, q+".dlq") == 1 })
	got := dlqList(t, d.url, q)
	if len(got) != 1 || got[0].TaskID != ids[0] || got[0].Reason != dlq.ReasonRejected || got[0].Source != dlq.SourceBroker || got[0].Origin != q {
		t.Fatalf("dlq: %+v", got)
	}
	py.kill()
	// The queue kept its (absent) arguments: Python can still declare it.
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Errorf("declaring %s as Celery does after setup: %v", q, err)
	}
}

func startDLQPythonWorker(t *testing.T, queue string) *pyWorker {
	t.Helper()
	dir, _ := filepath.Abs("py")
	attr := &os.ProcAttr{
		Dir:   dir,
		Env:   append(os.Environ(), "FLEET_PY_BROKER="+amqpURL, "PYTHONPATH="+dir),
		Files: []*os.File{nil, os.Stderr, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	proc, err := os.StartProcess("/usr/bin/python3", []string{"python3", "-m", "celery", "-A", "dlq", "worker",
		"-Q", queue, "-c", "1", "-P", "solo", "--without-mingle", "--without-gossip", "-l", "WARNING",
		"-n", pyNode(queue)}, attr)
	if err != nil {
		t.Fatal(err)
	}
	p := &pyWorker{proc: proc}
	t.Cleanup(p.kill)
	return p
}
