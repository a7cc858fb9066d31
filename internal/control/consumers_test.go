package control

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/result"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/worker"
)

// resultsURL is the Redis result backend of these tests (observability's DB 6; the
// Python driver forgets every result it reads).
const resultsURL = "redis://127.0.0.1:6379/6"

// TestPythonRuntimeControl drives a running Go worker with Celery 5.2.6's own client on
// both brokers and compares each reply with the one Celery's own handler gives:
//   - add_consumer: the worker consumes the new queue at once (a task sent to it runs;
//     active_queues and the snapshot list it);
//   - cancel_consumer while the worker is full from that queue: the prefetched, unstarted
//     messages are back in the queue when the reply comes (counted in the broker), the
//     running task finishes with its result, and a task sent afterwards stays queued;
//   - rate_limit: 1/s holds (4 tasks take at least 3 s), 0 lifts it (8 take < 5 s); bad rates and
//     unknown tasks reply Celery's errors;
//   - time_limit: a diag.sleep past the new hard limit fails with TimeLimitExceeded, past
//     a new soft limit with SoftTimeLimitExceeded.
func TestPythonRuntimeControl(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	for _, tc := range []struct{ name, url string }{{"amqp", amqpURL}, {"redis", redisURL}} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := ""
			if tc.name == "redis" {
				prefix = "ctlq" + randHex(4) + ":"
			}
			host := "ctlq" + randHex(4) + "@test"
			q1, q2 := "ctlq1_"+randHex(4), "ctlq2_"+randHex(4)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			b, err := connect.Broker(ctx, tc.url, connect.BrokerOptions{KeyPrefix: prefix, Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cleanup(t, tc.name, prefix, q1); cleanup(t, tc.name, prefix, q2) })
			defer b.Close()
			rb, err := connect.Results(ctx, resultsURL, b, result.Options{Expires: 10 * time.Minute, Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			defer rb.Close()

			reg := tasks.NewRegistry()
			tasks.RegisterDiag(reg)
			const prefetch = 4
			w := worker.New(worker.Config{Hostname: host, Queues: []string{q1}, Concurrency: 1, PrefetchMultiplier: prefetch,
				ShutdownTimeout: 5 * time.Second, Logger: quiet()}, b, rb, reg)
			wctx, stopWorker := context.WithCancel(ctx)
			wdone := make(chan error, 1)
			go func() { wdone <- w.Run(wctx) }()
			defer func() { stopWorker(); <-wdone }()

			srv := NewServer(host, b.(broker.Fanout), nil, quiet())
			srv.Commands(Deps{Node: w, Registered: reg.Names, Broker: BrokerInfoFromURL(tc.url), Version: "test", Logger: quiet()})
			msgs, err := srv.Listen(ctx)
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ctx, msgs)
			waitFor(t, 10*time.Second, "worker consuming", func() bool { return !w.Snapshot().Started.IsZero() })

			out := runPythonScript(t, "testdata/consumers.py", map[string]string{"BROKER": tc.url, "BACKEND": resultsURL,
				"HOST": host, "Q1": q1, "Q2": q2, "PREFIX": prefix, "PREFETCH": "4", "SLEEP": "6"})

			t.Logf("rate limited %v s, unlimited %v s; hard limited %v, soft limited %v",
				out["limited_s"], out["unlimited_s"], out["hard_limited"], out["soft_limited"])
			cases, _ := out["cases"].([]any)
			if len(cases) != 13 {
				t.Errorf("%d reply cases, want 13: %v", len(cases), out["cases"])
			}
			for _, c := range cases {
				m := c.(map[string]any)
				if !reflect.DeepEqual(m["got"], m["want"]) {
					t.Errorf("%s: replied %v, Celery replies %v", m["name"], m["got"], m["want"])
				}
			}
			if got := out["queues_added"]; !reflect.DeepEqual(got, []any{q1, q2}) {
				t.Errorf("active_queues after add_consumer: %v", got)
			}
			if q, _ := out["q2_queue"].(map[string]any); q["routing_key"] != q2 || q["exchange"].(map[string]any)["name"] != q2 {
				t.Errorf("active_queues entry of the added queue: %v", out["q2_queue"])
			}
			if out["q2_result"] != 5.0 {
				t.Errorf("task sent to the added queue: %v", out["q2_result"])
			}
			if got := out["filled"]; !reflect.DeepEqual(got, []any{1.0, float64(prefetch - 1)}) {
				t.Errorf("before cancel_consumer: [active reserved] = %v, want [1 %d]", got, prefetch-1)
			}
			after, _ := out["after_cancel"].(map[string]any)
			if after["active"] != 1.0 || after["reserved"] != 0.0 || after["ready"] != float64(prefetch) ||
				!reflect.DeepEqual(after["queues"], []any{q1}) {
				t.Errorf("after cancel_consumer: %v (want 1 active, 0 reserved, %d ready in %s, queues [%s])",
					after, prefetch, q2, q1)
			}
			if out["running_result"] != 6.0 {
				t.Errorf("the running task of the cancelled queue: %v", out["running_result"])
			}
			if out["late_state"] != "PENDING" || out["ready_end"] != float64(prefetch+1) {
				t.Errorf("task sent after cancel_consumer: state %v, %v ready (want PENDING, %d)",
					out["late_state"], out["ready_end"], prefetch+1)
			}
			if s, _ := out["limited_s"].(float64); s < 2.8 {
				t.Errorf("4 tasks at 1/s took %.2f s", s)
			}
			if s, _ := out["unlimited_s"].(float64); s > 5 {
				t.Errorf("8 tasks without a rate limit took %.2f s (at 1/s: 7 s)", s)
			}
			if h, _ := out["hard_limited"].([]any); len(h) != 2 || h[0] != "TimeLimitExceeded" || h[1].(float64) > 12 {
				t.Errorf("diag.sleep(20) under hard limit 1 s: %v", out["hard_limited"])
			}
			if s, _ := out["soft_limited"].([]any); len(s) != 2 || s[0] != "SoftTimeLimitExceeded" || s[1].(float64) > 12 {
				t.Errorf("diag.sleep(20) under soft limit 0.5 s: %v", out["soft_limited"])
			}
			if qs := w.Snapshot().Queues; !slices.Equal(qs, []string{q1}) {
				t.Errorf("snapshot queues %v, want [%s]", qs, q1)
			}
		})
	}
}

// runPythonScript runs a driver script and returns its last output line as JSON.
func runPythonScript(t *testing.T, script string, env map[string]string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", script)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("python %s: %v\n%s", script, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
	var out map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &out); err != nil {
		t.Fatalf("python %s output: %v\n%s\n%s", script, err, stdout, stderr.String())
	}
	return out
}
