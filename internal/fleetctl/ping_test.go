package fleetctl

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/testutil/redisclean"
)

// testBinDir holds the binaries the tests build (created and removed by TestMain).
var testBinDir string

// buildWorker builds cmd/worker once per test binary into testBinDir.
var buildWorker = sync.OnceValue(func() error {
	out, err := exec.Command("go", "build", "-o", testBinDir+"/", "../../cmd/worker").CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build ./cmd/worker: %w\n%s", err, out)
	}
	return nil
})

func workerBin(t *testing.T) string {
	t.Helper()
	if err := buildWorker(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(testBinDir, "worker")
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// runningWorker is a worker process started by startWorker.
type runningWorker struct {
	addr   string        // its metrics server
	exited chan struct{} // closed when the process has exited
	err    error         // its exit status, once exited is closed
}

// startWorker runs a real worker consuming queue, with its metrics server on a free port,
// until the test ends; it returns once the worker reports ready.
func startWorker(t *testing.T, brokerURL, backend, queue string, extra ...string) *runningWorker {
	t.Helper()
	addr := freeAddr(t)
	args := append([]string{"-b", brokerURL, "--result-backend", backend, "-Q", queue, "-c", "2",
		"--hostname", "ping-" + queue + "@%h", "--metrics-addr", addr, "--log-format", "text", "--without-heartbeat"}, extra...)
	var logs syncBuffer
	w := exec.Command(workerBin(t), args...)
	w.Stdout, w.Stderr = &logs, &logs
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	rw := &runningWorker{addr: addr, exited: make(chan struct{})}
	go func() {
		rw.err = w.Wait()
		close(rw.exited)
	}()
	t.Cleanup(func() {
		_ = w.Process.Signal(os.Interrupt)
		select {
		case <-rw.exited:
		case <-time.After(30 * time.Second):
			_ = w.Process.Kill()
			<-rw.exited
		}
		redisclean.ForgetWorker(args)
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return rw
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker not ready after 30s (last: %v)\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitDrained waits until the worker takes no more work: /readyz answers 503, or the
// worker has finished its warm shutdown and exited cleanly.
func (w *runningWorker) waitDrained(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-w.exited:
			if w.err != nil {
				t.Fatalf("the worker exited with %v after the drain", w.err)
			}
			return
		default:
		}
		if resp, err := http.Get("http://" + w.addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker neither reports not ready nor exited 30s after the drain")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cleanupPingKeys removes the result keys of the pings and the worker's per-queue keys from
// the test DB.
func cleanupPingKeys(t *testing.T, queue string, ids *[]string) {
	t.Cleanup(func() {
		c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 8})
		defer c.Close()
		ctx := context.Background()
		keys, _ := c.Keys(ctx, "*"+queue+"*").Result()
		for _, id := range *ids {
			keys = append(keys, "celery-task-meta-"+id)
		}
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
}

func TestPing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real workers")
	}
	for _, e := range brokers(t) {
		for _, backend := range []string{redisURL, "rpc://"} {
			t.Run(e.name+"/"+strings.Split(backend, ":")[0], func(t *testing.T) {
				q := e.newQueue(t, "ping")
				var ids []string
				cleanupPingKeys(t, q, &ids)
				startWorker(t, e.url, backend, q)
				base := []string{"ping", "-b", e.url, "--result-backend", backend, "-Q", q, "--timeout", "20s"}

				r := runCmd(t.Context(), t, "", false, base...)
				if r.code != 0 || !strings.Contains(r.out, "diag.echo from queue "+q+": SUCCESS in ") || !strings.Contains(r.out, `"ping": "`) {
					t.Fatalf("ping: exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
				}

				r = runCmd(t.Context(), t, "", false, append(base, "-o", "json")...)
				if r.code != 0 {
					t.Fatalf("ping -o json: exit %d: %s", r.code, r.stderr)
				}
				reps := jsonOut[[]pingReply](t, r)
				if len(reps) != 1 {
					t.Fatalf("want one reply, got %v", reps)
				}
				rep := reps[0]
				ids = append(ids, rep.TaskID)
				res, _ := rep.Result.(map[string]any)
				if rep.Status != "SUCCESS" || rep.Task != "diag.echo" || rep.Queue != q || res["ping"] == nil || rep.RoundTripMS <= 0 || rep.RoundTripMS > 20000 {
					t.Errorf("reply = %+v", rep)
				}
				// The environment a Kubernetes pod gives it (the chart's helm test).
				r = runCmd(t.Context(), t, "", false, "ping")
				if r.code != ExitUsage {
					t.Errorf("ping without a result backend: exit %d, want %d", r.code, ExitUsage)
				}
				var out, errb syncBuffer
				code := Main(t.Context(), []string{"ping", "--timeout=20s"}, IO{Out: &out, Err: &errb,
					Env: []string{"CELERY_BROKER_URL=" + e.url, "CELERY_RESULT_BACKEND=" + backend, "FLEET_QUEUES=" + q + ",other"}})
				if code != 0 || !strings.Contains(out.String(), "SUCCESS") {
					t.Errorf("ping from the environment: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
				}
			})
		}
	}
}

// TestPingFailures: no worker, a worker without the diag tasks, bad command lines and an
// unreachable broker each end in the documented exit status and a message that says why.
func TestPingFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real workers")
	}
	for _, e := range brokers(t) {
		t.Run(e.name, func(t *testing.T) {
			t.Run("no worker", func(t *testing.T) {
				q := e.newQueue(t, "pingnone")
				r := runCmd(t.Context(), t, "", false, "ping", "-b", e.url, "--result-backend", redisURL, "-Q", q, "--timeout", "1s")
				if r.code != ExitFailure || !strings.Contains(r.stderr, "no reply within 1s") {
					t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
				}
				// The unanswered ping does not stay behind (RabbitMQ expires it, Redis: withdrawn).
				deadline := time.Now().Add(5 * time.Second)
				for e.depth(t, q) != 0 {
					if time.Now().After(deadline) {
						t.Fatalf("queue %s still holds %d messages", q, e.depth(t, q))
					}
					time.Sleep(100 * time.Millisecond)
				}
			})
			if e.name == "amqp" {
				t.Run("queue never declared", func(t *testing.T) {
					r := runCmd(t.Context(), t, "", false, "ping", "-b", e.url, "--result-backend", redisURL, "-Q", "fctl_nosuchqueue_"+randHex(4), "--timeout", "10s")
					if r.code != ExitFailure || !strings.Contains(r.stderr, "does not exist") {
						t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
					}
				})
			}
			t.Run("diag tasks off", func(t *testing.T) {
				q := e.newQueue(t, "pingnodiag")
				var ids []string
				cleanupPingKeys(t, q, &ids)
				startWorker(t, e.url, redisURL, q, "--no-diag-tasks")
				r := runCmd(t.Context(), t, "", false, "ping", "-b", e.url, "--result-backend", redisURL, "-Q", q, "--timeout", "20s", "-o", "json")
				if r.code != ExitFailure || !strings.Contains(r.stderr, "FAILURE") || !strings.Contains(r.stderr, "NotRegistered('diag.echo')") {
					t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
				}
				for _, rep := range jsonOut[[]pingReply](t, r) {
					ids = append(ids, rep.TaskID)
				}
			})
		})
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no result backend", []string{"ping", "-b", redisURL}, ExitUsage, "no result backend"},
		{"bad result backend", []string{"ping", "-b", redisURL, "--result-backend", "mongodb://x"}, ExitUsage, "mongodb"},
		{"bad timeout", []string{"ping", "-b", redisURL, "--result-backend", redisURL, "--timeout", "0s"}, ExitUsage, "--timeout"},
		{"empty queue name", []string{"ping", "-b", redisURL, "--result-backend", redisURL, "-Q", ""}, ExitUsage, "--queue"},
		{"argument", []string{"ping", "-b", redisURL, "--result-backend", redisURL, "extra"}, ExitUsage, "unexpected argument"},
		{"broker unreachable", []string{"ping", "-b", "redis://127.0.0.1:1/0", "--result-backend", redisURL, "--timeout", "2s"}, ExitUnavailable, "127.0.0.1:1"},
		{"result backend unreachable", []string{"ping", "-b", redisURL, "--result-backend", "redis://127.0.0.1:1/0", "--timeout", "2s"}, ExitUnavailable, "127.0.0.1:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCmd(t.Context(), t, "", false, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", r.code, tt.code, r.stderr, tt.stderr)
			}
		})
	}
}

// TestDrain: `fleetctl drain` makes a real worker drain (it reports not ready, then ends its
// warm shutdown), and
// reports a worker without the route or an address where nothing listens.
func TestDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real worker")
	}
	e := brokers(t)[1] // Redis
	q := e.newQueue(t, "drain")
	var none []string
	cleanupPingKeys(t, q, &none)
	w := startWorker(t, e.url, redisURL, q)
	r := runCmd(t.Context(), t, "", false, "drain", "--addr", w.addr)
	if r.code != 0 || !strings.Contains(r.out, "drain started at http://"+w.addr+"/drain") {
		t.Fatalf("drain: exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
	}
	w.waitDrained(t)
	// The port from the environment, as in the worker's container.
	w2 := startWorker(t, e.url, redisURL, q)
	_, port, _ := net.SplitHostPort(w2.addr)
	var out, errb syncBuffer
	if code := Main(t.Context(), []string{"drain"}, IO{Out: &out, Err: &errb, Env: []string{"FLEET_METRICS_ADDR=:" + port}}); code != 0 {
		t.Errorf("drain with FLEET_METRICS_ADDR: exit %d: %s", code, errb.String())
	}
	w2.waitDrained(t)

	var method string
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method = r.Method
		http.NotFound(w, r)
	}))
	defer old.Close()
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not now", http.StatusConflict)
	}))
	defer refusing.Close()
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no drain route", []string{"drain", "--addr", strings.TrimPrefix(old.URL, "http://")}, ExitFailure, "no drain route"},
		{"refused", []string{"drain", "--addr", strings.TrimPrefix(refusing.URL, "http://")}, ExitFailure, "409 Conflict: not now"},
		{"nothing listening", []string{"drain", "--addr", freeAddr(t)}, ExitUnavailable, "connection refused"},
		{"bad address", []string{"drain", "--addr", "localhost"}, ExitUsage, "HOST:PORT"},
		{"bad timeout", []string{"drain", "--timeout", "-1s"}, ExitUsage, "--timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCmd(t.Context(), t, "", false, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", r.code, tt.code, r.stderr, tt.stderr)
			}
		})
	}
	if method != http.MethodPost {
		t.Errorf("drain used %s, want POST", method)
	}
}
