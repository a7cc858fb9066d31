package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Kinds of task a runner serves (the `kind` setting of the task configuration).
const (
	KindCrew         = "crew"         // kwargs {crew, inputs, run_id}
	KindMaterializer = "materializer" // kwargs {materializer, params}
	KindExec         = "exec"         // any kwargs, run by the exec runner
	KindHTTP         = "http"         // any kwargs, run by the http runner
)

// Names of the feature flags the runners read; they equal the constants of package flags.
const (
	FlagMaterializersEnabled = "DENIS_MATERIALIZERS_ENABLED"
	FlagMaterializersPercent = "DENIS_MATERIALIZERS_PERCENT"
	FlagGraphLegacyMode      = "GRAPH_LEGACY_MODE"
	FlagVoiceEnabled         = "VOICE_ENABLED"
)

// FlagReader reads live feature flags; *flags.Flags implements it.
type FlagReader interface {
	Bool(name string) bool
	Int(name string) int
}

// Sentinel errors a worker tests with errors.Is to decide what to do with a failed task.
var (
	// ErrInvalidInput: the task's arguments are invalid (missing or mistyped kwargs, a crew
	// or materializer outside the allowlist, a placeholder value that fails validation).
	// No runner was called. The worker records FAILURE and dead-letters the message with
	// reason decode_error (see DeadLetterReason); retrying cannot help.
	ErrInvalidInput = errors.New("invalid task input")
	// ErrFlagDisabled: the task requires a feature flag that is off (see RequireFlag). The
	// worker records FAILURE and dead-letters with reason flag_disabled, to be replayed once
	// the flag is on.
	ErrFlagDisabled = errors.New("task disabled by feature flag")
	// ErrPermanent: the runner failed in a way a retry cannot fix (HTTP 4xx). The worker
	// should not retry it.
	ErrPermanent = errors.New("permanent task failure")
)

// Dead-letter reasons returned by DeadLetterReason; they equal package dlq's constants.
const (
	DeadLetterInvalidInput = "decode_error"
	DeadLetterFlagDisabled = "flag_disabled"
)

// DeadLetterReason returns the dead-letter reason for a task failure that must be
// dead-lettered whatever the task's dead_letter_on_failure says: decode_error for
// ErrInvalidInput, flag_disabled for ErrFlagDisabled. ok is false for other errors.
func DeadLetterReason(err error) (reason string, ok bool) {
	switch {
	case errors.Is(err, ErrFlagDisabled):
		return DeadLetterFlagDisabled, true
	case errors.Is(err, ErrInvalidInput):
		return DeadLetterInvalidInput, true
	}
	return "", false
}

// IsPermanent reports whether retrying err cannot help: invalid input, a disabled flag, or a
// permanent runner failure.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrPermanent) || errors.Is(err, ErrInvalidInput) || errors.Is(err, ErrFlagDisabled)
}

// invalidInput is the failure of a bad argument: builtins.<typ>(message) for Python, with
// ErrInvalidInput in its chain.
func invalidInput(typ, format string, a ...any) *Error {
	msg := fmt.Sprintf(format, a...)
	return &Error{Type: typ, Module: "builtins", Args: []any{msg}, Cause: fmt.Errorf("%w: %s", ErrInvalidInput, msg)}
}

// Job is one validated unit of work handed to a Runner.
type Job struct {
	TaskID   string
	TaskName string
	Kind     string // KindCrew, KindMaterializer, KindExec or KindHTTP
	// Target is the crew or materializer name ("" for exec and http tasks).
	Target string
	// Vars are the values placeholders may take (crew, run_id, materializer, task_id, or an
	// exec/http task's scalar kwargs); the runner validates the ones it uses.
	Vars map[string]string
	// Payload is the JSON document sent on stdin or as the POST body.
	Payload map[string]any
}

// Runner runs a job and returns its JSON result.
type Runner interface {
	Run(ctx context.Context, job *Job) (any, error)
}

// RunnerFunc adapts a function to Runner.
type RunnerFunc func(ctx context.Context, job *Job) (any, error)

// Run calls f(ctx, job).
func (f RunnerFunc) Run(ctx context.Context, job *Job) (any, error) { return f(ctx, job) }

// namePattern is what crew, materializer and run names look like: no path separators, no
// leading dot or dash, nothing a shell or a path would treat specially.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$`)

// validName reports whether s is an acceptable crew, materializer or run id.
func validName(s string) bool { return namePattern.MatchString(s) && !strings.Contains(s, "..") }

// params binds r's args and kwargs to the named parameters the way Python does, rejecting
// surplus positional args, unknown kwargs and duplicates with TypeError.
func params(r *Request, names ...string) (map[string]any, error) {
	if len(r.Args) > len(names) {
		return nil, invalidInput("TypeError", "%s() takes %d positional arguments but %d were given", r.Name, len(names), len(r.Args))
	}
	out := make(map[string]any, len(names))
	for i, a := range r.Args {
		out[names[i]] = a
	}
	for _, k := range slices.Sorted(maps.Keys(r.Kwargs)) {
		if !slices.Contains(names, k) {
			return nil, invalidInput("TypeError", "%s() got an unexpected keyword argument '%s'", r.Name, k)
		}
		if _, dup := out[k]; dup {
			return nil, invalidInput("TypeError", "%s() got multiple values for argument '%s'", r.Name, k)
		}
		out[k] = r.Kwargs[k]
	}
	return out, nil
}

// target validates the crew or materializer name argument against the allowlist.
func target(r *Request, p map[string]any, param string, allow []string) (string, error) {
	v, ok := p[param]
	if !ok {
		return "", invalidInput("TypeError", "%s() missing required argument: '%s'", r.Name, param)
	}
	s, ok := v.(string)
	if !ok {
		return "", invalidInput("TypeError", "%s() argument '%s' must be str, not %s", r.Name, param, pyTypeName(v))
	}
	if !validName(s) {
		return "", invalidInput("ValueError", "%s() argument '%s': %q is not a valid name (letters, digits, _ . : -; no path)", r.Name, param, s)
	}
	if !slices.Contains(allow, s) {
		return "", invalidInput("ValueError", "%s() argument '%s': %q is not allowed on this fleet (allowed: %s)", r.Name, param, s, strings.Join(allow, ", "))
	}
	return s, nil
}

// dictArg returns the optional dict argument param ({} when absent or None).
func dictArg(r *Request, p map[string]any, param string) (map[string]any, error) {
	v, ok := p[param]
	if !ok || v == nil {
		return map[string]any{}, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, invalidInput("TypeError", "%s() argument '%s' must be dict, not %s", r.Name, param, pyTypeName(v))
	}
	return m, nil
}

// CrewJob validates a crew run, kwargs {crew, inputs, run_id} (or positional in that
// order): crew is required and allowlisted, inputs an optional dict, run_id an optional
// name (default: the task id).
func CrewJob(r *Request, allow []string) (*Job, error) {
	p, err := params(r, "crew", "inputs", "run_id")
	if err != nil {
		return nil, err
	}
	crew, err := target(r, p, "crew", allow)
	if err != nil {
		return nil, err
	}
	inputs, err := dictArg(r, p, "inputs")
	if err != nil {
		return nil, err
	}
	runID := r.ID
	if v, ok := p["run_id"]; ok && v != nil {
		s, ok := v.(string)
		if !ok {
			return nil, invalidInput("TypeError", "%s() argument 'run_id' must be str, not %s", r.Name, pyTypeName(v))
		}
		runID = s
	}
	if !validName(runID) {
		return nil, invalidInput("ValueError", "%s() argument 'run_id': %q is not a valid id (letters, digits, _ . : -)", r.Name, runID)
	}
	return &Job{
		TaskID: r.ID, TaskName: r.Name, Kind: KindCrew, Target: crew,
		Vars: map[string]string{"crew": crew, "run_id": runID, "task_id": r.ID},
		Payload: map[string]any{"task_id": r.ID, "task": r.Name, "kind": KindCrew,
			"crew": crew, "inputs": inputs, "run_id": runID},
	}, nil
}

// MaterializerJob validates a materializer job, kwargs {materializer, params}: materializer
// is required and allowlisted, params an optional dict.
func MaterializerJob(r *Request, allow []string) (*Job, error) {
	p, err := params(r, "materializer", "params")
	if err != nil {
		return nil, err
	}
	name, err := target(r, p, "materializer", allow)
	if err != nil {
		return nil, err
	}
	ps, err := dictArg(r, p, "params")
	if err != nil {
		return nil, err
	}
	return &Job{
		TaskID: r.ID, TaskName: r.Name, Kind: KindMaterializer, Target: name,
		Vars: map[string]string{"materializer": name, "task_id": r.ID},
		Payload: map[string]any{"task_id": r.ID, "task": r.Name, "kind": KindMaterializer,
			"materializer": name, "params": ps},
	}, nil
}

// GenericJob turns any request into a job for an exec or http task: the payload carries
// args and kwargs; string and integer kwargs may fill placeholders.
func GenericJob(r *Request, kind string) *Job {
	vars := map[string]string{"task_id": r.ID}
	for k, v := range r.Kwargs {
		switch x := v.(type) {
		case string:
			vars[k] = x
		case json.Number:
			if IsInteger(x) {
				vars[k] = string(x)
			}
		}
	}
	args, kwargs := r.Args, r.Kwargs
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	return &Job{TaskID: r.ID, TaskName: r.Name, Kind: kind, Vars: vars,
		Payload: map[string]any{"task_id": r.ID, "task": r.Name, "kind": kind, "args": args, "kwargs": kwargs}}
}

// NewCrewHandler returns the handler of crew runs: each request is validated (bad input
// fails with ErrInvalidInput and run is not called), then handed to run.
func NewCrewHandler(allow []string, run Runner) Handler {
	allow = slices.Clone(allow)
	return HandlerFunc(func(ctx context.Context, r *Request) (any, error) {
		job, err := CrewJob(r, allow)
		if err != nil {
			return nil, err
		}
		return run.Run(ctx, job)
	})
}

// NewGenericHandler returns the handler of an exec or http task: every request goes to run.
func NewGenericHandler(kind string, run Runner) Handler {
	return HandlerFunc(func(ctx context.Context, r *Request) (any, error) {
		return run.Run(ctx, GenericJob(r, kind))
	})
}

// OutcomeStubbed is the outcome of a materializer job answered by the stub.
const OutcomeStubbed = "stubbed"

// StubReasonDisabled is the stub's reason while DENIS_MATERIALIZERS_ENABLED is false.
const StubReasonDisabled = "materializers disabled"

// NewMaterializerHandler returns the handler of materializer jobs, switched by the flags:
//
//   - DENIS_MATERIALIZERS_ENABLED false: stub mode. The job is validated and logged, and the
//     result is {"materialized": false, "reason": "materializers disabled"} with outcome
//     "stubbed" (see SetOutcome); run is not called.
//   - true: run gets the jobs InCanary puts inside DENIS_MATERIALIZERS_PERCENT; the others
//     are stubbed with reason "outside the materializer canary (N%)".
//
// The flags are read for every job, so a change applies to the next one.
func NewMaterializerHandler(allow []string, run Runner, flags FlagReader, log *slog.Logger) Handler {
	allow = slices.Clone(allow)
	if log == nil {
		log = slog.Default()
	}
	return HandlerFunc(func(ctx context.Context, r *Request) (any, error) {
		job, err := MaterializerJob(r, allow)
		if err != nil {
			return nil, err
		}
		reason := ""
		if !flags.Bool(FlagMaterializersEnabled) {
			reason = StubReasonDisabled
		} else if pct := flags.Int(FlagMaterializersPercent); !InCanary(r.ID, pct) {
			reason = fmt.Sprintf("outside the materializer canary (%d%%)", min(max(pct, 0), 100))
		}
		if reason == "" {
			return run.Run(ctx, job)
		}
		log.Info("materializer job stubbed", "task_id", r.ID, "task", r.Name,
			"materializer", job.Target, "reason", reason)
		SetOutcome(ctx, OutcomeStubbed)
		return map[string]any{"materialized": false, "reason": reason}, nil
	})
}

// InCanary reports whether the task with this id is among the percent % of jobs that get
// the real runner. The choice is stable (the same id always gets the same answer, on every
// worker) and is, in Python:
//
//	int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") % 100 < percent
func InCanary(taskID string, percent int) bool {
	if percent <= 0 {
		return false
	}
	if percent >= 100 {
		return true
	}
	sum := sha256.Sum256([]byte(taskID))
	return binary.BigEndian.Uint64(sum[:8])%100 < uint64(percent)
}

// RequireFlag wraps h so it runs only while the named flag is on. While it is off the task
// fails with fleet.errors.FlagDisabledError (ErrFlagDisabled in its chain: the worker
// dead-letters it with reason flag_disabled, to be replayed later) and h is not called.
func RequireFlag(flag string, flags FlagReader, h Handler) Handler {
	return HandlerFunc(func(ctx context.Context, r *Request) (any, error) {
		if !flags.Bool(flag) {
			msg := fmt.Sprintf("task %s requires feature flag %s, which is off", r.Name, flag)
			return nil, &Error{Type: "FlagDisabledError", Module: "fleet.errors", Args: []any{msg},
				Cause: fmt.Errorf("%w: %s", ErrFlagDisabled, flag)}
		}
		return h.ServeTask(ctx, r)
	})
}

// Outcome records how a task ended beyond success or failure (e.g. "stubbed"), for the
// worker's logs and metrics.
type Outcome struct {
	mu sync.Mutex
	v  string
}

// Get returns the recorded outcome, "" when the handler set none.
func (o *Outcome) Get() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.v
}

type outcomeKey struct{}

// WithOutcome returns a context in which handlers can record an outcome, and the Outcome
// the worker reads afterwards.
func WithOutcome(ctx context.Context) (context.Context, *Outcome) {
	o := &Outcome{}
	return context.WithValue(ctx, outcomeKey{}, o), o
}

// SetOutcome records outcome in ctx's Outcome; without one it does nothing.
func SetOutcome(ctx context.Context, outcome string) {
	if o, ok := ctx.Value(outcomeKey{}).(*Outcome); ok {
		o.mu.Lock()
		o.v = outcome
		o.mu.Unlock()
	}
}

// NewRunner returns the runner cfg selects for a task of the given kind.
func NewRunner(kind string, cfg JobConfig, opts RunnerOptions) (Runner, error) {
	if err := cfg.Validate(kind); err != nil {
		return nil, fmt.Errorf("tasks: %s task: %w", kind, err)
	}
	if cfg.Exec != nil {
		return NewExecRunner(*cfg.Exec, kind, opts)
	}
	return NewHTTPRunner(*cfg.HTTP, kind, opts)
}

// NewJobHandler returns the handler of a task of kind crew, materializer, exec or http, with
// the runner cfg configures: the worker registers it under the task's name, wrapped in
// RequireFlag when the task has requires_flag. Materializer tasks need opts.Flags.
func NewJobHandler(kind string, cfg JobConfig, opts RunnerOptions) (Handler, error) {
	if kind == KindMaterializer && opts.Flags == nil {
		return nil, errors.New("tasks: materializer tasks need the feature flags (RunnerOptions.Flags)")
	}
	run, err := NewRunner(kind, cfg, opts)
	if err != nil {
		return nil, err
	}
	switch kind {
	case KindCrew:
		return NewCrewHandler(cfg.Allow, run), nil
	case KindMaterializer:
		return NewMaterializerHandler(cfg.Allow, run, opts.Flags, opts.Logger), nil
	}
	return NewGenericHandler(kind, run), nil
}
