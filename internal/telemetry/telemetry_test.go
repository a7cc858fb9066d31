package telemetry

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/tasks"
	"denis.io/fleet/internal/worker"
)

// A traceparent as opentelemetry-instrumentation-celery writes it into the message headers
// of a sampled producer span.
const (
	producerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	producerSpan  = "00f067aa0ba902b7"
	traceparent   = "00-" + producerTrace + "-" + producerSpan + "-01"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTelemetry(t *testing.T, exp sdktrace.SpanExporter, enabled bool) *Telemetry {
	t.Helper()
	tel, err := New(context.Background(), Config{Hostname: "fleet@test", System: "redis", Enabled: enabled,
		Exporter: exp, Logger: quiet(), Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

func request(id string, headers map[string]any) *tasks.Request {
	return &tasks.Request{ID: id, Name: "diag.add", Retries: 2, Headers: headers,
		Delivery: tasks.DeliveryInfo{Queue: "q1", RoutingKey: "q1"}}
}

func info(id string) *worker.TaskInfo { return &worker.TaskInfo{ID: id, Name: "diag.add", Queue: "q1"} }

// TestConsumerSpan: the handler runs inside a consumer span that continues the producer's
// trace from the traceparent header, named run/<task> with the messaging attributes; the
// span ends with the outcome the worker reports; a task without headers starts a trace.
func TestConsumerSpan(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tel := newTelemetry(t, exp, true)
	tr := tel.NewTracker("fleet@test")
	var inHandler trace.SpanContext
	h := tr.Middleware(tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
		inHandler = trace.SpanContextFromContext(ctx)
		if r.ID == "t-fail" {
			return nil, errors.New("boom")
		}
		return 5, nil
	}))

	tests := []struct {
		id       string
		headers  map[string]any
		end      func()
		outcome  string
		parented bool
	}{
		{"t-ok", map[string]any{"traceparent": traceparent, "tracestate": "vendor=x"}, func() { tr.TaskSucceeded(info("t-ok"), time.Millisecond, 5) }, "success", true},
		{"t-fail", map[string]any{"traceparent": traceparent}, func() {
			tr.TaskFailed(info("t-fail"), protocol.ExceptionInfo{Type: "RuntimeError", Message: []any{"boom"}}, "")
		}, "failure", true},
		{"t-root", nil, func() { tr.TaskRetried(info("t-root"), protocol.ExceptionInfo{Type: "Retry"}, "") }, "retry", false},
	}
	for _, tc := range tests {
		_, _ = h.ServeTask(context.Background(), request(tc.id, tc.headers))
		if !inHandler.IsValid() {
			t.Fatalf("%s: no span in the handler's context", tc.id)
		}
		tc.end()
		_ = tel.ForceFlush(context.Background())
		spans := exp.GetSpans()
		s := spans[len(spans)-1]
		if s.Name != "run/diag.add" || s.SpanKind != trace.SpanKindConsumer || s.SpanContext.SpanID() != inHandler.SpanID() {
			t.Fatalf("%s: span %q kind %v", tc.id, s.Name, s.SpanKind)
		}
		if got := s.Parent.TraceID().String() == producerTrace && s.Parent.SpanID().String() == producerSpan; got != tc.parented {
			t.Fatalf("%s: parent %v, want parented=%v", tc.id, s.Parent, tc.parented)
		}
		if tc.parented && s.SpanContext.TraceID().String() != producerTrace {
			t.Fatalf("%s: trace %s does not continue the producer's", tc.id, s.SpanContext.TraceID())
		}
		attrs := map[string]string{}
		for _, a := range s.Attributes {
			attrs[string(a.Key)] = a.Value.String()
		}
		want := map[string]string{"messaging.system": "redis", "messaging.destination.name": "q1",
			"messaging.operation.type": "process", "messaging.message.id": tc.id, "celery.task_name": "diag.add",
			"celery.retries": "2", "fleet.outcome": tc.outcome}
		for k, v := range want {
			if attrs[k] != v {
				t.Errorf("%s: attribute %s = %q, want %q (all: %v)", tc.id, k, attrs[k], v, attrs)
			}
		}
	}
	if tr.Open() != 0 {
		t.Fatalf("%d spans left open", tr.Open())
	}
}

// TestSwitch: with the switch off no span is recorded or exported, yet the handler still
// has a valid span context (trace ids reach logs and published messages); switched on
// again, spans are exported.
func TestSwitch(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tel := newTelemetry(t, exp, false)
	tr := tel.NewTracker("fleet@test")
	var sc trace.SpanContext
	h := tr.Middleware(tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
		sc = trace.SpanContextFromContext(ctx)
		return nil, nil
	}))
	_, _ = h.ServeTask(context.Background(), request("off", map[string]any{"traceparent": traceparent}))
	tr.TaskSucceeded(info("off"), 0, nil)
	if !sc.IsValid() || sc.TraceID().String() != producerTrace || sc.IsSampled() {
		t.Fatalf("span context while off: %v sampled=%v", sc, sc.IsSampled())
	}
	tel.SetEnabled(true)
	_, _ = h.ServeTask(context.Background(), request("on", nil))
	tr.TaskSucceeded(info("on"), 0, nil)
	_ = tel.ForceFlush(context.Background())
	if n := len(exp.GetSpans()); n != 1 {
		t.Fatalf("%d spans exported, want 1 (only while on)", n)
	}
}

// TestWrapBrokerAndLogs: messages published for a task (a retry with its id, a callback
// naming it as parent, an rpc result under its correlation id) carry the task span's
// traceparent on the real Redis broker; log lines naming the task carry its trace id.
func TestWrapBrokerAndLogs(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tel := newTelemetry(t, exp, true)
	tr := tel.NewTracker("fleet@test")

	prefix := "teltest" + randHex() + ":"
	ctx := context.Background()
	rb, err := redis.New(ctx, redis.Options{URL: "redis://127.0.0.1:6379/5", KeyPrefix: prefix, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: 5})
	t.Cleanup(func() {
		_ = rb.Close()
		if keys, _ := rdb.Keys(ctx, prefix+"*").Result(); len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		_ = rdb.Close()
	})
	b := WrapBroker(rb, tr)

	var logs bytes.Buffer
	log := slog.New(LogHandler(slog.NewJSONHandler(&logs, nil), tr))
	var taskSC trace.SpanContext
	h := tr.Middleware(tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
		taskSC = trace.SpanContextFromContext(ctx)
		log.InfoContext(ctx, "inside the handler")
		return nil, nil
	}))
	_, _ = h.ServeTask(ctx, request("task-1", map[string]any{"traceparent": traceparent}))
	log.With("task_id", "task-1").Info("after the handler")
	log.Info("unrelated line", "task_id", "other")

	msgs := []*protocol.Message{
		{Headers: map[string]any{"id": "task-1", "traceparent": traceparent}, Body: []byte("retry")},
		{Headers: map[string]any{"id": "child", "parent_id": "task-1"}, Body: []byte("callback")},
		{Headers: map[string]any{}, Properties: protocol.Properties{CorrelationID: "task-1"}, Body: []byte("result")},
		{Headers: map[string]any{"id": "stranger"}, Body: []byte("untouched")},
	}
	for _, m := range msgs {
		if err := b.Publish(ctx, broker.Publishing{RoutingKey: "out", Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	want := "00-" + taskSC.TraceID().String() + "-" + taskSC.SpanID().String() + "-01"
	items, err := rdb.LRange(ctx, prefix+"out", 0, -1).Result()
	if err != nil || len(items) != 4 {
		t.Fatalf("published %v (%v)", items, err)
	}
	for _, it := range items {
		var env struct {
			Headers map[string]any `json:"headers"`
			Body    string         `json:"body"`
		}
		if err := json.Unmarshal([]byte(it), &env); err != nil {
			t.Fatal(err)
		}
		got, _ := env.Headers["traceparent"].(string)
		if env.Headers["id"] == "stranger" {
			if got != "" {
				t.Errorf("unrelated message got traceparent %q", got)
			}
			continue
		}
		if got != want {
			t.Errorf("message %v: traceparent %q, want %q", env.Headers, got, want)
		}
	}
	if msgs[0].Headers["traceparent"] != traceparent {
		t.Error("the caller's message was modified")
	}

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("log lines: %q", lines)
	}
	for i, l := range lines {
		var m map[string]any
		_ = json.Unmarshal([]byte(l), &m)
		has := m["trace_id"] == taskSC.TraceID().String() && m["span_id"] == taskSC.SpanID().String()
		if has != (i < 2) {
			t.Errorf("line %d %s: trace ids present=%v", i, l, has)
		}
	}
}

// TestOTLPExport: with OTEL_EXPORTER_OTLP_ENDPOINT set, spans reach a real OTLP/HTTP
// receiver (protobuf over POST /v1/traces) with the resource's service name.
func TestOTLPExport(t *testing.T) {
	rcv := startReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+rcv.addr)
	t.Setenv("OTEL_SERVICE_NAME", "fleet-test")
	tel, err := New(context.Background(), Config{Hostname: "fleet@test", System: "rabbitmq", Enabled: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if !tel.Exporting() {
		t.Fatal("no exporter although an endpoint is set")
	}
	tr := tel.NewTracker("fleet@test")
	h := tr.Middleware(tasks.HandlerFunc(func(context.Context, *tasks.Request) (any, error) { return nil, nil }))
	_, _ = h.ServeTask(context.Background(), request("otlp-1", map[string]any{"traceparent": traceparent}))
	tr.TaskSucceeded(info("otlp-1"), 0, nil)
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := rcv.spans()
	if len(spans) != 1 {
		t.Fatalf("receiver got %d spans", len(spans))
	}
	s := spans[0]
	if s.name != "run/diag.add" || s.traceID != producerTrace || s.parentID != producerSpan || s.service != "fleet-test" {
		t.Fatalf("exported span %+v", s)
	}
}

// TestNoEndpointNoExport: without an endpoint nothing is exported (and New succeeds).
func TestNoEndpointNoExport(t *testing.T) {
	env := map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
	tel, err := New(context.Background(), Config{Enabled: true, Logger: quiet(), Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if tel.Exporting() {
		t.Fatal("exporting without an endpoint")
	}
	if _, err := New(context.Background(), Config{Getenv: func(k string) string {
		return map[string]string{"OTEL_TRACES_SAMPLER": "bogus"}[k]
	}}); err == nil {
		t.Fatal("a bad OTEL_TRACES_SAMPLER was accepted")
	}
}

func randHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// receiver is a minimal OTLP/HTTP trace receiver.
type receiver struct {
	addr string
	mu   sync.Mutex
	got  []receivedSpan
}

type receivedSpan struct {
	name, traceID, parentID, service string
}

func startReceiver(t *testing.T) *receiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" || err != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		var ex collectortrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &ex); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range ex.ResourceSpans {
			svc := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					svc = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					r.got = append(r.got, receivedSpan{name: s.Name, traceID: hex.EncodeToString(s.TraceId),
						parentID: hex.EncodeToString(s.ParentSpanId), service: svc})
				}
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return r
}

func (r *receiver) spans() []receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]receivedSpan(nil), r.got...)
}

// TestNoExporterSpanContext: without an exporter no span is made, but the handler's context
// carries a span context that continues the producer's trace (sampled as the provider
// would decide, tracestate kept) or starts a new one, and the tracker knows it for logs
// and published messages until after the outcome.
func TestNoExporterSpanContext(t *testing.T) {
	tel, err := New(context.Background(), Config{Enabled: true, Logger: quiet(), Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	tr := tel.NewTracker("fleet@test")
	var sc trace.SpanContext
	var recording bool
	h := tr.Middleware(tasks.HandlerFunc(func(ctx context.Context, r *tasks.Request) (any, error) {
		sc = trace.SpanContextFromContext(ctx)
		recording = trace.SpanFromContext(ctx).IsRecording()
		return nil, nil
	}))
	tests := []struct {
		id      string
		headers map[string]any
		parent  bool
	}{
		{"child", map[string]any{"traceparent": traceparent, "tracestate": "vendor=x"}, true},
		{"root", nil, false},
	}
	for _, tc := range tests {
		_, _ = h.ServeTask(context.Background(), request(tc.id, tc.headers))
		if !sc.IsValid() || recording {
			t.Fatalf("%s: span context %v valid=%v recording=%v", tc.id, sc, sc.IsValid(), recording)
		}
		if got := sc.TraceID().String() == producerTrace; got != tc.parent {
			t.Errorf("%s: trace %s, continues the producer's = %v, want %v", tc.id, sc.TraceID(), got, tc.parent)
		}
		if sc.SpanID().String() == producerSpan || !sc.IsSampled() {
			t.Errorf("%s: span id %s sampled %v", tc.id, sc.SpanID(), sc.IsSampled())
		}
		if tc.parent && sc.TraceState().Get("vendor") != "x" {
			t.Errorf("%s: tracestate %q lost", tc.id, sc.TraceState())
		}
		if got, ok := tr.SpanContext(tc.id); !ok || !got.Equal(sc) {
			t.Errorf("%s: tracker has %v (%v) while open", tc.id, got, ok)
		}
		tr.TaskSucceeded(info(tc.id), 0, nil)
		if got, ok := tr.SpanContext(tc.id); !ok || !got.Equal(sc) {
			t.Errorf("%s: tracker has %v (%v) after the outcome", tc.id, got, ok)
		}
	}
	if tr.Open() != 0 {
		t.Fatalf("%d spans left open", tr.Open())
	}
}

// TestExportFailuresLogged: a collector that refuses spans gives one warning in the
// worker's log for the whole run of failures, and one line when it accepts them again.
func TestExportFailuresLogged(t *testing.T) {
	var refuse sync.Map
	refuse.Store("on", true)
	srv := &http.Server{ReadHeaderTimeout: time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if v, _ := refuse.Load("on"); v.(bool) {
			http.Error(w, "bad request", http.StatusBadRequest) // not retried
			return
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + ln.Addr().String()}
	tel, err := New(context.Background(), Config{Enabled: true, Logger: log, Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	exp := tel.provider // the batcher exports on ForceFlush
	tr := tel.NewTracker("fleet@test")
	run := func(id string) {
		h := tr.Middleware(tasks.HandlerFunc(func(context.Context, *tasks.Request) (any, error) { return nil, nil }))
		_, _ = h.ServeTask(context.Background(), request(id, nil))
		tr.TaskSucceeded(info(id), 0, nil)
		if err := exp.ForceFlush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	run("a")
	run("b")
	refuse.Store("on", false)
	run("c")
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if n := strings.Count(out, "span export failed"); n != 1 {
		t.Errorf("%d failure warnings, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "span export recovered"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, out)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
