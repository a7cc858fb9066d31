package otlphttp

import (
	"math"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers from opentelemetry-proto (collector/trace/v1/trace_service.proto,
// trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto).
const (
	// ExportTraceServiceRequest
	fReqResourceSpans protowire.Number = 1

	// ExportTraceServiceResponse, ExportTracePartialSuccess
	fRespPartialSuccess protowire.Number = 1
	fPartialRejected    protowire.Number = 1
	fPartialMessage     protowire.Number = 2

	// ResourceSpans
	fRSResource   protowire.Number = 1
	fRSScopeSpans protowire.Number = 2
	fRSSchemaURL  protowire.Number = 3

	// ScopeSpans
	fSSScope     protowire.Number = 1
	fSSSpans     protowire.Number = 2
	fSSSchemaURL protowire.Number = 3

	// Span
	fSpanTraceID       protowire.Number = 1
	fSpanSpanID        protowire.Number = 2
	fSpanTraceState    protowire.Number = 3
	fSpanParentSpanID  protowire.Number = 4
	fSpanName          protowire.Number = 5
	fSpanKind          protowire.Number = 6
	fSpanStart         protowire.Number = 7
	fSpanEnd           protowire.Number = 8
	fSpanAttributes    protowire.Number = 9
	fSpanDroppedAttrs  protowire.Number = 10
	fSpanEvents        protowire.Number = 11
	fSpanDroppedEvents protowire.Number = 12
	fSpanLinks         protowire.Number = 13
	fSpanDroppedLinks  protowire.Number = 14
	fSpanStatus        protowire.Number = 15
	fSpanFlags         protowire.Number = 16

	// Span.Event
	fEventTime         protowire.Number = 1
	fEventName         protowire.Number = 2
	fEventAttributes   protowire.Number = 3
	fEventDroppedAttrs protowire.Number = 4

	// Span.Link
	fLinkTraceID      protowire.Number = 1
	fLinkSpanID       protowire.Number = 2
	fLinkTraceState   protowire.Number = 3
	fLinkAttributes   protowire.Number = 4
	fLinkDroppedAttrs protowire.Number = 5
	fLinkFlags        protowire.Number = 6

	// Status
	fStatusMessage protowire.Number = 2
	fStatusCode    protowire.Number = 3

	// Resource
	fResAttributes protowire.Number = 1

	// InstrumentationScope
	fScopeName       protowire.Number = 1
	fScopeVersion    protowire.Number = 2
	fScopeAttributes protowire.Number = 3

	// KeyValue, KeyValueList, ArrayValue
	fKVKey    protowire.Number = 1
	fKVValue  protowire.Number = 2
	fListVals protowire.Number = 1

	// AnyValue (oneof value)
	fAnyString protowire.Number = 1
	fAnyBool   protowire.Number = 2
	fAnyInt    protowire.Number = 3
	fAnyDouble protowire.Number = 4
	fAnyArray  protowire.Number = 5
	fAnyKVList protowire.Number = 6
	fAnyBytes  protowire.Number = 7
)

// SpanFlags bits (trace/v1/trace.proto): the low byte is the W3C trace flags.
const (
	flagHasIsRemote = 0x100
	flagIsRemote    = 0x200
)

// Status.StatusCode and Span.SpanKind values.
const (
	statusUnset = 0
	statusOK    = 1
	statusError = 2
)

// encoder turns spans into an ExportTraceServiceRequest. Its slices are scratch space kept
// between calls, so that an export in the steady state allocates nothing here.
type encoder struct {
	buf []byte

	resources []*resource.Resource // distinct resources, in order of first appearance
	scopes    []scopeGroup         // distinct (resource, scope) pairs, likewise
	groupOf   []int32              // per span: index in scopes, -1 for a nil span
	order     []int32              // span indexes grouped by scope (counting sort)

	// The encoded content of the last resource seen: resources are immutable and the
	// provider has one, so it is encoded once.
	cachedRes   *resource.Resource
	cachedBytes []byte
}

type scopeGroup struct {
	res   int32
	scope instrumentation.Scope
	n     int32 // spans
	start int32 // where its spans start in order
	next  int32 // where the next one goes, while filling order
}

// encode returns the request for spans, in e.buf (valid until the next call).
func (e *encoder) encode(spans []sdktrace.ReadOnlySpan) []byte {
	e.group(spans)
	b := e.buf[:0]
	for ri, res := range e.resources {
		var rs int
		b, rs = openMsg(b, fReqResourceSpans)
		if res != nil {
			var r int
			b, r = openMsg(b, fRSResource)
			b = append(b, e.resourceBytes(res)...)
			b = closeMsg(b, r)
		}
		for si := range e.scopes {
			g := &e.scopes[si]
			if int(g.res) != ri {
				continue
			}
			var ss int
			b, ss = openMsg(b, fRSScopeSpans)
			b = appendScope(b, &g.scope)
			for _, i := range e.order[g.start : g.start+g.n] {
				b = appendSpan(b, spans[i])
			}
			b = appendString(b, fSSSchemaURL, g.scope.SchemaURL)
			b = closeMsg(b, ss)
		}
		b = appendString(b, fRSSchemaURL, res.SchemaURL())
		b = closeMsg(b, rs)
	}
	e.buf = b

	// Do not keep the spans' resources and scopes alive through the scratch space.
	clear(e.resources)
	clear(e.scopes)
	e.resources, e.scopes = e.resources[:0], e.scopes[:0]
	return b
}

// group fills resources, scopes and order. Lookups are linear, starting with the group of
// the previous span: a batch holds one resource and a handful of scopes, usually in runs.
func (e *encoder) group(spans []sdktrace.ReadOnlySpan) {
	e.resources, e.scopes = e.resources[:0], e.scopes[:0]
	e.groupOf = grow(e.groupOf, len(spans))
	last := int32(-1)
	for i, s := range spans {
		if s == nil {
			e.groupOf[i] = -1
			continue
		}
		res, scope := s.Resource(), s.InstrumentationScope()
		if last >= 0 && e.scopes[last].scope == scope && sameResource(e.resources[e.scopes[last].res], res) {
			e.scopes[last].n++
			e.groupOf[i] = last
			continue
		}
		ri := int32(-1)
		for j, r := range e.resources {
			if sameResource(r, res) {
				ri = int32(j)
				break
			}
		}
		if ri < 0 {
			ri = int32(len(e.resources))
			e.resources = append(e.resources, res)
		}
		last = -1
		for j := range e.scopes {
			if g := &e.scopes[j]; g.res == ri && g.scope == scope {
				last = int32(j)
				break
			}
		}
		if last < 0 {
			last = int32(len(e.scopes))
			e.scopes = append(e.scopes, scopeGroup{res: ri, scope: scope})
		}
		e.scopes[last].n++
		e.groupOf[i] = last
	}

	// Counting sort of the span indexes by group, in the order encode walks the groups
	// (by resource, then by scope), keeping the batch order within a group.
	var pos int32
	for ri := range e.resources {
		for j := range e.scopes {
			if g := &e.scopes[j]; int(g.res) == ri {
				g.start, g.next = pos, pos
				pos += g.n
			}
		}
	}
	e.order = grow(e.order, int(pos))
	for i, g := range e.groupOf[:len(spans)] {
		if g >= 0 {
			e.order[e.scopes[g].next] = int32(i)
			e.scopes[g].next++
		}
	}
}

func grow(s []int32, n int) []int32 {
	if cap(s) < n {
		return make([]int32, n, n+n/4)
	}
	return s[:n]
}

func sameResource(a, b *resource.Resource) bool {
	return a == b || (a != nil && b != nil && a.Equivalent() == b.Equivalent())
}

func (e *encoder) resourceBytes(res *resource.Resource) []byte {
	if res == e.cachedRes {
		return e.cachedBytes
	}
	b := e.cachedBytes[:0]
	for it := res.Iter(); it.Next(); {
		b = appendKeyValue(b, fResAttributes, it.Attribute())
	}
	e.cachedRes, e.cachedBytes = res, b
	return b
}

func appendScope(b []byte, s *instrumentation.Scope) []byte {
	if *s == (instrumentation.Scope{}) {
		return b // the zero scope: no InstrumentationScope, as otlptracehttp does
	}
	var m int
	b, m = openMsg(b, fSSScope)
	b = appendString(b, fScopeName, s.Name)
	b = appendString(b, fScopeVersion, s.Version)
	for it := s.Attributes.Iter(); it.Next(); {
		b = appendKeyValue(b, fScopeAttributes, it.Attribute())
	}
	return closeMsg(b, m)
}

func appendSpan(b []byte, s sdktrace.ReadOnlySpan) []byte {
	var m int
	b, m = openMsg(b, fSSSpans)

	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	b = protowire.AppendTag(b, fSpanTraceID, protowire.BytesType)
	b = protowire.AppendBytes(b, tid[:])
	b = protowire.AppendTag(b, fSpanSpanID, protowire.BytesType)
	b = protowire.AppendBytes(b, sid[:])
	if ts := sc.TraceState(); ts.Len() > 0 {
		b = appendString(b, fSpanTraceState, ts.String())
	}
	parent := s.Parent()
	if psid := parent.SpanID(); psid.IsValid() {
		b = protowire.AppendTag(b, fSpanParentSpanID, protowire.BytesType)
		b = protowire.AppendBytes(b, psid[:])
	}
	b = appendString(b, fSpanName, s.Name())
	b = appendVarint(b, fSpanKind, spanKind(s.SpanKind()))
	b = appendTime(b, fSpanStart, s.StartTime())
	b = appendTime(b, fSpanEnd, s.EndTime())
	for _, kv := range s.Attributes() {
		b = appendKeyValue(b, fSpanAttributes, kv)
	}
	b = appendCount(b, fSpanDroppedAttrs, s.DroppedAttributes())
	for _, ev := range s.Events() {
		var em int
		b, em = openMsg(b, fSpanEvents)
		b = appendTime(b, fEventTime, ev.Time)
		b = appendString(b, fEventName, ev.Name)
		for _, kv := range ev.Attributes {
			b = appendKeyValue(b, fEventAttributes, kv)
		}
		b = appendCount(b, fEventDroppedAttrs, ev.DroppedAttributeCount)
		b = closeMsg(b, em)
	}
	b = appendCount(b, fSpanDroppedEvents, s.DroppedEvents())
	for _, l := range s.Links() {
		var lm int
		b, lm = openMsg(b, fSpanLinks)
		ltid, lsid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		b = protowire.AppendTag(b, fLinkTraceID, protowire.BytesType)
		b = protowire.AppendBytes(b, ltid[:])
		b = protowire.AppendTag(b, fLinkSpanID, protowire.BytesType)
		b = protowire.AppendBytes(b, lsid[:])
		if ts := l.SpanContext.TraceState(); ts.Len() > 0 {
			b = appendString(b, fLinkTraceState, ts.String())
		}
		for _, kv := range l.Attributes {
			b = appendKeyValue(b, fLinkAttributes, kv)
		}
		b = appendCount(b, fLinkDroppedAttrs, l.DroppedAttributeCount)
		b = protowire.AppendTag(b, fLinkFlags, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, spanFlags(l.SpanContext.TraceFlags(), l.SpanContext))
		b = closeMsg(b, lm)
	}
	b = appendCount(b, fSpanDroppedLinks, s.DroppedLinks())

	// Status is always present, as otlptracehttp writes it.
	st := s.Status()
	var sm int
	b, sm = openMsg(b, fSpanStatus)
	b = appendString(b, fStatusMessage, st.Description)
	b = appendVarint(b, fStatusCode, statusCode(st.Code))
	b = closeMsg(b, sm)

	b = protowire.AppendTag(b, fSpanFlags, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, spanFlags(sc.TraceFlags(), parent))

	return closeMsg(b, m)
}

// spanFlags is the W3C trace flags byte, with "is_remote is known" and, when remote is
// (the parent of a span, the linked context of a link), "is remote".
func spanFlags(tf trace.TraceFlags, remote trace.SpanContext) uint32 {
	f := uint32(tf) | flagHasIsRemote
	if remote.IsRemote() {
		f |= flagIsRemote
	}
	return f
}

func spanKind(k trace.SpanKind) uint64 {
	switch k {
	case trace.SpanKindInternal:
		return 1
	case trace.SpanKindServer:
		return 2
	case trace.SpanKindClient:
		return 3
	case trace.SpanKindProducer:
		return 4
	case trace.SpanKindConsumer:
		return 5
	}
	return 0
}

func statusCode(c codes.Code) uint64 {
	switch c {
	case codes.Ok:
		return statusOK
	case codes.Error:
		return statusError
	}
	return statusUnset
}

// appendKeyValue appends a KeyValue message as field num.
func appendKeyValue(b []byte, num protowire.Number, kv attribute.KeyValue) []byte {
	var m, v int
	b, m = openMsg(b, num)
	b = appendString(b, fKVKey, string(kv.Key))
	b, v = openMsg(b, fKVValue)
	b = appendAnyValue(b, kv.Value)
	b = closeMsg(b, v)
	return closeMsg(b, m)
}

// appendAnyValue appends the content of an AnyValue. A oneof member is written even when
// it holds its zero value; an EMPTY value is an AnyValue with no member set.
func appendAnyValue(b []byte, v attribute.Value) []byte {
	switch v.Type() {
	case attribute.STRING:
		b = protowire.AppendTag(b, fAnyString, protowire.BytesType)
		b = protowire.AppendString(b, v.AsString())
	case attribute.BOOL:
		b = protowire.AppendTag(b, fAnyBool, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(v.AsBool()))
	case attribute.INT64:
		b = protowire.AppendTag(b, fAnyInt, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = appendDouble(b, v.AsFloat64())
	case attribute.STRINGSLICE:
		var a int
		b, a = openMsg(b, fAnyArray)
		for _, s := range v.AsStringSlice() {
			var m int
			b, m = openMsg(b, fListVals)
			b = protowire.AppendTag(b, fAnyString, protowire.BytesType)
			b = protowire.AppendString(b, s)
			b = closeMsg(b, m)
		}
		b = closeMsg(b, a)
	case attribute.BOOLSLICE:
		var a int
		b, a = openMsg(b, fAnyArray)
		for _, x := range v.AsBoolSlice() {
			b = protowire.AppendTag(b, fListVals, protowire.BytesType)
			b = append(b, 2, byte(protowire.EncodeTag(fAnyBool, protowire.VarintType)), byte(protowire.EncodeBool(x)))
		}
		b = closeMsg(b, a)
	case attribute.INT64SLICE:
		var a int
		b, a = openMsg(b, fAnyArray)
		for _, x := range v.AsInt64Slice() {
			b = protowire.AppendTag(b, fListVals, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(1+protowire.SizeVarint(uint64(x))))
			b = protowire.AppendTag(b, fAnyInt, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(x))
		}
		b = closeMsg(b, a)
	case attribute.FLOAT64SLICE:
		var a int
		b, a = openMsg(b, fAnyArray)
		for _, x := range v.AsFloat64Slice() {
			b = protowire.AppendTag(b, fListVals, protowire.BytesType)
			b = append(b, 9)
			b = appendDouble(b, x)
		}
		b = closeMsg(b, a)
	case attribute.BYTESLICE:
		b = protowire.AppendTag(b, fAnyBytes, protowire.BytesType)
		b = protowire.AppendBytes(b, v.AsByteSlice())
	case attribute.SLICE:
		var a int
		b, a = openMsg(b, fAnyArray)
		for _, x := range v.AsSlice() {
			var m int
			b, m = openMsg(b, fListVals)
			b = appendAnyValue(b, x)
			b = closeMsg(b, m)
		}
		b = closeMsg(b, a)
	case attribute.MAP:
		var l int
		b, l = openMsg(b, fAnyKVList)
		for _, kv := range v.AsMap() {
			b = appendKeyValue(b, fListVals, kv)
		}
		b = closeMsg(b, l)
	case attribute.EMPTY:
	default:
		b = protowire.AppendTag(b, fAnyString, protowire.BytesType)
		b = protowire.AppendString(b, "INVALID")
	}
	return b
}

func appendDouble(b []byte, f float64) []byte {
	b = protowire.AppendTag(b, fAnyDouble, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, math.Float64bits(f))
}

// appendString appends a string field, omitted when empty (proto3 default).
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendVarint appends a varint field, omitted when zero.
func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendCount appends a uint32 count field (clamped), omitted when zero.
func appendCount(b []byte, num protowire.Number, n int) []byte {
	if n <= 0 {
		return b
	}
	return appendVarint(b, num, uint64(min(int64(n), 1<<32-1)))
}

// appendTime appends a fixed64 unix-nanoseconds field, omitted when zero; times before
// 1970 are written as zero, as otlptracehttp does.
func appendTime(b []byte, num protowire.Number, t time.Time) []byte {
	ns := t.UnixNano()
	if ns <= 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, uint64(ns))
}

var zeros [9]byte // a varint has at most 10 bytes

// openMsg starts an embedded message field: the tag and a one-byte length placeholder.
// It returns where the message's content starts, for closeMsg.
func openMsg(b []byte, num protowire.Number) ([]byte, int) {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = append(b, 0)
	return b, len(b)
}

// closeMsg writes the length of the message content that started at start. Lengths over
// 127 need a longer varint: the content moves up to make room (a memmove, much cheaper
// than sizing every message twice).
func closeMsg(b []byte, start int) []byte {
	n := len(b) - start
	if n < 0x80 {
		b[start-1] = byte(n)
		return b
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	b = append(b, zeros[:extra]...)
	copy(b[start+extra:], b[start:start+n])
	protowire.AppendVarint(b[:start-1], uint64(n))
	return b
}
