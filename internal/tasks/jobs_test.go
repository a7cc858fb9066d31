package tasks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"os/exec"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/flags"
)

// The flags package implements the reader the handlers take, under the same names.
var _ FlagReader = (*flags.Flags)(nil)

func TestSharedNames(t *testing.T) {
	pairs := [][2]string{
		{FlagMaterializersEnabled, flags.MaterializersEnabled},
		{FlagMaterializersPercent, flags.MaterializersPercent},
		{FlagGraphLegacyMode, flags.GraphLegacyMode},
		{FlagVoiceEnabled, flags.VoiceEnabled},
		{DeadLetterInvalidInput, dlq.ReasonDecodeError},
		{DeadLetterFlagDisabled, dlq.ReasonFlagDisabled},
	}
	for _, p := range pairs {
		if p[0] != p[1] {
			t.Errorf("%q != %q", p[0], p[1])
		}
	}
	for _, r := range []string{DeadLetterInvalidInput, DeadLetterFlagDisabled} {
		if !dlq.ValidReason(r) {
			t.Errorf("%q is not a dlq reason", r)
		}
	}
}

// recordingRunner counts calls and echoes the job.
type recordingRunner struct {
	calls atomic.Int64
	last  atomic.Pointer[Job]
}

func (r *recordingRunner) Run(_ context.Context, job *Job) (any, error) {
	r.calls.Add(1)
	r.last.Store(job)
	return map[string]any{"ran": job.Target}, nil
}

func TestCrewValidation(t *testing.T) {
	n := json.Number("1")
	cases := []struct {
		name    string
		args    []any
		kwargs  map[string]any
		errType string // "" = valid
		errSub  string
		vars    map[string]string
	}{
		{"full kwargs", nil, map[string]any{"crew": "research", "inputs": map[string]any{"q": "x"}, "run_id": "r-1"}, "", "",
			map[string]string{"crew": "research", "run_id": "r-1", "task_id": "tid"}},
		{"run_id defaults to the task id", nil, map[string]any{"crew": "research"}, "", "",
			map[string]string{"crew": "research", "run_id": "tid", "task_id": "tid"}},
		{"positional", []any{"summarize", map[string]any{}, "r:2"}, nil, "", "",
			map[string]string{"crew": "summarize", "run_id": "r:2", "task_id": "tid"}},
		{"inputs None", nil, map[string]any{"crew": "research", "inputs": nil}, "", "", nil},
		{"missing crew", nil, map[string]any{"inputs": map[string]any{}}, "TypeError", "missing required argument: 'crew'", nil},
		{"crew not a string", nil, map[string]any{"crew": n}, "TypeError", "must be str, not number", nil},
		{"crew not allowed", nil, map[string]any{"crew": "deploy_prod"}, "ValueError", `"deploy_prod" is not allowed on this fleet (allowed: research, summarize)`, nil},
		{"crew with a slash", nil, map[string]any{"crew": "research/../x"}, "ValueError", "not a valid name", nil},
		{"empty crew", nil, map[string]any{"crew": ""}, "ValueError", "not a valid name", nil},
		{"inputs not a dict", nil, map[string]any{"crew": "research", "inputs": []any{1}}, "TypeError", "'inputs' must be dict, not list", nil},
		{"run_id not a string", nil, map[string]any{"crew": "research", "run_id": n}, "TypeError", "'run_id' must be str", nil},
		{"run_id with a space", nil, map[string]any{"crew": "research", "run_id": "a b"}, "ValueError", "not a valid id", nil},
		{"unexpected kwarg", nil, map[string]any{"crew": "research", "shell": "rm -rf /"}, "TypeError", "unexpected keyword argument 'shell'", nil},
		{"too many positional", []any{"research", nil, "r", "extra"}, nil, "TypeError", "takes 3 positional arguments but 4 were given", nil},
		{"positional and keyword", []any{"research"}, map[string]any{"crew": "research"}, "TypeError", "multiple values for argument 'crew'", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := &recordingRunner{}
			h := NewCrewHandler([]string{"research", "summarize"}, run)
			_, err := h.ServeTask(context.Background(), &Request{ID: "tid", Name: "denis.crew.run", Args: tc.args, Kwargs: tc.kwargs})
			if tc.errType == "" {
				if err != nil {
					t.Fatal(err)
				}
				if run.calls.Load() != 1 {
					t.Fatal("runner not called")
				}
				if job := run.last.Load(); tc.vars != nil && !reflect.DeepEqual(job.Vars, tc.vars) {
					t.Fatalf("vars %v, want %v", job.Vars, tc.vars)
				}
				return
			}
			if run.calls.Load() != 0 {
				t.Fatal("runner called for bad input")
			}
			e := AsError(err)
			if e.Type != tc.errType || e.Module != "builtins" || !strings.Contains(err.Error(), tc.errSub) {
				t.Fatalf("got %s.%s %v; want %s containing %q", e.Module, e.Type, err, tc.errType, tc.errSub)
			}
			if !errors.Is(err, ErrInvalidInput) || !IsPermanent(err) {
				t.Fatal("bad input must carry ErrInvalidInput")
			}
			if reason, ok := DeadLetterReason(err); !ok || reason != dlq.ReasonDecodeError {
				t.Fatalf("dead-letter reason %q", reason)
			}
		})
	}
}

func TestMaterializerValidation(t *testing.T) {
	cases := []struct {
		name   string
		kwargs map[string]any
		errSub string
	}{
		{"valid", map[string]any{"materializer": "daily_summary", "params": map[string]any{"d": 1}}, ""},
		{"params optional", map[string]any{"materializer": "daily_summary"}, ""},
		{"missing materializer", map[string]any{"params": map[string]any{}}, "missing required argument: 'materializer'"},
		{"not allowed", map[string]any{"materializer": "drop_tables"}, "is not allowed"},
		{"params not a dict", map[string]any{"materializer": "daily_summary", "params": "x"}, "'params' must be dict, not str"},
		{"unknown kwarg", map[string]any{"materializer": "daily_summary", "crew": "x"}, "unexpected keyword argument 'crew'"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, enabled := range []bool{false, true} { // validated in stub mode too
				run := &recordingRunner{}
				ff := newFakeFlags()
				ff.set(FlagMaterializersEnabled, enabled)
				h := NewMaterializerHandler([]string{"daily_summary"}, run, ff, slog.New(slog.DiscardHandler))
				_, err := h.ServeTask(context.Background(), &Request{ID: "t", Name: "denis.materializer.run", Kwargs: tc.kwargs})
				if tc.errSub == "" {
					if err != nil {
						t.Fatal(err)
					}
					continue
				}
				if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tc.errSub) || run.calls.Load() != 0 {
					t.Fatalf("enabled=%v: got %v", enabled, err)
				}
			}
		})
	}
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// TestMaterializerStubAndCanary: F1 steps 1.1 to 1.4 and the rollback.
func TestMaterializerStubAndCanary(t *testing.T) {
	log, logs := testLogger()
	run := &recordingRunner{}
	ff := newFakeFlags()
	h := NewMaterializerHandler([]string{"daily_summary"}, run, ff, log)
	serve := func(id string) (any, string) {
		ctx, outcome := WithOutcome(context.Background())
		got, err := h.ServeTask(ctx, &Request{ID: id, Name: "denis.materializer.run",
			Kwargs: map[string]any{"materializer": "daily_summary"}})
		if err != nil {
			t.Fatal(err)
		}
		return got, outcome.Get()
	}

	// 1.1: disabled → stub.
	got, outcome := serve("t-1")
	if want := map[string]any{"materialized": false, "reason": "materializers disabled"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("stub result %#v", got)
	}
	if outcome != OutcomeStubbed || run.calls.Load() != 0 {
		t.Fatalf("outcome %q, calls %d", outcome, run.calls.Load())
	}
	if !strings.Contains(logs.String(), `"msg":"materializer job stubbed","task_id":"t-1"`) {
		t.Fatalf("stub not logged:\n%s", logs)
	}

	const jobs = 5000
	ff.set(FlagMaterializersEnabled, true)
	steps := []struct {
		percent  int
		min, max int64
	}{
		{0, 0, 0},
		{1, 0, 100},    // 1 % ± 2 %
		{10, 400, 600}, // 10 % ± 2 %
		{100, jobs, jobs},
	}
	ids := make([]string, jobs)
	for i := range ids {
		ids[i] = randomID()
	}
	for _, st := range steps {
		ff.set(FlagMaterializersPercent, st.percent)
		run.calls.Store(0)
		stubbed := 0
		for _, id := range ids {
			got, outcome := serve(id)
			if (outcome != OutcomeStubbed) != InCanary(id, st.percent) {
				t.Fatalf("percent %d: %s not routed by InCanary", st.percent, id)
			}
			if outcome == OutcomeStubbed {
				stubbed++
				if got.(map[string]any)["materialized"] != false {
					t.Fatalf("stub result %v", got)
				}
			} else if !reflect.DeepEqual(got, map[string]any{"ran": "daily_summary"}) {
				t.Fatalf("real result %v", got)
			}
		}
		real := run.calls.Load()
		t.Logf("percent %d: %d of %d jobs to the real runner", st.percent, real, jobs)
		if real < st.min || real > st.max || int(real)+stubbed != jobs {
			t.Fatalf("percent %d: %d real, %d stubbed; want %d..%d real", st.percent, real, stubbed, st.min, st.max)
		}
	}
	// Raising the percent only adds jobs: the 10 % canary is inside the 50 % one.
	for _, id := range ids {
		if InCanary(id, 10) && !InCanary(id, 50) {
			t.Fatalf("%s is in the 10 %% canary but not in the 50 %% one", id)
		}
	}
	// Rollback: disabled again → every job stubbed.
	ff.set(FlagMaterializersEnabled, false)
	run.calls.Store(0)
	for _, id := range ids[:100] {
		if _, outcome := serve(id); outcome != OutcomeStubbed {
			t.Fatal("job ran after the rollback")
		}
	}
}

// TestInCanaryMatchesPython pins the hash, and checks Python computes the same split.
func TestInCanaryMatchesPython(t *testing.T) {
	// int.from_bytes(hashlib.sha256(b"abc").digest()[:8], "big") % 100 == 74
	cases := []struct {
		id      string
		percent int
		want    bool
	}{
		{"abc", 74, false}, {"abc", 75, true}, {"abc", 100, true}, {"abc", 0, false}, {"abc", -5, false}, {"abc", 500, true},
	}
	for _, tc := range cases {
		if got := InCanary(tc.id, tc.percent); got != tc.want {
			t.Errorf("InCanary(%q, %d) = %v", tc.id, tc.percent, got)
		}
	}
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = randomID()
	}
	const py = `import hashlib, sys
for line in sys.stdin:
    tid = line.strip()
    print(int.from_bytes(hashlib.sha256(tid.encode()).digest()[:8], "big") % 100 < 10)`
	cmd := exec.Command("/usr/bin/python3", "-c", py)
	cmd.Stdin = strings.NewReader(strings.Join(ids, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	got := strings.Fields(string(out))
	if len(got) != len(ids) {
		t.Fatalf("python gave %d answers", len(got))
	}
	for i, id := range ids {
		if want := map[bool]string{true: "True", false: "False"}[InCanary(id, 10)]; got[i] != want {
			t.Fatalf("%s: Go %s, Python %s", id, want, got[i])
		}
	}
}

func TestRequireFlag(t *testing.T) {
	ff := newFakeFlags()
	var calls atomic.Int64
	h := RequireFlag(FlagVoiceEnabled, ff, HandlerFunc(func(ctx context.Context, r *Request) (any, error) {
		calls.Add(1)
		return "spoke", nil
	}))
	req := &Request{ID: "v1", Name: "denis.voice.speak"}
	_, err := h.ServeTask(context.Background(), req)
	e := AsError(err)
	if e.Type != "FlagDisabledError" || e.Module != "fleet.errors" || calls.Load() != 0 {
		t.Fatalf("got %v (%s.%s), calls %d", err, e.Module, e.Type, calls.Load())
	}
	if !strings.Contains(err.Error(), "requires feature flag VOICE_ENABLED, which is off") {
		t.Fatalf("message: %v", err)
	}
	if reason, ok := DeadLetterReason(err); !ok || reason != dlq.ReasonFlagDisabled || !errors.Is(err, ErrFlagDisabled) {
		t.Fatalf("reason %q", reason)
	}
	ff.set(FlagVoiceEnabled, true)
	if got, err := h.ServeTask(context.Background(), req); err != nil || got != "spoke" || calls.Load() != 1 {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestDeadLetterReasonOther(t *testing.T) {
	for _, err := range []error{nil, errors.New("x"), Exception("builtins", "RuntimeError", "y"), context.Canceled} {
		if r, ok := DeadLetterReason(err); ok {
			t.Errorf("%v: reason %q", err, r)
		}
	}
}

func TestOutcomeWithoutRecorder(t *testing.T) {
	SetOutcome(context.Background(), OutcomeStubbed) // no recorder: nothing happens
	ctx, o := WithOutcome(context.Background())
	if o.Get() != "" {
		t.Fatal("fresh outcome not empty")
	}
	SetOutcome(ctx, "x")
	if o.Get() != "x" {
		t.Fatal("outcome not recorded")
	}
}

// TestJobHandlerWithRealFlags wires a materializer task the way the worker will, with a
// flags.Flags fed from the environment, and an exec runner seeing the flags as env.
func TestJobHandlerWithRealFlags(t *testing.T) {
	env := map[string]string{flags.MaterializersEnabled: "true", flags.MaterializersPercent: "100", flags.GraphLegacyMode: "yes"}
	fl, err := flags.New(flags.Options{LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }})
	if err != nil {
		t.Fatal(err)
	}
	cfg := JobConfig{Runner: RunnerExec, Allow: []string{"daily_summary"},
		Exec: &ExecConfig{Argv: []string{script(t), "echo", "{materializer}"}}}
	h, err := NewJobHandler(KindMaterializer, cfg, RunnerOptions{Logger: slog.New(slog.DiscardHandler), Flags: fl, LookupEnv: testEnv(nil)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.ServeTask(context.Background(), matReq("t-real"))
	if err != nil {
		t.Fatal(err)
	}
	res := got.(map[string]any)
	if !reflect.DeepEqual(res["argv"], []any{"echo", "daily_summary"}) {
		t.Fatalf("argv %v", res["argv"])
	}
	envs := res["env"].(map[string]any)
	if envs["FLEET_FLAG_GRAPH_LEGACY_MODE"] != "true" || envs["FLEET_FLAG_VOICE_ENABLED"] != "false" {
		t.Fatalf("flag env %v", envs)
	}
	if _, err := NewJobHandler(KindMaterializer, cfg, RunnerOptions{}); err == nil {
		t.Fatal("a materializer task without flags must be refused")
	}
	if _, err := NewJobHandler(KindCrew, JobConfig{Runner: RunnerExec, Exec: cfg.Exec}, RunnerOptions{}); err == nil {
		t.Fatal("a crew task without an allowlist must be refused")
	}
	// A generic exec task gets args and kwargs.
	gh, err := NewJobHandler(KindExec, JobConfig{Exec: &ExecConfig{Argv: []string{script(t), "echo"}}}, RunnerOptions{Logger: slog.New(slog.DiscardHandler), LookupEnv: testEnv(nil)})
	if err != nil {
		t.Fatal(err)
	}
	got, err = gh.ServeTask(context.Background(), &Request{ID: "g", Name: "denis.exec", Args: []any{json.Number("1")}, Kwargs: map[string]any{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"task_id": "g", "task": "denis.exec", "kind": "exec", "args": []any{json.Number("1")}, "kwargs": map[string]any{"k": "v"}}
	if stdin := got.(map[string]any)["stdin"]; !reflect.DeepEqual(stdin, want) {
		t.Fatalf("stdin %#v", stdin)
	}
}
