package otlphttp

import (
	"bytes"
	"context"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

var (
	remoteTrace = trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}
	remoteSpan  = trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}
	linkTrace   = trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	linkSpan    = trace.SpanID{8, 7, 6, 5, 4, 3, 2, 1}
	t0          = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
)

func mustTraceState(t testing.TB, s string) trace.TraceState {
	t.Helper()
	ts, err := trace.ParseTraceState(s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// allAttributes has an attribute of every type the SDK records.
func allAttributes() []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("str", "value"),
		attribute.String("str.empty", ""),
		attribute.Bool("bool.true", true),
		attribute.Bool("bool.false", false),
		attribute.Int64("int", -42),
		attribute.Int("int.zero", 0),
		attribute.Int64("int.max", math.MaxInt64),
		attribute.Float64("double", 3.25),
		attribute.Float64("double.zero", 0),
		attribute.StringSlice("strs", []string{"a", "", strings.Repeat("x", 300)}),
		attribute.BoolSlice("bools", []bool{true, false}),
		attribute.Int64Slice("ints", []int64{1, -1, math.MinInt64}),
		attribute.Float64Slice("doubles", []float64{0.5, -2, math.Inf(1)}),
		attribute.StringSlice("strs.empty", nil),
		attribute.ByteSlice("bytes", []byte{0, 1, 0xff}),
		attribute.Slice("mixed", attribute.StringValue("s"), attribute.Int64Value(7), attribute.BoolSliceValue([]bool{true})),
		attribute.Map("map", attribute.String("k", "v"), attribute.Int("n", 1)),
		attribute.String("long", strings.Repeat("y", 1000)),
	}
}

// sdkSpans records spans through real tracer providers: two resources, two scopes on the
// first, a remote parent with a trace state, a local child, links, events, an error.
func sdkSpans(t testing.TB) []sdktrace.ReadOnlySpan {
	t.Helper()
	resA := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.26.0",
		attribute.String("service.name", "fleet-worker"), attribute.Int("process.pid", 4242))
	resB := resource.NewWithAttributes("", attribute.String("service.name", "other"))

	rec := tracetest.NewSpanRecorder()
	tpA := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithResource(resA))
	tpB := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithResource(resB))
	t.Cleanup(func() { _ = tpA.Shutdown(context.Background()); _ = tpB.Shutdown(context.Background()) })

	worker := tpA.Tracer("denis.io/fleet/worker", trace.WithInstrumentationVersion("1.2.3"),
		trace.WithSchemaURL("https://opentelemetry.io/schemas/1.24.0"),
		trace.WithInstrumentationAttributes(attribute.String("scope.attr", "x"), attribute.Bool("scope.flag", true)))
	broker := tpA.Tracer("denis.io/fleet/broker")
	other := tpB.Tracer("other")

	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: remoteTrace, SpanID: remoteSpan,
		TraceFlags: trace.FlagsSampled, TraceState: mustTraceState(t, "vendor=abc,congo=t61rcWkgMzE"), Remote: true})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	linked := trace.NewSpanContext(trace.SpanContextConfig{TraceID: linkTrace, SpanID: linkSpan,
		TraceState: mustTraceState(t, "l=1"), Remote: true})
	localLinked := trace.NewSpanContext(trace.SpanContextConfig{TraceID: linkTrace, SpanID: trace.SpanID{9, 9, 9, 9, 9, 9, 9, 9},
		TraceFlags: trace.FlagsSampled})

	ctx, run := worker.Start(ctx, "run/diag.add", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(t0), trace.WithAttributes(allAttributes()...),
		trace.WithLinks(trace.Link{SpanContext: linked, Attributes: []attribute.KeyValue{attribute.String("link.attr", "l")}},
			trace.Link{SpanContext: localLinked}))
	run.AddEvent("started", trace.WithTimestamp(t0.Add(time.Millisecond)),
		trace.WithAttributes(attribute.Int("attempt", 2), attribute.StringSlice("queues", []string{"q1"})))
	run.AddEvent("no attributes", trace.WithTimestamp(t0.Add(2*time.Millisecond)))

	_, pub := broker.Start(ctx, "publish", trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(t0.Add(3*time.Millisecond)))
	pub.SetStatus(codes.Ok, "ignored for ok")
	pub.End(trace.WithTimestamp(t0.Add(4 * time.Millisecond)))

	_, o := other.Start(context.Background(), "other root", trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(t0))
	o.End(trace.WithTimestamp(t0.Add(time.Second)))

	_, c := worker.Start(ctx, "consume", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithTimestamp(t0.Add(5*time.Millisecond)))
	c.End(trace.WithTimestamp(t0.Add(6 * time.Millisecond)))

	run.SetStatus(codes.Error, "boom")
	run.End(trace.WithTimestamp(t0.Add(10 * time.Millisecond)))

	_, internal := worker.Start(context.Background(), "internal root", trace.WithTimestamp(t0))
	internal.End(trace.WithTimestamp(t0.Add(time.Microsecond)))

	// Order: publish (A/broker), other (B), consume (A/worker), run (A/worker),
	// internal (A/worker): the groups interleave.
	return rec.Ended()
}

// stubSpans covers what the SDK does not produce by itself: an unspecified kind, an
// attribute without a value, dropped counts, a nil resource and the zero scope.
func stubSpans() []sdktrace.ReadOnlySpan {
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: linkTrace, SpanID: trace.SpanID{1}})
	return tracetest.SpanStubs{
		{
			Name: "stub", SpanContext: sc, StartTime: t0, EndTime: t0.Add(time.Second),
			Attributes:        []attribute.KeyValue{{Key: "empty"}, attribute.Int("n", 1)},
			DroppedAttributes: 3, DroppedEvents: 4, DroppedLinks: 5,
			Events: []sdktrace.Event{{Name: "ev", Time: t0, DroppedAttributeCount: 6}},
			Links:  []sdktrace.Link{{SpanContext: sc, DroppedAttributeCount: 7}},
			Status: sdktrace.Status{Code: codes.Error},
		},
		{Name: "stub kinds", SpanContext: sc, SpanKind: trace.SpanKindUnspecified},
	}.Snapshots()
}

func decodeRequest(t testing.TB, b []byte) *collectortrace.ExportTraceServiceRequest {
	t.Helper()
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return &req
}

func encodeSpans(spans []sdktrace.ReadOnlySpan) []byte {
	var e encoder
	return slices.Clone(e.encode(spans))
}

func attrMap(kvs []*commonpb.KeyValue) map[string]*commonpb.AnyValue {
	m := map[string]*commonpb.AnyValue{}
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

func spansByName(req *collectortrace.ExportTraceServiceRequest) map[string]*tracepb.Span {
	m := map[string]*tracepb.Span{}
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				m[s.Name] = s
			}
		}
	}
	return m
}

// TestEncodeFields decodes the request with the generated OTLP code and checks every
// field against what the spans were made of.
func TestEncodeFields(t *testing.T) {
	spans := sdkSpans(t)
	req := decodeRequest(t, encodeSpans(spans))

	// Grouping: resource A (worker scope, broker scope), resource B, in order of first
	// appearance of the resource; spans in batch order within a scope.
	var layout []string
	for _, rs := range req.ResourceSpans {
		var line []string
		line = append(line, attrMap(rs.Resource.Attributes)["service.name"].GetStringValue(), rs.SchemaUrl)
		for _, ss := range rs.ScopeSpans {
			line = append(line, "["+ss.Scope.GetName()+" "+ss.SchemaUrl)
			for _, s := range ss.Spans {
				line = append(line, s.Name)
			}
			line = append(line, "]")
		}
		layout = append(layout, strings.Join(line, " "))
	}
	want := []string{
		"fleet-worker https://opentelemetry.io/schemas/1.26.0 [denis.io/fleet/broker  publish ] [denis.io/fleet/worker https://opentelemetry.io/schemas/1.24.0 consume run/diag.add internal root ]",
		"other  [other  other root ]",
	}
	if !slices.Equal(layout, want) {
		t.Fatalf("layout:\n%s\nwant:\n%s", strings.Join(layout, "\n"), strings.Join(want, "\n"))
	}

	resA := req.ResourceSpans[0]
	if got := attrMap(resA.Resource.Attributes)["process.pid"].GetIntValue(); got != 4242 || len(resA.Resource.Attributes) != 2 {
		t.Errorf("resource attributes: %v", resA.Resource.Attributes)
	}
	scope := resA.ScopeSpans[1].Scope
	if scope.Version != "1.2.3" || len(scope.Attributes) != 2 ||
		attrMap(scope.Attributes)["scope.attr"].GetStringValue() != "x" || !attrMap(scope.Attributes)["scope.flag"].GetBoolValue() {
		t.Errorf("scope: %v", scope)
	}

	byName := spansByName(req)
	run := byName["run/diag.add"]
	var src sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == "run/diag.add" {
			src = s
		}
	}
	sid := src.SpanContext().SpanID()
	if !bytes.Equal(run.TraceId, remoteTrace[:]) || !bytes.Equal(run.SpanId, sid[:]) || !bytes.Equal(run.ParentSpanId, remoteSpan[:]) {
		t.Errorf("ids: trace %x span %x parent %x", run.TraceId, run.SpanId, run.ParentSpanId)
	}
	if run.TraceState != "vendor=abc,congo=t61rcWkgMzE" {
		t.Errorf("trace state %q", run.TraceState)
	}
	if run.Flags != 0x301 { // sampled, has is_remote, parent is remote
		t.Errorf("flags %#x, want 0x301", run.Flags)
	}
	if run.Kind != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("kind %v", run.Kind)
	}
	if run.StartTimeUnixNano != uint64(t0.UnixNano()) || run.EndTimeUnixNano != uint64(t0.Add(10*time.Millisecond).UnixNano()) {
		t.Errorf("times %d %d", run.StartTimeUnixNano, run.EndTimeUnixNano)
	}
	if run.Status.GetCode() != tracepb.Status_STATUS_CODE_ERROR || run.Status.GetMessage() != "boom" {
		t.Errorf("status %v", run.Status)
	}
	if run.DroppedAttributesCount != 0 || run.DroppedEventsCount != 0 || run.DroppedLinksCount != 0 {
		t.Errorf("dropped counts %d %d %d", run.DroppedAttributesCount, run.DroppedEventsCount, run.DroppedLinksCount)
	}

	// Attributes, in order, with their values.
	attrs := allAttributes()
	if len(run.Attributes) != len(attrs) {
		t.Fatalf("%d attributes, want %d", len(run.Attributes), len(attrs))
	}
	for i, kv := range attrs {
		if got := run.Attributes[i]; got.Key != string(kv.Key) || !proto.Equal(got.Value, anyValue(kv.Value)) {
			t.Errorf("attribute %d: %v, want %s=%v", i, got, kv.Key, anyValue(kv.Value))
		}
	}
	if v := attrMap(run.Attributes)["str.empty"]; v == nil || v.Value == nil {
		t.Errorf("an empty string must still be a string value: %v", v)
	}
	if v := attrMap(run.Attributes)["bool.false"]; v == nil || v.Value == nil {
		t.Errorf("false must still be a bool value: %v", v)
	}

	if len(run.Events) != 2 {
		t.Fatalf("events %v", run.Events)
	}
	ev := run.Events[0]
	if ev.Name != "started" || ev.TimeUnixNano != uint64(t0.Add(time.Millisecond).UnixNano()) ||
		attrMap(ev.Attributes)["attempt"].GetIntValue() != 2 ||
		attrMap(ev.Attributes)["queues"].GetArrayValue().GetValues()[0].GetStringValue() != "q1" {
		t.Errorf("event %v", ev)
	}
	if ev := run.Events[1]; ev.Name != "no attributes" || len(ev.Attributes) != 0 {
		t.Errorf("event %v", ev)
	}

	if len(run.Links) != 2 {
		t.Fatalf("links %v", run.Links)
	}
	l := run.Links[0]
	if !bytes.Equal(l.TraceId, linkTrace[:]) || !bytes.Equal(l.SpanId, linkSpan[:]) || l.TraceState != "l=1" ||
		l.Flags != 0x300 || attrMap(l.Attributes)["link.attr"].GetStringValue() != "l" {
		t.Errorf("link %v", l)
	}
	if l := run.Links[1]; l.Flags != 0x101 || l.TraceState != "" {
		t.Errorf("local link flags %#x state %q, want 0x101 and none", l.Flags, l.TraceState)
	}

	// A local parent: is_remote known and false; ok status without its description.
	pub := byName["publish"]
	if !bytes.Equal(pub.ParentSpanId, sid[:]) || pub.Flags != 0x101 || pub.Kind != tracepb.Span_SPAN_KIND_PRODUCER ||
		pub.Status.GetCode() != tracepb.Status_STATUS_CODE_OK || pub.TraceState != run.TraceState {
		t.Errorf("publish %v", pub)
	}
	if s := byName["consume"]; s.Kind != tracepb.Span_SPAN_KIND_CONSUMER {
		t.Errorf("consume kind %v", s.Kind)
	}
	if s := byName["other root"]; s.Kind != tracepb.Span_SPAN_KIND_CLIENT || s.ParentSpanId != nil || s.Flags != 0x101 {
		t.Errorf("other root %v", s)
	}
	if s := byName["internal root"]; s.Kind != tracepb.Span_SPAN_KIND_INTERNAL || s.ParentSpanId != nil ||
		s.TraceState != "" || s.Status == nil || s.Status.Code != 0 {
		t.Errorf("internal root %v", s)
	}
}

func TestEncodeStubs(t *testing.T) {
	req := decodeRequest(t, encodeSpans(stubSpans()))
	if len(req.ResourceSpans) != 1 || req.ResourceSpans[0].Resource != nil || len(req.ResourceSpans[0].ScopeSpans) != 1 ||
		req.ResourceSpans[0].ScopeSpans[0].Scope != nil {
		t.Fatalf("a nil resource and the zero scope are omitted:\n%v", prototext.Format(req))
	}
	byName := spansByName(req)
	s := byName["stub"]
	if s.DroppedAttributesCount != 3 || s.DroppedEventsCount != 4 || s.DroppedLinksCount != 5 ||
		s.Events[0].DroppedAttributesCount != 6 || s.Links[0].DroppedAttributesCount != 7 {
		t.Errorf("dropped counts: %v", s)
	}
	if v := s.Attributes[0]; v.Key != "empty" || v.Value == nil || v.Value.Value != nil {
		t.Errorf("an attribute without a value is an empty AnyValue: %v", v)
	}
	if s.Flags != 0x100 || s.Status.Code != tracepb.Status_STATUS_CODE_ERROR || s.Status.Message != "" {
		t.Errorf("flags %#x status %v", s.Flags, s.Status)
	}
	k := byName["stub kinds"]
	if k.Kind != tracepb.Span_SPAN_KIND_UNSPECIFIED || k.StartTimeUnixNano != 0 || k.EndTimeUnixNano != 0 {
		t.Errorf("stub kinds: %v", k)
	}

	// Nil spans are skipped; nothing but nil spans is an empty request.
	withNil := append([]sdktrace.ReadOnlySpan{nil}, stubSpans()...)
	if got := spansByName(decodeRequest(t, encodeSpans(withNil))); len(got) != 2 {
		t.Errorf("with a nil span: %d spans", len(got))
	}
	if b := encodeSpans([]sdktrace.ReadOnlySpan{nil}); len(b) != 0 {
		t.Errorf("nil spans: %x", b)
	}
}

// TestEncodeCanonical: the bytes are what the generated code writes for the same message
// (fields in number order, shortest varints), and an encoder reused for other batches
// writes the same bytes again.
func TestEncodeCanonical(t *testing.T) {
	spans := append(sdkSpans(t), stubSpans()...)
	var e encoder
	first := slices.Clone(e.encode(spans))
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(decodeRequest(t, first))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, want) {
		t.Errorf("encoding differs from the generated code's:\n got %x\nwant %x", first, want)
	}
	e.encode(stubSpans())
	e.encode(spans[:1])
	if again := e.encode(spans); !bytes.Equal(again, first) {
		t.Error("a reused encoder writes different bytes")
	}
}

// TestEncodeMatchesOtlptracehttp: the request decodes to the message otlptracehttp sends
// for the same spans, but for link trace states, which otlptracehttp leaves out.
func TestEncodeMatchesOtlptracehttp(t *testing.T) {
	spans := append(sdkSpans(t), stubSpans()...)
	want := captureOtlptracehttp(t, spans)
	got := decodeRequest(t, encodeSpans(spans))

	for _, rs := range want.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				for _, l := range s.Links {
					if bytes.Equal(l.SpanId, linkSpan[:]) {
						l.TraceState = "l=1"
					}
				}
			}
		}
	}
	normalize(want)
	normalize(got)
	if !proto.Equal(got, want) {
		t.Errorf("got:\n%s\nwant (otlptracehttp):\n%s", prototext.Format(got), prototext.Format(want))
	}
}

// normalize orders resource spans and scope spans (otlptracehttp groups through maps).
func normalize(req *collectortrace.ExportTraceServiceRequest) {
	key := func(rs *tracepb.ResourceSpans) string {
		return attrMap(rs.GetResource().GetAttributes())["service.name"].GetStringValue()
	}
	slices.SortFunc(req.ResourceSpans, func(a, b *tracepb.ResourceSpans) int { return strings.Compare(key(a), key(b)) })
	for _, rs := range req.ResourceSpans {
		slices.SortFunc(rs.ScopeSpans, func(a, b *tracepb.ScopeSpans) int {
			return strings.Compare(a.GetScope().GetName(), b.GetScope().GetName())
		})
	}
}

// captureOtlptracehttp exports spans with otlptracehttp to a test server and returns the
// request it sent.
func captureOtlptracehttp(t *testing.T, spans []sdktrace.ReadOnlySpan) *collectortrace.ExportTraceServiceRequest {
	t.Helper()
	var mu sync.Mutex
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		body = b
		mu.Unlock()
	}))
	defer srv.Close()
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(srv.URL+"/v1/traces"),
		otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = exp.Shutdown(context.Background()) }()
	if err := exp.ExportSpans(context.Background(), spans); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return decodeRequest(t, body)
}

// anyValue is the AnyValue of v, built with the generated types.
func anyValue(v attribute.Value) *commonpb.AnyValue {
	switch v.Type() {
	case attribute.STRING:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v.AsString()}}
	case attribute.BOOL:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}}
	case attribute.INT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v.AsInt64()}}
	case attribute.FLOAT64:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}}
	case attribute.BYTESLICE:
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: v.AsByteSlice()}}
	case attribute.MAP:
		var kvs []*commonpb.KeyValue
		for _, kv := range v.AsMap() {
			kvs = append(kvs, &commonpb.KeyValue{Key: string(kv.Key), Value: anyValue(kv.Value)})
		}
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: kvs}}}
	}
	var vals []attribute.Value
	switch v.Type() {
	case attribute.STRINGSLICE:
		for _, x := range v.AsStringSlice() {
			vals = append(vals, attribute.StringValue(x))
		}
	case attribute.BOOLSLICE:
		for _, x := range v.AsBoolSlice() {
			vals = append(vals, attribute.BoolValue(x))
		}
	case attribute.INT64SLICE:
		for _, x := range v.AsInt64Slice() {
			vals = append(vals, attribute.Int64Value(x))
		}
	case attribute.FLOAT64SLICE:
		for _, x := range v.AsFloat64Slice() {
			vals = append(vals, attribute.Float64Value(x))
		}
	case attribute.SLICE:
		vals = v.AsSlice()
	default:
		return &commonpb.AnyValue{}
	}
	arr := &commonpb.ArrayValue{}
	for _, x := range vals {
		arr.Values = append(arr.Values, anyValue(x))
	}
	return &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: arr}}
}
