package tasks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"denis.io/fleet/internal/flags"
	"denis.io/fleet/internal/ratelimit"
)

// TaskConfig is the per-task configuration, with Celery's option names and meanings.
type TaskConfig struct {
	// AcksLate: the message leaves the broker only after the outcome is recorded
	// (default true: at-least-once). false acknowledges just before the handler runs.
	AcksLate bool `yaml:"acks_late"`
	// TrackStarted writes the STARTED state before the handler runs.
	TrackStarted bool `yaml:"track_started"`
	// IgnoreResult stores no result state at all.
	IgnoreResult bool `yaml:"ignore_result"`
	// Queue is the queue this task is routed to; the worker consumes it in addition to -Q,
	// and publishes callbacks and chain steps of this task there when their signature
	// names no queue.
	Queue string `yaml:"queue"`

	// MaxRetries is how often the task may be retried (Celery's max_retries, default 3);
	// -1 means without limit (max_retries: null in the file).
	MaxRetries int `yaml:"max_retries"`
	// DefaultRetryDelay is the countdown of a retry that names none (default 180s).
	DefaultRetryDelay time.Duration `yaml:"default_retry_delay"`
	// AutoretryFor lists the exception kinds retried automatically: Python class names
	// ("TimeoutError"), qualified names ("builtins.TimeoutError") or "Exception" (all).
	AutoretryFor []string `yaml:"autoretry_for"`
	// RetryBackoff is the exponential backoff factor of automatic retries in seconds
	// (retry_backoff: true means 1); 0 is off.
	RetryBackoff int `yaml:"retry_backoff"`
	// RetryBackoffMax caps the backoff (default 600s).
	RetryBackoffMax time.Duration `yaml:"retry_backoff_max"`
	// RetryJitter randomizes the backoff (full jitter, default true).
	RetryJitter bool `yaml:"retry_jitter"`
	// DeadLetterOnFailure also puts a copy of a failed task's message in its queue's
	// dead-letter queue (reason task_failed, max_retries_exceeded or time_limit). It needs
	// acks_late.
	DeadLetterOnFailure bool `yaml:"dead_letter_on_failure"`
	// TimeLimit is the hard time limit and SoftTimeLimit the soft one (0: none); a
	// message's timelimit header wins over them.
	TimeLimit     time.Duration `yaml:"time_limit"`
	SoftTimeLimit time.Duration `yaml:"soft_time_limit"`
	// RateLimit is Celery's rate_limit ("10/s", "100/m", "1000/h"; "" none).
	RateLimit string `yaml:"rate_limit"`

	// Kind says what serves the task: "" (a handler registered in Go code), KindDiag (a
	// built-in diag.* task), or KindCrew, KindMaterializer, KindExec, KindHTTP (a runner the
	// worker builds from Job). The default names DefaultCrewTask and
	// DefaultMaterializerTask imply their kind.
	Kind string `yaml:"kind"`
	// RequiresFlag names a Bool feature flag (e.g. VOICE_ENABLED) that must be on for the
	// task to run; while it is off the task fails and is dead-lettered with reason
	// flag_disabled (see RequireFlag and Config.FlagGate). It needs acks_late.
	RequiresFlag string `yaml:"requires_flag"`
	// Job is the runner settings (runner, allow, exec, http) of a task of kind crew,
	// materializer, exec or http; see JobConfig.
	Job JobConfig `yaml:"-"`
}

// KindDiag marks a task entry as one of the built-in diagnostic tasks (diag.*), which need
// no runner.
const KindDiag = "diag"

// The default crew and materializer tasks: an entry with one of these names needs no kind,
// and a crew or materializer task without a queue is routed to the default queue of its
// kind. Other names work the same way with an explicit kind.
const (
	DefaultCrewTask          = "denis.crew.run"
	DefaultMaterializerTask  = "denis.materializer.run"
	DefaultCrewQueue         = "crews"
	DefaultMaterializerQueue = "materializers"
)

// Kinds returns the values the kind setting accepts.
func Kinds() []string {
	return []string{KindCrew, KindMaterializer, KindExec, KindHTTP, KindDiag}
}

// IsJobKind reports whether tasks of kind are served by a runner (crew, materializer, exec,
// http).
func IsJobKind(kind string) bool {
	switch kind {
	case KindCrew, KindMaterializer, KindExec, KindHTTP:
		return true
	}
	return false
}

// defaultKind is the kind implied by a task name, "" for most names.
func defaultKind(name string) string {
	switch name {
	case DefaultCrewTask:
		return KindCrew
	case DefaultMaterializerTask:
		return KindMaterializer
	}
	return ""
}

// defaultQueue is the queue of a task of kind that names none.
func defaultQueue(kind string) string {
	switch kind {
	case KindCrew:
		return DefaultCrewQueue
	case KindMaterializer:
		return DefaultMaterializerQueue
	}
	return ""
}

// Celery's defaults for the retry settings.
const (
	DefaultMaxRetries      = 3
	DefaultRetryDelaySecs  = 180
	DefaultRetryBackoffMax = 600 * time.Second
)

// DefaultTaskConfig is what a task without an entry in the file gets.
var DefaultTaskConfig = TaskConfig{
	AcksLate:          true,
	MaxRetries:        DefaultMaxRetries,
	DefaultRetryDelay: DefaultRetryDelaySecs * time.Second,
	RetryBackoffMax:   DefaultRetryBackoffMax,
	RetryJitter:       true,
}

// QueueConfig is the per-queue part of the file: how the worker declares a queue.
type QueueConfig struct {
	// MaxPriority declares the queue (RabbitMQ) with x-max-priority, as Celery's
	// task_queue_max_priority or Queue(queue_arguments={'x-max-priority': N}) does; 0 is
	// no priority support. Redis needs nothing: its priority sub-lists always exist.
	MaxPriority int `yaml:"max_priority"`
}

// Config is the --config file: per Celery task name settings and per queue settings.
type Config struct {
	Tasks map[string]TaskConfig
	// QueueSettings are the settings of the `queues:` section, by queue name.
	QueueSettings map[string]QueueConfig
	// File is the name the configuration was read from (for error messages).
	File string

	lines map[string]int // line of each task entry's key ("tasks.<name>") and kind ("tasks.<name>.kind")
}

// Errorf returns a *ConfigError at key (e.g. "tasks.denis.crew.run.kind"), with the line
// of that key, else of the task entry it belongs to, when the file has it. The worker uses
// it for mistakes found after parsing, such as a kind the command line rules out.
func (c *Config) Errorf(key, format string, a ...any) *ConfigError {
	e := &ConfigError{Key: key, Msg: fmt.Sprintf(format, a...)}
	if c == nil {
		return e
	}
	e.File = c.File
	for k := key; k != ""; {
		if l, ok := c.lines[k]; ok {
			e.Line = l
			break
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return e
}

// TaskNames returns the names of the configured tasks, sorted.
func (c *Config) TaskNames() []string {
	if c == nil {
		return nil
	}
	names := make([]string, 0, len(c.Tasks))
	for n := range c.Tasks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// FlagGate is the middleware of requires_flag: a task whose entry names a flag runs only
// while that flag is on (RequireFlag); other tasks pass through.
func (c *Config) FlagGate(fl FlagReader) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, r *Request) (any, error) {
			if f := c.For(r.Name).RequiresFlag; f != "" {
				return RequireFlag(f, fl, next).ServeTask(ctx, r)
			}
			return next.ServeTask(ctx, r)
		})
	}
}

// QueueArguments returns the AMQP x-arguments to declare each configured queue with
// (x-max-priority); queues without settings are left out.
func (c *Config) QueueArguments() map[string]map[string]any {
	if c == nil {
		return nil
	}
	out := map[string]map[string]any{}
	for q, qc := range c.QueueSettings {
		if qc.MaxPriority > 0 {
			out[q] = map[string]any{"x-max-priority": qc.MaxPriority}
		}
	}
	return out
}

// RateLimits returns the configured rate_limit of every task that has one.
func (c *Config) RateLimits() map[string]string {
	if c == nil {
		return nil
	}
	out := map[string]string{}
	for name, tc := range c.Tasks {
		if tc.RateLimit != "" {
			out[name] = tc.RateLimit
		}
	}
	return out
}

// For returns the settings of the named task (defaults when the file does not name it).
func (c *Config) For(name string) TaskConfig {
	if c != nil {
		if tc, ok := c.Tasks[name]; ok {
			return tc
		}
	}
	return DefaultTaskConfig
}

// Queues returns the queues named by task entries, sorted and without duplicates.
func (c *Config) Queues() []string {
	if c == nil {
		return nil
	}
	seen := map[string]bool{}
	var qs []string
	for _, tc := range c.Tasks {
		if tc.Queue != "" && !seen[tc.Queue] {
			seen[tc.Queue] = true
			qs = append(qs, tc.Queue)
		}
	}
	sort.Strings(qs)
	return qs
}

// ConfigError names the file, line and key of a configuration mistake.
type ConfigError struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (e *ConfigError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("%s: %s", e.Key, e.Msg)
	}
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Key, e.Msg)
}

// LoadConfig reads a YAML file of the form
//
//	tasks:
//	  diag.sleep:
//	    acks_late: true
//	    track_started: true
//	    ignore_result: false
//	    queue: celery
//	    max_retries: 3             # null: without limit
//	    default_retry_delay: 180   # seconds, or a duration such as 1m30s
//	    autoretry_for: [TimeoutError, builtins.ConnectionError]
//	    retry_backoff: true        # or a factor in seconds
//	    retry_backoff_max: 600
//	    retry_jitter: true
//	    dead_letter_on_failure: false
//	    time_limit: 300            # hard; seconds or a duration
//	    soft_time_limit: 240
//	    rate_limit: 10/s           # Celery syntax: N, N/s, N/m, N/h
//	    requires_flag: VOICE_ENABLED  # runs only while this Bool feature flag is on
//	  denis.crew.run:              # kind crew implied; queue crews by default
//	    kind: crew                 # crew, materializer, exec, http or diag
//	    runner: exec               # and allow, exec, http: see JobConfig
//	    allow: [research]
//	    exec:
//	      argv: [/opt/denis/bin/crew, "{crew}"]
//	queues:
//	  celery:
//	    max_priority: 10           # RabbitMQ x-max-priority
//
// Unknown keys and wrong types are errors that name the file, line and key. A task of kind
// crew or materializer without a runner is an error too: the worker refuses to start rather
// than accept jobs it cannot run.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses the configuration in data; name is used in error messages.
func ParseConfig(name string, data []byte) (*Config, error) {
	cfg := &Config{Tasks: map[string]TaskConfig{}, QueueSettings: map[string]QueueConfig{}, File: name, lines: map[string]int{}}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil
		}
		return nil, fmt.Errorf("config: %s: %w", name, err)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return nil, &ConfigError{File: name, Line: root.Line, Key: "(top level)", Msg: "must be a mapping"}
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		switch k.Value {
		case "tasks":
			if err := parseTasks(name, v, cfg); err != nil {
				return nil, err
			}
		case "queues":
			if err := parseQueues(name, v, cfg); err != nil {
				return nil, err
			}
		default:
			return nil, &ConfigError{File: name, Line: k.Line, Key: k.Value, Msg: "unknown key (expected: tasks, queues)"}
		}
	}
	return cfg, nil
}

func parseTasks(file string, n *yaml.Node, cfg *Config) error {
	if n.Kind != yaml.MappingNode {
		return &ConfigError{File: file, Line: n.Line, Key: "tasks", Msg: "must be a mapping of task name to settings"}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		tc := DefaultTaskConfig
		if v.Kind != yaml.MappingNode && !(v.Kind == yaml.ScalarNode && v.Tag == "!!null") {
			return &ConfigError{File: file, Line: v.Line, Key: "tasks." + k.Value, Msg: "must be a mapping of settings"}
		}
		cfg.lines["tasks."+k.Value] = k.Line
		var runnerKey *yaml.Node // the first runner setting, for the error of a kind without runners
		for j := 0; j+1 < len(v.Content); j += 2 {
			sk, sv := v.Content[j], v.Content[j+1]
			key := "tasks." + k.Value + "." + sk.Value
			var err error
			switch sk.Value {
			case "kind":
				if tc.Kind, err = decodeString(sv); err == nil && !slices.Contains(Kinds(), tc.Kind) {
					err = fmt.Errorf("unknown kind (known: %s)", strings.Join(Kinds(), ", "))
				}
				cfg.lines[key] = sv.Line
			case "requires_flag":
				if tc.RequiresFlag, err = decodeString(sv); err == nil {
					err = checkRequiredFlag(tc.RequiresFlag)
				}
			case "runner", "allow", "exec", "http":
				if runnerKey == nil {
					runnerKey = sk
				}
			case "acks_late":
				err = decodeBool(sv, &tc.AcksLate)
			case "track_started":
				err = decodeBool(sv, &tc.TrackStarted)
			case "ignore_result":
				err = decodeBool(sv, &tc.IgnoreResult)
			case "queue":
				tc.Queue, err = decodeString(sv)
			case "max_retries":
				if isNull(sv) {
					tc.MaxRetries = -1
				} else {
					tc.MaxRetries, err = decodeNonNegInt(sv)
				}
			case "default_retry_delay":
				tc.DefaultRetryDelay, err = decodeSeconds(sv)
			case "autoretry_for":
				tc.AutoretryFor, err = decodeStringList(sv)
			case "retry_backoff":
				tc.RetryBackoff, err = decodeBackoff(sv)
			case "retry_backoff_max":
				tc.RetryBackoffMax, err = decodeSeconds(sv)
			case "retry_jitter":
				err = decodeBool(sv, &tc.RetryJitter)
			case "dead_letter_on_failure":
				err = decodeBool(sv, &tc.DeadLetterOnFailure)
			case "time_limit":
				tc.TimeLimit, err = decodeSeconds(sv)
			case "soft_time_limit":
				tc.SoftTimeLimit, err = decodeSeconds(sv)
			case "rate_limit":
				tc.RateLimit, err = decodeRate(sv)
			default:
				return &ConfigError{File: file, Line: sk.Line, Key: key,
					Msg: "unknown setting (known: " + strings.Join(taskSettings, ", ") + ")"}
			}
			if err != nil {
				return &ConfigError{File: file, Line: sv.Line, Key: key, Msg: fmt.Sprintf("bad value %q: %v", sv.Value, cleanYAMLErr(err))}
			}
		}
		if tc.DeadLetterOnFailure && !tc.AcksLate {
			return &ConfigError{File: file, Line: k.Line, Key: "tasks." + k.Value + ".dead_letter_on_failure",
				Msg: "needs acks_late: true (an early-acked message is no longer on the broker to be dead-lettered)"}
		}
		if tc.RequiresFlag != "" && !tc.AcksLate {
			return &ConfigError{File: file, Line: k.Line, Key: "tasks." + k.Value + ".requires_flag",
				Msg: "needs acks_late: true (a task refused by its flag is dead-lettered, to be replayed once the flag is on)"}
		}
		if tc.Kind == "" {
			tc.Kind = defaultKind(k.Value)
		}
		if err := taskKind(file, k, v, runnerKey, &tc); err != nil {
			return err
		}
		cfg.Tasks[k.Value] = tc
	}
	return nil
}

// taskKind checks the entry k: v against its kind: a runner kind gets its runner settings
// (ParseJobConfig) and its default queue; other kinds must not have runner settings; a diag
// entry must name a built-in diag task.
func taskKind(file string, k, v, runnerKey *yaml.Node, tc *TaskConfig) error {
	prefix := "tasks." + k.Value
	switch {
	case IsJobKind(tc.Kind):
		jc, err := ParseJobConfig(file, prefix, v, tc.Kind)
		if err != nil {
			return err
		}
		tc.Job = jc
		if tc.Queue == "" {
			tc.Queue = defaultQueue(tc.Kind)
		}
	case runnerKey != nil:
		return &ConfigError{File: file, Line: runnerKey.Line, Key: prefix + "." + runnerKey.Value,
			Msg: "runner settings need kind: crew, materializer, exec or http"}
	case tc.Kind == KindDiag && !slices.Contains(DiagNames(), k.Value):
		line := k.Line
		if kn := lookupKey(v, "kind"); kn != nil {
			line = kn.Line
		}
		return &ConfigError{File: file, Line: line, Key: prefix + ".kind",
			Msg: fmt.Sprintf("%q is not a built-in diag task (%s)", k.Value, strings.Join(DiagNames(), ", "))}
	}
	return nil
}

// DiagNames returns the names of the built-in diagnostic tasks RegisterDiag registers.
func DiagNames() []string {
	return []string{DiagAdd, DiagEcho, DiagSleep, DiagCPU, DiagFail, DiagFlaky}
}

// checkRequiredFlag accepts the name of a known Bool feature flag.
func checkRequiredFlag(name string) error {
	d, ok := flags.Lookup(name)
	if !ok {
		var known []string
		for _, d := range flags.Defs() {
			if d.Kind == flags.Bool {
				known = append(known, d.Name)
			}
		}
		return fmt.Errorf("unknown feature flag (known: %s)", strings.Join(known, ", "))
	}
	if d.Kind != flags.Bool {
		return fmt.Errorf("%s is not an on/off flag", name)
	}
	return nil
}

// taskSettings are the known per-task settings, in the order the documentation lists them.
var taskSettings = []string{"kind", "acks_late", "track_started", "ignore_result", "queue", "max_retries",
	"default_retry_delay", "autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter",
	"dead_letter_on_failure", "time_limit", "soft_time_limit", "rate_limit", "requires_flag",
	"runner", "allow", "exec", "http"}

func parseQueues(file string, n *yaml.Node, cfg *Config) error {
	if n.Kind != yaml.MappingNode {
		return &ConfigError{File: file, Line: n.Line, Key: "queues", Msg: "must be a mapping of queue name to settings"}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var qc QueueConfig
		if v.Kind != yaml.MappingNode && !isNull(v) {
			return &ConfigError{File: file, Line: v.Line, Key: "queues." + k.Value, Msg: "must be a mapping of settings"}
		}
		for j := 0; j+1 < len(v.Content); j += 2 {
			sk, sv := v.Content[j], v.Content[j+1]
			key := "queues." + k.Value + "." + sk.Value
			var err error
			switch sk.Value {
			case "max_priority":
				qc.MaxPriority, err = decodeNonNegInt(sv)
				if err == nil && qc.MaxPriority > 255 {
					err = errors.New("must be at most 255")
				}
			default:
				return &ConfigError{File: file, Line: sk.Line, Key: key, Msg: "unknown setting (known: max_priority)"}
			}
			if err != nil {
				return &ConfigError{File: file, Line: sv.Line, Key: key, Msg: fmt.Sprintf("bad value %q: %v", sv.Value, cleanYAMLErr(err))}
			}
		}
		cfg.QueueSettings[k.Value] = qc
	}
	return nil
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func decodeBool(n *yaml.Node, dst *bool) error {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		return errors.New("wrong type (expected true or false)")
	}
	return n.Decode(dst)
}

func decodeString(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return "", errors.New("must be a string")
	}
	return n.Value, nil
}

func decodeNonNegInt(n *yaml.Node) (int, error) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		return 0, errors.New("must be a whole number")
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil || v < 0 {
		return 0, errors.New("must be a whole number, 0 or more")
	}
	return v, nil
}

// decodeSeconds reads a duration: a number of seconds (Celery's unit) or a Go duration
// string such as "1m30s".
func decodeSeconds(n *yaml.Node) (time.Duration, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, errors.New("must be a number of seconds or a duration such as 90s")
	}
	var d time.Duration
	switch n.Tag {
	case "!!int", "!!float":
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f > math.MaxInt64/float64(time.Second) {
			return 0, errors.New("must be a finite number of seconds")
		}
		d = time.Duration(f * float64(time.Second))
	case "!!str":
		var err error
		if d, err = time.ParseDuration(n.Value); err != nil {
			return 0, errors.New("must be a number of seconds or a duration such as 90s")
		}
	default:
		return 0, errors.New("must be a number of seconds or a duration such as 90s")
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

func decodeStringList(n *yaml.Node) ([]string, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, errors.New("must be a list of exception names")
	}
	out := make([]string, 0, len(n.Content))
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode || c.Tag != "!!str" || strings.TrimSpace(c.Value) == "" {
			return nil, fmt.Errorf("element %q must be an exception name", c.Value)
		}
		out = append(out, strings.TrimSpace(c.Value))
	}
	return out, nil
}

// decodeBackoff reads retry_backoff: true (factor 1), false (off) or a whole factor.
func decodeBackoff(n *yaml.Node) (int, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		var b bool
		if err := n.Decode(&b); err != nil {
			return 0, err
		}
		if b {
			return 1, nil
		}
		return 0, nil
	}
	v, err := decodeNonNegInt(n)
	if err != nil {
		return 0, errors.New("must be true, false or a whole number of seconds")
	}
	return v, nil
}

// decodeRate reads a Celery rate limit and checks its syntax.
func decodeRate(n *yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float") {
		return "", errors.New("must be a rate such as 10/s, 100/m or 1000/h")
	}
	if _, err := ratelimit.ParseRate(n.Value); err != nil {
		return "", err
	}
	return n.Value, nil
}

func cleanYAMLErr(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		return "wrong type (expected true or false)"
	}
	return err.Error()
}
