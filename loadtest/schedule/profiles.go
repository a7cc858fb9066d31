package schedule

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Level sets the rates of the built-in profiles: Expected is the expected production rate
// (tasks/s, "1x") and Multiplier the load level the run proves ("2x" by default).
type Level struct {
	Expected   float64
	Multiplier float64
}

func (l Level) x(f float64) float64 { return l.Expected * f }

// Names of the built-in profiles.
const (
	Steady = "steady"
	Step   = "step"
	Ramp   = "ramp"
	Spike  = "spike"
	Soak   = "soak"
)

// Names lists the built-in profiles.
var Names = []string{Steady, Step, Ramp, Spike, Soak}

// RampShares are the canary phases of the seed's rollout: the share of a new producer,
// whose full traffic is (Multiplier-1)·Expected, on top of the base load.
var RampShares = []float64{0.01, 0.05, 0.10, 0.25, 0.50, 1.00}

// Natural lengths of the built-in profiles (before --duration and --time-scale).
const (
	SteadyLength    = 10 * time.Minute
	StepPhaseLength = 5 * time.Minute // 1x, then Multiplier x, then 1x
	RampPhaseLength = 5 * time.Minute // each canary phase, then the rollback phase
	SpikeLength     = 10 * time.Minute
	SoakLength      = 4 * time.Hour
)

// Builtin returns the named profile at its natural length:
//
//	steady  Multiplier×Expected for 10 min
//	step    1x for 5 min, Multiplier x for 5 min, 1x for 5 min
//	ramp    1x plus 1 %, 5 %, 10 %, 25 %, 50 %, 100 % of a new producer of
//	        (Multiplier-1)×Expected, 5 min each (1.01x → Multiplier x), then the
//	        rollback: back to 1x in one step for 5 min
//	spike   1x for 4 min, Multiplier x at once for 1 min, 1x for 5 min
//	soak    Multiplier x for 4 h (worker memory sampled throughout)
func Builtin(name string, l Level) (Profile, error) {
	if l.Expected <= 0 || l.Multiplier <= 0 {
		return Profile{}, fmt.Errorf("schedule: expected rate %v and multiplier %v must be positive", l.Expected, l.Multiplier)
	}
	b := builder{p: Profile{Name: name}}
	m := l.Multiplier
	mx := fmtX(m)
	switch name {
	case Steady:
		b.flat(SteadyLength, l.x(m), mx)
	case Step:
		b.flat(StepPhaseLength, l.x(1), "1x")
		b.flat(StepPhaseLength, l.x(m), mx)
		b.flat(StepPhaseLength, l.x(1), "1x")
	case Ramp:
		for _, share := range RampShares {
			b.flat(RampPhaseLength, l.x(1+(m-1)*share), fmt.Sprintf("canary %g%%", share*100))
		}
		b.flat(RampPhaseLength, l.x(1), "rollback 1x")
	case Spike:
		b.flat(4*time.Minute, l.x(1), "1x")
		b.flat(time.Minute, l.x(m), "spike "+mx)
		b.flat(5*time.Minute, l.x(1), "1x")
	case Soak:
		b.flat(SoakLength, l.x(m), mx)
	default:
		return Profile{}, fmt.Errorf("schedule: unknown profile %q (built in: %s; or a YAML file)", name, strings.Join(Names, ", "))
	}
	return b.p, nil
}

func fmtX(m float64) string { return strconv.FormatFloat(m, 'g', 4, 64) + "x" }

type builder struct {
	p  Profile
	at time.Duration
}

func (b *builder) flat(d time.Duration, rate float64, label string) {
	b.add(d, rate, rate, label)
}

func (b *builder) add(d time.Duration, from, to float64, label string) {
	b.p.Segments = append(b.p.Segments, Segment{Start: b.at, Duration: d, From: from, To: to, Label: label})
	b.at += d
}

// File is the YAML form of a custom profile:
//
//	name: my-shape
//	phases:
//	  - {duration: 2m, rate: 1x}            # Nx: N times --expected-rate
//	  - {duration: 1m, from: 1x, to: peak}  # linear; peak = --multiplier x
//	  - {duration: 3m, rate: 25, label: plateau}   # a bare number is tasks/s
type File struct {
	Name   string      `yaml:"name"`
	Phases []FilePhase `yaml:"phases"`
}

// FilePhase is one phase of a profile file: rate, or from and to.
type FilePhase struct {
	Duration string `yaml:"duration"`
	Rate     string `yaml:"rate"`
	From     string `yaml:"from"`
	To       string `yaml:"to"`
	Label    string `yaml:"label"`
}

// LoadFile reads a profile file (see File).
func LoadFile(path string, l Level) (Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Profile{}, fmt.Errorf("schedule: profile file: %w", err)
	}
	p, err := ParseFile(data, l)
	if err != nil {
		return Profile{}, fmt.Errorf("schedule: profile file %s: %w", path, err)
	}
	return p, nil
}

// ParseFile parses a profile file's contents (see File).
func ParseFile(data []byte, l Level) (Profile, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return Profile{}, fmt.Errorf("parse: %w", err)
	}
	if len(f.Phases) == 0 {
		return Profile{}, errors.New("no phases")
	}
	name := f.Name
	if name == "" {
		name = "custom"
	}
	b := builder{p: Profile{Name: name}}
	for i, ph := range f.Phases {
		d, err := time.ParseDuration(ph.Duration)
		if err != nil || d <= 0 {
			return Profile{}, fmt.Errorf("phase %d: duration %q: want a positive duration such as 90s or 5m", i+1, ph.Duration)
		}
		var from, to float64
		switch {
		case ph.Rate != "" && ph.From == "" && ph.To == "":
			if from, err = ParseRate(ph.Rate, l); err != nil {
				return Profile{}, fmt.Errorf("phase %d: rate: %w", i+1, err)
			}
			to = from
		case ph.Rate == "" && ph.From != "" && ph.To != "":
			if from, err = ParseRate(ph.From, l); err != nil {
				return Profile{}, fmt.Errorf("phase %d: from: %w", i+1, err)
			}
			if to, err = ParseRate(ph.To, l); err != nil {
				return Profile{}, fmt.Errorf("phase %d: to: %w", i+1, err)
			}
		default:
			return Profile{}, fmt.Errorf("phase %d: give either rate, or from and to", i+1)
		}
		label := ph.Label
		if label == "" {
			label = ph.Rate
			if label == "" {
				label = ph.From + "→" + ph.To
			}
		}
		b.add(d, from, to, label)
	}
	if err := b.p.Validate(); err != nil {
		return Profile{}, err
	}
	return b.p, nil
}

// ParseRate reads a rate: "25" or "25/s" (tasks/s), "1.5x" (times the expected rate) or
// "peak" (the multiplier times the expected rate).
func ParseRate(s string, l Level) (float64, error) {
	s = strings.TrimSpace(s)
	var v float64
	var err error
	switch {
	case s == "peak":
		v = l.Expected * l.Multiplier
	case strings.HasSuffix(s, "x"):
		v, err = strconv.ParseFloat(strings.TrimSuffix(s, "x"), 64)
		v *= l.Expected
	default:
		v, err = strconv.ParseFloat(strings.TrimSuffix(s, "/s"), 64)
	}
	if err != nil || v < 0 || v != v {
		return 0, fmt.Errorf("%q: want tasks/s (25), a multiple of the expected rate (1.5x) or peak", s)
	}
	return v, nil
}
