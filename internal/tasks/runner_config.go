package tasks

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// JobConfig is the runner part of a task's configuration, for tasks of kind crew,
// materializer, exec and http. In the --config file it sits beside the task's other
// settings:
//
//	tasks:
//	  denis.crew.run:
//	    kind: crew
//	    queue: crews
//	    runner: exec                  # exec or http (implied by kind exec / http)
//	    allow: [research, summarize]  # crews (or materializers) this task may run
//	    exec:
//	      argv: [/opt/denis/bin/crew, run, "{crew}", --run-id, "{run_id}"]
//	      secret_env: {OPENAI_API_KEY: DENIS_OPENAI_API_KEY}
//	  denis.materializer.run:
//	    kind: materializer
//	    queue: materializers
//	    runner: http
//	    allow: [daily_summary]
//	    http:
//	      url: http://denis-api:8000/internal/materializers/{materializer}
//	      auth_env: DENIS_API_TOKEN
//	      auth_scheme: Bearer
type JobConfig struct {
	Runner string      `yaml:"runner"`
	Allow  []string    `yaml:"allow"`
	Exec   *ExecConfig `yaml:"exec"`
	HTTP   *HTTPConfig `yaml:"http"`
}

// ExecConfig configures the exec runner. The command is run directly, never through a shell.
type ExecConfig struct {
	// Argv is the command template. {name} in an element is a placeholder filled from the
	// job (crew, run_id, task_id; materializer, task_id; an exec task's string or integer
	// kwargs); Argv[0] must be literal. Other braces are literal.
	Argv []string `yaml:"argv"`
	// Placeholders overrides, per placeholder, the pattern its value must match (anchored).
	// The default accepts [A-Za-z0-9_][A-Za-z0-9_.:-]{0,127} without "..".
	Placeholders map[string]string `yaml:"placeholders"`
	// Dir is the working directory (absolute); empty: the worker's.
	Dir string `yaml:"dir"`
	// Env sets literal variables. SecretEnv sets a variable from the worker's variable of
	// the given name (CHILD_NAME: WORKER_NAME); secret values are never logged and are
	// masked in the stderr logged and reported. PassEnv names worker variables passed
	// through (default PATH, HOME, LANG, LC_ALL, TZ, TMPDIR). Nothing else is inherited.
	// FLEET_TASK_ID, FLEET_TASK_NAME and FLEET_FLAG_<NAME> for GRAPH_LEGACY_MODE and
	// VOICE_ENABLED are always set.
	Env       map[string]string `yaml:"env"`
	SecretEnv map[string]string `yaml:"secret_env"`
	PassEnv   []string          `yaml:"pass_env"`
	// Timeout bounds one run (0: only the task's time limit applies). At the timeout, or
	// when the task is cancelled, the process group gets SIGTERM, then SIGKILL after
	// KillGrace (default 10 s).
	Timeout   time.Duration `yaml:"timeout"`
	KillGrace time.Duration `yaml:"kill_grace"`
	// MaxOutput bounds stdout, the JSON result, in bytes (default 1 MiB); beyond it the
	// process is stopped and the task fails.
	MaxOutput int64 `yaml:"max_output"`
	// MaxStderrLog bounds the stderr bytes logged per run (default 64 KiB); the rest is
	// counted, not logged. StderrTail is how many bytes of the end of stderr a failure
	// reports (default 2 KiB).
	MaxStderrLog int64 `yaml:"max_stderr_log"`
	StderrTail   int   `yaml:"stderr_tail"`
}

// HTTPConfig configures the http runner: the job is POSTed as JSON to URL.
type HTTPConfig struct {
	// URL may hold placeholders in its path, filled (path-escaped) like the exec argv's.
	URL          string            `yaml:"url"`
	Placeholders map[string]string `yaml:"placeholders"`
	// Timeout bounds one attempt (default 30 s). A timed-out attempt is not retried (the
	// server may still be working on it); the task fails with TimeoutError.
	Timeout time.Duration `yaml:"timeout"`
	// MaxAttempts bounds the attempts (default 4). Failures to connect (refused,
	// unreachable, DNS), 408, 429 and 5xx are retried after Backoff (default 500 ms, doubling, jittered, at most MaxBackoff, default
	// 30 s) or the Retry-After the server sent; a Retry-After beyond MaxBackoff, or beyond
	// the task's deadline, ends the attempts.
	MaxAttempts int           `yaml:"max_attempts"`
	Backoff     time.Duration `yaml:"backoff"`
	MaxBackoff  time.Duration `yaml:"max_backoff"`
	// AuthEnv names the worker variable holding the credential; it is sent in AuthHeader
	// (default Authorization) as "<AuthScheme> <value>" (just the value when AuthScheme is
	// empty). Never logged.
	AuthEnv    string `yaml:"auth_env"`
	AuthHeader string `yaml:"auth_header"`
	AuthScheme string `yaml:"auth_scheme"`
	// Headers are extra literal request headers.
	Headers map[string]string `yaml:"headers"`
	// MaxResponse bounds the response body in bytes (default 1 MiB).
	MaxResponse int64 `yaml:"max_response"`
}

// Runner names.
const (
	RunnerExec = "exec"
	RunnerHTTP = "http"
)

// FieldError is a configuration mistake at Key, a path relative to the task's settings such
// as "exec.argv[0]" or "allow[2]".
type FieldError struct {
	Key string
	Msg string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Msg }

func fieldErr(key, format string, a ...any) *FieldError {
	return &FieldError{Key: key, Msg: fmt.Sprintf(format, a...)}
}

var (
	envNamePattern    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	headerNamePattern = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// defaultPassEnv is what an exec runner passes through when PassEnv is not set.
func defaultPassEnv() []string { return []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"} }

// placeholderNames returns the placeholders a kind may use; nil means any.
func placeholderNames(kind string) []string {
	switch kind {
	case KindCrew:
		return []string{"crew", "run_id", "task_id"}
	case KindMaterializer:
		return []string{"materializer", "task_id"}
	}
	return nil
}

// Validate checks the settings for a task of the given kind. A mistake is a *FieldError.
func (c *JobConfig) Validate(kind string) error {
	runner := c.Runner
	switch kind {
	case KindCrew, KindMaterializer:
		if runner == "" {
			return fieldErr("runner", "required for a %s task (exec or http)", kind)
		}
		if len(c.Allow) == 0 {
			return fieldErr("allow", "required for a %s task: the %ss it may run", kind, kind)
		}
		seen := map[string]bool{}
		for i, a := range c.Allow {
			if !validName(a) {
				return fieldErr(fmt.Sprintf("allow[%d]", i), "%q is not a valid name (letters, digits, _ . : -)", a)
			}
			if seen[a] {
				return fieldErr(fmt.Sprintf("allow[%d]", i), "%q listed twice", a)
			}
			seen[a] = true
		}
	case KindExec, KindHTTP:
		if runner == "" {
			runner = kind
		}
		if runner != kind {
			return fieldErr("runner", "a task of kind %s uses the %s runner, not %q", kind, kind, c.Runner)
		}
		if len(c.Allow) > 0 {
			return fieldErr("allow", "only for crew and materializer tasks")
		}
	default:
		return fieldErr("kind", "%q has no runner (crew, materializer, exec, http)", kind)
	}
	switch runner {
	case RunnerExec:
		if c.Exec == nil {
			return fieldErr("exec", "required with runner exec")
		}
		if c.HTTP != nil {
			return fieldErr("http", "given, but the runner is exec")
		}
		return prefixed("exec", c.Exec.Validate(kind))
	case RunnerHTTP:
		if c.HTTP == nil {
			return fieldErr("http", "required with runner http")
		}
		if c.Exec != nil {
			return fieldErr("exec", "given, but the runner is http")
		}
		return prefixed("http", c.HTTP.Validate(kind))
	}
	return fieldErr("runner", "unknown runner %q (exec or http)", c.Runner)
}

func prefixed(prefix string, err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		return &FieldError{Key: prefix + "." + fe.Key, Msg: fe.Msg}
	}
	return err
}

// Validate checks the exec settings for a task of the given kind.
func (c *ExecConfig) Validate(kind string) error {
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return fieldErr("argv", "required: the command and its arguments")
	}
	used := map[string]bool{}
	for i, a := range c.Argv {
		t := parseTemplate(a)
		if i == 0 && len(t.names()) > 0 {
			return fieldErr("argv[0]", "the command must be literal, not %q", a)
		}
		for _, n := range t.names() {
			if allowed := placeholderNames(kind); allowed != nil && !slices.Contains(allowed, n) {
				return fieldErr(fmt.Sprintf("argv[%d]", i), "placeholder {%s} is not available to a %s task (available: %s)", n, kind, strings.Join(allowed, ", "))
			}
			used[n] = true
		}
	}
	if err := validatePatterns(c.Placeholders, used); err != nil {
		return err
	}
	if c.Dir != "" && !strings.HasPrefix(c.Dir, "/") {
		return fieldErr("dir", "must be an absolute path, not %q", c.Dir)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		if err := checkChildEnvName("env", k); err != nil {
			return err
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.SecretEnv)) {
		if err := checkChildEnvName("secret_env", k); err != nil {
			return err
		}
		if _, dup := c.Env[k]; dup {
			return fieldErr("secret_env."+k, "also set in env")
		}
		if !envNamePattern.MatchString(c.SecretEnv[k]) {
			return fieldErr("secret_env."+k, "must name a worker environment variable, not %q", c.SecretEnv[k])
		}
	}
	for i, k := range c.PassEnv {
		if !envNamePattern.MatchString(k) {
			return fieldErr(fmt.Sprintf("pass_env[%d]", i), "%q is not an environment variable name", k)
		}
	}
	switch {
	case c.Timeout < 0:
		return fieldErr("timeout", "must not be negative")
	case c.KillGrace < 0:
		return fieldErr("kill_grace", "must not be negative")
	case c.MaxOutput < 0:
		return fieldErr("max_output", "must not be negative")
	case c.MaxStderrLog < 0:
		return fieldErr("max_stderr_log", "must not be negative")
	case c.StderrTail < 0:
		return fieldErr("stderr_tail", "must not be negative")
	}
	return nil
}

func checkChildEnvName(section, k string) error {
	if !envNamePattern.MatchString(k) {
		return fieldErr(section+"."+k, "%q is not an environment variable name", k)
	}
	if strings.HasPrefix(k, "FLEET_") {
		return fieldErr(section+"."+k, "FLEET_* variables are set by the runner")
	}
	return nil
}

func validatePatterns(patterns map[string]string, used map[string]bool) error {
	for _, n := range slices.Sorted(maps.Keys(patterns)) {
		if !used[n] {
			return fieldErr("placeholders."+n, "no placeholder {%s} in the template", n)
		}
		if _, err := compilePattern(patterns[n]); err != nil {
			return fieldErr("placeholders."+n, "bad pattern: %v", err)
		}
	}
	return nil
}

// Validate checks the http settings for a task of the given kind.
func (c *HTTPConfig) Validate(kind string) error {
	if c.URL == "" {
		return fieldErr("url", "required")
	}
	t := parseTemplate(c.URL)
	probe, err := t.expand(func(string) (string, error) { return "x", nil })
	if err != nil {
		return fieldErr("url", "%v", err)
	}
	u, err := url.Parse(probe)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fieldErr("url", "must be an absolute http or https URL, not %q", c.URL)
	}
	// Placeholders only in the path: between the authority and any query or fragment.
	pathStart := len(c.URL)
	if i := strings.Index(c.URL, "://"); i >= 0 {
		if j := strings.IndexByte(c.URL[i+3:], '/'); j >= 0 {
			pathStart = i + 3 + j
		}
	}
	pathEnd := len(c.URL)
	if i := strings.IndexAny(c.URL, "?#"); i >= 0 {
		pathEnd = i
	}
	for _, loc := range placeholderRE.FindAllStringIndex(c.URL, -1) {
		if loc[0] < pathStart || loc[0] >= pathEnd {
			return fieldErr("url", "placeholders may only be in the path of %q", c.URL)
		}
	}
	used := map[string]bool{}
	for _, n := range t.names() {
		if allowed := placeholderNames(kind); allowed != nil && !slices.Contains(allowed, n) {
			return fieldErr("url", "placeholder {%s} is not available to a %s task (available: %s)", n, kind, strings.Join(allowed, ", "))
		}
		used[n] = true
	}
	if err := validatePatterns(c.Placeholders, used); err != nil {
		return err
	}
	if c.AuthEnv != "" && !envNamePattern.MatchString(c.AuthEnv) {
		return fieldErr("auth_env", "%q is not an environment variable name", c.AuthEnv)
	}
	if c.AuthEnv == "" && (c.AuthHeader != "" || c.AuthScheme != "") {
		return fieldErr("auth_env", "required with auth_header or auth_scheme")
	}
	if c.AuthHeader != "" && !headerNamePattern.MatchString(c.AuthHeader) {
		return fieldErr("auth_header", "%q is not a header name", c.AuthHeader)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Headers)) {
		if !headerNamePattern.MatchString(k) {
			return fieldErr("headers."+k, "%q is not a header name", k)
		}
		if strings.ContainsAny(c.Headers[k], "\r\n") {
			return fieldErr("headers."+k, "value must be one line")
		}
	}
	switch {
	case c.Timeout < 0:
		return fieldErr("timeout", "must not be negative")
	case c.MaxAttempts < 0:
		return fieldErr("max_attempts", "must not be negative")
	case c.Backoff < 0:
		return fieldErr("backoff", "must not be negative")
	case c.MaxBackoff < 0:
		return fieldErr("max_backoff", "must not be negative")
	case c.MaxResponse < 0:
		return fieldErr("max_response", "must not be negative")
	}
	return nil
}

// JobConfigKeys are the task settings ParseJobConfig reads; the task configuration loader
// accepts them for tasks of kind crew, materializer, exec and http.
func JobConfigKeys() []string { return []string{"runner", "allow", "exec", "http"} }

// ParseJobConfig reads the runner settings (JobConfigKeys) of one task from its YAML mapping
// node, ignoring its other settings, and validates them for kind. Mistakes are
// *ConfigError values naming file, line and key (prefix + "." + the setting's path).
//
// The task configuration loader calls it once per task of a runner kind, e.g. in
// parseTasks, after the task's own settings:
//
//	jc, err := ParseJobConfig(file, "tasks."+k.Value, v, kind)
//
// and takes JobConfigKeys out of its unknown-setting check.
func ParseJobConfig(file, prefix string, task *yaml.Node, kind string) (JobConfig, error) {
	var cfg JobConfig
	if task == nil || (task.Kind == yaml.ScalarNode && task.Tag == "!!null") {
		task = &yaml.Node{Kind: yaml.MappingNode}
	}
	if task.Kind != yaml.MappingNode {
		return cfg, &ConfigError{File: file, Line: task.Line, Key: prefix, Msg: "must be a mapping of settings"}
	}
	rv := reflect.ValueOf(&cfg).Elem()
	for i := 0; i+1 < len(task.Content); i += 2 {
		k, v := task.Content[i], task.Content[i+1]
		if !slices.Contains(JobConfigKeys(), k.Value) {
			continue
		}
		fv, _ := fieldByTag(rv, k.Value)
		if err := decodeNode(v, fv, k.Value); err != nil {
			return cfg, &ConfigError{File: file, Line: err.line, Key: prefix + "." + err.key, Msg: err.msg}
		}
	}
	if err := cfg.Validate(kind); err != nil {
		var fe *FieldError
		if !errors.As(err, &fe) {
			return cfg, fmt.Errorf("config: %s: %s: %w", file, prefix, err)
		}
		line := task.Line
		if fe.Key == "kind" {
			if n := lookupKey(task, "kind"); n != nil {
				line = n.Line
			}
		} else if n := lookupPath(task, fe.Key); n != nil {
			line = n.Line
		}
		return cfg, &ConfigError{File: file, Line: line, Key: prefix + "." + fe.Key, Msg: fe.Msg}
	}
	return cfg, nil
}

// nodeError is a decoding mistake at a line.
type nodeError struct {
	line     int
	key, msg string
}

func fieldByTag(rv reflect.Value, tag string) (reflect.Value, bool) {
	t := rv.Type()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name == tag {
			return rv.Field(i), true
		}
	}
	return reflect.Value{}, false
}

func yamlTags(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" {
			out = append(out, name)
		}
	}
	return out
}

var durationType = reflect.TypeFor[time.Duration]()

// decodeNode decodes n into v strictly: unknown keys and wrong types are errors with the
// line and key. Durations are Go durations ("30s") or a number of seconds.
func decodeNode(n *yaml.Node, v reflect.Value, key string) *nodeError {
	bad := func(format string, a ...any) *nodeError {
		return &nodeError{line: n.Line, key: key, msg: fmt.Sprintf(format, a...)}
	}
	isNull := n.Kind == yaml.ScalarNode && n.Tag == "!!null"
	switch {
	case v.Type() == durationType:
		if n.Kind != yaml.ScalarNode || isNull {
			return bad("must be a duration such as 30s, or seconds")
		}
		switch n.Tag {
		case "!!int", "!!float":
			f, err := strconv.ParseFloat(n.Value, 64)
			if err != nil {
				return bad("bad number %q", n.Value)
			}
			v.SetInt(int64(f * float64(time.Second)))
		default:
			d, err := time.ParseDuration(n.Value)
			if err != nil {
				return bad("bad duration %q (e.g. 30s, 1m30s, or a number of seconds)", n.Value)
			}
			v.SetInt(int64(d))
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer:
		if isNull {
			return nil
		}
		p := reflect.New(v.Type().Elem())
		if err := decodeNode(n, p.Elem(), key); err != nil {
			return err
		}
		v.Set(p)
	case reflect.Struct:
		if isNull {
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return bad("must be a mapping of settings")
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			fv, ok := fieldByTag(v, k.Value)
			if !ok {
				return &nodeError{line: k.Line, key: key + "." + k.Value,
					msg: "unknown setting (known: " + strings.Join(yamlTags(v.Type()), ", ") + ")"}
			}
			if err := decodeNode(val, fv, key+"."+k.Value); err != nil {
				return err
			}
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode || isNull || n.Tag == "!!bool" {
			return bad("must be a string")
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return bad("must be an integer")
		}
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil {
			return bad("bad integer %q", n.Value)
		}
		v.SetInt(i)
	case reflect.Slice:
		if isNull {
			return nil
		}
		if n.Kind != yaml.SequenceNode {
			return bad("must be a list")
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			if err := decodeNode(item, s.Index(i), fmt.Sprintf("%s[%d]", key, i)); err != nil {
				return err
			}
		}
		v.Set(s)
	case reflect.Map:
		if isNull {
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return bad("must be a mapping")
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			ev := reflect.New(v.Type().Elem()).Elem()
			if err := decodeNode(val, ev, key+"."+k.Value); err != nil {
				return err
			}
			m.SetMapIndex(reflect.ValueOf(k.Value), ev)
		}
		v.Set(m)
	default:
		return bad("unsupported setting type %s", v.Type())
	}
	return nil
}

func lookupKey(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// lookupPath finds the node at a FieldError key such as "exec.argv[0]" or "allow[2]", or the
// deepest existing node on the way.
func lookupPath(root *yaml.Node, path string) *yaml.Node {
	n := root
	for _, seg := range strings.Split(path, ".") {
		name, idx := seg, -1
		if i := strings.IndexByte(seg, '['); i >= 0 && strings.HasSuffix(seg, "]") {
			name = seg[:i]
			idx, _ = strconv.Atoi(seg[i+1 : len(seg)-1])
		}
		next := lookupKey(n, name)
		if next == nil {
			return n
		}
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return n
			}
			n = n.Content[idx]
		}
	}
	return n
}

// template is a string with {name} placeholders.
type template struct {
	parts []tmplPart
}

type tmplPart struct {
	lit  string
	name string // a placeholder when not ""
}

var placeholderRE = regexp.MustCompile(`\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// parseTemplate splits s at its {name} placeholders; every other brace is literal.
func parseTemplate(s string) template {
	var t template
	last := 0
	for _, m := range placeholderRE.FindAllStringSubmatchIndex(s, -1) {
		if m[0] > last {
			t.parts = append(t.parts, tmplPart{lit: s[last:m[0]]})
		}
		t.parts = append(t.parts, tmplPart{name: s[m[2]:m[3]]})
		last = m[1]
	}
	if last < len(s) {
		t.parts = append(t.parts, tmplPart{lit: s[last:]})
	}
	return t
}

func (t template) names() []string {
	var out []string
	for _, p := range t.parts {
		if p.name != "" && !slices.Contains(out, p.name) {
			out = append(out, p.name)
		}
	}
	return out
}

func (t template) expand(value func(name string) (string, error)) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		if p.name == "" {
			b.WriteString(p.lit)
			continue
		}
		v, err := value(p.name)
		if err != nil {
			return "", err
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

func compilePattern(p string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + p + `)$`)
	if err != nil {
		return nil, fmt.Errorf("pattern %q: %w", p, err)
	}
	return re, nil
}

// placeholderValues validates the job's values for the placeholders of a runner: each must
// exist and match its pattern (the configured one, else validName).
type placeholderValues struct {
	patterns map[string]*regexp.Regexp
}

func newPlaceholderValues(patterns map[string]string) (*placeholderValues, error) {
	pv := &placeholderValues{patterns: map[string]*regexp.Regexp{}}
	for n, p := range patterns {
		re, err := compilePattern(p)
		if err != nil {
			return nil, err
		}
		pv.patterns[n] = re
	}
	return pv, nil
}

// lookup returns a validated value for the placeholder, or an ErrInvalidInput failure.
func (pv *placeholderValues) lookup(job *Job) func(string) (string, error) {
	return func(name string) (string, error) {
		v, ok := job.Vars[name]
		if !ok {
			return "", invalidInput("TypeError", "%s() missing argument '%s' required by the runner's template (a string or integer)", job.TaskName, name)
		}
		if re, custom := pv.patterns[name]; custom {
			if !re.MatchString(v) {
				return "", invalidInput("ValueError", "%s() argument '%s': %q does not match the allowed pattern %s", job.TaskName, name, v, re)
			}
			return v, nil
		}
		if !validName(v) {
			return "", invalidInput("ValueError", "%s() argument '%s': %q is not a valid value (letters, digits, _ . : -; no path, no leading - or .)", job.TaskName, name, v)
		}
		return v, nil
	}
}
