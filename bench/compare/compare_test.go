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
