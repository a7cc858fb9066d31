package interop

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"denis.io/fleet/internal/testutil/redisclean"
	"denis.io/fleet/internal/testutil/tcpproxy"
)

// backends are the result backends Python reads results from.
var backends = []struct{ name, url string }{
	{"redis", redisURL(redisResultsDB)},
	{"rpc", "rpc://"},
}

// TestPythonCeleryDrivesGoWorker pins down what a Python user of send_task relies on, on each
// broker × result backend: every diag task runs and get() returns its value with its type
// (int stays int, float stays float, big ints exact, unicode and nested JSON intact, NaN),
// exceptions re-raise with their Python type and message, an unknown task raises
// NotRegistered and is dead-lettered with reason unknown_task, and malformed and pickle
// messages are dead-lettered with their reasons while the worker goes on serving.
func TestPythonCeleryDrivesGoWorker(t *testing.T) {
	for _, b := range brokers() {
		for _, be := range backends {
			t.Run(b.name+"/"+be.name, func(t *testing.T) {
				q := uniqueName("it_diag")
				t.Cleanup(func() { b.cleanup(q, q+".dlq") })
				w := startWorker(t, "-b", b.url, "--result-backend", be.url, "-Q", q, "-c", "4",
					"-n", "it-"+q+"@%h")
				env := map[string]string{"BROKER": b.url, "BACKEND": be.url, "QUEUE": q}

				out := python(t, "diag", env)
				unknownID := out["unknown_id"].(string)
				waitFor(t, 10*time.Second, "unknown task in DLQ", func() bool { return len(b.dlq(t, q+".dlq")) == 1 })
				letters := b.dlq(t, q+".dlq")
				if got := headerString(letters[0].Headers, "x-fleet-dlq-reason"); got != "unknown_task" {
					t.Fatalf("dlq reason %q, want unknown_task", got)
				}
				if got := headerString(letters[0].Headers, "id"); got != unknownID {
					t.Fatalf("dead letter is task %q, want %q (original headers kept)", got, unknownID)
				}
				for _, h := range []string{"x-fleet-dlq-error", "x-fleet-dlq-queue", "x-fleet-dlq-worker", "x-fleet-dlq-time"} {
					if headerString(letters[0].Headers, h) == "" {
						t.Errorf("dead letter lacks header %s", h)
					}
				}

				out = python(t, "poison", env)
				waitFor(t, 10*time.Second, "poison messages in DLQ", func() bool { return len(b.dlq(t, q+".dlq")) == 3 })
				reasons := map[string]string{}
				for _, l := range b.dlq(t, q+".dlq") {
					reasons[headerString(l.Headers, "id")] = headerString(l.Headers, "x-fleet-dlq-reason")
				}
				if r := reasons[out["bad_id"].(string)]; r != "decode_error" {
					t.Errorf("malformed message: reason %q, want decode_error", r)
				}
				if r := reasons[out["pickle_id"].(string)]; r != "unsupported_content" {
					t.Errorf("pickle message: reason %q, want unsupported_content", r)
				}
				if d := b.depth(t, q); d != 0 {
					t.Errorf("queue %s still has %d messages", q, d)
				}
				if code := w.stop(syscall.SIGTERM); code != 0 {
					t.Errorf("worker exit code %d after SIGTERM, want 0", code)
				}
				if w.find("worker-online") != nil {
					t.Log("events present")
				}
			})
		}
	}
}

func writeIDs(t *testing.T, ids []any) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ids.json")
	data, _ := json.Marshal(ids)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// collectAll asserts through Python's AsyncResult that every id reached SUCCESS.
func collectAll(t *testing.T, env map[string]string, ids []any) {
	t.Helper()
	env["IDS"] = writeIDs(t, ids)
	out := python(t, "collect", env)
	states := out["states"].(map[string]any)
	bad := 0
	for id, st := range states {
		if st != "SUCCESS" {
			bad++
			t.Errorf("task %s: %v", id, st)
		}
	}
	if len(states) != len(ids) || bad > 0 {
		t.Fatalf("produced %d, completed %d", len(ids), len(states)-bad)
	}
}

// TestRedeliveryAfterSIGKILL: a worker SIGKILLed while running acks_late diag.sleep tasks
// loses none of them: a second Go worker completes every one (RabbitMQ requeues the dead
// connection's unacked messages; on Redis the second worker's visibility sweep restores the
// dead worker's leases from kombu's unacked hash).
func TestRedeliveryAfterSIGKILL(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			q := uniqueName("it_kill")
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			env := map[string]string{"BROKER": b.url, "BACKEND": redisURL(redisResultsDB), "QUEUE": q,
				"COUNT": "12", "SECONDS": "2", "TIMEOUT": "60"}
			args := []string{"-b", b.url, "--result-backend", redisURL(redisResultsDB), "-Q", q, "-c", "4",
				"--visibility-timeout", "3s"}
			first := startWorker(t, append(args, "-n", "first-"+q+"@%h")...)
			ids := python(t, "produce", env)["ids"].([]any)
			waitFor(t, 20*time.Second, "all tasks taken by the first worker", func() bool { return b.depth(t, q) == 0 })
			time.Sleep(300 * time.Millisecond)
			first.stop(syscall.SIGKILL)

			second := startWorker(t, append(args, "-n", "second-"+q+"@%h")...)
			collectAll(t, env, ids)
			if n := len(second.taskIDs("task succeeded")); n == 0 {
				t.Fatal("second worker completed nothing; redelivery did not happen")
			}
		})
	}
}

// TestRedisMixedFleetRecovery: on Redis, Go and Python workers recover each other's
// unfinished messages through kombu's unacked hash and visibility timeout.
func TestRedisMixedFleetRecovery(t *testing.T) {
	b := redisFixture()
	backend := redisURL(redisResultsDB)

	t.Run("python-recovers-go", func(t *testing.T) {
		q := uniqueName("it_mix_pg")
		t.Cleanup(func() { b.cleanup(q) })
		env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "COUNT": "6", "SECONDS": "2", "TIMEOUT": "90"}
		goW := startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "2", "-n", "go-"+q+"@%h")
		ids := python(t, "produce", env)["ids"].([]any)
		waitFor(t, 20*time.Second, "all tasks taken by the Go worker", func() bool { return b.depth(t, q) == 0 })
		goW.stop(syscall.SIGKILL)
		time.Sleep(4 * time.Second) // let the leases age past the Python worker's visibility timeout
		startPythonWorker(t, b.url, backend, q, 3)
		collectAll(t, env, ids)
	})

	t.Run("go-recovers-python", func(t *testing.T) {
		q := uniqueName("it_mix_gp")
		t.Cleanup(func() { b.cleanup(q) })
		env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "COUNT": "6", "SECONDS": "3", "TIMEOUT": "90"}
		py := startPythonWorker(t, b.url, backend, q, 3600)
		ids := python(t, "produce", env)["ids"].([]any)
		waitFor(t, 30*time.Second, "all tasks taken by the Python worker", func() bool { return b.depth(t, q) == 0 })
		time.Sleep(time.Second)
		py.kill()
		w := startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "4",
			"--visibility-timeout", "3s", "-n", "go-"+q+"@%h")
		collectAll(t, env, ids)
		if len(w.taskIDs("task succeeded")) == 0 {
			t.Fatal("the Go worker recovered nothing")
		}
	})
}

// TestGracefulShutdown: SIGTERM during a burst stops fetching at once, hands back what was
// prefetched, lets running tasks finish and exits 0; every task is either completed or back
// in the queue, and a second worker completes the rest without running any task twice.
func TestGracefulShutdown(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			q := uniqueName("it_term")
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			backend := redisURL(redisResultsDB)
			env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "COUNT": "24", "SECONDS": "1", "TIMEOUT": "60"}
			args := []string{"-b", b.url, "--result-backend", backend, "-Q", q, "-c", "4", "--shutdown-timeout", "10s"}
			first := startWorker(t, append(args, "-n", "first-"+q+"@%h")...)
			ids := python(t, "produce", env)["ids"].([]any)
			waitFor(t, 30*time.Second, "some tasks done", func() bool { return len(first.taskIDs("task succeeded")) >= 4 })
			if code := first.stop(syscall.SIGTERM); code != 0 {
				t.Fatalf("exit code %d after SIGTERM, want 0", code)
			}
			done := first.taskIDs("task succeeded")
			queued := b.depth(t, q)
			if len(done)+queued != len(ids) {
				t.Fatalf("after SIGTERM: %d completed + %d queued != %d produced", len(done), queued, len(ids))
			}
			second := startWorker(t, append(args, "-n", "second-"+q+"@%h")...)
			collectAll(t, env, ids)
			for id := range second.taskIDs("task succeeded") {
				if done[id] > 0 {
					t.Errorf("task %s ran on both workers", id)
				}
			}
		})
	}
}

// pyWorker is a Python Celery worker running one of the apps in py/, as node, with its
// broker at brokerURL.
type pyWorker struct {
	proc      *os.Process
	node      string
	brokerURL string
}

// pyNode is the node name (-n) of the Python worker consuming queue.
func pyNode(queue string) string { return "py-" + queue + "@%h" }

// kill stops the worker and removes the pidbox binding it leaves in a Redis broker.
func (p *pyWorker) kill() {
	_ = syscall.Kill(-p.proc.Pid, syscall.SIGKILL)
	_, _ = p.proc.Wait()
	redisclean.ForgetNode(p.node, p.brokerURL)
}

func startPythonWorker(t *testing.T, brokerURL, backend, queue string, visibility int) *pyWorker {
	t.Helper()
	dir, _ := filepath.Abs("py")
	attr := &os.ProcAttr{
		Dir: dir,
		Env: append(os.Environ(), "FLEET_PY_BROKER="+brokerURL, "FLEET_PY_BACKEND="+backend,
			"FLEET_PY_VISIBILITY_TIMEOUT="+strconv.Itoa(visibility), "PYTHONPATH="+dir),
		Files: []*os.File{nil, os.Stderr, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	proc, err := os.StartProcess("/usr/bin/python3", []string{"python3", "-m", "celery", "-A", "diagapp", "worker",
		"-Q", queue, "-c", "2", "-P", "prefork", "--without-mingle", "--without-gossip", "-l", "WARNING",
		"-n", pyNode(queue)}, attr)
	if err != nil {
		t.Fatal(err)
	}
	p := &pyWorker{proc: proc, node: redisclean.ExpandHost(pyNode(queue)), brokerURL: brokerURL}
	t.Cleanup(p.kill)
	return p
}

// TestBrokerConnectionLoss: the worker's broker connection is cut (twice, through a TCP
// proxy) during a burst; the worker reconnects and every task completes.
func TestBrokerConnectionLoss(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			q := uniqueName("it_cut")
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			target := "127.0.0.1:5672"
			if b.name == "redis" {
				target = "127.0.0.1:6379"
			}
			proxy := tcpproxy.Start(t, target)
			proxied := strings.Replace(b.url, target, proxy.Addr(), 1)
			backend := redisURL(redisResultsDB)
			env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "COUNT": "40", "SECONDS": "0.1", "TIMEOUT": "90"}
			w := startWorker(t, "-b", proxied, "--result-backend", backend, "-Q", q, "-c", "4", "-n", "cut-"+q+"@%h")
			ids := python(t, "produce", env)["ids"].([]any)
			for cut := 1; cut <= 2; cut++ {
				n := cut * 8
				waitFor(t, 60*time.Second, "tasks done before cut", func() bool { return len(w.taskIDs("task succeeded")) >= n })
				proxy.Cut()
			}
			collectAll(t, env, ids)
		})
	}
}
