package interop

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"denis.io/fleet/internal/testutil/redisclean"
)

// The task-semantics tests: every apply_async option and canvas form a Python user relies
// on, driven by real Python Celery (py/semantics.py) against the Go worker, on both
// brokers with the Redis result backend (chords need it, as in Celery).

// semantics runs a scenario of py/semantics.py.
func semantics(t *testing.T, scenario string, env map[string]string) map[string]any {
	t.Helper()
	return pythonScript(t, "py/semantics.py", scenario, env)
}

// writeConfig writes a --config file and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// semConfig is the per-task configuration of TestTaskSemantics' worker.
const semConfig = `tasks:
  diag.flaky:
    max_retries: 3
    dead_letter_on_failure: true
  diag.fail:
    autoretry_for: [RuntimeError]
    max_retries: 2
    default_retry_delay: 0.1
  diag.cpu:
    rate_limit: 5/s
`

// TestTaskSemantics pins down, on each broker, with one Go worker:
//   - Task.retry: same id retried with retries+1 until success; max_retries exhausted →
//     MaxRetriesExceededError and, with dead_letter_on_failure, a copy in Q.dlq (reason
//     max_retries_exceeded); autoretry_for re-raises the cause once retries are used up;
//   - countdown / eta: never run early;
//   - expires: a task received after it, or expiring while held for its ETA, is never run
//     (TaskRevokedError('expired'));
//   - soft_time_limit / time_limit: SoftTimeLimitExceeded, TimeLimitExceeded, slot freed;
//   - rate_limit: 20 tasks at 5/s take ≥ 3.8 s and hold no slot while waiting;
//   - link, link_error, chain, group, chord and the nested forms.
func TestTaskSemantics(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel() // the brokers do not share queues
			q := uniqueName("it_sem")
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			backend := redisURL(redisResultsDB)
			w := startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "4",
				"--prefetch-multiplier", "8", "--default-queue", q, "--config", writeConfig(t, semConfig),
				"-n", "sem-"+q+"@%h")
			env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q}

			t.Run("retries", func(t *testing.T) {
				out := semantics(t, "retries", env)
				exhausted := out["exhausted"].(string)
				waitFor(t, 10*time.Second, "the exhausted task in the DLQ", func() bool { return len(b.dlq(t, q+".dlq")) == 1 })
				letter := b.dlq(t, q+".dlq")[0]
				if headerString(letter.Headers, "id") != exhausted ||
					headerString(letter.Headers, "x-fleet-dlq-reason") != "max_retries_exceeded" ||
					headerString(letter.Headers, "retries") != "3" {
					t.Fatalf("dead letter: %v", letter.Headers)
				}
				if n := w.taskIDs("task retried")[out["auto"].(string)]; n != 2 {
					t.Fatalf("autoretry_for retried %d times, want max_retries=2", n)
				}
				if n := w.taskIDs("task retried")[out["flaky"].(string)]; n != 2 {
					t.Fatalf("diag.flaky(2) retried %d times, want 2", n)
				}
			})
			t.Run("eta", func(t *testing.T) { semantics(t, "eta", env) })
			t.Run("expires", func(t *testing.T) {
				out := semantics(t, "expires", env)
				for _, k := range []string{"late", "held"} {
					id := out[k].(string)
					if w.taskIDs("task succeeded")[id] != 0 {
						t.Errorf("expired task %s (%s) ran", k, id)
					}
					if w.taskIDs("task expired: not run")[id] != 1 {
						t.Errorf("expired task %s (%s) was not discarded as expired", k, id)
					}
				}
			})
			t.Run("timelimits", func(t *testing.T) { semantics(t, "timelimits", env) })
			t.Run("ratelimit", func(t *testing.T) {
				env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "FREE": "1"}
				semantics(t, "ratelimit", env)
			})
			t.Run("canvas", func(t *testing.T) { semantics(t, "canvas", env) })
			if code := w.stop(syscall.SIGTERM); code != 0 {
				t.Errorf("worker exit code %d after SIGTERM", code)
			}
		})
	}
}

// TestPriorities pins down message priorities: with a backlog of low-priority tasks queued
// before high-priority ones, the high ones complete first. RabbitMQ: the queue is declared
// with x-max-priority exactly as Celery declares it (`queues:` in --config; higher number
// wins); Redis: kombu's priority sub-lists, 0 highest.
func TestPriorities(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel() // the brokers do not share queues
			q := uniqueName("it_prio")
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			backend := redisURL(redisResultsDB)
			low, high := "1", "9"
			if b.name == "redis" {
				low, high = "9", "0"
			}
			env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "LOW": low, "HIGH": high,
				"MAX_PRIORITY": "10"}
			ids := semantics(t, "prio_send", env)
			cfg := writeConfig(t, "queues:\n  "+q+":\n    max_priority: 10\n")
			startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "1",
				"--prefetch-multiplier", "1", "--config", cfg, "-n", "prio-"+q+"@%h")
			path := filepath.Join(t.TempDir(), "ids.json")
			data, _ := json.Marshal(ids)
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			env["IDS"] = path
			semantics(t, "prio_check", env)
		})
	}
}

// TestFleetWideRateLimit pins down the fleet-wide rate-limit mode (RATE_LIMIT_STRICT): two
// workers sharing diag.cpu's 5/s through Redis take ≥ 3.8 s for 20 tasks, both working.
func TestFleetWideRateLimit(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			q := uniqueName("it_rlf")
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			backend := redisURL(redisResultsDB)
			cfg := writeConfig(t, "tasks:\n  diag.cpu:\n    rate_limit: 5/s\n")
			args := []string{"-b", b.url, "--result-backend", backend, "-Q", q, "-c", "2", "--prefetch-multiplier", "4",
				"--config", cfg, "--rate-limit-fleet", "--rate-limit-redis", backend}
			w1 := startWorker(t, append(args, "-n", "rl1-"+q+"@%h")...)
			w2 := startWorker(t, append(args, "-n", "rl2-"+q+"@%h")...)
			semantics(t, "ratelimit", map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "COUNT": "20"})
			n1, n2 := len(w1.taskIDs("task succeeded")), len(w2.taskIDs("task succeeded"))
			if n1 == 0 || n2 == 0 || n1+n2 != 20 {
				t.Fatalf("tasks run: %d and %d, want 20 shared by both workers", n1, n2)
			}
		})
	}
}

// TestMixedChord pins down Celery's Redis chord counting across worker kinds: a chord whose
// header tasks run partly on a Python worker and partly on a Go worker fires its body
// exactly once, with the header results in order.
func TestMixedChord(t *testing.T) {
	for _, b := range brokers() {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel() // the brokers do not share queues
			q, pyq := uniqueName("it_chord"), uniqueName("it_chord_py")
			t.Cleanup(func() { b.cleanup(q, pyq, q+".dlq") })
			backend := redisURL(redisResultsDB)
			w := startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "4",
				"--default-queue", q, "-n", "chord-"+q+"@%h")
			startSemPythonWorker(t, b.url, backend, pyq, 3600)
			out := semantics(t, "mixed_chord", map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q,
				"PY_QUEUE": pyq, "TIMEOUT": "90"})
			body := out["body"].(string)
			time.Sleep(time.Second) // a second firing would run by now
			if n := w.taskIDs("task succeeded")[body]; n != 1 {
				t.Fatalf("chord body %s ran %d times, want once", body, n)
			}
		})
	}
}

// TestETAOutlivesVisibilityTimeout pins down that an ETA task held by a Go worker longer
// than the Redis visibility timeout runs once: the worker keeps its lease fresh, so a
// Python worker's restore sweep (visibility_timeout=3) does not take it.
func TestETAOutlivesVisibilityTimeout(t *testing.T) {
	b := redisFixture()
	q := uniqueName("it_etavt")
	t.Cleanup(func() { b.cleanup(q) })
	backend := redisURL(redisResultsDB)
	env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "COUNTDOWN": "15"}
	w := startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "2",
		"--visibility-timeout", "3s", "-n", "etavt-"+q+"@%h")
	id := semantics(t, "send_eta", env)["id"].(string)
	waitFor(t, 10*time.Second, "the Go worker to hold the task", func() bool { return b.depth(t, q) == 0 })
	time.Sleep(5 * time.Second) // the lease would now be older than the visibility timeout
	startSemPythonWorker(t, b.url, backend, q, 3)
	env["IDS"] = writeIDs(t, []any{id})
	out := semantics(t, "wait_ids", env)
	if who := out["workers"].(map[string]any)[id]; who != nil {
		t.Fatalf("the Python worker ran the held task (%v): its sweep restored a live lease", who)
	}
	time.Sleep(time.Second)
	if n := w.taskIDs("task succeeded")[id]; n != 1 {
		t.Fatalf("the ETA task ran %d times on the Go worker, want once", n)
	}
}

// startSemPythonWorker starts a Python Celery worker (py/semapp.py, result_extended on) on
// queue with the given Redis visibility timeout in seconds.
func startSemPythonWorker(t *testing.T, brokerURL, backend, queue string, visibility int) *pyWorker {
	t.Helper()
	dir, _ := filepath.Abs("py")
	attr := &os.ProcAttr{
		Dir: dir,
		Env: append(os.Environ(), "FLEET_PY_BROKER="+brokerURL, "FLEET_PY_BACKEND="+backend,
			"FLEET_PY_QUEUE="+queue, "FLEET_PY_VISIBILITY_TIMEOUT="+strconv.Itoa(visibility), "PYTHONPATH="+dir),
		Files: []*os.File{nil, os.Stderr, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	proc, err := os.StartProcess("/usr/bin/python3", []string{"python3", "-m", "celery", "-A", "semapp", "worker",
		"-Q", queue, "-c", "2", "-P", "prefork", "--without-mingle", "--without-gossip", "-l", "WARNING",
		"-n", pyNode(queue)}, attr)
	if err != nil {
		t.Fatal(err)
	}
	p := &pyWorker{proc: proc, node: redisclean.ExpandHost(pyNode(queue)), brokerURL: brokerURL}
	t.Cleanup(p.kill)
	return p
}
