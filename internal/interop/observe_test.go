package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Redis DBs owned by the observability tests.
const (
	obsBrokerDB  = 5
	obsResultsDB = 6
)

// obsBrokers are the two brokers with the observability tests' Redis DB.
func obsBrokers() []brokerFixture {
	r := redisFixture()
	r.url = redisURL(obsBrokerDB)
	r.cleanup = func(queues ...string) {
		c := redisClient(obsBrokerDB)
		defer c.Close()
		ctx := context.Background()
		for _, q := range queues {
			c.Del(ctx, q, q+"\x06\x163", q+"\x06\x166", q+"\x06\x169", "_kombu.binding."+q)
		}
	}
	return []brokerFixture{amqpFixture(), r}
}

func redisClient(db int) *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: db})
}

// celeryCLI runs the celery command line against url, as an operator would.
func celeryCLI(t *testing.T, url string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", append([]string{"-m", "celery", "-b", url}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("celery %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// observePy runs a scenario of py/observe.py and returns its final JSON object.
func observePy(t *testing.T, scenario string, env map[string]string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "py/observe.py", scenario)
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
		t.Fatalf("observe.py %s failed (%v):\nstdout: %s\nstderr: %s", scenario, err, stdout.String(), lastLines(stderr.String(), 30))
	}
	return out
}

// bgProc is a background process whose stdout is collected line by line.
type bgProc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func startBG(t *testing.T, env map[string]string, name string, args ...string) *bgProc {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &bgProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
	return p
}

func (p *bgProc) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// metricsURL reads the address the worker's metrics server listens on from its log.
func metricsURL(t *testing.T, w *workerProc) string {
	t.Helper()
	l := w.waitLog(t, "metrics listening", 10*time.Second)
	return "http://" + l["addr"].(string)
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestPythonMonitoringSeesGoWorker pins the acceptance on both brokers, with a
// Python worker in the same fleet: `celery events --dump` shows our heartbeats and task
// events; an events.State fed by a Receiver sees the Go worker alive within 2 × freq and
// offline once it stopped; `celery inspect ping|stats|active|reserved|registered|
// active_queues` answer for it, and `celery status` lists it next to the Python worker;
// and its /metrics carries the celery-exporter series with the hostname label after the @.
func TestPythonMonitoringSeesGoWorker(t *testing.T) {
	for _, b := range obsBrokers() {
		t.Run(b.name, func(t *testing.T) {
			q := uniqueName("it_obs")
			qpy := q + "_py"
			goHost := "obs-" + q + "@localtest"
			backend := redisURL(obsResultsDB)
			t.Cleanup(func() { b.cleanup(q, qpy, q+".dlq") })
			env := map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "GO_HOST": goHost, "TIMEOUT": "60"}

			startPythonWorker(t, b.url, backend, qpy, 3600)
			dump := startBG(t, nil, "/usr/bin/python3", "-m", "celery", "-b", b.url, "events", "--dump")
			w := startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "2", "-n", goHost,
				"--metrics-addr", "127.0.0.1:0")
			base := metricsURL(t, w)
			recv := startBG(t, env, "/usr/bin/python3", "py/observe.py", "receiver")
			waitFor(t, 30*time.Second, "receiver sees the Go worker alive", func() bool { return strings.Contains(recv.text(), "alive") })

			observePy(t, "tasks", env)
			waitFor(t, 20*time.Second, "events --dump shows our heartbeat and task events", func() bool {
				out := dump.text()
				return strings.Contains(out, goHost+" [") && strings.Contains(out, "heartbeat: ") &&
					strings.Contains(out, "task succeeded: diag.add") && strings.Contains(out, "task failed: diag.fail")
			})

			pyHost := "py-" + qpy + "@"
			waitFor(t, 60*time.Second, "celery status lists both workers", func() bool {
				out := celeryCLI(t, b.url, "status", "-t", "3")
				return strings.Contains(out, goHost+": OK") && strings.Contains(out, pyHost)
			})
			for cmd, want := range map[string]string{
				"ping":          "pong",
				"stats":         `"max-concurrency": 2`,
				"active":        "empty",
				"reserved":      "empty",
				"registered":    "diag.sleep",
				"active_queues": `'name': '` + q + `'`,
			} {
				out := celeryCLI(t, b.url, "inspect", cmd, "-d", goHost, "-t", "5")
				if !strings.Contains(out, goHost+": OK") || !strings.Contains(out, want) {
					t.Errorf("celery inspect %s: want %q in:\n%s", cmd, want, out)
				}
			}

			m := scrape(t, base)
			for _, want := range []string{
				`celery_task_succeeded_total{hostname="localtest",name="diag.add",queue_name="` + q + `"} 1`,
				`celery_task_failed_total{exception="RuntimeError",hostname="localtest",name="diag.fail",queue_name="` + q + `"} 1`,
				`celery_task_runtime_bucket{hostname="localtest",name="diag.add",queue_name="` + q + `",le="0.075"}`,
				`celery_worker_up{hostname="localtest"} 1`,
				`fleet_task_outcomes_total{outcome="success",queue="` + q + `",task="diag.add"} 1`,
				`fleet_worker_last_heartbeat_timestamp_seconds{hostname="localtest"}`,
			} {
				if !strings.Contains(m, want) {
					t.Errorf("/metrics lacks %s", want)
				}
			}
			waitFor(t, 30*time.Second, "queue depth sampled", func() bool {
				return strings.Contains(scrape(t, base), `celery_queue_length{queue_name="`+q+`"} 0`)
			})

			if code := w.stop(syscall.SIGTERM); code != 0 {
				t.Errorf("worker exit code %d", code)
			}
			select {
			case <-recv.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("receiver did not see worker-offline:\n%s", recv.text())
			}
			var out map[string]any
			lines := strings.Split(strings.TrimSpace(recv.text()), "\n")
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil || out["ok"] != true {
				t.Fatalf("receiver: %s", recv.text())
			}
			// freq is the last heartbeat's: 2, or 5 after the receiver's wakeup (the
			// heartbeat control command), as for a Python worker.
			freq, _ := out["freq"].(float64)
			if (freq != 2 && freq != 5) || out["alive_after_s"].(float64) > 2*2 || out["offline_alive"] != false || out["sw_ident"] != "fleet-go" {
				t.Errorf("receiver saw %v", out)
			}
		})
	}
}

// TestRevokeFromCeleryCLI: `celery control revoke ID` keeps a queued task from running
// (Python's get() raises TaskRevokedError) and `celery control terminate SIGTERM ID`
// stops a running diag.sleep(60) within seconds, on both brokers.
func TestRevokeFromCeleryCLI(t *testing.T) {
	for _, b := range obsBrokers() {
		t.Run(b.name, func(t *testing.T) {
			q := uniqueName("it_revoke")
			goHost := "rv-" + q + "@localtest"
			backend := redisURL(obsResultsDB)
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-c", "1", "-n", goHost, "--metrics-addr", "")
			out := observePy(t, "revoke", map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q, "GO_HOST": goHost})
			if s := out["terminated_after_s"].(float64); s > 30 {
				t.Errorf("terminate took %.1fs", s)
			}
		})
	}
}

// TestTraceContinuesFromPythonProducer: a trace a Python producer started (its traceparent
// in the message headers, as opentelemetry-instrumentation-celery writes it) continues in
// the Go worker's consumer span, which a real OTLP/HTTP receiver gets, and the worker's log
// lines for that task carry the trace id; both brokers.
func TestTraceContinuesFromPythonProducer(t *testing.T) {
	rcv := startOTLPReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+rcv.addr)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
	t.Setenv("OTEL_SERVICE_NAME", "fleet-interop")
	for _, b := range obsBrokers() {
		t.Run(b.name, func(t *testing.T) {
			q := uniqueName("it_trace")
			backend := redisURL(obsResultsDB)
			t.Cleanup(func() { b.cleanup(q, q+".dlq") })
			w := startWorker(t, "-b", b.url, "--result-backend", backend, "-Q", q, "-n", "tr-"+q+"@localtest", "--metrics-addr", "")
			out := observePy(t, "traced", map[string]string{"BROKER": b.url, "BACKEND": backend, "QUEUE": q})
			traceID, spanID, taskID := out["trace_id"].(string), out["span_id"].(string), out["task_id"].(string)
			waitFor(t, 20*time.Second, "the worker's span at the OTLP receiver", func() bool { return rcv.find(traceID) != nil })
			s := rcv.find(traceID)
			if s.name != "run/diag.add" || s.parentID != spanID || s.service != "fleet-interop" || s.attrs["messaging.message.id"] != taskID ||
				s.attrs["messaging.destination.name"] != q || s.attrs["fleet.outcome"] != "success" {
				t.Errorf("span %+v", s)
			}
			traced := 0
			w.mu.Lock()
			for _, l := range w.logs {
				if l["task_id"] == taskID {
					if l["trace_id"] != traceID {
						t.Errorf("task log line without its trace id: %v", l)
					}
					traced++
				}
			}
			w.mu.Unlock()
			if traced == 0 {
				t.Error("no log line for the traced task")
			}
		})
	}
}

// otlpReceiver is a minimal OTLP/HTTP trace receiver (protobuf over POST /v1/traces).
type otlpReceiver struct {
	addr  string
	mu    sync.Mutex
	spans []otlpSpan
}

type otlpSpan struct {
	name, traceID, parentID, service string
	attrs                            map[string]string
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &otlpReceiver{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		var ex collectortrace.ExportTraceServiceRequest
		if err != nil || req.URL.Path != "/v1/traces" || proto.Unmarshal(body, &ex) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range ex.ResourceSpans {
			svc := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					svc = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					attrs := map[string]string{}
					for _, a := range s.Attributes {
						v := a.GetValue()
						attrs[a.Key] = v.GetStringValue()
						if v.GetStringValue() == "" {
							attrs[a.Key] = fmt.Sprint(v.GetIntValue())
						}
					}
					r.spans = append(r.spans, otlpSpan{name: s.Name, traceID: hex.EncodeToString(s.TraceId),
						parentID: hex.EncodeToString(s.ParentSpanId), service: svc, attrs: attrs})
				}
			}
		}
		r.mu.Unlock()
		resp, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(resp)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return r
}

func (r *otlpReceiver) find(traceID string) *otlpSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.spans {
		if r.spans[i].traceID == traceID {
			s := r.spans[i]
			return &s
		}
	}
	return nil
}
