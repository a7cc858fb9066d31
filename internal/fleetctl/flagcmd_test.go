package fleetctl

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/events"
	fflags "denis.io/fleet/internal/flags"
)

// The flags tests use Redis DB 7 (theirs alone): the default key fleet:flags and the
// heartbeat keys, as the workers write them, are cleared before and after each test.
const flagsRedisURL = "redis://127.0.0.1:6379/7"

func flagsRedis(t *testing.T) *goredis.Client {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 7})
	clear := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, _ := rdb.Keys(ctx, events.SeenKeyPrefix+"*").Result()
		rdb.Del(ctx, append(keys, fflags.DefaultRedisKey, events.SeenIndexKey)...)
	}
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis DB 7 is required: %v", err)
	}
	clear()
	t.Cleanup(func() { clear(); _ = rdb.Close() })
	return rdb
}

// flagWorker is a worker's flag machinery without the rest of a worker: real flags on the
// Redis source and a heartbeat writing its Effective() into the worker_seen record, as the
// worker does. redis false: the flags do not read Redis (a worker without --flags-redis).
type flagWorker struct {
	name   string
	cancel context.CancelFunc
	done   sync.WaitGroup
}

func startFlagWorker(t *testing.T, name string, env map[string]string, readRedis bool) *flagWorker {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 7})
	opts := fflags.Options{
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	}
	if readRedis {
		opts.Redis = rdb
	}
	f, err := fflags.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	w := &flagWorker{name: name, cancel: cancel}
	seen := events.NewSeen(rdb, "", 2*time.Second)
	w.done.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			m := map[string]events.FlagValue{}
			for _, s := range f.Effective() {
				m[s.Name] = events.FlagValue{Value: s.Value, Source: string(s.Source)}
			}
			_ = seen.Beat(ctx, events.WorkerStatus{Hostname: name, Timestamp: float64(time.Now().UnixMicro()) / 1e6, Flags: m})
			select {
			case <-ctx.Done():
				_ = seen.Gone(context.Background(), name)
				return
			case <-tick.C:
			}
		}
	})
	t.Cleanup(func() { w.stop(); _ = f.Close(); _ = rdb.Close() })
	return w
}

func (w *flagWorker) stop() { w.cancel(); w.done.Wait() }

func TestFlagsCommands(t *testing.T) {
	flagsRedis(t)
	r := "--redis=" + flagsRedisURL
	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{"ls empty", []string{"flags", "ls", r}, 0, []string{"DENIS_MATERIALIZERS_ENABLED  -", "VOICE_ENABLED"}},
		{"set", []string{"flags", "set", "VOICE_ENABLED", "on", r}, 0, []string{"VOICE_ENABLED=true set in Redis"}},
		{"get", []string{"flags", "get", "VOICE_ENABLED", r}, 0, []string{"VOICE_ENABLED  true"}},
		{"set percent", []string{"flags", "set", "DENIS_MATERIALIZERS_PERCENT", "10", r}, 0, []string{"=10 set"}},
		{"bad value", []string{"flags", "set", "DENIS_MATERIALIZERS_PERCENT", "101", r}, ExitUsage, []string{"0 to 100"}},
		{"unknown flag", []string{"flags", "set", "NOPE", "true", r}, ExitUsage, []string{"unknown flag"}},
		{"get unknown", []string{"flags", "get", "NOPE", r}, ExitUsage, []string{"unknown flag"}},
		{"unset", []string{"flags", "unset", "VOICE_ENABLED", r}, 0, []string{"VOICE_ENABLED unset"}},
		{"get after unset", []string{"flags", "get", "VOICE_ENABLED", r}, 0, []string{"VOICE_ENABLED  -"}},
		{"no redis", []string{"flags", "ls"}, ExitUsage, []string{"no Redis"}},
		{"unreachable", []string{"flags", "ls", "--redis=redis://127.0.0.1:1/0"}, ExitUnavailable, []string{"redis"}},
		{"no command", []string{"flags"}, ExitUsage, []string{"no command"}},
		{"rollback what", []string{"rollback", "everything", r}, ExitUsage, []string{"unknown rollback"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := runCmd(context.Background(), t, "", false, tc.args...)
			if res.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", res.code, tc.code, res.out, res.stderr)
			}
			for _, s := range tc.contains {
				if !strings.Contains(res.out+res.stderr, s) {
					t.Errorf("output lacks %q:\n%s%s", s, res.out, res.stderr)
				}
			}
		})
	}
	// The percent stays 10 after the rejected 101; the JSON output says so.
	res := mustRun(t, "flags", "get", "DENIS_MATERIALIZERS_PERCENT", r, "-o", "json")
	rows := jsonOut[[]flagRow](t, res)
	if len(rows) != 1 || rows[0].Redis == nil || *rows[0].Redis != "10" {
		t.Fatalf("get percent: %+v", rows)
	}
}

// TestFlagsEnvRedisURL: the Redis URL comes from FLEET_FLAGS_REDIS when --redis is not given.
func TestFlagsEnvRedisURL(t *testing.T) {
	flagsRedis(t)
	var out, errb syncBuffer
	code := Main(context.Background(), []string{"flags", "set", "ASYNC_ENABLED", "true"},
		IO{In: strings.NewReader(""), Out: &out, Err: &errb, Env: []string{"FLEET_FLAGS_REDIS=" + flagsRedisURL}})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	res := mustRun(t, "flags", "get", "ASYNC_ENABLED", "--redis="+flagsRedisURL)
	if !strings.Contains(res.out, "ASYNC_ENABLED  true") {
		t.Fatalf("got %s", res.out)
	}
}

// TestFlagsWorkersAndWait: --workers shows each worker's effective value and source, and
// set --wait returns once every live worker has the value (or reports those that do not).
func TestFlagsWorkersAndWait(t *testing.T) {
	flagsRedis(t)
	r := "--redis=" + flagsRedisURL
	startFlagWorker(t, "w1@test", map[string]string{"GRAPH_LEGACY_MODE": "true"}, true)
	startFlagWorker(t, "w2@test", nil, true)
	time.Sleep(300 * time.Millisecond)

	res := mustRun(t, "flags", "get", "GRAPH_LEGACY_MODE", "--workers", r, "-o", "json")
	rows := jsonOut[[]flagRow](t, res)
	if len(rows) != 1 || len(rows[0].Workers) != 2 {
		t.Fatalf("rows: %+v", rows)
	}
	want := map[string]workerFlagRow{"w1@test": {Value: "true", Source: "env"}, "w2@test": {Value: "false", Source: "default"}}
	for _, w := range rows[0].Workers {
		if g := want[w.Worker]; g.Value != w.Value || g.Source != w.Source {
			t.Errorf("%s: %s/%s, want %s/%s", w.Worker, w.Value, w.Source, g.Value, g.Source)
		}
	}
	res = mustRun(t, "flags", "set", "GRAPH_LEGACY_MODE", "false", "--wait=5s", r)
	if !strings.Contains(res.out, "2/2 live workers report it") {
		t.Fatalf("set --wait: %s", res.out)
	}
	res = mustRun(t, "flags", "ls", "--workers", r)
	for _, line := range []string{"GRAPH_LEGACY_MODE false false w1@test false redis", "GRAPH_LEGACY_MODE false false w2@test false redis"} {
		if !hasRow(res.out, line) {
			t.Errorf("ls --workers lacks %q:\n%s", line, res.out)
		}
	}
	res = mustRun(t, "flags", "unset", "GRAPH_LEGACY_MODE", "--wait=5s", r)
	if !strings.Contains(res.out, "2/2 live workers report it") {
		t.Fatalf("unset --wait: %s", res.out)
	}
	res = mustRun(t, "flags", "get", "GRAPH_LEGACY_MODE", "--workers", r)
	if !hasRow(res.out, "GRAPH_LEGACY_MODE - false w1@test true env") {
		t.Fatalf("after unset: %s", res.out)
	}
}

// TestRollbackMaterializers: the rollback sets the flag, waits for every live worker, and
// fails (exit 1) naming a worker that does not apply it.
func TestRollbackMaterializers(t *testing.T) {
	rdb := flagsRedis(t)
	r := "--redis=" + flagsRedisURL
	ctx := context.Background()
	if _, err := fflags.NewStore(rdb, "", "").Set(ctx, fflags.MaterializersEnabled, "true"); err != nil {
		t.Fatal(err)
	}
	startFlagWorker(t, "a@test", nil, true)
	startFlagWorker(t, "b@test", map[string]string{"DENIS_MATERIALIZERS_ENABLED": "true"}, true)
	time.Sleep(300 * time.Millisecond)

	res := mustRun(t, "rollback", "materializers", r, "--namespace=prod", "--release=denis")
	for _, s := range []string{
		"Rollback Inmediato (60s): confirmed by 2/2 live workers",
		"a@test, b@test",
		"kubectl -n prod patch configmap denis-fleet-flags --type merge -p '{\"data\":{\"DENIS_MATERIALIZERS_ENABLED\":\"false\"}}'",
		"kubectl -n prod set env deployment -l app.kubernetes.io/instance=denis,app.kubernetes.io/component=worker DENIS_MATERIALIZERS_ENABLED=false",
	} {
		if !strings.Contains(res.out, s) {
			t.Errorf("output lacks %q:\n%s", s, res.out)
		}
	}
	if v, _ := rdb.HGet(ctx, fflags.DefaultRedisKey, fflags.MaterializersEnabled).Result(); v != "false" {
		t.Fatalf("redis value %q", v)
	}

	// A worker that does not read Redis (env true) cannot confirm: exit 1, named.
	startFlagWorker(t, "stubborn@test", map[string]string{"DENIS_MATERIALIZERS_ENABLED": "true"}, false)
	time.Sleep(300 * time.Millisecond)
	res = runCmd(ctx, t, "", false, "rollback", "materializers", r, "--timeout=1s", "-o", "json")
	if res.code != ExitFailure || !strings.Contains(res.stderr, "stubborn@test") {
		t.Fatalf("exit %d\n%s\n%s", res.code, res.out, res.stderr)
	}
	var wr []waitResult
	if err := json.Unmarshal([]byte(res.out), &wr); err != nil || len(wr) != 1 ||
		strings.Join(wr[0].Confirmed, ",") != "a@test,b@test" || strings.Join(wr[0].Pending, ",") != "stubborn@test" {
		t.Fatalf("json %v: %s", err, res.out)
	}
}

// hasRow reports whether a table row has the space-separated cells of row.
func hasRow(table, row string) bool {
	want := strings.Fields(row)
	for _, l := range strings.Split(table, "\n") {
		if slices.Equal(strings.Fields(l)[:min(len(want), len(strings.Fields(l)))], want) {
			return true
		}
	}
	return false
}
