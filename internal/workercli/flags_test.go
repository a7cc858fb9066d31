package workercli

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"denis.io/fleet/internal/flags"
	"denis.io/fleet/internal/tasks"
)

// TestParseFlagsOptions: --flags-file, --flags-redis and --flags-key with their FLEET_*
// variables; the flags Redis defaults to the state Redis and "off" turns it off.
func TestParseFlagsOptions(t *testing.T) {
	cases := []struct {
		name      string
		args, env []string
		wantErr   string
		file      string
		redis     string
		key       string
	}{
		{"defaults, no redis", nil, nil, "", "", "", "fleet:flags"},
		{"state redis by default", []string{"-b", "redis://b:6379/1"}, nil, "", "", "redis://b:6379/1", "fleet:flags"},
		{"state redis option", []string{"--state-redis", "redis://s/2", "-b", "redis://b/1"}, nil, "", "", "redis://s/2", "fleet:flags"},
		{"flags", []string{"--flags-file", "/etc/fleet/flags", "--flags-redis", "redis://f:6379/7", "--flags-key", "stage:flags", "-b", "redis://b/1"}, nil,
			"", "/etc/fleet/flags", "redis://f:6379/7", "stage:flags"},
		{"env", nil, []string{"FLEET_FLAGS_FILE=/f.yaml", "FLEET_FLAGS_REDIS=redis://e/7", "FLEET_FLAGS_KEY=k"}, "", "/f.yaml", "redis://e/7", "k"},
		{"off", []string{"--flags-redis", "off", "-b", "redis://b/1"}, nil, "", "", "", "fleet:flags"},
		{"bad url", []string{"--flags-redis", "amqp://x"}, nil, "--flags-redis", "", "", ""},
		{"blank key", []string{"--flags-key", " "}, nil, "--flags-key", "", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := Parse(tc.args, tc.env, &bytes.Buffer{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error with %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.FlagsFile != tc.file || o.flagsRedisURL() != tc.redis || o.FlagsKey != tc.key {
				t.Fatalf("file %q redis %q key %q", o.FlagsFile, o.flagsRedisURL(), o.FlagsKey)
			}
		})
	}
}

// TestRegisterTasks: runner tasks are registered from the configuration next to the diag
// tasks; a diag entry with --no-diag-tasks and a runner task named like a built-in task are
// configuration errors naming file, line and key.
func TestRegisterTasks(t *testing.T) {
	fl, err := flags.New(flags.Options{Logger: slog.New(slog.DiscardHandler), LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	opts := tasks.RunnerOptions{Logger: slog.New(slog.DiscardHandler), Flags: fl}
	const jobs = `tasks:
  denis.materializer.run:
    runner: exec
    allow: [daily_summary]
    exec: {argv: [/bin/true]}
  voice.say:
    kind: exec
    exec: {argv: [/bin/true]}
`
	cases := []struct {
		name    string
		yaml    string
		noDiag  bool
		wantErr string
		want    []string
	}{
		{"jobs and diag", jobs, false, "", []string{"denis.materializer.run", "diag.add", "voice.say"}},
		{"jobs only", jobs, true, "", []string{"denis.materializer.run", "voice.say"}},
		{"no config", "", false, "", []string{"diag.add"}},
		{"diag kind without diag tasks", "tasks:\n  diag.sleep:\n    kind: diag\n", true, "w.yaml:3: tasks.diag.sleep.kind: diag tasks are off", nil},
		{"runner task on a built-in name", "tasks:\n  diag.echo:\n    kind: exec\n    exec: {argv: [/bin/true]}\n", false,
			"w.yaml:3: tasks.diag.echo.kind: diag.echo is a built-in task", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var cfg *tasks.Config
			if tc.yaml != "" {
				if cfg, err = tasks.ParseConfig("w.yaml", []byte(tc.yaml)); err != nil {
					t.Fatal(err)
				}
			}
			reg := tasks.NewRegistry()
			err := registerTasks(reg, cfg, tc.noDiag, opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error with %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			names := strings.Join(reg.Names(), ",")
			for _, n := range tc.want {
				if !strings.Contains(","+names+",", ","+n+",") {
					t.Fatalf("registered %s, want %s among them", names, n)
				}
			}
			if tc.noDiag && strings.Contains(names, "diag.") {
				t.Fatalf("diag tasks registered with --no-diag-tasks: %s", names)
			}
		})
	}
}

// TestFlagEffects: RATE_LIMIT_STRICT and TELEMETRY_ENABLED switch the limiter and tracing
// when a source sets them, and leave --rate-limit-fleet and tracing (on) in charge while
// they are at their built-in defaults. Real flags with a file source, a real limiter on
// Redis DB 7.
func TestFlagEffects(t *testing.T) {
	file := t.TempDir() + "/flags.yaml"
	writeFile(t, file, "")
	fl, err := flags.New(flags.Options{Logger: slog.New(slog.DiscardHandler), File: file,
		LookupEnv: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	o := &Options{Broker: "amqp://x", RateLimitRedis: "redis://127.0.0.1:6379/7", RateLimitFleet: true}
	cfg, err := tasks.ParseConfig("c.yaml", []byte("tasks:\n  t:\n    rate_limit: 5/s\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	limiter, closeLimiter, err := newRateLimiter(o, cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer closeLimiter()
	var mu sync.Mutex
	var traced []bool
	e := &flagEffects{fl: fl, limiter: limiter, strict: true, tracing: func(on bool) {
		mu.Lock()
		defer mu.Unlock()
		traced = append(traced, on)
	}}
	fl.Subscribe(func(flags.Change) { e.apply() })
	e.apply()
	check := func(step string, wantFleet bool, wantTraced ...bool) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if limiter.FleetWide() != wantFleet || strings.Join(boolStrings(traced), ",") != strings.Join(boolStrings(wantTraced), ",") {
			t.Fatalf("%s: fleet-wide %v (want %v), tracing calls %v (want %v)", step, limiter.FleetWide(), wantFleet, traced, wantTraced)
		}
	}
	check("defaults: the command line decides", true, true)
	writeFile(t, file, "RATE_LIMIT_STRICT: \"false\"\nTELEMETRY_ENABLED: \"false\"\n")
	if err := fl.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	check("file sets both off", false, true, false)
	writeFile(t, file, "RATE_LIMIT_STRICT: \"on\"\nTELEMETRY_ENABLED: \"false\"\nVOICE_ENABLED: \"true\"\n")
	if err := fl.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	check("strict on; an unrelated change touches nothing else", true, true, false)
	writeFile(t, file, "")
	if err := fl.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	check("file emptied: back to the command line", true, true, false, true)
	// --rate-limit-fleet at start, the file's off, the file's on; the unrelated change and
	// the return to the command line's value (on already) switch nothing.
	if n := strings.Count(logs.String(), "ratelimit: mode changed"); n != 3 {
		t.Fatalf("%d mode changes logged, want 3:\n%s", n, logs.String())
	}
}

func boolStrings(bs []bool) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = map[bool]string{true: "on", false: "off"}[b]
	}
	return out
}

// TestFlagsRedisURLOff: with --flags-redis off the flags read no Redis even when the broker
// is Redis.
func TestFlagsRedisURLOff(t *testing.T) {
	o, err := Parse([]string{"-b", "redis://127.0.0.1:6379/7", "--flags-redis", "off"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fl, closeFn, err := newFlags(o, func(k string) (string, bool) {
		return map[string]string{flags.VoiceEnabled: "yes"}[k], k == flags.VoiceEnabled
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	snap := fl.Snapshot()
	for _, s := range snap.Sources {
		if s.Source == flags.SourceRedis {
			t.Fatal("Redis source configured despite --flags-redis off")
		}
	}
	if st, _ := fl.Get(flags.VoiceEnabled); st.Value != "true" || st.Source != flags.SourceEnv {
		t.Fatalf("env flag %+v", st)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as a ConfigMap update does: a reader never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestMainConfigErrors: job configuration mistakes exit 78 with one line naming file, line
// and key, before any connection is tried (the broker here is unreachable).
func TestMainConfigErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"crew without runner", "tasks:\n  denis.crew.run:\n    queue: crews\n", "c.yaml:3: tasks.denis.crew.run.runner: required for a crew task"},
		{"diag kind without diag tasks", "tasks:\n  diag.add:\n    kind: diag\n", "c.yaml:3: tasks.diag.add.kind: diag tasks are off"},
		{"unknown flag", "tasks:\n  t:\n    requires_flag: VOICE\n", "c.yaml:3: tasks.t.requires_flag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := t.TempDir() + "/c.yaml"
			writeFile(t, cfg, tc.yaml)
			var stdout, stderr bytes.Buffer
			code := Main([]string{"--config", cfg, "--no-diag-tasks", "-b", "redis://127.0.0.1:1/0", "--log-format", "text"}, nil, &stdout, &stderr)
			if code != ExitConfig || !strings.Contains(stderr.String(), tc.want) || strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 {
				t.Fatalf("exit %d, stderr %q; want %d with %q", code, stderr.String(), ExitConfig, tc.want)
			}
		})
	}
}
