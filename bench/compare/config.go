package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// config is one comparison's settings.
type config struct {
	Rounds     int
	NGo, NPy   int
	Brokers    []string // amqp, redis
	Results    []string // off, on
	Contenders []string // worker, celery, ceiling, variant names; run in this order in round 1
	Variants   []variant
	Prefetch   int
	MinDrain   time.Duration
	Quick      bool
	JSONPath   string
	// Overhead adds the obs-off and obs-on worker contenders (addOverhead).
	Overhead bool

	AMQPURL             string
	RedisAddr           string
	BrokerDB, ResultsDB int
	Python              string
	WorkerBin           string // empty: build ./cmd/worker
	ProfileDir          string
	RunTimeout          time.Duration
	LockWait            time.Duration

	Out io.Writer    // the report; default stdout
	Log *slog.Logger // progress; default warnings and up on stderr
}

// variant is an extra worker contender: the plain worker's flags plus Args, with Env
// (NAME=value) added to its environment.
type variant struct {
	Name string
	Args []string
	Env  []string
}

// parseVariant reads NAME='[ENV=value ...] --flag ...': leading words of the form
// UPPER_CASE=value are environment variables, the rest worker flags.
func parseVariant(spec string) (variant, error) {
	name, rest, ok := strings.Cut(spec, "=")
	if !ok || name == "" {
		return variant{}, fmt.Errorf("--variant %q: want NAME='[ENV=value ...] --flag ...'", spec)
	}
	v := variant{Name: name}
	words := strings.Fields(rest)
	for len(words) > 0 && envWord.MatchString(words[0]) {
		v.Env = append(v.Env, words[0])
		words = words[1:]
	}
	v.Args = words
	return v, nil
}

var envWord = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`)

// Contender names.
const (
	cWorker  = "worker"
	cCelery  = "celery"
	cCeiling = "ceiling"
	cObsOff  = "obs-off" // the worker with events, heartbeat, control, tracing and metrics off
	cObsOn   = "obs-on"  // the worker with all of them on, spans exported to the driver's sink
)

// goalOverhead is issue 4's: throughput with events, metrics and tracing on ≥ 0.95 × off.
const goalOverhead = 0.95

// obsEndpointPlaceholder is replaced by the span sink's address when the run starts.
const obsEndpointPlaceholder = "OTEL_EXPORTER_OTLP_ENDPOINT=sink"

// addOverhead adds the overhead pair as worker variants (and as contenders, unless the
// contenders were chosen explicitly).
func (c *config) addOverhead(contendersChosen bool) {
	c.Variants = append(c.Variants,
		variant{Name: cObsOff, Args: []string{"--without-events", "--without-heartbeat", "--without-control",
			"--without-tracing", "--metrics-addr="}},
		variant{Name: cObsOn, Env: []string{obsEndpointPlaceholder}})
	if !contendersChosen {
		c.Contenders = append(c.Contenders, cObsOff, cObsOn)
	}
}

// usesOverhead reports whether an obs-on run needs the span sink.
func (c *config) usesOverhead() bool { return slices.Contains(c.Contenders, cObsOn) }

// workerDefaultConcurrency is the worker's -c default; the bench keeps it and sets only
// --prefetch-multiplier so that concurrency × multiplier equals the ceiling's prefetch.
const workerDefaultConcurrency = 8

// celeryConcurrency is the Python worker's prefork pool size (-c 2, as in the issue).
const celeryConcurrency = 2

func defaultConfig() config {
	return config{
		Rounds:     3,
		NGo:        100000,
		NPy:        15000,
		Brokers:    []string{"amqp", "redis"},
		Results:    []string{"off", "on"},
		Contenders: []string{cWorker, cCelery, cCeiling},
		Overhead:   true,
		Prefetch:   1000,
		MinDrain:   5 * time.Second,
		AMQPURL:    "amqp://guest:guest@127.0.0.1:5672//",
		RedisAddr:  "127.0.0.1:6379",
		BrokerDB:   9,
		ResultsDB:  10,
		Python:     "/usr/bin/python3",
		RunTimeout: 10 * time.Minute,
		LockWait:   15 * time.Minute,
	}
}

func (c *config) validate() error {
	var errs []error
	if c.Rounds < 1 {
		errs = append(errs, errors.New("--rounds must be >= 1"))
	}
	if c.NGo < 1 || c.NPy < 1 {
		errs = append(errs, errors.New("--n-go and --n-py must be >= 1"))
	}
	for _, b := range c.Brokers {
		if b != "amqp" && b != "redis" {
			errs = append(errs, fmt.Errorf("--brokers: unknown broker %q (amqp, redis)", b))
		}
	}
	for _, r := range c.Results {
		if r != "off" && r != "on" {
			errs = append(errs, fmt.Errorf("--results: unknown mode %q (off, on)", r))
		}
	}
	if len(c.Brokers) == 0 || len(c.Results) == 0 || len(c.Contenders) == 0 {
		errs = append(errs, errors.New("--brokers, --results and --contenders must not be empty"))
	}
	known := []string{cWorker, cCelery, cCeiling}
	for _, v := range c.Variants {
		if slices.Contains(known, v.Name) {
			errs = append(errs, fmt.Errorf("--variant %q: name taken", v.Name))
		}
		known = append(known, v.Name)
	}
	for _, n := range c.Contenders {
		if !slices.Contains(known, n) {
			errs = append(errs, fmt.Errorf("--contenders: unknown contender %q (known: %v)", n, known))
		}
	}
	if c.Prefetch < celeryConcurrency || c.Prefetch%workerDefaultConcurrency != 0 || c.Prefetch%celeryConcurrency != 0 {
		errs = append(errs, fmt.Errorf("--prefetch %d must be a multiple of %d (worker -c) and %d (celery -c)",
			c.Prefetch, workerDefaultConcurrency, celeryConcurrency))
	}
	if c.BrokerDB == c.ResultsDB {
		errs = append(errs, errors.New("the broker and results Redis DBs must differ"))
	}
	return errors.Join(errs...)
}

func (c *config) withDefaults() {
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
}
