package otlphttp

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// benchSpans is a batch as the worker makes them: consumer spans with ten attributes, an
// event on some, all from one provider.
func benchSpans(b *testing.B, n int) []sdktrace.ReadOnlySpan {
	b.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithResource(resource.NewWithAttributes("",
		attribute.String("service.name", "fleet-worker"), attribute.String("service.version", "1.0.0"),
		attribute.String("host.name", "node-1"), attribute.Int("process.pid", 4242))))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer("denis.io/fleet/worker", trace.WithInstrumentationVersion("1.0.0"))
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: remoteTrace, SpanID: remoteSpan,
		TraceFlags: trace.FlagsSampled, Remote: true})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	for i := range n {
		_, s := tr.Start(ctx, "run/diag.add", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", "celery"),
			attribute.String("messaging.message.id", "5f0c2a8e-"+strconv.Itoa(i)),
			attribute.String("celery.task_name", "diag.add"),
			attribute.String("celery.hostname", "fleet@node-1"),
			attribute.Int("celery.retries", i%3),
			attribute.Bool("celery.eta", i%2 == 0),
			attribute.Float64("celery.runtime", float64(i)/1000),
			attribute.StringSlice("celery.queues", []string{"celery", "q1"}),
		))
		if i%4 == 0 {
			s.AddEvent("retry", trace.WithAttributes(attribute.String("reason", "timeout")))
			s.SetStatus(codes.Error, "timeout")
		}
		s.End()
	}
	return rec.Ended()
}

func discardServer(b *testing.B) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkEncode compares encoding and exporting 1000 spans with this package and with
// otlptracehttp (to a test server that discards the body).
func BenchmarkEncode(b *testing.B) {
	spans := benchSpans(b, 1000)
	ctx := context.Background()

	b.Run("otlphttp/encode", func(b *testing.B) {
		var e encoder
		b.ReportAllocs()
		for b.Loop() {
			e.encode(spans)
		}
		b.ReportMetric(float64(len(e.buf)), "bytes/req")
	})
	for _, gz := range []string{"none", "gzip"} {
		b.Run("otlphttp/export/"+gz, func(b *testing.B) {
			srv := discardServer(b)
			e, err := New(env(map[string]string{envEndpoint: srv.URL, envCompression: gz}))
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = e.Shutdown(ctx) }()
			b.ReportAllocs()
			for b.Loop() {
				if err := e.ExportSpans(ctx, spans); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("otlptracehttp/export/"+gz, func(b *testing.B) {
			srv := discardServer(b)
			opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(srv.URL + "/v1/traces"),
				otlptracehttp.WithTimeout(10 * time.Second)}
			if gz == "gzip" {
				opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
			}
			e, err := otlptracehttp.New(ctx, opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = e.Shutdown(ctx) }()
			b.ReportAllocs()
			for b.Loop() {
				if err := e.ExportSpans(ctx, spans); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkExportAfterGC exports 1000 spans after a garbage collection each time, as in a
// busy worker, where the heap is collected many times between two exports: the scratch
// space must survive collections (B/op stays near zero) rather than grow anew per export.
func BenchmarkExportAfterGC(b *testing.B) {
	spans := benchSpans(b, 1000)
	ctx := context.Background()
	srv := discardServer(b)
	e, err := New(env(map[string]string{envEndpoint: srv.URL}))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = e.Shutdown(ctx) }()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		b.StartTimer()
		if err := e.ExportSpans(ctx, spans); err != nil {
			b.Fatal(err)
		}
	}
}
