package workercli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/flags"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/testutil/redisclean"
)

// The process-level tests of the feature flags run real bin/worker and bin/fleetctl
// processes against the local Redis, DB 15 (DB 7 is the flags package's and fleetctl's): broker, results, flags hash and
// heartbeat keys. Each test has its own queue, flags key and hostnames, and removes what it
// wrote. They do not run in parallel: the rollback test needs the default keys fleet:flags
// and fleet:workers, which every worker and fleetctl of DB 15 share.
const e2eRedisURL = "redis://127.0.0.1:6379/15"

// e2eRunner is the exec runner of the tests' crew, materializer and voice tasks: it reads
// the JSON payload on stdin and answers what ran, with the FLEET_FLAG_* variables it got.
const e2eRunner = `#!/usr/bin/python3
import json, os, sys
p = json.load(sys.stdin)
json.dump({"ran": p.get("materializer") or p.get("crew") or p.get("task"),
           "flags": {k: v for k, v in os.environ.items() if k.startswith("FLEET_FLAG_")}}, sys.stdout)
`

var bins struct {
	once             sync.Once
	dir              string
	worker, fleetctl string
	err              error
}

// TestMain removes the binaries the process tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if bins.dir != "" {
		_ = os.RemoveAll(bins.dir)
	}
	os.Exit(code)
}

// buildBins builds bin/worker and bin/fleetctl once for the package's tests (the worker with
// -race when the tests run with it).
func buildBins(t *testing.T) (worker, fleetctl string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs worker processes")
	}
	bins.once.Do(func() {
		if bins.dir, bins.err = os.MkdirTemp("", "fleet-workercli-"); bins.err != nil {
			return
		}
		bins.worker, bins.fleetctl = filepath.Join(bins.dir, "worker"), filepath.Join(bins.dir, "fleetctl")
		for bin, pkg := range map[string]string{bins.worker: "denis.io/fleet/cmd/worker", bins.fleetctl: "denis.io/fleet/cmd/fleetctl"} {
			args := []string{"build"}
			if raceEnabled && bin == bins.worker { // fleetctl is a tool here, not under test
				args = append(args, "-race")
			}
			out, err := exec.Command("go", append(args, "-o", bin, pkg)...).CombinedOutput()
			if err != nil {
				bins.err = fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
				return
			}
		}
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return bins.worker, bins.fleetctl
}

// baseEnv is this process's environment without the variables that would configure the
// processes behind the tests' backs (broker, results, flags, tracing).
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, isFlag := flags.Lookup(k); isFlag || strings.HasPrefix(k, "FLEET_") || strings.HasPrefix(k, "CELERY_") || strings.HasPrefix(k, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// e2eEnv is the tests' Redis, their unique suffix, and what they clean up.
type e2eEnv struct {
	t      *testing.T
	rdb    *goredis.Client
	b      broker.Broker
	id     string // unique per test
	queue  string
	key    string // flags hash
	dir    string
	script string
	ids    []string
}

func newE2E(t *testing.T) *e2eEnv {
	t.Helper()
	buildBins(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 15})
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis DB 15 is required: %v", err)
	}
	b, err := connect.Broker(ctx, e2eRedisURL, connect.BrokerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := protocol.NewUUID()[:8]
	e := &e2eEnv{t: t, rdb: rdb, b: b, id: id, queue: "flags-e2e-" + id, key: "fleet:flags:e2e:" + id, dir: t.TempDir()}
	e.script = filepath.Join(e.dir, "runner.py")
	if err := os.WriteFile(e.script, []byte(e2eRunner), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keys := []string{e.queue, e.queue + ".dlq", e.key}
		for _, id := range e.ids {
			keys = append(keys, result.Key(id))
		}
		for _, pattern := range []string{"*" + e.queue + "*", "*" + e.id + "*"} {
			found, _ := rdb.Keys(ctx, pattern).Result()
			keys = append(keys, found...)
		}
		rdb.Del(ctx, keys...)
		_ = b.Close()
		_ = rdb.Close()
	})
	return e
}

// config writes the worker's --config: the default crew and materializer tasks and a voice
// task gated by VOICE_ENABLED, all on the test's queue, run by e2eRunner.
func (e *e2eEnv) config() string {
	p := filepath.Join(e.dir, "fleet.yaml")
	cfg := fmt.Sprintf(`tasks:
  denis.crew.run:
    queue: %[1]s
    runner: exec
    allow: [research]
    exec:
      argv: [%[2]s, "{crew}"]
  denis.materializer.run:
    queue: %[1]s
    runner: exec
    allow: [daily_summary]
    exec:
      argv: [%[2]s, "{materializer}"]
  voice.say:
    kind: exec
    queue: %[1]s
    requires_flag: VOICE_ENABLED
    exec:
      argv: [%[2]s]
`, e.queue, e.script)
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// send publishes a task to the test's queue as Python's send_task does.
func (e *e2eEnv) send(name string, kwargs map[string]any) string {
	e.t.Helper()
	task := protocol.NewTask(name, nil, kwargs)
	m, err := protocol.EncodeTask(task)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.b.Publish(ctx, broker.Publishing{RoutingKey: e.queue, Message: m}); err != nil {
		e.t.Fatal(err)
	}
	e.ids = append(e.ids, task.ID)
	return task.ID
}

// result waits for the task's result document in state want.
func (e *e2eEnv) result(id, want string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		raw, err := e.rdb.Get(context.Background(), result.Key(id)).Bytes()
		if err == nil {
			if err := json.Unmarshal(raw, &last); err != nil {
				e.t.Fatal(err)
			}
			if last["status"] == want {
				return last
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("task %s: no %s result within 30s; last %v", id, want, last)
	return nil
}

// run runs the materializer task and returns its result value.
func (e *e2eEnv) materialize() map[string]any {
	e.t.Helper()
	id := e.send("denis.materializer.run", map[string]any{"materializer": "daily_summary"})
	return e.result(id, "SUCCESS")["result"].(map[string]any)
}

// setRedisFlag writes the flags hash and announces it, as Denis's Python code does.
func (e *e2eEnv) setRedisFlag(key, name, value string) {
	e.t.Helper()
	ctx := context.Background()
	if err := e.rdb.HSet(ctx, key, name, value).Err(); err != nil {
		e.t.Fatal(err)
	}
	if err := e.rdb.Publish(ctx, key+":changed", name).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// proc is a running bin/worker.
type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	metrics string // http://host:port

	mu   sync.Mutex
	raw  bytes.Buffer
	logs []map[string]any
	done chan struct{}
}

// startWorker runs bin/worker as name@e2e with the test's Redis, a free metrics port, a
// 0.5 s heartbeat, env on top of baseEnv and args, and waits until it consumes.
func (e *e2eEnv) startWorker(name string, env []string, args ...string) *proc {
	e.t.Helper()
	worker, _ := buildBins(e.t)
	full := append([]string{"-b", e2eRedisURL, "--result-backend", e2eRedisURL, "-Q", e.queue, "-n", name + "@e2e",
		"-c", "4", "--metrics-addr", "127.0.0.1:0", "--heartbeat-interval", "0.5", "--shutdown-timeout", "10s",
		"--log-format", "json"}, args...)
	cmd := exec.Command(worker, full...)
	cmd.Env = append(baseEnv(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	p := &proc{t: e.t, name: name + "@e2e", cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = writerFunc(func(b []byte) (int, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.raw.Write(b)
	})
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			p.mu.Lock()
			p.raw.Write(sc.Bytes())
			p.raw.WriteByte('\n')
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.logs = append(p.logs, m)
			}
			p.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	e.t.Cleanup(func() {
		p.stop()
		redisclean.ForgetWorker(full)
		if e.t.Failed() {
			e.t.Logf("worker %s output:\n%s", p.name, lastLines(p.output(), 80))
		}
	})
	addr := p.waitLog("metrics listening", nil, 60*time.Second)["addr"].(string)
	p.metrics = "http://" + addr
	p.waitLog("worker ready", nil, 60*time.Second)
	return p
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raw.String()
}

// waitLog waits for a log line with msg whose fields include attrs.
func (p *proc) waitLog(msg string, attrs map[string]any, timeout time.Duration) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		for _, l := range p.logs {
			if l["msg"] != msg {
				continue
			}
			match := true
			for k, v := range attrs {
				if l[k] != v {
					match = false
				}
			}
			if match {
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: no log line %q %v within %s", p.name, msg, attrs, timeout)
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited before logging %q:\n%s", p.name, msg, lastLines(p.output(), 40))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop() int {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	return p.cmd.ProcessState.ExitCode()
}

// flagMetric reads a fleet_flag_* sample of flag from /metrics (ok false when absent).
func (p *proc) flagMetric(metric, label, value string) (float64, bool) {
	p.t.Helper()
	resp, err := http.Get(p.metrics + "/metrics")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + metric + `\{[^}]*` + label + `="` + regexp.QuoteMeta(value) + `"[^}]*\} (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		p.t.Fatal(err)
	}
	return v, true
}

// waitFlag waits until fleet_flag_value{flag} is want and returns how long that took.
func (p *proc) waitFlag(flag string, want float64, timeout time.Duration) time.Duration {
	p.t.Helper()
	start := time.Now()
	for {
		if v, ok := p.flagMetric("fleet_flag_value", "flag", flag); ok && v == want {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			v, _ := p.flagMetric("fleet_flag_value", "flag", flag)
			p.t.Fatalf("%s: fleet_flag_value{flag=%q} is %v, not %v, after %s", p.name, flag, v, want, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// seen reads the worker's heartbeat record.
func (e *e2eEnv) seen(host string) (events.WorkerStatus, bool) {
	raw, err := e.rdb.Get(context.Background(), events.SeenKeyPrefix+host).Bytes()
	if err != nil {
		return events.WorkerStatus{}, false
	}
	var st events.WorkerStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		e.t.Fatal(err)
	}
	return st, true
}

// waitSeen waits for a heartbeat record of host that satisfies ok.
func (e *e2eEnv) waitSeen(host string, ok func(events.WorkerStatus) bool) events.WorkerStatus {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, found := e.seen(host)
		if found && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: heartbeat record %+v (found %v) never matched", host, st, found)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fleetctl runs bin/fleetctl to completion.
func (e *e2eEnv) fleetctl(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	_, bin := buildBins(e.t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = baseEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		e.t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

// TestFlagsLiveInWorkerProcess: a running worker process takes its flags from the
// environment, the flags file (changed while it runs) and the Redis hash (changed while it
// runs), each visible in /metrics within 2 s and in what the next materializer job does;
// a bad Redis value is rejected and the last good one stays; RATE_LIMIT_STRICT and
// TELEMETRY_ENABLED switch the rate limiter and tracing live; runners get GRAPH_LEGACY_MODE
// and VOICE_ENABLED as FLEET_FLAG_*; the heartbeat record carries every flag with its
// source; POST /drain fails readiness and marks the heartbeat draining.
func TestFlagsLiveInWorkerProcess(t *testing.T) {
	e := newE2E(t)
	flagsFile := filepath.Join(e.dir, "flags.yaml")
	writeFile(t, flagsFile, "DENIS_MATERIALIZERS_ENABLED: \"false\"\n")
	w := e.startWorker("live-"+e.id, []string{"GRAPH_LEGACY_MODE=true", "DENIS_MATERIALIZERS_ENABLED=true"},
		"--config", e.config(), "--flags-file", flagsFile, "--flags-key", e.key)

	// Env and file at start: the file beats the environment.
	w.waitFlag(flags.GraphLegacyMode, 1, 5*time.Second)
	w.waitFlag(flags.MaterializersEnabled, 0, 5*time.Second)
	if v, ok := w.flagMetric("fleet_flag_enabled", "flag", flags.VoiceEnabled); !ok || v != 0 {
		t.Fatalf("fleet_flag_enabled{VOICE_ENABLED} = %v, %v", v, ok)
	}
	if got := e.materialize(); got["materialized"] != false || got["reason"] != "materializers disabled" {
		t.Fatalf("materializer with the flag off: %v", got)
	}
	if v, ok := w.flagMetric("fleet_task_outcomes_total", "outcome", "stubbed"); !ok || v != 1 {
		t.Fatalf("fleet_task_outcomes_total{outcome=stubbed} = %v, %v", v, ok)
	}
	crew := e.result(e.send("denis.crew.run", map[string]any{"crew": "research"}), "SUCCESS")["result"].(map[string]any)
	if fl := crew["flags"].(map[string]any); crew["ran"] != "research" ||
		fl["FLEET_FLAG_GRAPH_LEGACY_MODE"] != "true" || fl["FLEET_FLAG_VOICE_ENABLED"] != "false" {
		t.Fatalf("crew run: %v", crew)
	}

	// The file changes while the worker runs.
	writeFile(t, flagsFile, "DENIS_MATERIALIZERS_ENABLED: \"true\"\n")
	took := w.waitFlag(flags.MaterializersEnabled, 1, 5*time.Second)
	t.Logf("file change applied in %s", took)
	if took > 2*time.Second {
		t.Errorf("file change took %s (want within 2 s)", took)
	}
	w.waitLog("flag changed", map[string]any{"flag": flags.MaterializersEnabled, "value": "true", "source": "file"}, 5*time.Second)
	if got := e.materialize(); got["ran"] != "daily_summary" {
		t.Fatalf("materializer with the flag on (percent 100): %v", got)
	}

	// Redis beats the file, applied on the notification.
	e.setRedisFlag(e.key, flags.MaterializersEnabled, "false")
	took = w.waitFlag(flags.MaterializersEnabled, 0, 5*time.Second)
	t.Logf("Redis change applied in %s", took)
	if took > 2*time.Second {
		t.Errorf("Redis change took %s (want within 2 s)", took)
	}
	w.waitLog("flag changed", map[string]any{"flag": flags.MaterializersEnabled, "value": "false", "source": "redis"}, 5*time.Second)
	if got := e.materialize(); got["materialized"] != false {
		t.Fatalf("materializer after the Redis rollback: %v", got)
	}

	// A bad value is rejected; the last good one stays.
	e.setRedisFlag(e.key, flags.MaterializersPercent, "250")
	w.waitLog("flag value rejected; last good value stays", map[string]any{"flag": flags.MaterializersPercent, "source": "redis"}, 5*time.Second)
	if v, _ := w.flagMetric("fleet_flag_value", "flag", flags.MaterializersPercent); v != 100 {
		t.Fatalf("DENIS_MATERIALIZERS_PERCENT = %v after a bad value, want 100", v)
	}
	if v, _ := w.flagMetric("fleet_flag_rejections_total", "source", "redis"); v != 1 {
		t.Fatalf("fleet_flag_rejections_total{source=redis} = %v", v)
	}

	// Worker machinery switched live.
	e.setRedisFlag(e.key, flags.RateLimitStrict, "true")
	w.waitLog("ratelimit: mode changed", map[string]any{"fleet_wide": true}, 5*time.Second)
	e.setRedisFlag(e.key, flags.TelemetryEnabled, "false")
	w.waitLog("tracing switched", map[string]any{"enabled": false}, 5*time.Second)
	e.setRedisFlag(e.key, flags.VoiceEnabled, "true")
	w.waitFlag(flags.VoiceEnabled, 1, 5*time.Second)
	crew = e.result(e.send("denis.crew.run", map[string]any{"crew": "research"}), "SUCCESS")["result"].(map[string]any)
	if fl := crew["flags"].(map[string]any); fl["FLEET_FLAG_VOICE_ENABLED"] != "true" {
		t.Fatalf("crew run after VOICE_ENABLED=true: %v", crew)
	}

	// The heartbeat record carries each flag's value and source.
	st := e.waitSeen(w.name, func(st events.WorkerStatus) bool {
		return st.Flags[flags.VoiceEnabled].Value == "true"
	})
	for name, want := range map[string]events.FlagValue{
		flags.MaterializersEnabled: {Value: "false", Source: "redis"},
		flags.GraphLegacyMode:      {Value: "true", Source: "env"},
		flags.MaterializersPercent: {Value: "100", Source: "default"},
		flags.RateLimitStrict:      {Value: "true", Source: "redis"},
	} {
		if st.Flags[name] != want {
			t.Errorf("heartbeat %s = %+v, want %+v", name, st.Flags[name], want)
		}
	}

	// POST /drain (the chart's preStop hook) starts the warm shutdown: readiness fails, the
	// heartbeat says draining, fetching stops, the running task finishes and the worker
	// exits 0 by itself; the SIGTERM that follows in Kubernetes does not escalate.
	if code := httpStatus(t, http.MethodGet, w.metrics+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the drain: %d", code)
	}
	for _, m := range []string{http.MethodGet, http.MethodPut} {
		if code := httpStatus(t, m, w.metrics+"/drain"); code != http.StatusMethodNotAllowed {
			t.Fatalf("%s /drain: %d", m, code)
		}
	}
	if code := httpStatus(t, http.MethodGet, w.metrics+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz after a refused drain: %d", code)
	}
	sleeping := e.send(tasks.DiagSleep, map[string]any{"seconds": 3})
	deadline := time.Now().Add(10 * time.Second)
	for w.gauge("celery_worker_tasks_active") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("diag.sleep never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := httpStatus(t, http.MethodPost, w.metrics+"/drain"); code != http.StatusAccepted {
		t.Fatalf("POST /drain: %d", code)
	}
	if code := httpStatus(t, http.MethodGet, w.metrics+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz after the drain: %d", code)
	}
	e.waitSeen(w.name, func(st events.WorkerStatus) bool { return st.Draining })
	w.waitLog("drain requested on /drain: warm shutdown (fetching stops, running tasks finish, then exit)", nil, time.Second)
	_ = w.cmd.Process.Signal(syscall.SIGTERM) // kubelet's SIGTERM after preStop: no cold shutdown
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not exit after its drain")
	}
	if code := w.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit %d after the drain", code)
	}
	if strings.Contains(w.output(), "cold shutdown") {
		t.Fatal("the SIGTERM after /drain escalated to a cold shutdown")
	}
	e.result(sleeping, "SUCCESS")
	if _, found := e.seen(w.name); found {
		t.Fatal("heartbeat record left behind after a clean shutdown")
	}
}

// gauge reads an unlabelled-or-labelled sample of metric from /metrics (summed; 0 when absent).
func (p *proc) gauge(metric string) float64 {
	p.t.Helper()
	resp, err := http.Get(p.metrics + "/metrics")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	sum := 0.0
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(metric)+`(?:\{[^}]*\})? (\S+)$`).FindAllSubmatch(body, -1) {
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			p.t.Fatal(err)
		}
		sum += v
	}
	return sum
}

func httpStatus(t *testing.T, method, url string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestRequiresFlagDeadLetterAndReplay: a task with requires_flag: VOICE_ENABLED fails
// (FlagDisabledError) and is dead-lettered with reason flag_disabled while the flag is off;
// once the flag is set, `fleetctl dlq replay` brings it back and it runs.
func TestRequiresFlagDeadLetterAndReplay(t *testing.T) {
	e := newE2E(t)
	w := e.startWorker("voice-"+e.id, nil, "--config", e.config(), "--flags-key", e.key, "--no-diag-tasks")

	id := e.send("voice.say", map[string]any{"text": "hola"})
	res := e.result(id, "FAILURE")
	if exc := res["result"].(map[string]any); exc["exc_type"] != "FlagDisabledError" ||
		!strings.Contains(fmt.Sprint(exc["exc_message"]), "requires feature flag VOICE_ENABLED") {
		t.Fatalf("failure %v", exc)
	}
	var entries []map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for len(entries) == 0 && time.Now().Before(deadline) {
		code, out, errOut := e.fleetctl("dlq", "ls", e.queue, "-b", e2eRedisURL, "-o", "json")
		if code != 0 {
			t.Fatalf("dlq ls: exit %d: %s", code, errOut)
		}
		if err := json.Unmarshal([]byte(out), &entries); err != nil {
			t.Fatalf("dlq ls output %q: %v", out, err)
		}
	}
	if len(entries) != 1 || entries[0]["task_id"] != id || entries[0]["reason"] != "flag_disabled" {
		t.Fatalf("dead letters %v", entries)
	}

	e.setRedisFlag(e.key, flags.VoiceEnabled, "true")
	w.waitFlag(flags.VoiceEnabled, 1, 5*time.Second)
	if code, out, errOut := e.fleetctl("dlq", "replay", e.queue, "--all", "--reason", "flag_disabled", "-b", e2eRedisURL); code != 0 {
		t.Fatalf("dlq replay: exit %d\n%s%s", code, out, errOut)
	}
	got := e.result(id, "SUCCESS")["result"].(map[string]any)
	if got["ran"] != "voice.say" || got["flags"].(map[string]any)["FLEET_FLAG_VOICE_ENABLED"] != "true" {
		t.Fatalf("replayed task: %v", got)
	}
	if n, _ := e.rdb.LLen(context.Background(), e.queue+".dlq").Result(); n != 0 {
		t.Fatalf("%d messages left in the DLQ", n)
	}
	if code := w.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestRollbackMaterializersTwoWorkers: `fleetctl rollback materializers` against two running
// worker processes (materializers enabled by their environment) sets the flag in Redis,
// sees both confirm it in their heartbeats, and both then stub materializer jobs;
// `fleetctl flags get --workers` shows each worker's value and source.
func TestRollbackMaterializersTwoWorkers(t *testing.T) {
	e := newE2E(t)
	ctx := context.Background()
	// The default keys: fleetctl knows no other. DB 15 belongs to these tests.
	clearDefault := func() { e.rdb.HDel(ctx, flags.DefaultRedisKey, flags.MaterializersEnabled) }
	clearDefault()
	t.Cleanup(clearDefault)
	env := []string{"DENIS_MATERIALIZERS_ENABLED=true"}
	cfg := e.config()
	w1 := e.startWorker("rb1-"+e.id, env, "--config", cfg)
	w2 := e.startWorker("rb2-"+e.id, env, "--config", cfg)
	for _, w := range []*proc{w1, w2} {
		w.waitFlag(flags.MaterializersEnabled, 1, 5*time.Second)
		e.waitSeen(w.name, func(st events.WorkerStatus) bool { return st.Flags[flags.MaterializersEnabled].Value == "true" })
	}
	if got := e.materialize(); got["ran"] != "daily_summary" {
		t.Fatalf("materializer before the rollback: %v", got)
	}

	code, out, errOut := e.fleetctl("rollback", "materializers", "--redis", e2eRedisURL, "--timeout", "30s")
	t.Logf("fleetctl rollback materializers:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("rollback: exit %d", code)
	}
	if !strings.Contains(out, "Rollback Inmediato (60s): confirmed by") || !strings.Contains(out, w1.name) ||
		!strings.Contains(out, w2.name) || !strings.Contains(out, "kubectl") {
		t.Fatalf("rollback output lacks the confirmation by both workers:\n%s", out)
	}
	for _, w := range []*proc{w1, w2} {
		if v, _ := w.flagMetric("fleet_flag_value", "flag", flags.MaterializersEnabled); v != 0 {
			t.Fatalf("%s: DENIS_MATERIALIZERS_ENABLED = %v after the rollback", w.name, v)
		}
	}
	for range 6 {
		if got := e.materialize(); got["materialized"] != false {
			t.Fatalf("materializer after the rollback: %v", got)
		}
	}

	code, out, errOut = e.fleetctl("flags", "get", flags.MaterializersEnabled, "--workers", "--redis", e2eRedisURL, "-o", "json")
	if code != 0 {
		t.Fatalf("flags get: exit %d: %s", code, errOut)
	}
	var rows []struct {
		Workers []struct{ Worker, Value, Source string } `json:"workers"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("flags get output %q: %v", out, err)
	}
	var confirmed []string
	for _, r := range rows[0].Workers {
		if r.Value == "false" && r.Source == "redis" {
			confirmed = append(confirmed, r.Worker)
		}
	}
	if !slices.Contains(confirmed, w1.name) || !slices.Contains(confirmed, w2.name) {
		t.Fatalf("flags get --workers: %s", out)
	}
	for _, w := range []*proc{w1, w2} {
		if code := w.stop(); code != 0 {
			t.Fatalf("%s: exit %d", w.name, code)
		}
	}
}
