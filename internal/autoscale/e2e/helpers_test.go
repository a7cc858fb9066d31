// Package e2e holds the autoscaler's end-to-end tests: the real `autoscaler` binary against a
// real Kubernetes API server (internal/testutil/kube: apiserver, controller-manager,
// scheduler and kwok on loopback) and a real queue, and the local target supervising real
// `worker` processes. They use Redis database 4 and RabbitMQ on this machine (make services),
// unique queue names, and clean up after themselves.
package e2e

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

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/autoscale"
	"denis.io/fleet/internal/broker"
	brokerredis "denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/testutil/kube"
)

const redisURL = "redis://127.0.0.1:6379/4"

var harness = kube.NewHarness(kube.Options{})

func TestMain(m *testing.M) {
	code := harness.Main(m)
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds bin/autoscaler and bin/worker once per test run into a temporary
// directory (the Go build cache makes it quick after the test binary itself was built).
func binaries(t *testing.T) (autoscaler, worker string) {
	t.Helper()
	buildOnce.Do(func() {
		root, err := kube.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "fleet-autoscale-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "./cmd/autoscaler", "./cmd/worker")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
			return
		}
		binDir = dir
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "autoscaler"), filepath.Join(binDir, "worker")
}

func unique(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func redisClient(t *testing.T) *goredis.Client {
	t.Helper()
	ro, err := goredis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	c := goredis.NewClient(ro)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis at %s (run `make services`): %v", redisURL, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// queueBroker opens the Redis broker and deletes queue's keys when the test ends.
func queueBroker(t *testing.T, queue string) *brokerredis.Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := brokerredis.New(ctx, brokerredis.Options{URL: redisURL})
	if err != nil {
		t.Fatal(err)
	}
	rdb := redisClient(t)
	t.Cleanup(func() {
		_ = b.Close()
		rdb.Del(context.Background(), append(b.QueueKeys(queue), "_kombu.binding."+queue)...)
	})
	return b
}

// publishSleeps publishes n diag.sleep(seconds) tasks to queue and returns their ids.
func publishSleeps(ctx context.Context, b broker.Broker, queue string, n int, seconds float64) ([]string, error) {
	ids := make([]string, 0, n)
	for range n {
		task := protocol.NewTask("diag.sleep", []any{seconds}, nil)
		m, err := protocol.EncodeTask(task)
		if err != nil {
			return ids, err
		}
		if err := b.Publish(ctx, broker.Publishing{RoutingKey: queue, Message: m}); err != nil {
			return ids, err
		}
		ids = append(ids, task.ID)
	}
	return ids, nil
}

// proc is a started autoscaler process.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startAutoscaler runs the autoscaler binary with args; its stderr (the JSON log) goes to a
// file in the test's temp dir. The process is stopped (SIGTERM, then SIGKILL) at cleanup.
func startAutoscaler(t *testing.T, bin string, name string, env []string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = childProcAttr() // an interrupted test run leaves no autoscaler behind
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); _ = lf.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t, syscall.SIGTERM, 60*time.Second)
		if t.Failed() {
			t.Logf("%s log (tail):\n%s", name, tailFile(logPath, 40))
		}
	})
	return p
}

// stop signals the process and waits up to d for it to exit, then kills it.
func (p *proc) stop(t *testing.T, sig syscall.Signal, d time.Duration) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(d):
		t.Errorf("autoscaler did not exit %v after %v; killing it", d, sig)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logLines returns the JSON log records of a file (other lines are skipped).
func logLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// readDecisions reads a --decisions-file.
func readDecisions(t *testing.T, path string) []autoscale.Decision {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	var out []autoscale.Decision
	for _, line := range bytes.Split(data, []byte("\n")) {
		var d autoscale.Decision
		if len(bytes.TrimSpace(line)) > 0 && json.Unmarshal(line, &d) == nil {
			out = append(out, d)
		}
	}
	return out
}

// eventually polls cond every 250 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if msg != "" {
			last = msg
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (last: %s)", d, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
