package tasks

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// taskNode parses a YAML document and returns the mapping node of its only task.
func taskNode(t *testing.T, doc string) *yaml.Node {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &n); err != nil {
		t.Fatal(err)
	}
	// document → {tasks: {name: settings}}
	return n.Content[0].Content[1].Content[1]
}

func TestParseJobConfig(t *testing.T) {
	cases := []struct {
		name string
		kind string
		doc  string
		want *JobConfig
		err  string // "file:line: key: message" prefix
	}{
		{
			name: "crew with exec",
			kind: KindCrew,
			doc: `tasks:
  denis.crew.run:
    kind: crew
    queue: crews
    runner: exec
    allow: [research, summarize]
    exec:
      argv: [/opt/denis/bin/crew, run, "{crew}", --run-id, "{run_id}"]
      placeholders: {run_id: '[a-z0-9-]{1,64}'}
      dir: /opt/denis
      env: {LOG_LEVEL: info}
      secret_env: {OPENAI_API_KEY: DENIS_OPENAI_API_KEY}
      pass_env: [PATH]
      timeout: 15m
      kill_grace: 30
      max_output: 2097152
`,
			want: &JobConfig{Runner: "exec", Allow: []string{"research", "summarize"}, Exec: &ExecConfig{
				Argv:         []string{"/opt/denis/bin/crew", "run", "{crew}", "--run-id", "{run_id}"},
				Placeholders: map[string]string{"run_id": "[a-z0-9-]{1,64}"},
				Dir:          "/opt/denis", Env: map[string]string{"LOG_LEVEL": "info"},
				SecretEnv: map[string]string{"OPENAI_API_KEY": "DENIS_OPENAI_API_KEY"},
				PassEnv:   []string{"PATH"}, Timeout: 15 * time.Minute, KillGrace: 30 * time.Second, MaxOutput: 2 << 20,
			}},
		},
		{
			name: "materializer with http",
			kind: KindMaterializer,
			doc: `tasks:
  denis.materializer.run:
    runner: http
    allow: [daily_summary]
    http:
      url: http://denis-api:8000/internal/materializers/{materializer}
      timeout: 1.5
      max_attempts: 5
      backoff: 250ms
      auth_env: DENIS_API_TOKEN
      auth_scheme: Bearer
      headers: {X-Source: fleet}
`,
			want: &JobConfig{Runner: "http", Allow: []string{"daily_summary"}, HTTP: &HTTPConfig{
				URL: "http://denis-api:8000/internal/materializers/{materializer}", Timeout: 1500 * time.Millisecond,
				MaxAttempts: 5, Backoff: 250 * time.Millisecond, AuthEnv: "DENIS_API_TOKEN", AuthScheme: "Bearer",
				Headers: map[string]string{"X-Source": "fleet"},
			}},
		},
		{
			name: "generic exec: runner implied, any placeholder",
			kind: KindExec,
			doc: `tasks:
  denis.report:
    exec: {argv: [/usr/bin/report, "{name}"]}
`,
			want: &JobConfig{Exec: &ExecConfig{Argv: []string{"/usr/bin/report", "{name}"}}},
		},
		{"unknown exec setting", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv: [/bin/x]
      shell: true
`, nil, "f.yaml:7: tasks.t.exec.shell: unknown setting (known: argv, placeholders, dir,"},
		{"argv not a list", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv: /bin/x {crew}
`, nil, "f.yaml:6: tasks.t.exec.argv: must be a list"},
		{"bad duration", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv: [/bin/x]
      timeout: soon
`, nil, `f.yaml:7: tasks.t.exec.timeout: bad duration "soon"`},
		{"max_output not an integer", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec: {argv: [/bin/x], max_output: 1MB}
`, nil, "f.yaml:5: tasks.t.exec.max_output: must be an integer"},
		{"missing runner", KindCrew, `tasks:
  t:
    allow: [a]
`, nil, "f.yaml:3: tasks.t.runner: required for a crew task"},
		{"missing allowlist", KindMaterializer, `tasks:
  t:
    runner: exec
    exec: {argv: [/bin/x]}
`, nil, "f.yaml:3: tasks.t.allow: required for a materializer task"},
		{"bad allowlist entry", KindCrew, `tasks:
  t:
    runner: exec
    allow:
      - research
      - ../evil
    exec: {argv: [/bin/x]}
`, nil, `f.yaml:6: tasks.t.allow[1]: "../evil" is not a valid name`},
		{"placeholder in argv[0]", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv: ["/opt/crews/{crew}"]
`, nil, "f.yaml:6: tasks.t.exec.argv[0]: the command must be literal"},
		{"placeholder not available to the kind", KindMaterializer, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv:
        - /bin/x
        - "{crew}"
`, nil, "f.yaml:8: tasks.t.exec.argv[1]: placeholder {crew} is not available to a materializer task"},
		{"pattern for no placeholder", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv: [/bin/x]
      placeholders:
        run_id: x
`, nil, "f.yaml:8: tasks.t.exec.placeholders.run_id: no placeholder {run_id}"},
		{"bad pattern", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv: [/bin/x, "{run_id}"]
      placeholders: {run_id: "("}
`, nil, "f.yaml:7: tasks.t.exec.placeholders.run_id: bad pattern"},
		{"relative dir", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec: {argv: [/bin/x], dir: work}
`, nil, "tasks.t.exec.dir: must be an absolute path"},
		{"reserved env", KindCrew, `tasks:
  t:
    runner: exec
    allow: [a]
    exec:
      argv: [/bin/x]
      env:
        FLEET_FLAG_VOICE_ENABLED: "true"
`, nil, "f.yaml:8: tasks.t.exec.env.FLEET_FLAG_VOICE_ENABLED: FLEET_* variables are set by the runner"},
		{"runner block missing", KindCrew, `tasks:
  t:
    runner: http
    allow: [a]
`, nil, "f.yaml:3: tasks.t.http: required with runner http"},
		{"both blocks", KindCrew, `tasks:
  t:
    runner: http
    allow: [a]
    http: {url: "http://x/"}
    exec: {argv: [/bin/x]}
`, nil, "f.yaml:6: tasks.t.exec: given, but the runner is http"},
		{"unknown runner", KindCrew, `tasks:
  t:
    runner: ssh
    allow: [a]
`, nil, `f.yaml:3: tasks.t.runner: unknown runner "ssh"`},
		{"kind exec with runner http", KindExec, `tasks:
  t:
    runner: http
`, nil, "f.yaml:3: tasks.t.runner: a task of kind exec uses the exec runner"},
		{"allow on a generic task", KindHTTP, `tasks:
  t:
    allow: [x]
    http: {url: "http://x/"}
`, nil, "f.yaml:3: tasks.t.allow: only for crew and materializer tasks"},
		{"url not http", KindHTTP, `tasks:
  t:
    http:
      url: ftp://x/y
`, nil, "f.yaml:4: tasks.t.http.url: must be an absolute http or https URL"},
		{"placeholder in host", KindMaterializer, `tasks:
  t:
    runner: http
    allow: [a]
    http:
      url: "http://{materializer}.internal/run"
`, nil, "f.yaml:6: tasks.t.http.url: placeholders may only be in the path"},
		{"placeholder in query", KindMaterializer, `tasks:
  t:
    runner: http
    allow: [a]
    http:
      url: "http://api/run?m={materializer}"
`, nil, "tasks.t.http.url: placeholders may only be in the path"},
		{"auth_scheme without auth_env", KindHTTP, `tasks:
  t:
    http:
      url: http://api/run
      auth_scheme: Bearer
`, nil, "tasks.t.http.auth_env: required with auth_header or auth_scheme"},
		{"negative attempts", KindHTTP, `tasks:
  t:
    http:
      url: http://api/run
      max_attempts: -1
`, nil, "f.yaml:5: tasks.t.http.max_attempts: must not be negative"},
		{"unknown kind", "diag", `tasks:
  t:
    kind: diag
`, nil, `f.yaml:3: tasks.t.kind: "diag" has no runner`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseJobConfig("f.yaml", "tasks."+nameOf(t, tc.doc), taskNode(t, tc.doc), tc.kind)
			if tc.err != "" {
				var ce *ConfigError
				if !errors.As(err, &ce) {
					t.Fatalf("want a *ConfigError, got %v", err)
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got  %q\nwant %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(&got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func nameOf(t *testing.T, doc string) string {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &n); err != nil {
		t.Fatal(err)
	}
	return n.Content[0].Content[1].Content[0].Value
}

// TestJobConfigYAMLTags: the structs also decode with plain yaml.Unmarshal (Go durations).
func TestJobConfigYAMLTags(t *testing.T) {
	var c JobConfig
	doc := "runner: exec\nallow: [a]\nexec:\n  argv: [/bin/x, '{crew}']\n  kill_grace: 5s\n"
	if err := yaml.Unmarshal([]byte(doc), &c); err != nil {
		t.Fatal(err)
	}
	if c.Exec == nil || c.Exec.KillGrace != 5*time.Second || c.Validate(KindCrew) != nil {
		t.Fatalf("%+v", c)
	}
}

func TestTemplate(t *testing.T) {
	cases := []struct {
		in    string
		names []string
		out   string
	}{
		{"--crew={crew}", []string{"crew"}, "--crew=C"},
		{"{a}{b}-{a}", []string{"a", "b"}, "A B-A "},
		{`{"json": 1}`, nil, `{"json": 1}`},
		{"{not-a-name} {} {{crew}}", []string{"crew"}, "{not-a-name} {} {C}"},
		{"plain", nil, "plain"},
	}
	vals := map[string]string{"crew": "C", "a": "A ", "b": "B"}
	for _, tc := range cases {
		tm := parseTemplate(tc.in)
		if !reflect.DeepEqual(tm.names(), tc.names) {
			t.Errorf("%q: names %v, want %v", tc.in, tm.names(), tc.names)
		}
		out, _ := tm.expand(func(n string) (string, error) { return vals[n], nil })
		if out != tc.out {
			t.Errorf("%q: expanded %q, want %q", tc.in, out, tc.out)
		}
	}
}
