package workercli

import (
	"io"
	"testing"
	"time"
)

// TestObserveFlags: the observability options parse from flags and FLEET_* variables, with
// Celery's defaults (events and heartbeats on, freq 2 s, metrics on :9808), and the state
// Redis falls back to the broker, then the result backend, when they are Redis.
func TestObserveFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     []string
		check   func(o *Options) bool
		wantErr bool
	}{
		{"defaults", nil, nil, func(o *Options) bool {
			x := o.Observe
			return !x.WithoutEvents && !x.WithoutHeartbeat && x.HeartbeatInterval == 2 && x.MetricsAddr == ":9808" &&
				!x.AllowRemoteShutdown && x.PprofAddr == "" && o.stateRedisURL() == ""
		}, false},
		{"flags", []string{"--without-events", "--without-heartbeat", "--heartbeat-interval", "0.5", "--metrics-addr", "",
			"--allow-remote-shutdown", "--pprof-addr", "127.0.0.1:6060", "--without-tracing", "--without-control", "--no-celery-metrics"}, nil,
			func(o *Options) bool {
				x := o.Observe
				return x.WithoutEvents && x.WithoutHeartbeat && x.HeartbeatInterval == 0.5 && x.MetricsAddr == "" &&
					x.AllowRemoteShutdown && x.PprofAddr == "127.0.0.1:6060" && x.WithoutTracing && x.WithoutControl && x.NoCeleryMetrics
			}, false},
		{"env", nil, []string{"FLEET_WITHOUT_EVENTS=true", "FLEET_METRICS_ADDR=:9999", "FLEET_STATE_REDIS=redis://r:6379/3"},
			func(o *Options) bool {
				return o.Observe.WithoutEvents && o.Observe.MetricsAddr == ":9999" && o.stateRedisURL() == "redis://r:6379/3"
			}, false},
		{"state from broker", []string{"-b", "redis://b:6379/1", "--result-backend", "redis://c:6379/2"}, nil,
			func(o *Options) bool { return o.stateRedisURL() == "redis://b:6379/1" }, false},
		{"state from backend", []string{"--result-backend", "redis://c:6379/2"}, nil,
			func(o *Options) bool { return o.stateRedisURL() == "redis://c:6379/2" }, false},
		{"bad interval", []string{"--heartbeat-interval", "0"}, nil, nil, true},
		{"bad state redis", []string{"--state-redis", "amqp://x"}, nil, nil, true},
	}
	for _, tc := range tests {
		o, err := Parse(tc.args, tc.env, io.Discard)
		if (err != nil) != tc.wantErr {
			t.Fatalf("%s: err %v, want error %v", tc.name, err, tc.wantErr)
		}
		if err == nil && !tc.check(o) {
			t.Errorf("%s: options %+v", tc.name, o.Observe)
		}
	}
}

// TestConsumerLive: /readyz's consumer check against its window.
func TestConsumerLive(t *testing.T) {
	now := time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		alive   time.Time
		wantErr string
	}{
		{"never consumed", time.Time{}, "not consuming yet"},
		{"alive now", now, ""},
		{"alive at the window's edge", now.Add(-30 * time.Second), ""},
		{"silent past the window", now.Add(-31 * time.Second), "consumer stalled: last alive 31s ago (limit 30s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := consumerLive(tt.alive, now, 30*time.Second)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("got %v, want ready", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Errorf("got %v, want %q", err, tt.wantErr)
			}
		})
	}
}
