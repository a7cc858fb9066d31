package interop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"denis.io/fleet/internal/testutil/redisclean"
)

const (
	amqpURL = "amqp://guest:guest@127.0.0.1:5672//"
	// Redis DBs owned by this package's tests (other packages use other DBs).
	redisBrokerDB  = 1
	redisResultsDB = 2
)

var workerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fleet-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workerBin = filepath.Join(dir, "worker")
	build := exec.Command("go", "build", "-race", "-o", workerBin, "denis.io/fleet/cmd/worker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building worker:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func redisURL(db int) string { return fmt.Sprintf("redis://127.0.0.1:6379/%d", db) }

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// workerProc is a running worker binary with its JSON log lines captured.
type workerProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	raw  bytes.Buffer
	done chan struct{}
	err  error
}

func startWorker(t *testing.T, args ...string) *workerProc {
	t.Helper()
	full := append([]string{"--log-format", "json", "--log-level", "debug"}, args...)
	cmd := exec.Command(workerBin, full...)
	// Several workers run at once: each serves its metrics on a free port.
	cmd.Env = append(os.Environ(), "CELERY_BROKER_URL=", "CELERY_RESULT_BACKEND=", "FLEET_METRICS_ADDR=127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &workerProc{t: t, cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = &lockedWriter{p: p}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			var m map[string]any
			p.mu.Lock()
			p.raw.Write(line)
			p.raw.WriteByte('\n')
			if json.Unmarshal(line, &m) == nil {
				p.logs = append(p.logs, m)
			}
			p.mu.Unlock()
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		redisclean.ForgetWorker(args)
		if t.Failed() {
			p.mu.Lock()
			t.Logf("worker %s log:\n%s", strings.Join(args, " "), lastLines(p.raw.String(), 60))
			p.mu.Unlock()
		}
	})
	p.waitLog(t, "worker ready", 30*time.Second)
	return p
}

type lockedWriter struct{ p *workerProc }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.raw.Write(b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitLog waits until a log line with msg appears.
func (p *workerProc) waitLog(t *testing.T, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if l := p.find(msg); l != nil {
			return l
		}
		select {
		case <-p.done:
			t.Fatalf("worker exited (%v) before logging %q:\n%s", p.err, msg, lastLines(p.output(), 40))
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no %q log line within %s:\n%s", msg, timeout, lastLines(p.output(), 40))
	return nil
}

func (p *workerProc) find(msg string) map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.logs {
		if l["msg"] == msg {
			return l
		}
	}
	return nil
}

// count returns how many log lines have msg, by task_id.
func (p *workerProc) taskIDs(msg string) map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, l := range p.logs {
		if l["msg"] == msg {
			if id, ok := l["task_id"].(string); ok {
				out[id]++
			}
		}
	}
	return out
}

func (p *workerProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raw.String()
}

// stop sends sig and waits for the process to exit; it returns the exit code.
func (p *workerProc) stop(sig syscall.Signal) int {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// python runs a scenario from py/scenarios.py and returns its final JSON object.
func python(t *testing.T, scenario string, env map[string]string) map[string]any {
	t.Helper()
	return pythonScript(t, "py/scenarios.py", scenario, env)
}

// pythonScript runs a scenario of a script in py/ and returns its final JSON object.
func pythonScript(t *testing.T, script, scenario string, env map[string]string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", script, scenario)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var out map[string]any
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &out); jerr != nil || err != nil || out["ok"] != true {
		t.Fatalf("python scenario %s failed (%v):\nstdout: %s\nstderr: %s", scenario, err, stdout.String(), lastLines(stderr.String(), 30))
	}
	return out
}
