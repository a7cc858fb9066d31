package flags

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) count(sub string) int { return strings.Count(l.String(), sub) }

func newLogger() (*slog.Logger, *logBuf) {
	lb := &logBuf{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

func envOf(kv map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := kv[k]
		return v, ok
	}
}

// eventually polls cond every 10 ms until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not true within %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func TestParse(t *testing.T) {
	cases := []struct {
		name, raw, want string
		err             error
	}{
		{VoiceEnabled, "true", "true", nil},
		{VoiceEnabled, " TRUE\n", "true", nil},
		{VoiceEnabled, "1", "true", nil},
		{VoiceEnabled, "yes", "true", nil},
		{VoiceEnabled, "On", "true", nil},
		{VoiceEnabled, "False", "false", nil},
		{VoiceEnabled, "0", "false", nil},
		{VoiceEnabled, "off", "false", nil},
		{VoiceEnabled, "maybe", "", ErrInvalidValue},
		{VoiceEnabled, "", "", ErrInvalidValue},
		{MaterializersPercent, "0", "0", nil},
		{MaterializersPercent, " 10 ", "10", nil},
		{MaterializersPercent, "100", "100", nil},
		{MaterializersPercent, "007", "7", nil},
		{MaterializersPercent, "101", "", ErrInvalidValue},
		{MaterializersPercent, "-1", "", ErrInvalidValue},
		{MaterializersPercent, "10.5", "", ErrInvalidValue},
		{MaterializersPercent, "10%", "", ErrInvalidValue},
		{MaterializersPercent, "true", "", ErrInvalidValue},
		{"NO_SUCH_FLAG", "true", "", ErrUnknownFlag},
	}
	for _, tc := range cases {
		t.Run(tc.name+"="+tc.raw, func(t *testing.T) {
			got, err := Parse(tc.name, tc.raw)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("want %v, got %q, %v", tc.err, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	f, err := New(Options{LookupEnv: envOf(nil)})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		MaterializersEnabled: "false", AsyncEnabled: "false", DecisionTraceEnabled: "false",
		TelemetryEnabled: "false", GraphLegacyMode: "false", RateLimitStrict: "false",
		VoiceEnabled: "false", MaterializersPercent: "100", EmergencyStop: "false",
	}
	eff := f.Effective()
	if len(eff) != len(want) {
		t.Fatalf("got %d flags, want %d: %v", len(eff), len(want), eff)
	}
	for i, s := range eff {
		if i > 0 && eff[i-1].Name >= s.Name {
			t.Fatalf("Effective not sorted: %v", eff)
		}
		if s.Value != want[s.Name] || s.Source != SourceDefault {
			t.Errorf("%s = %q from %s, want %q from default", s.Name, s.Value, s.Source, want[s.Name])
		}
	}
	if f.Int(MaterializersPercent) != 100 || f.Bool(MaterializersEnabled) || f.Bool("NOPE") {
		t.Fatal("typed access wrong")
	}
}

func TestEnvSource(t *testing.T) {
	log, lb := newLogger()
	f, err := New(Options{Logger: log, LookupEnv: envOf(map[string]string{
		MaterializersEnabled: "true",
		MaterializersPercent: "10",
		VoiceEnabled:         "sometimes", // rejected: the default stays
		"UNRELATED":          "x",
	})})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, value string
		source      Source
	}{
		{MaterializersEnabled, "true", SourceEnv},
		{MaterializersPercent, "10", SourceEnv},
		{VoiceEnabled, "false", SourceDefault},
		{AsyncEnabled, "false", SourceDefault},
	}
	for _, tc := range cases {
		s, _ := f.Get(tc.name)
		if s.Value != tc.value || s.Source != tc.source {
			t.Errorf("%s = %q from %s, want %q from %s", tc.name, s.Value, s.Source, tc.value, tc.source)
		}
	}
	if !f.Bool(MaterializersEnabled) || f.Int(MaterializersPercent) != 10 {
		t.Fatal("typed access wrong")
	}
	if lb.count("flag value rejected") != 1 || !strings.Contains(lb.String(), `value="\"sometimes\""`) {
		t.Fatalf("want one rejection line naming the value, got:\n%s", lb)
	}
	if lb.count("flag changed") != 2 || !strings.Contains(lb.String(), "source=env") {
		t.Fatalf("want two change lines with source env:\n%s", lb)
	}
	snap := f.Snapshot()
	if snap.Sources[1].Source != SourceEnv || snap.Sources[1].Rejections != 1 || snap.Changes != 2 {
		t.Fatalf("snapshot: %+v", snap)
	}
	m, _ := f.Get(MaterializersPercent)
	if m.Number() != 10 {
		t.Fatalf("Number() = %v", m.Number())
	}
	if e, _ := f.Get(MaterializersEnabled); e.Number() != 1 {
		t.Fatalf("Number() = %v", e.Number())
	}
}

// TestLayering checks precedence and fallback: default < env < file < redis, and that a bad
// value keeps the source's last good value.
func TestLayering(t *testing.T) {
	log, lb := newLogger()
	f, err := New(Options{Logger: log, LookupEnv: envOf(map[string]string{VoiceEnabled: "true", AsyncEnabled: "true"})})
	if err != nil {
		t.Fatal(err)
	}
	var changes []Change
	cancel := f.Subscribe(func(c Change) { changes = append(changes, c) })
	steps := []struct {
		desc       string
		src        Source
		vals       map[string]string
		want       string // VOICE_ENABLED
		wantSource Source
	}{
		{"env overrides default", SourceEnv, map[string]string{VoiceEnabled: "true", AsyncEnabled: "true"}, "true", SourceEnv},
		{"file overrides env", SourceFile, map[string]string{VoiceEnabled: "false"}, "false", SourceFile},
		{"redis overrides file", SourceRedis, map[string]string{VoiceEnabled: "true"}, "true", SourceRedis},
		{"bad redis value keeps last good", SourceRedis, map[string]string{VoiceEnabled: "ja"}, "true", SourceRedis},
		{"redis unset falls back to file", SourceRedis, map[string]string{}, "false", SourceFile},
		{"bad value with no good value: lower layer", SourceRedis, map[string]string{VoiceEnabled: "nein"}, "false", SourceFile},
		{"file unset falls back to env", SourceFile, map[string]string{}, "true", SourceEnv},
	}
	for _, st := range steps {
		f.apply(st.src, st.vals)
		s, _ := f.Get(VoiceEnabled)
		if s.Value != st.want || s.Source != st.wantSource {
			t.Fatalf("%s: VOICE_ENABLED = %q from %s, want %q from %s", st.desc, s.Value, s.Source, st.want, st.wantSource)
		}
		if a, _ := f.Get(AsyncEnabled); a.Value != "true" || a.Source != SourceEnv {
			t.Fatalf("%s: ASYNC_ENABLED disturbed: %+v", st.desc, a)
		}
	}
	if n := lb.count("flag value rejected"); n != 2 {
		t.Fatalf("want 2 rejection lines, got %d:\n%s", n, lb)
	}
	// file false, redis true, redis unset -> file false, file unset -> env true
	wantChanges := []struct {
		value string
		src   Source
	}{{"false", SourceFile}, {"true", SourceRedis}, {"false", SourceFile}, {"true", SourceEnv}}
	if len(changes) != len(wantChanges) {
		t.Fatalf("got %d changes, want %d: %+v", len(changes), len(wantChanges), changes)
	}
	for i, w := range wantChanges {
		if c := changes[i]; c.New.Name != VoiceEnabled || c.New.Value != w.value || c.New.Source != w.src || !c.ValueChanged() {
			t.Fatalf("change %d = %+v, want %s from %s", i, c, w.value, w.src)
		}
	}
	cancel()
	f.apply(SourceRedis, map[string]string{VoiceEnabled: "false"})
	if len(changes) != len(wantChanges) {
		t.Fatal("cancelled subscription still called")
	}
}

func TestRejectedValueLoggedOnce(t *testing.T) {
	log, lb := newLogger()
	f, _ := New(Options{Logger: log, LookupEnv: envOf(nil)})
	for range 5 {
		f.apply(SourceRedis, map[string]string{MaterializersPercent: "150", "TYPO_FLAG": "1"})
	}
	if lb.count("flag value rejected") != 1 || lb.count("unknown flag ignored") != 1 {
		t.Fatalf("want one line each:\n%s", lb)
	}
	f.apply(SourceRedis, map[string]string{MaterializersPercent: "250"})
	if lb.count("flag value rejected") != 2 {
		t.Fatalf("a different bad value is logged again:\n%s", lb)
	}
	if f.Int(MaterializersPercent) != 100 {
		t.Fatal("default should stay")
	}
}

// configMapDir lays out dir the way the kubelet mounts a ConfigMap: the keys are symlinks
// through ..data to a timestamped directory, swapped atomically on update.
type configMapDir struct {
	t   *testing.T
	dir string
	gen int
}

func (c *configMapDir) write(kv map[string]string) {
	c.t.Helper()
	c.gen++
	ts := filepath.Join(c.dir, "..2026_01_01_00_00_0"+string(rune('0'+c.gen)))
	if err := os.Mkdir(ts, 0o755); err != nil {
		c.t.Fatal(err)
	}
	for k, v := range kv {
		if err := os.WriteFile(filepath.Join(ts, k), []byte(v+"\n"), 0o644); err != nil {
			c.t.Fatal(err)
		}
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		c.t.Fatal(err)
	}
	for k := range kv {
		link := filepath.Join(c.dir, k)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
			c.t.Fatal(err)
		}
	}
}

func TestFileSourceConfigMapDirLive(t *testing.T) {
	log, lb := newLogger()
	cm := &configMapDir{t: t, dir: t.TempDir()}
	cm.write(map[string]string{MaterializersEnabled: "true", MaterializersPercent: "1", "other-key": "x"})
	f, err := New(Options{Logger: log, LookupEnv: envOf(map[string]string{MaterializersPercent: "50"}), File: cm.dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if s, _ := f.Get(MaterializersPercent); s.Value != "1" || s.Source != SourceFile {
		t.Fatalf("initial read: %+v", s)
	}
	if !f.Bool(MaterializersEnabled) {
		t.Fatal("initial read: materializers should be enabled")
	}

	// F1 canary step: 1 % -> 10 %, and a rollback of the switch, through a ConfigMap update.
	cm.write(map[string]string{MaterializersEnabled: "false", MaterializersPercent: "10"})
	took := eventually(t, 3*time.Second, "ConfigMap change applied", func() bool {
		return f.Int(MaterializersPercent) == 10 && !f.Bool(MaterializersEnabled)
	})
	t.Logf("ConfigMap change applied after %v", took)
	if !strings.Contains(lb.String(), "source=file") {
		t.Fatalf("change not logged with its source:\n%s", lb)
	}

	// A bad value in the file is rejected; the last good value stays.
	cm.write(map[string]string{MaterializersEnabled: "false", MaterializersPercent: "ten"})
	eventually(t, 3*time.Second, "rejection logged", func() bool { return lb.count("flag value rejected") == 1 })
	if f.Int(MaterializersPercent) != 10 {
		t.Fatal("last good value should stay")
	}
	// Removing the key from the ConfigMap falls back to env.
	if err := os.Remove(filepath.Join(cm.dir, MaterializersPercent)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "fallback to env", func() bool {
		s, _ := f.Get(MaterializersPercent)
		return s.Value == "50" && s.Source == SourceEnv
	})
}

func TestFileSourceYAMLLive(t *testing.T) {
	log, lb := newLogger()
	path := filepath.Join(t.TempDir(), "flags.yaml")
	write := func(s string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("flags:\n  VOICE_ENABLED: true\n  DENIS_MATERIALIZERS_PERCENT: 10\n")
	f, err := New(Options{Logger: log, LookupEnv: envOf(nil), File: path, FilePoll: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Bool(VoiceEnabled) || f.Int(MaterializersPercent) != 10 {
		t.Fatalf("initial: %+v", f.Effective())
	}
	write("VOICE_ENABLED: false\nDENIS_MATERIALIZERS_PERCENT: 10\n")
	eventually(t, 2*time.Second, "YAML change applied", func() bool { return !f.Bool(VoiceEnabled) })

	// Broken YAML: the whole file is unreadable, the last good values stay, logged once.
	write("VOICE_ENABLED: [true\n")
	eventually(t, 2*time.Second, "unreadable file logged", func() bool { return lb.count("flag source unreadable") == 1 })
	time.Sleep(300 * time.Millisecond)
	if lb.count("flag source unreadable") != 1 || f.Bool(VoiceEnabled) || f.Int(MaterializersPercent) != 10 {
		t.Fatalf("last good values should stay, logged once:\n%s", lb)
	}
	if snap := f.Snapshot(); snap.Sources[len(snap.Sources)-1].LastError == "" {
		t.Fatalf("snapshot should carry the file error: %+v", snap.Sources)
	}
	write("VOICE_ENABLED: true\n")
	eventually(t, 2*time.Second, "recovered", func() bool {
		s, _ := f.Get(MaterializersPercent)
		return f.Bool(VoiceEnabled) && s.Source == SourceDefault
	})
}

func TestParseFlagYAML(t *testing.T) {
	cases := []struct {
		desc, in string
		want     map[string]string
		errSub   string
	}{
		{"flat", "A: true\nB: 10\n", map[string]string{"A": "true", "B": "10"}, ""},
		{"nested", "flags:\n  A: 'off'\n", map[string]string{"A": "off"}, ""},
		{"null unsets", "A: ~\nB: x\n", map[string]string{"B": "x"}, ""},
		{"empty", "", map[string]string{}, ""},
		{"list value", "A: true\nB: [1]\n", nil, "f.yaml:2: B: must be a plain value"},
		{"not a mapping", "- a\n", nil, "f.yaml:1: must be a mapping"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := parseFlagYAML("f.yaml", []byte(tc.in))
			if tc.errSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSub) {
					t.Fatalf("want error %q, got %v", tc.errSub, err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestStartTwiceAndCancelled(t *testing.T) {
	f, _ := New(Options{LookupEnv: envOf(nil)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.Start(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	g, _ := New(Options{LookupEnv: envOf(nil)})
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(context.Background()); err == nil {
		t.Fatal("second Start should fail")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
}
