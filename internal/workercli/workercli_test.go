package workercli

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		env     []string
		wantErr string
		check   func(t *testing.T, o *Options)
	}{
		{"defaults", nil, nil, "", func(t *testing.T, o *Options) {
			if o.Broker != "amqp://guest:guest@localhost:5672//" || o.Concurrency != 8 || o.PrefetchMultiplier != 4 ||
				!reflect.DeepEqual(o.Queues, []string{"celery"}) || o.ShutdownTimeout != 25*time.Second ||
				o.VisibilityTimeout != time.Hour || o.ResultBackend != "" || o.Hostname != "fleet@%h" {
				t.Fatalf("defaults: %+v", o)
			}
		}},
		{"celery env", nil, []string{"CELERY_BROKER_URL=redis://h:6379/3", "CELERY_RESULT_BACKEND=rpc://"}, "", func(t *testing.T, o *Options) {
			if o.Broker != "redis://h:6379/3" || o.ResultBackend != "rpc://" {
				t.Fatalf("%+v", o)
			}
		}},
		{"fleet env beats celery env", nil, []string{"CELERY_BROKER_URL=redis://a/1", "FLEET_BROKER=redis://b/2", "FLEET_CONCURRENCY=3", "FLEET_QUEUES=x,y"}, "", func(t *testing.T, o *Options) {
			if o.Broker != "redis://b/2" || o.Concurrency != 3 || !reflect.DeepEqual(o.Queues, []string{"x", "y"}) {
				t.Fatalf("%+v", o)
			}
		}},
		{"flags beat env", []string{"-b", "amqp://u:p@r:5672/v", "-Q", "a,b", "-c", "2", "--prefetch-multiplier", "1", "-n", "w1@%h"}, []string{"FLEET_BROKER=redis://b/2", "FLEET_CONCURRENCY=3"}, "", func(t *testing.T, o *Options) {
			if o.Broker != "amqp://u:p@r:5672/v" || o.Concurrency != 2 || o.PrefetchMultiplier != 1 || o.Hostname != "w1@%h" || !reflect.DeepEqual(o.Queues, []string{"a", "b"}) {
				t.Fatalf("%+v", o)
			}
		}},
		{"unknown flag", []string{"--concurrenc", "2"}, nil, "unknown flag", nil},
		{"bad scheme", []string{"-b", "kafka://x"}, nil, "scheme must be", nil},
		{"bad result scheme", []string{"--result-backend", "db+sqlite://"}, nil, "scheme must be", nil},
		{"zero concurrency", []string{"-c", "0"}, nil, "at least 1", nil},
		{"empty queues", []string{"-Q", ","}, nil, "at least one queue", nil},
		{"bad env value", nil, []string{"FLEET_CONCURRENCY=lots"}, "FLEET_CONCURRENCY", nil},
		{"stray argument", []string{"worker"}, nil, "unexpected argument", nil},
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
			tc.check(t, o)
		})
	}
}

func TestNodeName(t *testing.T) {
	for _, tc := range []struct{ tmpl, host, want string }{
		{"fleet@%h", "box.example.com", "fleet@box.example.com"},
		{"w-%n@%d", "box.example.com", "w-box@example.com"},
		{"plain@x", "h", "plain@x"},
	} {
		if got := NodeName(tc.tmpl, tc.host); got != tc.want {
			t.Errorf("NodeName(%q, %q) = %q, want %q", tc.tmpl, tc.host, got, tc.want)
		}
	}
}

// TestMainExitCodes: a wrong flag, a bad config file and an unreachable broker each give one
// clear line on stderr and a non-zero exit.
func TestMainExitCodes(t *testing.T) {
	badCfg := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(badCfg, []byte("tasks:\n  diag.add:\n    acks_lat: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"help", []string{"--help"}, ExitOK, "Usage: worker"},
		{"bad flag", []string{"--nope"}, ExitUsage, "unknown flag"},
		{"bad url", []string{"-b", "ftp://x"}, ExitUsage, "scheme must be"},
		{"bad config", []string{"--config", badCfg, "-b", "redis://127.0.0.1:1/0"}, ExitConfig, "bad.yaml:3: tasks.diag.add.acks_lat"},
		{"unreachable amqp", []string{"-b", "amqp://guest:guest@127.0.0.1:1//"}, ExitUnavailable, "unreachable"},
		{"unreachable redis", []string{"-b", "redis://127.0.0.1:1/0"}, ExitUnavailable, "unreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(tc.args, nil, &stdout, &stderr)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tc.wantCode, stderr.String())
			}
			if got := stderr.String() + stdout.String(); !strings.Contains(got, tc.wantErr) {
				t.Fatalf("output %q lacks %q", got, tc.wantErr)
			}
			if tc.wantCode != ExitOK && strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 {
				t.Fatalf("want one line on stderr, got:\n%s", stderr.String())
			}
		})
	}
}
