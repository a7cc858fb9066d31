package workercli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/tasks"
)

// TestParseSemanticsFlags pins down the task-semantics options: Celery's
// task_default_queue, the ETA bound, and the fleet-wide rate-limit switch with the Redis it
// uses (the flag, else a Redis broker, else a Redis result backend).
func TestParseSemanticsFlags(t *testing.T) {
	cases := []struct {
		name      string
		args, env []string
		wantErr   string
		check     func(t *testing.T, o *Options)
	}{
		{"defaults", nil, nil, "", func(t *testing.T, o *Options) {
			if o.DefaultQueue != "celery" || o.MaxETATasks != 1000 || o.RateLimitFleet || o.rateLimitRedisURL() != "" {
				t.Fatalf("%+v", o)
			}
		}},
		{"flags", []string{"--default-queue", "jobs", "--max-eta-tasks", "5", "--rate-limit-fleet",
			"--rate-limit-redis", "redis://r:6379/4", "-b", "redis://b/1"}, nil, "", func(t *testing.T, o *Options) {
			if o.DefaultQueue != "jobs" || o.MaxETATasks != 5 || !o.RateLimitFleet || o.rateLimitRedisURL() != "redis://r:6379/4" {
				t.Fatalf("%+v", o)
			}
		}},
		{"env", nil, []string{"FLEET_DEFAULT_QUEUE=q", "FLEET_RATE_LIMIT_FLEET=true", "CELERY_RESULT_BACKEND=redis://res/2"}, "",
			func(t *testing.T, o *Options) {
				if o.DefaultQueue != "q" || !o.RateLimitFleet || o.rateLimitRedisURL() != "redis://res/2" {
					t.Fatalf("%+v", o)
				}
			}},
		{"redis broker preferred", []string{"-b", "redis://b/1", "--result-backend", "redis://res/2"}, nil, "",
			func(t *testing.T, o *Options) {
				if o.rateLimitRedisURL() != "redis://b/1" {
					t.Fatalf("rate limit redis %q", o.rateLimitRedisURL())
				}
			}},
		{"zero eta bound", []string{"--max-eta-tasks", "0"}, nil, "--max-eta-tasks", nil},
		{"bad rate limit redis", []string{"--rate-limit-redis", "amqp://x"}, nil, "--rate-limit-redis", nil},
		{"blank default queue", []string{"--default-queue", " "}, nil, "--default-queue", nil},
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

// TestNewRateLimiter: the limiter gets the configured rates; fleet-wide mode needs a Redis.
func TestNewRateLimiter(t *testing.T) {
	cfg, err := tasks.ParseConfig("c.yaml", []byte("tasks:\n  t:\n    rate_limit: 2/s\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := &Options{Broker: "amqp://x", RateLimitFleet: true}
	if _, _, err := newRateLimiter(o, cfg, nil); err == nil || !strings.Contains(err.Error(), "needs a Redis") {
		t.Fatalf("fleet mode without Redis: %v", err)
	}
	o = &Options{Broker: "amqp://x", RateLimitRedis: "redis://127.0.0.1:6379/3", RateLimitFleet: true}
	l, closeFn, err := newRateLimiter(o, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if !l.Limited("t") || l.Limited("u") || !l.FleetWide() {
		t.Fatal("limiter does not follow the configuration")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := l.Reserve(ctx, "t"); err != nil {
		t.Fatal(err)
	}
}
