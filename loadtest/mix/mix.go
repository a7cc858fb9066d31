// Package mix describes what the load test sends: task classes with weights, argument
// generators (constant values or distributions), queues, priorities and injected failure
// and retry rates, read from YAML. A Mix draws one message description at a time from a
// seeded generator, so a run is reproducible.
package mix

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Kinds of class, which decide the criteria that count a class.
const (
	KindMaterializer = "materializer" // counted by "materializer success"
	KindCrew         = "crew"
	KindOther        = "other"
)

// Injected says why a message was sent to fail on purpose.
const (
	InjectedNone    = ""
	InjectedFailure = "failure" // sent as diag.fail: ends in FAILURE
	InjectedRetry   = "retry"   // sent as diag.flaky: retries, then succeeds
)

// Diagnostic task names the mix knows the semantics of (see internal/tasks).
const (
	TaskSleep = "diag.sleep"
	TaskCPU   = "diag.cpu"
	TaskFail  = "diag.fail"
	TaskFlaky = "diag.flaky"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML is the default mix (materializer jobs and crew runs, modelled with
// diag.cpu and diag.sleep).
func DefaultYAML() []byte { return bytes.Clone(defaultYAML) }

// File is the YAML form of a mix.
//
//	tasks:
//	  - name: materializer          # class label (reports, accounting)
//	    kind: materializer          # materializer | crew | other
//	    task: diag.cpu              # Celery task name sent
//	    weight: 6                   # relative share of the messages
//	    queue: ""                   # default: the first -Q queue
//	    priority: 0                 # 0-9 (Celery's priority property)
//	    args: [{$lognormal: {median: 20, sigma: 0.5, max: 250}}]
//	    kwargs: {}                  # values or generators, nested freely
//	    fail_rate: 0.01             # share sent as diag.fail (injected failure)
//	    retry_rate: 0.01            # share sent as diag.flaky (injected retries)
//	    retries: 1                  # diag.flaky's failures before success
type File struct {
	Tasks []ClassFile `yaml:"tasks"`
}

// ClassFile is one task class in a mix file.
type ClassFile struct {
	Name      string         `yaml:"name"`
	Kind      string         `yaml:"kind"`
	Task      string         `yaml:"task"`
	Weight    float64        `yaml:"weight"`
	Queue     string         `yaml:"queue"`
	Priority  int            `yaml:"priority"`
	Args      []any          `yaml:"args"`
	Kwargs    map[string]any `yaml:"kwargs"`
	FailRate  float64        `yaml:"fail_rate"`
	RetryRate float64        `yaml:"retry_rate"`
	Retries   int            `yaml:"retries"`
}

// Class is a compiled task class.
type Class struct {
	Name      string
	Kind      string
	Task      string
	Weight    float64
	Queue     string
	Priority  uint8
	FailRate  float64
	RetryRate float64
	Retries   int

	args   []Gen
	kwargs map[string]Gen
}

// Mix draws message descriptions.
type Mix struct {
	Classes []*Class
	total   float64
	seq     uint64
}

// Message is one drawn message: what to send, and what the load test expects of it.
type Message struct {
	Class    *Class
	Task     string
	Queue    string
	Priority uint8
	Args     []any
	Kwargs   map[string]any
	Injected string // InjectedNone, InjectedFailure or InjectedRetry
	// Nominal is the work the task was asked to do (diag.sleep seconds, diag.cpu ms);
	// NominalKnown is false for tasks whose work the load test cannot tell.
	Nominal      float64 // seconds
	NominalKnown bool
}

// Load reads a mix file; "" loads the default mix.
func Load(path, defaultQueue string) (*Mix, error) {
	data := defaultYAML
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("mix: %w", err)
		}
	}
	m, err := Parse(data, defaultQueue)
	if err != nil {
		if path == "" {
			path = "(default mix)"
		}
		return nil, fmt.Errorf("mix %s: %w", path, err)
	}
	return m, nil
}

// Parse compiles a mix file's contents; classes without a queue get defaultQueue.
func Parse(data []byte, defaultQueue string) (*Mix, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if len(f.Tasks) == 0 {
		return nil, errors.New("no tasks")
	}
	m := &Mix{}
	names := map[string]bool{}
	for i, cf := range f.Tasks {
		c, err := compileClass(cf, defaultQueue)
		if err != nil {
			return nil, fmt.Errorf("tasks[%d] (%s): %w", i, cf.Name, err)
		}
		if names[c.Name] {
			return nil, fmt.Errorf("tasks[%d]: class name %q used twice", i, c.Name)
		}
		names[c.Name] = true
		m.Classes = append(m.Classes, c)
		m.total += c.Weight
	}
	if m.total <= 0 {
		return nil, errors.New("the weights add up to 0")
	}
	return m, nil
}

func compileClass(cf ClassFile, defaultQueue string) (*Class, error) {
	if cf.Task == "" {
		return nil, errors.New("task: the Celery task name is required")
	}
	c := &Class{Name: cf.Name, Kind: cf.Kind, Task: cf.Task, Weight: cf.Weight, Queue: cf.Queue,
		FailRate: cf.FailRate, RetryRate: cf.RetryRate, Retries: cf.Retries}
	if c.Name == "" {
		c.Name = c.Task
	}
	switch c.Kind {
	case "":
		c.Kind = KindOther
	case KindMaterializer, KindCrew, KindOther:
	default:
		return nil, fmt.Errorf("kind %q: want materializer, crew or other", c.Kind)
	}
	if c.Weight < 0 || math.IsNaN(c.Weight) || math.IsInf(c.Weight, 0) {
		return nil, fmt.Errorf("weight %v: want a finite weight >= 0", c.Weight)
	}
	if c.Queue == "" {
		c.Queue = defaultQueue
	}
	if cf.Priority < 0 || cf.Priority > 9 {
		return nil, fmt.Errorf("priority %d: want 0-9", cf.Priority)
	}
	c.Priority = uint8(cf.Priority)
	for _, r := range []float64{c.FailRate, c.RetryRate} {
		if r < 0 || r > 1 || math.IsNaN(r) {
			return nil, fmt.Errorf("fail_rate and retry_rate must be within 0..1")
		}
	}
	if c.FailRate+c.RetryRate > 1 {
		return nil, errors.New("fail_rate + retry_rate exceed 1")
	}
	if c.Retries == 0 {
		c.Retries = 1
	}
	if c.Retries < 0 {
		return nil, fmt.Errorf("retries %d: want >= 0", c.Retries)
	}
	for i, a := range cf.Args {
		g, err := Compile(a)
		if err != nil {
			return nil, fmt.Errorf("args[%d]: %w", i, err)
		}
		c.args = append(c.args, g)
	}
	c.kwargs = map[string]Gen{}
	for k, v := range cf.Kwargs {
		g, err := Compile(v)
		if err != nil {
			return nil, fmt.Errorf("kwargs.%s: %w", k, err)
		}
		c.kwargs[k] = g
	}
	return c, nil
}

// Draw returns the next message description. Not safe for concurrent use.
func (m *Mix) Draw(r *rand.Rand) Message {
	x := r.Float64() * m.total
	c := m.Classes[len(m.Classes)-1]
	for _, cl := range m.Classes {
		if x < cl.Weight {
			c = cl
			break
		}
		x -= cl.Weight
	}
	m.seq++
	msg := Message{Class: c, Task: c.Task, Queue: c.Queue, Priority: c.Priority,
		Args: make([]any, len(c.args)), Kwargs: make(map[string]any, len(c.kwargs))}
	for i, g := range c.args {
		msg.Args[i] = g.Gen(r, m.seq)
	}
	for k, g := range c.kwargs {
		msg.Kwargs[k] = g.Gen(r, m.seq)
	}
	if u := r.Float64(); u < c.FailRate {
		msg.Injected, msg.Task = InjectedFailure, TaskFail
		msg.Args, msg.Kwargs = []any{"loadtest: injected failure (" + c.Name + ")"}, map[string]any{}
	} else if u < c.FailRate+c.RetryRate {
		msg.Injected, msg.Task = InjectedRetry, TaskFlaky
		msg.Args, msg.Kwargs = []any{int64(c.Retries)}, map[string]any{}
	}
	msg.Nominal, msg.NominalKnown = nominal(msg)
	return msg
}

// nominal is the service time a diagnostic task was asked for.
func nominal(m Message) (float64, bool) {
	arg := func(name string) (float64, bool) {
		var v any
		if len(m.Args) > 0 {
			v = m.Args[0]
		} else if kv, ok := m.Kwargs[name]; ok {
			v = kv
		} else {
			return 0, false
		}
		return toFloat(v)
	}
	switch m.Task {
	case TaskSleep:
		return arg("seconds")
	case TaskCPU:
		ms, ok := arg("ms")
		return ms / 1000, ok
	case TaskFail, TaskFlaky:
		return 0, true
	}
	return 0, false
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int64:
		return float64(x), true
	case int:
		return float64(x), true
	case string:
		f, err := strconv.ParseFloat(x, 64)
		return f, err == nil
	}
	return 0, false
}
