package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// TestQuickCompare runs `bench-compare --quick` end to end against the real RabbitMQ, Redis
// and Python Celery: every contender drains its queue in every cell and every message is
// consumed and settled. It asserts nothing about speed.
func TestQuickCompare(t *testing.T) {
	if testing.Short() {
		t.Skip("needs RabbitMQ, Redis and Python Celery (make services)")
	}
	cfg := quickConfig()
	cfg.LockWait = 3 * time.Minute
	var out, logs bytes.Buffer
	cfg.Out = &out
	cfg.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	rep, err := run(ctx, cfg)
	t.Logf("quick comparison took %s\n%s", time.Since(start).Round(time.Millisecond), out.String())
	if errors.Is(err, errLocked) {
		t.Skipf("skipped: %v (a full comparison is using Redis DBs %d/%d)", err, cfg.BrokerDB, cfg.ResultsDB)
	}
	if err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, logs.String())
	}
	want := len(cfg.Brokers) * len(cfg.Results) * len(cfg.Contenders)
	if len(rep.Runs) != want {
		t.Fatalf("%d runs, want %d", len(rep.Runs), want)
	}
	for _, r := range rep.Runs {
		name := r.Broker + "/" + r.Results + "/" + r.Contender
		if r.Error != "" {
			t.Errorf("%s: %s", name, r.Error)
			continue
		}
		if r.Consumed != r.N || r.N == 0 {
			t.Errorf("%s: consumed %d of %d", name, r.Consumed, r.N)
		}
		if r.DrainSeconds <= 0 || r.PeakRSSMiB <= 0 {
			t.Errorf("%s: no measurement (drain %.3fs, rss %.1f MiB)", name, r.DrainSeconds, r.PeakRSSMiB)
		}
	}
	for _, s := range []string{"worker/celery", "worker/ceiling", "peak RSS MiB"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q", s)
		}
	}
}

// TestKombuEnvelope checks the pre-fill envelope against kombu's shape: json.dumps
// separators, Celery's header order, properties last, a base64 v2 body.
func TestKombuEnvelope(t *testing.T) {
	m, err := newMessage(7, "45fc3a3f-a9ca-3ca8-be53-590d99303f4a")
	if err != nil {
		t.Fatal(err)
	}
	env, err := kombuEnvelope(m, "q1")
	if err != nil {
		t.Fatal(err)
	}
	s := string(env)
	for _, want := range []string{`{"body": "`, `"content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "diag.echo", "id": "`,
		`"argsrepr": "(7,)", "kwargsrepr": "{}", "origin": "gen`, `"ignore_result": false}, "properties": {"correlation_id": "`,
		`"reply_to": "45fc3a3f-a9ca-3ca8-be53-590d99303f4a", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q1"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "`} {
		if !strings.Contains(s, want) {
			t.Errorf("envelope lacks %q:\n%s", want, s)
		}
	}
	var parsed struct {
		Body       string         `json:"body"`
		Headers    map[string]any `json:"headers"`
		Properties map[string]any `json:"properties"`
	}
	if err := json.Unmarshal(env, &parsed); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	body, err := base64.StdEncoding.DecodeString(parsed.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(body), `[[7], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`; got != want {
		t.Errorf("body %s, want %s", got, want)
	}
	if parsed.Headers["id"] != parsed.Properties["correlation_id"] {
		t.Errorf("id %v != correlation_id %v", parsed.Headers["id"], parsed.Properties["correlation_id"])
	}
}

func TestParseVariant(t *testing.T) {
	tests := []struct {
		spec    string
		want    variant
		wantErr bool
	}{
		{"lean=--without-events --metrics-addr=", variant{Name: "lean", Args: []string{"--without-events", "--metrics-addr="}}, false},
		{"gc=GOGC=50 GOMEMLIMIT=24MiB -c 4", variant{Name: "gc", Env: []string{"GOGC=50", "GOMEMLIMIT=24MiB"}, Args: []string{"-c", "4"}}, false},
		{"otel=OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318", variant{Name: "otel", Env: []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318"}}, false},
		{"flags=--log-level=INFO=x", variant{Name: "flags", Args: []string{"--log-level=INFO=x"}}, false},
		{"=--x", variant{}, true},
		{"noequals", variant{}, true},
	}
	for _, tt := range tests {
		got, err := parseVariant(tt.spec)
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err %v", tt.spec, err)
			continue
		}
		if tt.wantErr {
			continue
		}
		if got.Name != tt.want.Name || strings.Join(got.Env, " ") != strings.Join(tt.want.Env, " ") ||
			strings.Join(got.Args, " ") != strings.Join(tt.want.Args, " ") {
			t.Errorf("%q: got %+v, want %+v", tt.spec, got, tt.want)
		}
	}
}

func TestCountSpans(t *testing.T) {
	req := &collectortrace.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{
		{ScopeSpans: []*tracepb.ScopeSpans{{Spans: make([]*tracepb.Span, 3)}, {Spans: make([]*tracepb.Span, 2)}}},
		{Resource: &resourcepb.Resource{}, ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "x"},
			Spans: []*tracepb.Span{{Name: "a", TraceId: make([]byte, 16)}}}}},
	}}
	for _, ss := range req.ResourceSpans[0].ScopeSpans {
		for i := range ss.Spans {
			ss.Spans[i] = &tracepb.Span{Name: "s", Attributes: []*commonpb.KeyValue{{Key: "k"}}}
		}
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := countSpans(b); err != nil || n != 6 {
		t.Fatalf("countSpans = %d, %v; want 6", n, err)
	}
	if _, err := countSpans([]byte{0x0a, 0xff}); err == nil {
		t.Error("a truncated request was accepted")
	}
}
