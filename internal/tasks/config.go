package tasks

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"go.yaml.in/yaml/v3"
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
	// Queue is the queue this task is routed to; the worker consumes it in addition to -Q.
	Queue string `yaml:"queue"`
}

// DefaultTaskConfig is what a task without an entry in the file gets.
var DefaultTaskConfig = TaskConfig{AcksLate: true}

// Config is the --config file: per Celery task name settings.
type Config struct {
	Tasks map[string]TaskConfig
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
	cfg := &Config{Tasks: map[string]TaskConfig{}}
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
		default:
			return nil, &ConfigError{File: name, Line: k.Line, Key: k.Value, Msg: "unknown key (expected: tasks)"}
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
				err = sv.Decode(&tc.AcksLate)
			case "track_started":
				err = sv.Decode(&tc.TrackStarted)
			case "ignore_result":
				err = sv.Decode(&tc.IgnoreResult)
			case "queue":
				if sv.Kind != yaml.ScalarNode || sv.Tag != "!!str" {
					err = errors.New("must be a string")
				} else {
					tc.Queue = sv.Value
				}
			default:
				return &ConfigError{File: file, Line: sk.Line, Key: key,
					Msg: "unknown setting (known: acks_late, track_started, ignore_result, queue)"}
			}
			if err != nil {
				return &ConfigError{File: file, Line: sv.Line, Key: key, Msg: fmt.Sprintf("bad value %q: %v", sv.Value, cleanYAMLErr(err))}
			}
		}
		cfg.Tasks[k.Value] = tc
	}
	return nil
}

func cleanYAMLErr(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		return "wrong type (expected true or false)"
	}
	return err.Error()
}
