package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseAndConfig(t *testing.T) {
	prof := filepath.Join(t.TempDir(), "shape.yaml")
	if err := os.WriteFile(prof, []byte("phases:\n  - {duration: 1m, rate: 1x}\n  - {duration: 1m, rate: peak}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		env     []string
		check   func(t *testing.T, o *options)
		wantErr string
	}{
		{"defaults from env", []string{"--profile", "steady"}, []string{"CELERY_BROKER_URL=redis://127.0.0.1:6379/13", "CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/13"},
			func(t *testing.T, o *options) {
				cfg, err := o.config()
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Broker != "redis://127.0.0.1:6379/13" || cfg.Queues[0] != "celery" || cfg.Profile.MaxRate() != 20 {
					t.Fatalf("%+v", cfg)
				}
				if cfg.Warmup != time.Minute || cfg.MixNote == "" {
					t.Fatalf("warmup %s note %q", cfg.Warmup, cfg.MixNote)
				}
			}, ""},
		{"worker-style flags, --queue alias, time scale", []string{"-b", "amqp://guest:guest@127.0.0.1:5672//", "--result-backend", "redis://127.0.0.1/13",
			"--queue", "lt", "--profile", "ramp", "--time-scale", "10", "--expected-rate", "4", "--multiplier", "3"}, nil,
			func(t *testing.T, o *options) {
				cfg, err := o.config()
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Queues[0] != "lt" || cfg.Profile.Duration() != 210*time.Second || cfg.Profile.MaxRate() != 12 {
					t.Fatalf("queues %v length %s max %v", cfg.Queues, cfg.Profile.Duration(), cfg.Profile.MaxRate())
				}
				if cfg.Mix.Classes[0].Queue != "lt" {
					t.Fatalf("mix queue %q", cfg.Mix.Classes[0].Queue)
				}
			}, ""},
		{"profile file and duration", []string{"--result-backend", "redis://x/1", "--profile", prof, "--duration", "30s", "-Q", "a,b"}, nil,
			func(t *testing.T, o *options) {
				cfg, err := o.config()
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Profile.Duration() != 30*time.Second || len(cfg.Queues) != 2 || cfg.Profile.MaxRate() != 20 {
					t.Fatalf("%s %v", cfg.Profile.Duration(), cfg.Queues)
				}
			}, ""},
		{"no result backend", nil, nil, nil, "--result-backend is required"},
		{"bad broker", []string{"-b", "http://x", "--result-backend", "redis://x"}, nil, nil, "scheme"},
		{"bad progress", []string{"--result-backend", "redis://x", "--progress", "loud"}, nil, nil, "--progress"},
		{"stray argument", []string{"--result-backend", "redis://x", "go"}, nil, nil, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(tt.args, tt.env, &bytes.Buffer{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

func TestMainExitCodes(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--help"}, nil, &out, &errb); code != ExitPass || !strings.Contains(out.String(), "--expected-rate") {
		t.Fatalf("--help: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := Main([]string{"--bogus"}, nil, &out, &errb); code != ExitUsage || !strings.Contains(errb.String(), "loadtest:") {
		t.Fatalf("bad flag: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := Main([]string{"--result-backend", "redis://x", "--profile", "zigzag"}, nil, &out, &errb); code != ExitUsage || !strings.Contains(errb.String(), "unknown profile") {
		t.Fatalf("bad profile: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	args := []string{"-b", "redis://127.0.0.1:1/0", "--result-backend", "redis://127.0.0.1:1/0", "--duration", "1s"}
	if code := Main(args, nil, &out, &errb); code != ExitError || !strings.Contains(errb.String(), "unreachable") {
		t.Fatalf("unreachable broker: exit %d, %q", code, errb.String())
	}
}
