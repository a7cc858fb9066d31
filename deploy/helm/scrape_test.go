package helm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/testutil/redisclean"
)

// liveRedis is the Redis DB the live scrape uses (other packages' tests use 0-8).
const liveRedis = "redis://127.0.0.1:6379/11"

// TestDashboardAgainstLiveScrape runs a real worker with its metrics server, makes it succeed,
// fail and dead-letter a task sent by Python Celery, scrapes /metrics, and checks that every
// metric the dashboard queries is there (except conditionalMetrics, checked against the
// sources by TestDashboardQueriesNameExportedMetrics).
func TestDashboardAgainstLiveScrape(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Redis and Python Celery")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "worker")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../../cmd/worker").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/worker: %v\n%s", err, out)
	}
	help, _ := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if !bytes.Contains(help, []byte("--metrics-addr")) {
		t.Skip("bin/worker has no --metrics-addr yet (issue 4 wires internal/metrics into the worker)")
	}
	addr := freeAddr(t)
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	queue := "helmdash" + hex.EncodeToString(suffix)
	var logs bytes.Buffer
	args := []string{"-b", liveRedis, "--result-backend", liveRedis, "-Q", queue, "-n", queue + "@%h",
		"-c", "2", "--metrics-addr", addr, "--log-format", "text"}
	w := exec.CommandContext(ctx, bin, args...)
	w.Stdout, w.Stderr = &logs, &logs
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = w.Process.Signal(os.Interrupt)
		_ = w.Wait()
		cleanupRedis(queue)
		redisclean.ForgetWorker(args)
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	py := fmt.Sprintf(`
from celery import Celery
app = Celery(broker=%q, backend=%q)
assert app.send_task('diag.add', args=(2, 3), queue=%q).get(timeout=30) == 5
try:
    app.send_task('diag.fail', args=('boom',), queue=%q).get(timeout=30)
    raise SystemExit('diag.fail did not fail')
except RuntimeError:
    pass
try:
    app.send_task('helmdash.unknown', queue=%q).get(timeout=30)
except Exception:
    pass
`, liveRedis, liveRedis, queue, queue, queue)
	if out, err := exec.CommandContext(ctx, "/usr/bin/python3", "-c", py).CombinedOutput(); err != nil {
		t.Fatalf("python celery: %v\n%s", err, out)
	}
	conditional := map[string]bool{}
	for n := range conditionalMetrics {
		conditional[n] = true
	}
	// The queue sampler and the DLQ collector read the broker on their own period.
	var exported map[string]bool
	var missing []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		exported = scrape(ctx, t, "http://"+addr+"/metrics")
		missing = missing[:0]
		for n := range dashboardMetrics(t) {
			b := baseName(n, exported)
			if c := baseName(n, conditional); conditional[c] || exported[b] {
				continue
			}
			missing = append(missing, n)
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("the dashboard queries metrics the worker's /metrics does not export: %v", missing)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrape returns the metric family names on a /metrics page (from its # TYPE lines).
func scrape(ctx context.Context, t *testing.T, url string) map[string]bool {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return names
}

// cleanupRedis removes the test queue's keys (the queue, its DLQ and kombu bindings).
func cleanupRedis(queue string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	script := `for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 0`
	_ = exec.CommandContext(ctx, "redis-cli", "-n", "11", "EVAL", script, "0", "*"+queue+"*").Run()
}
