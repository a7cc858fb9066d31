package tasks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

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
//	queues:
//	  celery:
//	    max_priority: 10           # RabbitMQ x-max-priority
//
// Unknown keys and wrong types are errors that name the file, line and key.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses the configuration in data; name is used in error messages.
func ParseConfig(name string, data []byte) (*Config, error) {
	cfg := &Config{Tasks: map[string]TaskConfig{}, QueueSettings: map[string]QueueConfig{}}
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
		for j := 0; j+1 < len(v.Content); j += 2 {
			sk, sv := v.Content[j], v.Content[j+1]
			key := "tasks." + k.Value + "." + sk.Value
			var err error
			switch sk.Value {
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
		cfg.Tasks[k.Value] = tc
	}
	return nil
}

// taskSettings are the known per-task settings, in the order the documentation lists them.
var taskSettings = []string{"acks_late", "track_started", "ignore_result", "queue", "max_retries",
	"default_retry_delay", "autoretry_for", "retry_backoff", "retry_backoff_max", "retry_jitter",
	"dead_letter_on_failure", "time_limit", "soft_time_limit", "rate_limit"}

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
