package fleetctl

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/autoscale"
)

// The autoscaler's tests own Redis database 4.
const decisionsRedisURL = "redis://127.0.0.1:6379/4"

func TestDecisionsTail(t *testing.T) {
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 4})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis (run `make services`): %v", err)
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	stream := "fleet:decisions:test-" + hex.EncodeToString(suffix)
	t.Cleanup(func() { rdb.Del(context.Background(), stream) })
	rec := func(pool string) *autoscale.TraceRecorder {
		return &autoscale.TraceRecorder{Client: rdb, Stream: stream, Pool: pool, Instance: "as-0"}
	}
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for i := range 5 {
		d := autoscale.Decision{Time: t0.Add(time.Duration(i) * 5 * time.Second), Workload: "crews", Current: 2 + i, Desired: 3 + i,
			Rule: autoscale.RuleBacklog, Reason: "backlog need", Inputs: autoscale.Inputs{Ready: 100 * i, Lambda: 4.5, Mu: 0.5, CPU: 0.4}}
		rec("crews").Record(ctx, d, true, nil)
	}
	rec("materializers").Record(ctx, autoscale.Decision{Time: t0, Workload: "materializers", Current: 1, Desired: 1,
		Rule: autoscale.RuleHysteresis, State: autoscale.State{Stopped: true}}, false, nil)

	run := func(ctx context.Context, out *syncBuffer, args ...string) int {
		var errb bytes.Buffer
		code := Main(ctx, append([]string{"decisions", "tail", "--redis", decisionsRedisURL, "--stream", stream}, args...),
			IO{In: strings.NewReader(""), Out: out, Err: &errb})
		if errb.Len() > 0 {
			t.Logf("stderr: %s", errb.String())
		}
		return code
	}
	cases := []struct {
		name  string
		args  []string
		check func(t *testing.T, out string)
	}{
		{"last three, oldest first", []string{"-n", "3"}, func(t *testing.T, out string) {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 4 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[1], "5→6") ||
				!strings.Contains(lines[3], "materializers") || !strings.Contains(lines[3], "stopped") {
				t.Fatalf("%s", out)
			}
		}},
		{"one pool, changes only", []string{"--pool", "crews", "--changes", "-n", "2"}, func(t *testing.T, out string) {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 || !strings.Contains(lines[1], "5→6") || !strings.Contains(lines[2], "6→7") || !strings.Contains(lines[2], "backlog") {
				t.Fatalf("%s", out)
			}
		}},
		{"json", []string{"-o", "json", "-n", "2"}, func(t *testing.T, out string) {
			var trs []autoscale.DecisionTrace
			if err := json.Unmarshal([]byte(out), &trs); err != nil || len(trs) != 2 || trs[0].Decision.Desired != 7 || trs[1].Pool != "materializers" {
				t.Fatalf("%v %s", err, out)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuffer
			if code := run(ctx, &out, tc.args...); code != ExitOK {
				t.Fatalf("exit %d: %s", code, out.String())
			}
			tc.check(t, out.String())
		})
	}

	t.Run("follow prints new decisions until interrupted", func(t *testing.T) {
		fctx, stop := context.WithCancel(ctx)
		var out syncBuffer
		done := make(chan int)
		go func() { done <- run(fctx, &out, "-f", "-n", "1", "-o", "json") }()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), `"materializers"`) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		rec("crews").Record(ctx, autoscale.Decision{Time: t0.Add(time.Minute), Workload: "crews", Current: 7, Desired: 0,
			Rule: autoscale.RuleEmergencyStop}, true, nil)
		for !strings.Contains(out.String(), `"emergency-stop"`) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		stop()
		if code := <-done; code != ExitOK {
			t.Fatalf("exit %d", code)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 2 || !strings.Contains(lines[1], `"emergency-stop"`) {
			t.Fatalf("%s", out.String())
		}
	})

	t.Run("usage", func(t *testing.T) {
		var out, errb bytes.Buffer
		if code := Main(ctx, []string{"decisions", "head"}, IO{Out: &out, Err: &errb}); code != ExitUsage {
			t.Fatalf("exit %d", code)
		}
		if code := Main(ctx, []string{"decisions", "tail"}, IO{Out: &out, Err: &errb, Env: []string{"FLEET_BROKER=amqp://h//"}}); code != ExitUsage ||
			!strings.Contains(errb.String(), "no Redis") {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
	})
}
