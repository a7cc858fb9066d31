package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RunnerOptions are what runners take from the worker rather than from the configuration.
type RunnerOptions struct {
	// Logger receives the runners' lines (stderr of exec runs among them); nil means
	// slog.Default().
	Logger *slog.Logger
	// Flags are read at every run for FLEET_FLAG_<NAME> (exec) and by the materializer
	// handler; required for materializer tasks.
	Flags FlagReader
	// LookupEnv reads the worker's environment (secrets, pass_env, auth_env); nil means
	// os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// HTTPClient is the http runner's client; nil means a client of its own. Redirects are
	// never followed either way.
	HTTPClient *http.Client
}

func (o RunnerOptions) withDefaults() RunnerOptions {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	return o
}

// Defaults of ExecConfig's limits.
const (
	DefaultKillGrace    = 10 * time.Second
	DefaultMaxOutput    = 1 << 20
	DefaultMaxStderrLog = 64 << 10
	DefaultStderrTail   = 2 << 10
)

const (
	maxStderrLine = 4 << 10         // longer stderr lines are cut
	drainWait     = 2 * time.Second // how long pipes may stay open after the process group is gone
	minSecretLen  = 4               // shorter secrets are not masked (they would mask too much)
	redacted      = "[REDACTED]"    // what a secret value is replaced with in stderr
	maxSnippet    = 200             // bytes of bad stdout quoted in an error
)

// ExecRunner runs a configured command for each job: argv from the template, the job's
// payload as JSON on stdin, the JSON result from stdout, stderr logged line by line with
// the task id. The command runs in its own process group; cancellation or the timeout sends
// SIGTERM to the group, then SIGKILL after the grace period, and whatever is left of the
// group when the command exits is killed.
type ExecRunner struct {
	cfg    ExecConfig
	argv   []template
	values *placeholderValues
	opts   RunnerOptions
}

// NewExecRunner validates cfg for a task of the given kind and returns its runner.
func NewExecRunner(cfg ExecConfig, kind string, opts RunnerOptions) (*ExecRunner, error) {
	if err := cfg.Validate(kind); err != nil {
		return nil, fmt.Errorf("exec runner: %w", err)
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	if cfg.MaxOutput == 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.MaxStderrLog == 0 {
		cfg.MaxStderrLog = DefaultMaxStderrLog
	}
	if cfg.StderrTail == 0 {
		cfg.StderrTail = DefaultStderrTail
	}
	if cfg.PassEnv == nil {
		cfg.PassEnv = defaultPassEnv()
	}
	values, err := newPlaceholderValues(cfg.Placeholders)
	if err != nil {
		return nil, fmt.Errorf("exec runner: %w", err)
	}
	r := &ExecRunner{cfg: cfg, values: values, opts: opts.withDefaults()}
	for _, a := range cfg.Argv {
		r.argv = append(r.argv, parseTemplate(a))
	}
	return r, nil
}

func jobDesc(job *Job) string {
	if job.Target != "" {
		return job.Kind + " " + job.Target
	}
	return job.TaskName
}

// Argv returns the command line the job would run, validating its placeholder values.
func (r *ExecRunner) Argv(job *Job) ([]string, error) {
	argv := make([]string, len(r.argv))
	for i, t := range r.argv {
		s, err := t.expand(r.values.lookup(job))
		if err != nil {
			return nil, err
		}
		argv[i] = s
	}
	return argv, nil
}

// env builds the child's environment and lists the secret values in it.
func (r *ExecRunner) env(job *Job) (env, secrets []string, err error) {
	env = []string{}
	for _, k := range r.cfg.PassEnv {
		if v, ok := r.opts.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.cfg.Env)) {
		env = append(env, k+"="+r.cfg.Env[k])
	}
	for _, k := range slices.Sorted(maps.Keys(r.cfg.SecretEnv)) {
		src := r.cfg.SecretEnv[k]
		v, ok := r.opts.LookupEnv(src)
		if !ok {
			return nil, nil, &Error{Type: "RuntimeError", Module: "builtins",
				Args: []any{fmt.Sprintf("%s: secret %s: the worker has no environment variable %s", jobDesc(job), k, src)}}
		}
		env = append(env, k+"="+v)
		if len(v) >= minSecretLen {
			secrets = append(secrets, v)
		}
	}
	env = append(env, "FLEET_TASK_ID="+job.TaskID, "FLEET_TASK_NAME="+job.TaskName)
	for _, f := range []string{FlagGraphLegacyMode, FlagVoiceEnabled} {
		on := r.opts.Flags != nil && r.opts.Flags.Bool(f)
		env = append(env, "FLEET_FLAG_"+f+"="+strconv.FormatBool(on))
	}
	return env, secrets, nil
}

func envNames(env []string) []string {
	names := make([]string, len(env))
	for i, kv := range env {
		names[i], _, _ = strings.Cut(kv, "=")
	}
	return names
}

// Run runs the command for job; see ExecRunner.
func (r *ExecRunner) Run(ctx context.Context, job *Job) (any, error) {
	argv, err := r.Argv(job)
	if err != nil {
		return nil, err
	}
	env, secrets, err := r.env(job)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(job.Payload)
	if err != nil {
		return nil, invalidInput("TypeError", "%s: payload is not JSON-serialisable: %v", jobDesc(job), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: not started: %w", jobDesc(job), context.Cause(ctx))
	}
	var mask *strings.Replacer
	if len(secrets) > 0 {
		pairs := make([]string, 0, 2*len(secrets))
		for _, s := range secrets {
			pairs = append(pairs, s, redacted)
		}
		mask = strings.NewReplacer(pairs...)
	}
	log := r.opts.Logger.With("task_id", job.TaskID, "task", job.TaskName, "runner", RunnerExec)
	p, err := startProcess(argv, r.cfg.Dir, env)
	if err != nil {
		return nil, &Error{Type: "RuntimeError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: cannot start %s: %v", jobDesc(job), argv[0], err)}, Cause: err}
	}
	log = log.With("pid", p.pid())
	log.Info("runner started", "argv", argv, "dir", r.cfg.Dir, "env", envNames(env))
	start := time.Now()

	stdout := &stdoutSink{max: r.cfg.MaxOutput, overflow: make(chan struct{})}
	stderr := &stderrSink{log: log, mask: mask, budget: r.cfg.MaxStderrLog, tailMax: r.cfg.StderrTail}
	var readers sync.WaitGroup
	readers.Go(func() { stdout.consume(p.stdout) })
	readers.Go(func() { stderr.consume(p.stderr) })
	go p.feed(payload)

	why := p.supervise(ctx, r.cfg.Timeout, r.cfg.KillGrace, stdout.overflow)
	waitErr := p.wait(&readers)
	why.stop()
	stderr.flush()
	runtime := time.Since(start)

	tail := stderr.tailString()
	log.Info("runner finished", "runtime_s", runtime.Seconds(), "status", statusOf(waitErr),
		"stdout_bytes", stdout.n, "stderr_bytes", stderr.total, "stderr_unlogged_bytes", stderr.dropped)

	desc := jobDesc(job)
	switch reason, cause := why.get(); reason {
	case stopCancelled:
		return nil, fmt.Errorf("%s: stopped (process group terminated): %w", desc, cause)
	case stopTimeout:
		return nil, &Error{Type: "TimeoutError", Module: "builtins",
			Args:  []any{fmt.Sprintf("%s: exceeded its timeout of %v; process group terminated%s", desc, r.cfg.Timeout, tailNote(tail))},
			Cause: fmt.Errorf("exec runner timeout: %w", context.DeadlineExceeded)}
	case stopOverflow:
		return nil, &Error{Type: "RuntimeError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: wrote more than max_output (%d bytes) to stdout; process group terminated", desc, r.cfg.MaxOutput)}}
	}
	var exitErr *exec.ExitError
	if errors.As(waitErr, &exitErr) {
		return nil, &Error{Type: "RuntimeError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: %s failed: %v%s", desc, argv[0], exitErr, tailNote(tail))}, Cause: waitErr}
	}
	if waitErr != nil {
		return nil, &Error{Type: "RuntimeError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: %v", desc, waitErr)}, Cause: waitErr}
	}
	res, err := decodeResult(stdout.buf.Bytes())
	if err != nil {
		snippet := string(stdout.buf.Bytes()[:min(stdout.buf.Len(), maxSnippet)])
		if mask != nil {
			snippet = mask.Replace(snippet)
		}
		return nil, &Error{Type: "RuntimeError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: stdout is not one JSON value (%v): %q", desc, err, snippet)}, Cause: err}
	}
	return res, nil
}

func tailNote(tail string) string {
	if tail == "" {
		return ""
	}
	return "; stderr tail:\n" + tail
}

func statusOf(err error) string {
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return "exit status 0"
	case errors.As(err, &exitErr):
		return exitErr.Error()
	}
	return err.Error()
}

// decodeResult parses stdout as one JSON value (numbers as json.Number); empty output is
// None.
func decodeResult(out []byte) (any, error) {
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("data after the JSON value")
	}
	return v, nil
}

// process is a started command in its own process group with the parent's ends of its
// stdio pipes.
type process struct {
	cmd            *exec.Cmd
	stdin          *os.File // write end
	stdout, stderr *os.File // read ends
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func startProcess(argv []string, dir string, env []string) (*process, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	if cmd.Err != nil {
		return nil, cmd.Err
	}
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var parent, child []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			_ = f.Close()
		}
	}
	for range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(parent)
			closeAll(child)
			return nil, fmt.Errorf("pipe: %w", err)
		}
		parent, child = append(parent, r, w), append(child, r, w)
	}
	// parent: [inR inW outR outW errR errW]; the child gets inR, outW, errW.
	p := &process{cmd: cmd, stdin: parent[1], stdout: parent[2], stderr: parent[4]}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = parent[0], parent[3], parent[5]
	err := cmd.Start()
	closeAll([]*os.File{parent[0], parent[3], parent[5]})
	if err != nil {
		closeAll([]*os.File{p.stdin, p.stdout, p.stderr})
		return nil, err
	}
	return p, nil
}

// feed writes the payload to stdin and closes it. A command that does not read stdin is not
// an error (EPIPE).
func (p *process) feed(payload []byte) {
	_, _ = p.stdin.Write(payload)
	_ = p.stdin.Close()
}

// killGroup signals the whole process group; a group already gone is fine.
func (p *process) killGroup(sig syscall.Signal) {
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// wait reaps the command, kills what is left of its group, and waits for the output pipes
// to drain (cutting them off after drainWait if something outside the group holds them).
func (p *process) wait(readers *sync.WaitGroup) error {
	err := p.cmd.Wait()
	p.killGroup(syscall.SIGKILL)
	_ = p.stdin.Close()
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drainWait):
		_ = p.stdout.SetReadDeadline(time.Now())
		_ = p.stderr.SetReadDeadline(time.Now())
		<-done
	}
	_ = p.stdout.Close()
	_ = p.stderr.Close()
	return err
}

type stopReason int

const (
	stopNone stopReason = iota
	stopCancelled
	stopTimeout
	stopOverflow
)

// supervisor stops the process group when the context ends, the timeout passes or stdout
// overflows: SIGTERM, then SIGKILL after the grace period.
type supervisor struct {
	mu     sync.Mutex
	reason stopReason
	cause  error
	exited chan struct{}
	done   chan struct{}
}

func (p *process) supervise(ctx context.Context, timeout, grace time.Duration, overflow <-chan struct{}) *supervisor {
	s := &supervisor{exited: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var timer <-chan time.Time
		if timeout > 0 {
			t := time.NewTimer(timeout)
			defer t.Stop()
			timer = t.C
		}
		var reason stopReason
		var cause error
		select {
		case <-s.exited:
			return
		case <-ctx.Done():
			reason, cause = stopCancelled, context.Cause(ctx)
		case <-timer:
			reason = stopTimeout
		case <-overflow:
			reason = stopOverflow
		}
		s.mu.Lock()
		s.reason, s.cause = reason, cause
		s.mu.Unlock()
		p.killGroup(syscall.SIGTERM)
		g := time.NewTimer(grace)
		defer g.Stop()
		select {
		case <-s.exited:
		case <-g.C:
			p.killGroup(syscall.SIGKILL)
		}
	}()
	return s
}

// stop tells the supervisor the command has exited and waits for it to finish.
func (s *supervisor) stop() {
	close(s.exited)
	<-s.done
}

func (s *supervisor) get() (stopReason, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason, s.cause
}

// stdoutSink keeps up to max bytes of stdout; past that it signals overflow once and
// discards the rest, so the command never blocks on a full pipe.
type stdoutSink struct {
	max      int64
	buf      bytes.Buffer
	n        int64
	overflow chan struct{}
}

func (s *stdoutSink) consume(r io.Reader) {
	chunk := make([]byte, 32<<10)
	for {
		k, err := r.Read(chunk)
		if k > 0 {
			if room := s.max - int64(s.buf.Len()); room > 0 {
				s.buf.Write(chunk[:min(int64(k), room)])
			}
			if s.n <= s.max && s.n+int64(k) > s.max {
				close(s.overflow)
			}
			s.n += int64(k)
		}
		if err != nil {
			return
		}
	}
}

// stderrSink logs stderr line by line (masking secrets) within a byte budget and keeps
// its tail for failure messages.
type stderrSink struct {
	log       *slog.Logger
	mask      *strings.Replacer
	budget    int64
	tailMax   int
	tail      []byte
	partial   []byte
	cut       bool // the current line was longer than maxStderrLine
	total     int64
	dropped   int64
	announced bool
}

func (s *stderrSink) consume(r io.Reader) {
	chunk := make([]byte, 32<<10)
	for {
		k, err := r.Read(chunk)
		s.total += int64(k)
		data := chunk[:k]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			seg := data
			if i >= 0 {
				seg = data[:i]
			}
			if room := maxStderrLine - len(s.partial); len(seg) > room {
				seg, s.cut = seg[:room], true
			}
			s.partial = append(s.partial, seg...)
			if i < 0 {
				break
			}
			s.emit()
			data = data[i+1:]
		}
		if err != nil {
			return
		}
	}
}

// flush emits an unterminated last line.
func (s *stderrSink) flush() {
	if len(s.partial) > 0 {
		s.emit()
	}
}

func (s *stderrSink) emit() {
	line := string(s.partial)
	if s.mask != nil {
		line = s.mask.Replace(line)
	}
	if s.cut {
		line += " …(cut)"
	}
	s.partial, s.cut = s.partial[:0], false
	s.tail = append(s.tail, line...)
	s.tail = append(s.tail, '\n')
	if over := len(s.tail) - s.tailMax; over > 0 {
		s.tail = append(s.tail[:0], s.tail[over:]...)
	}
	if int64(len(line)) <= s.budget {
		s.budget -= int64(len(line))
		s.log.Info("runner stderr", "line", line)
		return
	}
	s.dropped += int64(len(line))
	if !s.announced {
		s.announced = true
		s.log.Warn("runner stderr log limit reached; further lines are counted, not logged")
	}
}

func (s *stderrSink) tailString() string {
	return strings.TrimRight(string(s.tail), "\n")
}
