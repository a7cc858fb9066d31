package tasks

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestParseConfigSemantics pins down the task-semantics settings with Celery's names,
// meanings and defaults (max_retries 3, default_retry_delay 180 s, retry_backoff_max 600 s,
// retry_jitter on), the queues section, and file:line:key errors.
func TestParseConfigSemantics(t *testing.T) {
	cases := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, c *Config)
	}{
		{"celery defaults", "tasks:\n  t: {}\n", "", func(t *testing.T, c *Config) {
			got := c.For("t")
			if got.MaxRetries != 3 || got.DefaultRetryDelay != 180*time.Second || got.RetryBackoffMax != 600*time.Second ||
				!got.RetryJitter || got.RetryBackoff != 0 || got.DeadLetterOnFailure || got.TimeLimit != 0 {
				t.Fatalf("defaults %+v", got)
			}
			if !reflect.DeepEqual(c.For("other"), DefaultTaskConfig) {
				t.Fatal("unnamed task must get the defaults")
			}
		}},
		{"every setting", `tasks:
  t:
    max_retries: 5
    default_retry_delay: 1.5
    autoretry_for: [TimeoutError, builtins.ConnectionError]
    retry_backoff: 2
    retry_backoff_max: 1m
    retry_jitter: false
    dead_letter_on_failure: true
    time_limit: 300
    soft_time_limit: 4m
    rate_limit: 10/m
  forever:
    max_retries: null
    retry_backoff: true
queues:
  hi:
    max_priority: 10
  plain: {}
`, "", func(t *testing.T, c *Config) {
			got := c.For("t")
			want := TaskConfig{AcksLate: true, MaxRetries: 5, DefaultRetryDelay: 1500 * time.Millisecond,
				AutoretryFor: []string{"TimeoutError", "builtins.ConnectionError"}, RetryBackoff: 2,
				RetryBackoffMax: time.Minute, DeadLetterOnFailure: true, TimeLimit: 300 * time.Second,
				SoftTimeLimit: 4 * time.Minute, RateLimit: "10/m"}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got  %+v\nwant %+v", got, want)
			}
			if f := c.For("forever"); f.MaxRetries != -1 || f.RetryBackoff != 1 {
				t.Fatalf("forever: %+v", f)
			}
			if a := c.QueueArguments(); !reflect.DeepEqual(a, map[string]map[string]any{"hi": {"x-max-priority": 10}}) {
				t.Fatalf("queue arguments %v", a)
			}
			if r := c.RateLimits(); !reflect.DeepEqual(r, map[string]string{"t": "10/m"}) {
				t.Fatalf("rate limits %v", r)
			}
		}},
		{"bad rate", "tasks:\n  t:\n    rate_limit: 10/d\n", "cfg.yaml:3: tasks.t.rate_limit: bad value", nil},
		{"bad duration", "tasks:\n  t:\n    time_limit: soon\n", "cfg.yaml:3: tasks.t.time_limit", nil},
		{"negative retries", "tasks:\n  t:\n    max_retries: -2\n", "cfg.yaml:3: tasks.t.max_retries", nil},
		{"autoretry not a list", "tasks:\n  t:\n    autoretry_for: TimeoutError\n", "cfg.yaml:3: tasks.t.autoretry_for", nil},
		{"dead letter needs acks_late", "tasks:\n  t:\n    acks_late: false\n    dead_letter_on_failure: true\n",
			"cfg.yaml:2: tasks.t.dead_letter_on_failure: needs acks_late", nil},
		{"unknown queue setting", "queues:\n  q:\n    priority: 3\n", "cfg.yaml:3: queues.q.priority: unknown setting", nil},
		{"priority too high", "queues:\n  q:\n    max_priority: 256\n", "cfg.yaml:3: queues.q.max_priority", nil},
		{"unknown top key names both", "tsks: {}\n", "expected: tasks, queues", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig("cfg.yaml", []byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
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

// TestRetryDelay pins down Celery's autoretry countdown
// (get_exponential_backoff_interval): factor × 2^retries capped at retry_backoff_max,
// full jitter when on, default_retry_delay without backoff.
func TestRetryDelay(t *testing.T) {
	top := func(n int64) int64 { return n - 1 } // the largest value rnd(n) may return
	cases := []struct {
		name    string
		tc      TaskConfig
		retries int
		rnd     func(int64) int64
		want    time.Duration
	}{
		{"no backoff", TaskConfig{DefaultRetryDelay: 7 * time.Second}, 3, nil, 7 * time.Second},
		{"backoff, no jitter", TaskConfig{RetryBackoff: 2, RetryBackoffMax: 600 * time.Second}, 3, nil, 16 * time.Second},
		{"backoff capped", TaskConfig{RetryBackoff: 1, RetryBackoffMax: 600 * time.Second}, 20, nil, 600 * time.Second},
		{"huge retries capped", TaskConfig{RetryBackoff: 1, RetryBackoffMax: 10 * time.Second}, 5000, nil, 10 * time.Second},
		{"jitter at most the countdown", TaskConfig{RetryBackoff: 1, RetryBackoffMax: 600 * time.Second, RetryJitter: true}, 2, top, 4 * time.Second},
		{"jitter may be zero", TaskConfig{RetryBackoff: 1, RetryBackoffMax: 600 * time.Second, RetryJitter: true}, 2,
			func(int64) int64 { return 0 }, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := RetryDelay(tc.tc, tc.retries, tc.rnd); got != tc.want {
				t.Fatalf("RetryDelay = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRetryAPI pins down the handler side of Task.retry / Reject and autoretry_for matching.
func TestRetryAPI(t *testing.T) {
	cause := ValueError("bad")
	r := Retry(cause, Countdown(100*time.Millisecond), MaxRetries(7))
	var re *RetryError
	if !errors.As(error(r), &re) || *re.MaxRetries != 7 || !errors.Is(r, error(cause)) {
		t.Fatalf("retry error %+v", r)
	}
	if got := r.When(time.Minute); got != "in 0.1s" {
		t.Fatalf("When = %q", got)
	}
	if got := Retry(nil).When(3 * time.Minute); got != "in 180s" {
		t.Fatalf("default When = %q", got)
	}
	if !strings.Contains(Reject(true, errors.New("busy")).Error(), "requeue") {
		t.Fatal("reject text")
	}
	matches := []struct {
		kinds       []string
		typ, module string
		want        bool
	}{
		{[]string{"TimeoutError"}, "TimeoutError", "builtins", true},
		{[]string{"builtins.TimeoutError"}, "TimeoutError", "builtins", true},
		{[]string{"other.TimeoutError"}, "TimeoutError", "builtins", false},
		{[]string{"Exception"}, "Anything", "x", true},
		{nil, "ValueError", "builtins", false},
	}
	for _, m := range matches {
		if got := Match(m.kinds, m.typ, m.module); got != m.want {
			t.Errorf("Match(%v, %s.%s) = %v", m.kinds, m.module, m.typ, got)
		}
	}
}

// TestDiagFlaky pins down diag.flaky(failures): it asks for a retry (countdown 0.1 s, no
// cause) while its retries are below failures, then returns the number of attempts.
func TestDiagFlaky(t *testing.T) {
	reg := NewRegistry()
	RegisterDiag(reg)
	h, _ := reg.Lookup(DiagFlaky)
	for retries := range 3 {
		v, err := h.ServeTask(context.Background(), &Request{Name: DiagFlaky, Args: []any{2}, Retries: retries})
		var re *RetryError
		switch {
		case retries < 2:
			if !errors.As(err, &re) || re.Cause != nil || *re.Countdown != 100*time.Millisecond {
				t.Fatalf("retries=%d: %v, %v", retries, v, err)
			}
		default:
			if err != nil || v != 3 {
				t.Fatalf("retries=%d: %v, %v; want 3 attempts", retries, v, err)
			}
		}
	}
}
