package tasks

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestParseConfigJobs pins down the job settings of the --config file: kind (implied for
// denis.crew.run and denis.materializer.run), the default queues crews and materializers,
// the runner settings handed to ParseJobConfig, requires_flag, and file:line:key errors,
// among them a crew or materializer task without a runner.
func TestParseConfigJobs(t *testing.T) {
	const runners = `
    runner: exec
    allow: [research]
    exec:
      argv: [/bin/true, "{crew}"]
`
	cases := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, c *Config)
	}{
		{"default names imply kind and queue", `tasks:
  denis.crew.run:` + runners + `  denis.materializer.run:
    runner: http
    allow: [daily_summary]
    http:
      url: http://denis:8000/m/{materializer}
`, "", func(t *testing.T, c *Config) {
			crew, mat := c.For(DefaultCrewTask), c.For(DefaultMaterializerTask)
			if crew.Kind != KindCrew || crew.Queue != DefaultCrewQueue || crew.Job.Exec == nil || crew.Job.Allow[0] != "research" || !crew.AcksLate {
				t.Fatalf("crew %+v", crew)
			}
			if mat.Kind != KindMaterializer || mat.Queue != DefaultMaterializerQueue || mat.Job.HTTP == nil {
				t.Fatalf("materializer %+v", mat)
			}
			if q := c.Queues(); strings.Join(q, ",") != "crews,materializers" {
				t.Fatalf("queues %v", q)
			}
		}},
		{"other names and queues are configurable", `tasks:
  research.crew:
    kind: crew
    queue: research` + runners + `  voice.say:
    kind: exec
    requires_flag: VOICE_ENABLED
    time_limit: 30
    exec:
      argv: [/bin/say, "{text}"]
  diag.sleep:
    kind: diag
    requires_flag: GRAPH_LEGACY_MODE
  go.task:
    queue: plain
`, "", func(t *testing.T, c *Config) {
			if r := c.For("research.crew"); r.Kind != KindCrew || r.Queue != "research" {
				t.Fatalf("research.crew %+v", r)
			}
			v := c.For("voice.say")
			if v.Kind != KindExec || v.Queue != "" || v.RequiresFlag != "VOICE_ENABLED" || v.Job.Exec.Argv[1] != "{text}" || v.TimeLimit.Seconds() != 30 {
				t.Fatalf("voice.say %+v", v)
			}
			if d := c.For("diag.sleep"); d.Kind != KindDiag || d.RequiresFlag != "GRAPH_LEGACY_MODE" {
				t.Fatalf("diag.sleep %+v", d)
			}
			if g := c.For("go.task"); g.Kind != "" || g.Queue != "plain" {
				t.Fatalf("go.task %+v", g)
			}
			if n := c.TaskNames(); strings.Join(n, ",") != "diag.sleep,go.task,research.crew,voice.say" {
				t.Fatalf("names %v", n)
			}
		}},
		{"crew without a runner", "tasks:\n  denis.crew.run:\n    queue: crews\n", "cfg.yaml:3: tasks.denis.crew.run.runner: required for a crew task", nil},
		{"materializer without allow", "tasks:\n  m:\n    kind: materializer\n    runner: exec\n    exec: {argv: [/bin/true]}\n",
			"cfg.yaml:3: tasks.m.allow: required", nil},
		{"unknown kind", "tasks:\n  t:\n    kind: shell\n", "cfg.yaml:3: tasks.t.kind: bad value \"shell\": unknown kind", nil},
		{"runner settings without kind", "tasks:\n  t:\n    queue: q\n    exec:\n      argv: [/bin/true]\n",
			"cfg.yaml:4: tasks.t.exec: runner settings need kind", nil},
		{"diag kind on another name", "tasks:\n  t:\n    kind: diag\n", "cfg.yaml:3: tasks.t.kind: \"t\" is not a built-in diag task", nil},
		{"unknown flag", "tasks:\n  t:\n    requires_flag: VOICE\n", "cfg.yaml:3: tasks.t.requires_flag: bad value \"VOICE\": unknown feature flag", nil},
		{"percent flag", "tasks:\n  t:\n    requires_flag: DENIS_MATERIALIZERS_PERCENT\n", "tasks.t.requires_flag: bad value", nil},
		{"requires_flag needs acks_late", "tasks:\n  t:\n    acks_late: false\n    requires_flag: VOICE_ENABLED\n",
			"cfg.yaml:2: tasks.t.requires_flag: needs acks_late", nil},
		{"exec placeholder not for crews", "tasks:\n  denis.crew.run:\n    runner: exec\n    allow: [a]\n    exec:\n      argv: [/bin/x, \"{text}\"]\n",
			"cfg.yaml:6: tasks.denis.crew.run.exec.argv[1]: placeholder {text}", nil},
		{"unknown setting lists job keys", "tasks:\n  t:\n    kinds: exec\n", "requires_flag, runner, allow, exec, http", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig("cfg.yaml", []byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
				}
				var ce *ConfigError
				if !errors.As(err, &ce) {
					t.Fatalf("error %T is not a *ConfigError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

// TestConfigErrorf: errors found after parsing carry the file and the line of the key, else
// of its task entry.
func TestConfigErrorf(t *testing.T) {
	c, err := ParseConfig("w.yaml", []byte("tasks:\n  diag.add:\n    queue: q\n  diag.echo:\n    kind: diag\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, want string }{
		{"tasks.diag.echo.kind", "w.yaml:5: tasks.diag.echo.kind: off"},
		{"tasks.diag.add.queue", "w.yaml:2: tasks.diag.add.queue: off"},
		{"tasks.other", "w.yaml: tasks.other: off"},
	} {
		if got := c.Errorf(tc.key, "off").Error(); got != tc.want {
			t.Errorf("Errorf(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	var nilCfg *Config
	if got := nilCfg.Errorf("tasks.x", "bad %d", 1).Error(); got != "tasks.x: bad 1" {
		t.Errorf("nil config: %q", got)
	}
}

// TestFlagGate: requires_flag refuses a task of any kind while its flag is off (FAILURE with
// ErrFlagDisabled, the handler not called) and runs it once the flag is on; tasks without
// requires_flag pass.
func TestFlagGate(t *testing.T) {
	c, err := ParseConfig("c.yaml", []byte("tasks:\n  gated:\n    requires_flag: VOICE_ENABLED\n"))
	if err != nil {
		t.Fatal(err)
	}
	ff := newFakeFlags()
	reg := NewRegistry()
	calls := 0
	for _, name := range []string{"gated", "free"} {
		reg.HandleFunc(name, func(context.Context, *Request) (any, error) { calls++; return "ran", nil })
	}
	reg.Use(c.FlagGate(ff))
	serve := func(name string) (any, error) {
		h, ok := reg.Lookup(name)
		if !ok {
			t.Fatalf("%s not registered", name)
		}
		return h.ServeTask(context.Background(), &Request{ID: "id", Name: name})
	}
	if _, err := serve("gated"); !errors.Is(err, ErrFlagDisabled) || calls != 0 {
		t.Fatalf("gated with the flag off: %v, %d calls", err, calls)
	} else if reason, ok := DeadLetterReason(err); !ok || reason != "flag_disabled" {
		t.Fatalf("reason %q", reason)
	}
	if v, err := serve("free"); err != nil || v != "ran" {
		t.Fatalf("free: %v %v", v, err)
	}
	ff.set(FlagVoiceEnabled, true)
	if v, err := serve("gated"); err != nil || v != "ran" || calls != 2 {
		t.Fatalf("gated with the flag on: %v %v, %d calls", v, err, calls)
	}
}
