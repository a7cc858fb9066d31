package internal
import (
 _ "github.com/prometheus/client_golang/prometheus"
 _ "github.com/prometheus/client_golang/prometheus/promhttp"
 _ "go.opentelemetry.io/otel"
 _ "go.opentelemetry.io/otel/sdk/trace"
 _ "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
 _ "go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
 _ "go.opentelemetry.io/otel/trace"
 _ "go.opentelemetry.io/otel/propagation"
 _ "go.opentelemetry.io/otel/semconv/v1.26.0"
)
