package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncLog is a goroutine-safe log sink.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testLogger() (*slog.Logger, *syncLog) {
	sl := &syncLog{}
	return slog.New(slog.NewJSONHandler(sl, &slog.HandlerOptions{Level: slog.LevelDebug})), sl
}

// fakeFlags is a FlagReader whose values tests change.
type fakeFlags struct {
	mu    sync.Mutex
	bools map[string]bool
	ints  map[string]int
}

func newFakeFlags() *fakeFlags {
	return &fakeFlags{bools: map[string]bool{}, ints: map[string]int{FlagMaterializersPercent: 100}}
}

func (f *fakeFlags) Bool(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bools[name]
}

func (f *fakeFlags) Int(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ints[name]
}

func (f *fakeFlags) set(name string, v any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch x := v.(type) {
	case bool:
		f.bools[name] = x
	case int:
		f.ints[name] = x
	}
}

// script copies testdata/runner.py into a temporary directory with its execute bit set
// (whatever the checkout did with the mode) and returns its path.
func script(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", "runner.py"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "runner.py")
	if err := os.WriteFile(p, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func testEnv(kv map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		if v, ok := kv[k]; ok {
			return v, true
		}
		if k == "PATH" || k == "HOME" {
			return os.LookupEnv(k)
		}
		return "", false
	}
}

func crewReq(id string, kwargs map[string]any) *Request {
	return &Request{ID: id, Name: "denis.crew.run", Args: []any{}, Kwargs: kwargs}
}

// pidAlive reports whether pid is a live (non-zombie) process.
func pidAlive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// readPids waits for the pid file the test command writes.
func readPids(path string, within time.Duration) ([]int, error) {
	deadline := time.Now().Add(within)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			var pids []int
			for _, f := range strings.Fields(string(data)) {
				n, _ := strconv.Atoi(f)
				pids = append(pids, n)
			}
			return pids, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no pid file %s within %v", path, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitDead(t *testing.T, pids []int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, pid := range pids {
		for pidAlive(pid) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("process %d still alive after %v", pid, within)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func newCrewExec(t *testing.T, cfg ExecConfig, opts RunnerOptions) (Handler, *ExecRunner) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r, err := NewExecRunner(cfg, KindCrew, opts)
	if err != nil {
		t.Fatal(err)
	}
	return NewCrewHandler([]string{"research", "summarize"}, r), r
}

// TestExecRunnerEcho: payload on stdin, result from stdout, exact argv, the environment
// (config env, secret, flags, nothing inherited), working dir, stderr in the log with the
// task id, the secret never logged.
func TestExecRunnerEcho(t *testing.T) {
	log, logs := testLogger()
	flags := newFakeFlags()
	flags.set(FlagVoiceEnabled, true)
	dir := t.TempDir()
	exe := script(t)
	h, _ := newCrewExec(t, ExecConfig{
		Argv:      []string{exe, "echo", "--crew={crew}", "--run-id", "{run_id}", "{task_id}", "{literal braces}"},
		Dir:       dir,
		Env:       map[string]string{"MODE": "test"},
		SecretEnv: map[string]string{"API_KEY": "WORKER_API_KEY"},
	}, RunnerOptions{Logger: log, Flags: flags,
		LookupEnv: testEnv(map[string]string{"WORKER_API_KEY": "sk-very-secret-1234", "NOT_PASSED": "x"})})

	inputs := map[string]any{"topic": "ünï 😀", "n": json.Number("12345678901234567890"), "nested": []any{true, nil}}
	got, err := h.ServeTask(context.Background(), crewReq("task-1", map[string]any{"crew": "research", "inputs": inputs, "run_id": "run-7"}))
	if err != nil {
		t.Fatal(err)
	}
	res := got.(map[string]any)
	wantArgv := []any{"echo", "--crew=research", "--run-id", "run-7", "task-1", "{literal braces}"}
	if !reflect.DeepEqual(res["argv"], wantArgv) {
		t.Fatalf("argv = %#v, want %#v", res["argv"], wantArgv)
	}
	wantStdin := map[string]any{"task_id": "task-1", "task": "denis.crew.run", "kind": "crew",
		"crew": "research", "run_id": "run-7", "inputs": inputs}
	if !reflect.DeepEqual(res["stdin"], wantStdin) {
		t.Fatalf("stdin = %#v, want %#v", res["stdin"], wantStdin)
	}
	if cwd, _ := filepath.EvalSymlinks(dir); res["cwd"] != cwd && res["cwd"] != dir {
		t.Fatalf("cwd = %v, want %s", res["cwd"], dir)
	}
	env := res["env"].(map[string]any)
	for k, v := range map[string]string{"MODE": "test", "API_KEY": "sk-very-secret-1234", "FLEET_TASK_ID": "task-1",
		"FLEET_TASK_NAME": "denis.crew.run", "FLEET_FLAG_VOICE_ENABLED": "true", "FLEET_FLAG_GRAPH_LEGACY_MODE": "false"} {
		if env[k] != v {
			t.Errorf("env %s = %v, want %q", k, env[k], v)
		}
	}
	if _, leaked := env["NOT_PASSED"]; leaked {
		t.Error("a worker variable outside pass_env reached the command")
	}
	if env["PATH"] == nil {
		t.Error("PATH should pass through by default")
	}
	out := logs.String()
	if !strings.Contains(out, `"msg":"runner stderr","task_id":"task-1"`) || !strings.Contains(out, "echo: got payload for task-1") {
		t.Fatalf("stderr not logged with the task id:\n%s", out)
	}
	if strings.Contains(out, "sk-very-secret-1234") {
		t.Fatalf("secret logged:\n%s", out)
	}
	if !strings.Contains(out, `"API_KEY"`) {
		t.Fatalf("the env names (not values) should be logged:\n%s", out)
	}
}

// TestExecRunnerSecretMaskedInStderr: a command printing its secret to stderr gets it
// masked in the log and in the failure tail.
func TestExecRunnerSecretMaskedInStderr(t *testing.T) {
	log, logs := testLogger()
	h, _ := newCrewExec(t, ExecConfig{Argv: []string{script(t), "echo"}, Env: map[string]string{"LEAK_SECRET": "1"},
		SecretEnv: map[string]string{"API_KEY": "K"}}, RunnerOptions{Logger: log, LookupEnv: testEnv(map[string]string{"K": "hunter2-secret"})})
	if _, err := h.ServeTask(context.Background(), crewReq("t", map[string]any{"crew": "research"})); err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); strings.Contains(out, "hunter2-secret") || !strings.Contains(out, "oops, the key is [REDACTED]") {
		t.Fatalf("secret not masked:\n%s", out)
	}
}

// TestExecRunnerFailures: non-zero exit with the stderr tail, bad JSON, stdout overflow,
// a missing secret, a missing command.
func TestExecRunnerFailures(t *testing.T) {
	exe := script(t)
	cases := []struct {
		name    string
		cfg     ExecConfig
		errType string
		want    []string // substrings of the message
		notWant string
	}{
		{"non-zero exit with stderr tail", ExecConfig{Argv: []string{exe, "fail"}, StderrTail: 120},
			"RuntimeError", []string{"exit status 3", "fail: Traceback: crew exploded", "progress line 49"}, "progress line 1\n"},
		{"stdout not JSON", ExecConfig{Argv: []string{exe, "badjson"}}, "RuntimeError", []string{"not one JSON value", "this is not json"}, ""},
		{"stdout over max_output", ExecConfig{Argv: []string{exe, "bigout"}, MaxOutput: 1 << 16}, "RuntimeError", []string{"max_output (65536 bytes)"}, ""},
		{"missing secret", ExecConfig{Argv: []string{exe, "echo"}, SecretEnv: map[string]string{"API_KEY": "NOT_SET_ANYWHERE"}},
			"RuntimeError", []string{"no environment variable NOT_SET_ANYWHERE"}, ""},
		{"missing command", ExecConfig{Argv: []string{"/nonexistent/crew"}}, "RuntimeError", []string{"cannot start /nonexistent/crew"}, ""},
		{"missing dir", ExecConfig{Argv: []string{exe, "echo"}, Dir: "/nonexistent-dir"}, "RuntimeError", []string{"cannot start"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log, _ := testLogger()
			h, _ := newCrewExec(t, tc.cfg, RunnerOptions{Logger: log, LookupEnv: testEnv(nil)})
			start := time.Now()
			_, err := h.ServeTask(context.Background(), crewReq("t-fail", map[string]any{"crew": "summarize"}))
			if err == nil {
				t.Fatal("want a failure")
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("took %v", time.Since(start))
			}
			e := AsError(err)
			if e.Type != tc.errType || e.Module != "builtins" {
				t.Fatalf("got %s.%s: %v", e.Module, e.Type, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message lacks %q: %v", w, err)
				}
			}
			if tc.notWant != "" && strings.Contains(err.Error(), tc.notWant) {
				t.Errorf("message should only have the tail: %v", err)
			}
			if _, dl := DeadLetterReason(err); dl || IsPermanent(err) {
				t.Errorf("a runner failure is not invalid input: %v", err)
			}
		})
	}
}

// TestExecRunnerStderrFlood: megabytes of stderr neither block the command nor flood the
// log; the result and the tail survive.
func TestExecRunnerStderrFlood(t *testing.T) {
	log, logs := testLogger()
	h, _ := newCrewExec(t, ExecConfig{Argv: []string{script(t), "flood"}, MaxStderrLog: 32 << 10},
		RunnerOptions{Logger: log, LookupEnv: testEnv(nil)})
	got, err := h.ServeTask(context.Background(), crewReq("t-flood", map[string]any{"crew": "research"}))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, map[string]any{"ok": true}) {
		t.Fatalf("got %#v", got)
	}
	out := logs.String()
	if len(out) > 200<<10 {
		t.Fatalf("log is %d bytes: the stderr budget was not applied", len(out))
	}
	if !strings.Contains(out, "runner stderr log limit reached") || !strings.Contains(out, `"stderr_bytes":52`) {
		t.Fatalf("want the limit notice and the byte count:\n%s", out[len(out)-min(len(out), 2000):])
	}
}

// TestExecRunnerStopsProcessGroup: cancellation and the timeout stop the command and its
// children (SIGTERM to the group, SIGKILL after the grace period for one that ignores it).
func TestExecRunnerStopsProcessGroup(t *testing.T) {
	cases := []struct {
		name        string
		ignoreTerm  bool
		timeout     time.Duration
		cancelAfter time.Duration
		wantErr     error
		errType     string
		maxTook     time.Duration
	}{
		{"cancel (revoke --terminate): SIGTERM", false, 0, 300 * time.Millisecond, context.Canceled, "", 5 * time.Second},
		{"cancel, TERM ignored: SIGKILL after grace", true, 0, 300 * time.Millisecond, context.Canceled, "", 6 * time.Second},
		{"timeout: SIGTERM", false, 2 * time.Second, 0, context.DeadlineExceeded, "TimeoutError", 5 * time.Second},
		{"timeout, TERM ignored: SIGKILL after grace", true, 2 * time.Second, 0, context.DeadlineExceeded, "TimeoutError", 6 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log, _ := testLogger()
			pidfile := filepath.Join(t.TempDir(), "pids")
			argv := []string{script(t), "hang"}
			if tc.ignoreTerm {
				argv = append(argv, "ignore-term")
			}
			h, _ := newCrewExec(t, ExecConfig{Argv: argv, Env: map[string]string{"PIDFILE": pidfile},
				Timeout: tc.timeout, KillGrace: time.Second}, RunnerOptions{Logger: log, LookupEnv: testEnv(nil)})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var pids []int
			var pidErr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				pids, pidErr = readPids(pidfile, 10*time.Second)
				if tc.cancelAfter > 0 {
					time.Sleep(tc.cancelAfter)
					cancel()
				}
			}()
			start := time.Now()
			_, err := h.ServeTask(ctx, crewReq("t-hang", map[string]any{"crew": "research"}))
			took := time.Since(start)
			<-done
			if pidErr != nil {
				t.Fatal(pidErr)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("want %v, got %v", tc.wantErr, err)
			}
			if tc.errType != "" {
				if e := AsError(err); e.Type != tc.errType {
					t.Fatalf("want %s, got %s", tc.errType, e.Type)
				}
			}
			if took > tc.maxTook {
				t.Fatalf("took %v", took)
			}
			if tc.ignoreTerm && took < time.Second {
				t.Fatalf("returned after %v: the grace period was not given", took)
			}
			if len(pids) != 2 {
				t.Fatalf("pids %v", pids)
			}
			waitDead(t, pids, 2*time.Second)
		})
	}
}

// TestExecRunnerLeftovers: a child left running in the group is killed when the command
// exits; one that left the group cannot hold the run open.
func TestExecRunnerLeftovers(t *testing.T) {
	for _, mode := range []string{"orphan", "escape"} {
		t.Run(mode, func(t *testing.T) {
			log, _ := testLogger()
			pidfile := filepath.Join(t.TempDir(), "pids")
			h, _ := newCrewExec(t, ExecConfig{Argv: []string{script(t), mode}, Env: map[string]string{"PIDFILE": pidfile}},
				RunnerOptions{Logger: log, LookupEnv: testEnv(nil)})
			start := time.Now()
			got, err := h.ServeTask(context.Background(), crewReq("t-"+mode, map[string]any{"crew": "research"}))
			took := time.Since(start)
			pids, perr := readPids(pidfile, time.Second)
			if perr != nil {
				t.Fatal(perr)
			}
			if mode == "escape" {
				defer func() { _ = syscall.Kill(pids[0], syscall.SIGKILL) }()
			}
			if err != nil || !reflect.DeepEqual(got, map[string]any{"ok": true}) {
				t.Fatalf("got %v, %v", got, err)
			}
			if took > drainWait+2*time.Second {
				t.Fatalf("took %v", took)
			}
			if mode == "orphan" {
				waitDead(t, pids, 2*time.Second)
			}
		})
	}
}

// TestExecRunnerKwargsNeverReachAShell: hostile values fail validation before anything
// runs; values a custom pattern admits arrive as one argv element each, uninterpreted.
func TestExecRunnerKwargsNeverReachAShell(t *testing.T) {
	exe := script(t)
	marker := filepath.Join(t.TempDir(), "pwned")
	hostile := []struct {
		name   string
		kwargs map[string]any
	}{
		{"path traversal in run_id", map[string]any{"crew": "research", "run_id": "../../etc/passwd"}},
		{"absolute path in run_id", map[string]any{"crew": "research", "run_id": "/etc/passwd"}},
		{"dots in run_id", map[string]any{"crew": "research", "run_id": "a..b"}},
		{"option injection", map[string]any{"crew": "research", "run_id": "--exec=/bin/sh"}},
		{"command substitution", map[string]any{"crew": "research", "run_id": "$(touch " + marker + ")"}},
		{"separator", map[string]any{"crew": "research", "run_id": "x; touch " + marker}},
		{"backticks", map[string]any{"crew": "research", "run_id": "`touch " + marker + "`"}},
		{"newline", map[string]any{"crew": "research", "run_id": "x\ntouch " + marker}},
		{"traversal in crew", map[string]any{"crew": "../research"}},
		{"crew outside the allowlist", map[string]any{"crew": "deploy"}},
	}
	calls := 0
	counting := RunnerFunc(func(ctx context.Context, job *Job) (any, error) {
		calls++
		return nil, nil
	})
	r, err := NewExecRunner(ExecConfig{Argv: []string{exe, "echo", "{crew}", "{run_id}"}}, KindCrew, RunnerOptions{Logger: slog.New(slog.DiscardHandler), LookupEnv: testEnv(nil)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range hostile {
		t.Run(tc.name, func(t *testing.T) {
			for _, run := range []Runner{counting, r} {
				_, err := NewCrewHandler([]string{"research"}, run).ServeTask(context.Background(), crewReq("t", tc.kwargs))
				if !errors.Is(err, ErrInvalidInput) {
					t.Fatalf("want ErrInvalidInput, got %v", err)
				}
				if reason, ok := DeadLetterReason(err); !ok || reason != DeadLetterInvalidInput {
					t.Fatalf("dead-letter reason %q %v", reason, ok)
				}
				if e := AsError(err); e.Module != "builtins" || (e.Type != "ValueError" && e.Type != "TypeError") {
					t.Fatalf("got %s.%s", e.Module, e.Type)
				}
			}
		})
	}
	if calls != 0 {
		t.Fatalf("the runner was called %d times", calls)
	}

	// A generic exec task whose template admits anything: the values are single argv
	// elements that no shell ever sees.
	perm, err := NewExecRunner(ExecConfig{Argv: []string{exe, "echo", "{note}", "--x={note}"},
		Placeholders: map[string]string{"note": `(?s).*`}}, KindExec, RunnerOptions{Logger: slog.New(slog.DiscardHandler), LookupEnv: testEnv(nil)})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"$(touch " + marker + ")", "a; touch " + marker, "`touch " + marker + "`", "|| touch " + marker, "*", "'\"", "../../../etc/passwd", "x\ny"} {
		got, err := NewGenericHandler(KindExec, perm).ServeTask(context.Background(),
			&Request{ID: "t", Name: "denis.exec", Args: []any{}, Kwargs: map[string]any{"note": v}})
		if err != nil {
			t.Fatal(err)
		}
		want := []any{"echo", v, "--x=" + v}
		if argv := got.(map[string]any)["argv"]; !reflect.DeepEqual(argv, want) {
			t.Fatalf("argv = %#v, want %#v", argv, want)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a shell ran: the marker file exists")
	}
	// A placeholder with no value (or a non-scalar one) is invalid input.
	_, err = NewGenericHandler(KindExec, perm).ServeTask(context.Background(),
		&Request{ID: "t", Name: "denis.exec", Kwargs: map[string]any{"note": []any{"a"}}})
	if !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("want ErrInvalidInput, got %v", err)
	}
}

func TestExecRunnerMisc(t *testing.T) {
	exe := script(t)
	t.Run("command not reading stdin", func(t *testing.T) {
		h, _ := newCrewExec(t, ExecConfig{Argv: []string{exe, "noread"}}, RunnerOptions{LookupEnv: testEnv(nil)})
		big := strings.Repeat("x", 1<<20)
		got, err := h.ServeTask(context.Background(), crewReq("t", map[string]any{"crew": "research", "inputs": map[string]any{"big": big}}))
		if err != nil || !reflect.DeepEqual(got, map[string]any{}) {
			t.Fatalf("got %v, %v", got, err)
		}
	})
	t.Run("already cancelled: not started", func(t *testing.T) {
		pidfile := filepath.Join(t.TempDir(), "pids")
		h, _ := newCrewExec(t, ExecConfig{Argv: []string{exe, "hang"}, Env: map[string]string{"PIDFILE": pidfile}}, RunnerOptions{LookupEnv: testEnv(nil)})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := h.ServeTask(ctx, crewReq("t", map[string]any{"crew": "research"})); !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled, got %v", err)
		}
		if _, err := os.Stat(pidfile); err == nil {
			t.Fatal("the command ran")
		}
	})
	t.Run("concurrent runs", func(t *testing.T) {
		h, _ := newCrewExec(t, ExecConfig{Argv: []string{exe, "echo", "{run_id}"}}, RunnerOptions{LookupEnv: testEnv(nil)})
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				id := "run-" + strconv.Itoa(i)
				got, err := h.ServeTask(context.Background(), crewReq(id, map[string]any{"crew": "research", "run_id": id}))
				if err != nil {
					t.Error(err)
					return
				}
				if argv := got.(map[string]any)["argv"]; !reflect.DeepEqual(argv, []any{"echo", id}) {
					t.Errorf("argv %v", argv)
				}
			})
		}
		wg.Wait()
	})
}
