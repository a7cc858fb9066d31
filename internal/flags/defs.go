package flags

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Names of the flags the fleet knows. They are the seed's environment variable names, so the
// same name works in the environment, the ConfigMap, the Redis hash and Denis's Python code.
const (
	MaterializersEnabled = "DENIS_MATERIALIZERS_ENABLED"
	MaterializersPercent = "DENIS_MATERIALIZERS_PERCENT"
	AsyncEnabled         = "ASYNC_ENABLED"
	DecisionTraceEnabled = "DECISION_TRACE_ENABLED"
	TelemetryEnabled     = "TELEMETRY_ENABLED"
	GraphLegacyMode      = "GRAPH_LEGACY_MODE"
	RateLimitStrict      = "RATE_LIMIT_STRICT"
	VoiceEnabled         = "VOICE_ENABLED"
	EmergencyStop        = "FLEET_EMERGENCY_STOP"
)

// Kind is the type of a flag's value.
type Kind int

// Flag kinds.
const (
	// Bool flags accept true/false, 1/0, yes/no, on/off (any case) and are stored as
	// "true" or "false".
	Bool Kind = iota + 1
	// Percent flags accept an integer from 0 to 100 and are stored as its decimal form.
	Percent
)

func (k Kind) String() string {
	switch k {
	case Bool:
		return "bool"
	case Percent:
		return "percent"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Def describes one flag.
type Def struct {
	Name    string
	Kind    Kind
	Default string // canonical form
	Help    string
}

// Errors a bad flag name or value wraps.
var (
	ErrUnknownFlag  = errors.New("unknown flag")
	ErrInvalidValue = errors.New("invalid flag value")
)

// Defs returns the definitions of every known flag, sorted by name. The slice is new on
// every call.
func Defs() []Def {
	return []Def{
		{AsyncEnabled, Bool, "false", "Denis routes non-critical work to the fleet; the autoscaler may go to its minimum while off"},
		{MaterializersEnabled, Bool, "false", "materializer jobs run for real (for DENIS_MATERIALIZERS_PERCENT % of jobs); off: stub mode"},
		{MaterializersPercent, Percent, "100", "share of materializer jobs (by a stable hash of the task id) sent to the real runner while materializers are enabled"},
		{DecisionTraceEnabled, Bool, "false", "decision traces, read by the autoscaler"},
		{EmergencyStop, Bool, "false", "emergency stop of the fleet, read by the autoscaler"},
		{GraphLegacyMode, Bool, "false", "handed to exec runners as FLEET_FLAG_GRAPH_LEGACY_MODE"},
		{RateLimitStrict, Bool, "false", "per-task rate limits enforced fleet-wide (Redis) instead of per worker"},
		{TelemetryEnabled, Bool, "false", "tracing export (metrics stay on)"},
		{VoiceEnabled, Bool, "false", "handed to exec runners as FLEET_FLAG_VOICE_ENABLED; gates tasks with requires_flag: VOICE_ENABLED"},
	}
}

// Lookup returns the definition of the named flag.
func Lookup(name string) (Def, bool) {
	for _, d := range Defs() {
		if d.Name == name {
			return d, true
		}
	}
	return Def{}, false
}

// Parse validates raw (surrounding white space ignored) and returns its canonical form.
func (d Def) Parse(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	switch d.Kind {
	case Bool:
		switch strings.ToLower(s) {
		case "true", "1", "yes", "on":
			return "true", nil
		case "false", "0", "no", "off":
			return "false", nil
		}
		return "", fmt.Errorf("%w: %s=%s: want true or false", ErrInvalidValue, d.Name, quote(raw))
	case Percent:
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 100 {
			return "", fmt.Errorf("%w: %s=%s: want an integer from 0 to 100", ErrInvalidValue, d.Name, quote(raw))
		}
		return strconv.Itoa(n), nil
	}
	return "", fmt.Errorf("%w: %s has unknown kind %v", ErrInvalidValue, d.Name, d.Kind)
}

// Parse validates a value for the named flag and returns its canonical form.
func Parse(name, raw string) (string, error) {
	d, ok := Lookup(name)
	if !ok {
		return "", fmt.Errorf("%w: %s", ErrUnknownFlag, quote(name))
	}
	return d.Parse(raw)
}

// quote quotes s for a log line or an error, cut to a readable length.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "…"
	}
	return strconv.Quote(s)
}
