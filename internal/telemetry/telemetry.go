// Package telemetry is the worker's OpenTelemetry tracing: a consumer span per task run
// that continues the trace a Python producer started (W3C traceparent/tracestate in the
// Celery message headers, where opentelemetry-instrumentation-celery puts them), the same
// headers written on every message the worker publishes (retries, callbacks, results over
// rpc://, dead letters), the trace id on every task-scoped log line, and OTLP/HTTP export
// configured by the standard OTEL_* environment variables: off unless an endpoint is set,
// and switchable live (SetEnabled; the TELEMETRY_ENABLED flag drives it).
//
// While export is off no spans are created, but every task still gets a span context (the
// producer's trace continued, a new span id), so trace ids still reach the logs and the
// published messages at the cost of two random ids per task.
package telemetry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"denis.io/fleet/internal/telemetry/otlphttp"
)

// Config configures tracing.
type Config struct {
	// ServiceName is the default service.name (OTEL_SERVICE_NAME wins); default
	// "fleet-worker".
	ServiceName string
	// Version is service.version.
	Version string
	// Hostname is the worker's node name (the celery.hostname resource attribute).
	Hostname string
	// System is messaging.system of the consumer spans: "rabbitmq" or "redis".
	System string
	// Enabled is the initial state of the export switch (SetEnabled changes it).
	Enabled bool
	// Exporter overrides the environment: spans go to it (tests use an in-memory one).
	Exporter sdktrace.SpanExporter
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Stderr receives spans when OTEL_TRACES_EXPORTER=console; nil means os.Stderr.
	Stderr io.Writer
	Logger *slog.Logger
}

// Telemetry owns the tracer provider and the export switch.
type Telemetry struct {
	cfg        Config
	provider   *sdktrace.TracerProvider
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	enabled    atomic.Bool
	exporting  bool
	sampler    sdktrace.Sampler // the provider's, export switch included
	log        *slog.Logger
}

// New builds the tracer provider. Export is set up when cfg.Exporter is given or when
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set (OTLP over
// HTTP/protobuf; the exporter reads the other OTEL_EXPORTER_OTLP_* variables itself), or
// OTEL_TRACES_EXPORTER=console; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn
// it off. OTEL_TRACES_SAMPLER(_ARG) choose the sampler, OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES the resource.
func New(ctx context.Context, cfg Config) (*Telemetry, error) {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.ServiceName == "" {
		cfg.ServiceName = "fleet-worker"
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Telemetry{cfg: cfg, propagator: propagation.TraceContext{}, log: cfg.Logger.With("component", "telemetry")}
	t.enabled.Store(cfg.Enabled)

	exp, err := t.exporter(ctx)
	if err != nil {
		return nil, err
	}
	sampler, err := envSampler(cfg.Getenv)
	if err != nil {
		return nil, err
	}
	t.sampler = switchSampler{on: &t.enabled, next: sampler}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithSampler(t.sampler),
		sdktrace.WithResource(t.resource(ctx)),
	}
	if exp != nil {
		t.exporting = true
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	t.provider = sdktrace.NewTracerProvider(opts...)
	t.tracer = t.provider.Tracer("denis.io/fleet/worker", trace.WithInstrumentationVersion(cfg.Version))
	if t.exporting {
		t.log.Info("tracing export configured", "enabled", t.Enabled())
	}
	return t, nil
}

func (t *Telemetry) exporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	env := t.cfg.Getenv
	if t.cfg.Exporter != nil {
		return t.cfg.Exporter, nil
	}
	if strings.EqualFold(env("OTEL_SDK_DISABLED"), "true") {
		return nil, nil
	}
	switch strings.ToLower(strings.TrimSpace(env("OTEL_TRACES_EXPORTER"))) {
	case "none":
		return nil, nil
	case "console":
		exp, err := stdouttrace.New(stdouttrace.WithWriter(t.cfg.Stderr))
		if err != nil {
			return nil, fmt.Errorf("telemetry: console exporter: %w", err)
		}
		return exp, nil
	}
	if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" && env("OTEL_EXPORTER_OTLP_ENDPOINT") == "" {
		return nil, nil
	}
	proto := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = env("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if proto != "" && proto != "http/protobuf" {
		t.log.Warn("only OTLP over http/protobuf is supported; using it", "OTEL_EXPORTER_OTLP_PROTOCOL", proto)
	}
	exp, err := otlphttp.New(env, otlphttp.WithLogger(t.log))
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP/HTTP exporter: %w", err)
	}
	return &loggedExporter{SpanExporter: exp, log: t.log, endpoint: exp.Endpoint()}, nil
}

func (t *Telemetry) resource(ctx context.Context) *resource.Resource {
	attrs := []resource.Option{
		resource.WithAttributes(semconv.ServiceName(t.cfg.ServiceName)),
		resource.WithHost(),
		resource.WithProcessPID(),
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win
	}
	if t.cfg.Version != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(t.cfg.Version)))
	}
	if t.cfg.Hostname != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceInstanceID(t.cfg.Hostname)))
	}
	r, err := resource.New(ctx, attrs...)
	if err != nil && r == nil {
		t.log.Warn("telemetry resource incomplete", "err", err)
		return resource.Default()
	}
	return r
}

// Tracer is the worker's tracer.
func (t *Telemetry) Tracer() trace.Tracer { return t.tracer }

// Propagator is the W3C trace-context propagator used on Celery headers.
func (t *Telemetry) Propagator() propagation.TextMapPropagator { return t.propagator }

// Exporting reports whether an exporter is configured.
func (t *Telemetry) Exporting() bool { return t.exporting }

// Enabled reports whether new spans are recorded and exported.
func (t *Telemetry) Enabled() bool { return t.enabled.Load() }

// SetEnabled switches recording and export of new spans; trace context still propagates
// while off.
func (t *Telemetry) SetEnabled(on bool) {
	if t.enabled.Swap(on) != on {
		t.log.Info("tracing switched", "enabled", on, "exporting", t.exporting)
	}
}

// Shutdown flushes the spans still queued and stops the exporter.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if err := t.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}

// ForceFlush exports the spans queued so far.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	if err := t.provider.ForceFlush(ctx); err != nil {
		return fmt.Errorf("telemetry: flush: %w", err)
	}
	return nil
}

// spanContext makes the span context of a span that is not recorded: the trace of the
// parent in pctx (a new one without), a new span id, and the sampling decision the
// provider would have made, so that what follows downstream samples alike.
func (t *Telemetry) spanContext(pctx context.Context, name string) trace.SpanContext {
	parent := trace.SpanContextFromContext(pctx)
	cfg := trace.SpanContextConfig{TraceID: parent.TraceID()}
	if !parent.TraceID().IsValid() {
		binary.BigEndian.PutUint64(cfg.TraceID[:8], rand.Uint64())
		binary.BigEndian.PutUint64(cfg.TraceID[8:], rand.Uint64())
	}
	for !cfg.SpanID.IsValid() {
		binary.BigEndian.PutUint64(cfg.SpanID[:], rand.Uint64())
	}
	res := t.sampler.ShouldSample(sdktrace.SamplingParameters{ParentContext: pctx, TraceID: cfg.TraceID,
		Name: name, Kind: trace.SpanKindConsumer})
	if res.Decision == sdktrace.RecordAndSample {
		cfg.TraceFlags = trace.FlagsSampled
	}
	cfg.TraceState = res.Tracestate
	return trace.NewSpanContext(cfg)
}

// switchSampler drops every span while the switch is off, else asks next.
type switchSampler struct {
	on   *atomic.Bool
	next sdktrace.Sampler
}

func (s switchSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if !s.on.Load() {
		return sdktrace.SamplingResult{Decision: sdktrace.Drop,
			Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
	}
	return s.next.ShouldSample(p)
}

func (s switchSampler) Description() string { return "Switch{" + s.next.Description() + "}" }

// envSampler is the sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name
// (default parentbased_always_on).
func envSampler(getenv func(string) string) (sdktrace.Sampler, error) {
	name := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER")))
	ratio := func() (float64, error) {
		arg := getenv("OTEL_TRACES_SAMPLER_ARG")
		if arg == "" {
			return 1, nil
		}
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || f < 0 || f > 1 {
			return 0, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER_ARG=%q: want a ratio from 0 to 1", arg)
		}
		return f, nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio", "parentbased_traceidratio":
		f, err := ratio()
		if err != nil {
			return nil, err
		}
		if name == "traceidratio" {
			return sdktrace.TraceIDRatioBased(f), nil
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(f)), nil
	}
	return nil, errors.New("telemetry: OTEL_TRACES_SAMPLER=" + name + " is not supported")
}

// loggedExporter reports export failures in the worker's own JSON log, once per run of
// failures and once at the recovery, and hands the span processor nil (which would
// otherwise print every failure through OpenTelemetry's global handler, as plain text).
type loggedExporter struct {
	sdktrace.SpanExporter
	log      *slog.Logger
	endpoint string
	failing  atomic.Bool
}

func (e *loggedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	switch {
	case err != nil && !e.failing.Swap(true):
		e.log.Warn("span export failed; spans are dropped until the collector answers", "endpoint", e.endpoint, "spans", len(spans), "err", err)
	case err == nil && e.failing.Swap(false):
		e.log.Info("span export recovered", "endpoint", e.endpoint)
	}
	return nil
}
