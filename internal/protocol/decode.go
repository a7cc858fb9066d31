package protocol

import (
	"bytes"
	"compress/bzip2"
	"compress/zlib"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Reasons a message cannot be turned into a Task.
const (
	// ReasonDecodeError: the message claims a supported format but is malformed (broken
	// JSON, wrong body shape, missing task name or id, bad eta/expires, bad compression).
	ReasonDecodeError = "decode_error"
	// ReasonUnsupportedContent: a serializer (pickle, yaml, msgpack, ...) or compression
	// the fleet does not accept. Celery's worker rejects these with ContentDisallowed.
	ReasonUnsupportedContent = "unsupported_content"
)

// DecodeError is returned by Decode. TaskID and TaskName are filled whenever they could be
// recovered (headers, correlation_id or a partly decoded body) so the worker can still
// store a FAILURE result and dead-letter the message under the right id.
type DecodeError struct {
	Reason   string // ReasonDecodeError or ReasonUnsupportedContent
	TaskID   string
	TaskName string
	Err      error
}

func (e *DecodeError) Error() string {
	var b strings.Builder
	b.WriteString("protocol: ")
	b.WriteString(e.Reason)
	if e.TaskName != "" || e.TaskID != "" {
		fmt.Fprintf(&b, " (task %s[%s])", e.TaskName, e.TaskID)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *DecodeError) Unwrap() error { return e.Err }

// maxInflated bounds a decompressed body; a larger one is treated as a decode error
// rather than exhausting memory.
const maxInflated = 256 << 20

// Content types and compression methods as kombu names them.
const (
	ContentTypeJSON = "application/json"
	CompressionZlib = "application/x-gzip" // kombu's "gzip" is a zlib (RFC 1950) stream
	CompressionBZ2  = "application/x-bz2"
)

// Decode turns a task message into a Task. It accepts protocol v2 (a `task` header and a
// [args, kwargs, embed] body), protocol v1 (no `task` header, the body an object holding
// `task`) and the hybrid form Celery's worker also accepts (a `task` header with an object
// body; body fields are defaults that the headers override). Only JSON is accepted (a
// missing content type counts as JSON); the `compression` header may name zlib
// ("application/x-gzip") or bzip2. Every header is kept in Task.Headers as received.
// Errors are always *DecodeError.
func Decode(m *Message) (*Task, error) {
	if m == nil {
		return nil, &DecodeError{Reason: ReasonDecodeError, Err: errors.New("nil message")}
	}
	// What identifies the task for error reports: headers, then a v1 body, then the
	// correlation_id (which Celery always sets to the task id).
	id, _ := m.Headers["id"].(string)
	name, _ := m.Headers["task"].(string)
	fail := func(reason string, err error) (*Task, error) {
		if id == "" {
			id = m.Properties.CorrelationID
		}
		return nil, &DecodeError{Reason: reason, TaskID: id, TaskName: name, Err: err}
	}

	if IsInvalidEnvelope(m) {
		return fail(ReasonDecodeError, invalidEnvelopeError(m))
	}
	if err := checkContent(m.ContentType, m.ContentEncoding); err != nil {
		return fail(ReasonUnsupportedContent, err)
	}
	body := m.Body
	if c, ok := m.Headers["compression"]; ok && c != nil {
		cs, _ := c.(string)
		var err error
		body, err = decompress(cs, body)
		if err != nil {
			var unsup unsupportedError
			if errors.As(err, &unsup) {
				return fail(ReasonUnsupportedContent, err)
			}
			return fail(ReasonDecodeError, err)
		}
	}

	top, spans, err := parseBody(body)
	if err != nil {
		return fail(ReasonDecodeError, fmt.Errorf("body: %w", err))
	}

	_, v2 := m.Headers["task"]
	var t *Task
	switch b := top.(type) {
	case []any:
		if !v2 {
			return fail(ReasonDecodeError, errors.New("body is a list but there is no task header"))
		}
		t, err = decodeV2(m, b, spans, body)
	case map[string]any:
		if id == "" {
			id, _ = b["id"].(string)
		}
		if name == "" {
			name, _ = b["task"].(string)
		}
		t, err = decodeObjectBody(m, b, spans, body)
	default:
		return fail(ReasonDecodeError, fmt.Errorf("body is %s, want a list (v2) or an object (v1)", jsonKind(top)))
	}
	if err != nil {
		return fail(ReasonDecodeError, err)
	}
	return t, nil
}

type unsupportedError struct{ msg string }

func (e unsupportedError) Error() string { return e.msg }

func checkContent(ct, enc string) error {
	mt := strings.ToLower(strings.TrimSpace(ct))
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = strings.TrimSpace(mt[:i])
	}
	if mt != "" && mt != ContentTypeJSON {
		return fmt.Errorf("content type %q is not accepted (only %s)", ct, ContentTypeJSON)
	}
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "", "utf-8", "utf8", "ascii", "us-ascii", "binary":
		return nil
	default:
		return fmt.Errorf("content encoding %q is not supported", enc)
	}
}

func decompress(method string, body []byte) ([]byte, error) {
	var r io.Reader
	switch strings.ToLower(method) {
	case CompressionZlib, "gzip", "zlib", "application/x-zlib":
		zr, err := zlib.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("inflate zlib body: %w", err)
		}
		defer zr.Close()
		r = zr
	case CompressionBZ2, "bzip2":
		r = bzip2.NewReader(bytes.NewReader(body))
	default:
		return nil, unsupportedError{fmt.Sprintf("compression %q is not supported", method)}
	}
	out, err := io.ReadAll(io.LimitReader(r, maxInflated+1))
	if err != nil {
		return nil, fmt.Errorf("decompress %s body: %w", method, err)
	}
	if len(out) > maxInflated {
		return nil, fmt.Errorf("decompress %s body: larger than %d bytes", method, maxInflated)
	}
	return out, nil
}

// span is a byte range [start, end) of one top-level element of the body.
type span struct{ start, end int }

// bodySpans records where each top-level element sits: by index for a list body, by key
// for an object body.
type bodySpans struct {
	items []span
	keys  map[string]span
}

// parseBody parses the body like ParseJSON and also records the byte ranges of its
// top-level elements, so Raw* fields hold exactly the bytes the producer sent.
func parseBody(data []byte) (any, bodySpans, error) {
	var sp bodySpans
	p := jsonParser{data: data}
	p.skipSpace()
	if p.pos >= len(data) {
		return nil, sp, p.errorf("empty body")
	}
	var v any
	var err error
	switch data[p.pos] {
	case '[':
		v, err = p.topArray(&sp)
	case '{':
		v, err = p.topObject(&sp)
	default:
		v, err = p.value(0)
	}
	if err != nil {
		return nil, sp, err
	}
	p.skipSpace()
	if p.pos != len(data) {
		return nil, sp, p.errorf("extra data after JSON value")
	}
	return v, sp, nil
}

func (p *jsonParser) topArray(sp *bodySpans) (any, error) {
	p.pos++
	a := make([]any, 0, 3)
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return a, nil
	}
	for {
		p.skipSpace()
		start := p.pos
		v, err := p.value(1)
		if err != nil {
			return nil, err
		}
		sp.items = append(sp.items, span{start, p.pos})
		a = append(a, v)
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unterminated array")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return a, nil
		default:
			return nil, p.errorf("expected ',' or ']' in array")
		}
	}
}

func (p *jsonParser) topObject(sp *bodySpans) (any, error) {
	p.pos++
	m := make(map[string]any)
	sp.keys = make(map[string]span)
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return m, nil
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.errorf("expected string key")
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, p.errorf("expected ':' after key")
		}
		p.pos++
		p.skipSpace()
		start := p.pos
		v, err := p.value(1)
		if err != nil {
			return nil, err
		}
		sp.keys[k] = span{start, p.pos}
		m[k] = v
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unterminated object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			// A tagged top-level object is never a task body; keep it as an object.
			return m, nil
		default:
			return nil, p.errorf("expected ',' or '}' in object")
		}
	}
}

func rawBytes(body []byte, s span) json.RawMessage {
	return append(json.RawMessage(nil), body[s.start:s.end]...)
}

func decodeV2(m *Message, b []any, spans bodySpans, body []byte) (*Task, error) {
	if len(b) != 3 {
		return nil, fmt.Errorf("v2 body has %d elements, want 3 [args, kwargs, embed]", len(b))
	}
	args, ok := b[0].([]any)
	if !ok {
		return nil, fmt.Errorf("v2 body: args is %s, want a list", jsonKind(b[0]))
	}
	kwargs, ok := b[1].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("v2 body: kwargs is %s, want an object", jsonKind(b[1]))
	}
	t := &Task{Version: 2, Args: args, Kwargs: kwargs}
	switch e := b[2].(type) {
	case nil:
	case map[string]any:
		emb, err := embedFromMap(e)
		if err != nil {
			return nil, fmt.Errorf("v2 body: embed: %w", err)
		}
		t.Embed = emb
	default:
		return nil, fmt.Errorf("v2 body: embed is %s, want an object or null", jsonKind(b[2]))
	}
	t.RawArgs = rawBytes(body, spans.items[0])
	t.RawKwargs = rawBytes(body, spans.items[1])
	t.RawEmbed = rawBytes(body, spans.items[2])
	if err := t.fillFromHeaders(m.Headers, true); err != nil {
		return nil, err
	}
	t.finish(m)
	return t, nil
}

// decodeObjectBody handles protocol v1 and the hybrid form, as Celery's
// worker/strategy.py (hybrid_to_proto2, proto1_to_proto2) does: metadata comes from the
// body, and message headers override it.
func decodeObjectBody(m *Message, b map[string]any, spans bodySpans, body []byte) (*Task, error) {
	t := &Task{Version: 1}
	h := map[string]any{}
	for _, k := range []string{"lang", "task", "id", "root_id", "parent_id", "group", "group_index",
		"meth", "shadow", "eta", "expires", "retries", "timelimit", "argsrepr", "kwargsrepr",
		"origin", "ignore_result"} {
		if v, ok := b[k]; ok {
			h[k] = v
		}
	}
	if _, hasArgs := b["args"]; !hasArgs {
		if ts, ok := b["taskset"]; ok {
			h["group"] = ts // proto1_to_proto2: body['group'] = body['taskset']
		}
	}
	for k, v := range m.Headers {
		h[k] = v
	}
	utc := true
	if u, ok := b["utc"]; ok && u != nil {
		ub, isBool := u.(bool)
		if !isBool {
			return nil, fmt.Errorf("v1 body: utc is %s, want a boolean", jsonKind(u))
		}
		utc = ub
	}

	t.Args = []any{}
	if a, ok := b["args"]; ok && a != nil {
		args, isList := a.([]any)
		if !isList {
			return nil, fmt.Errorf("v1 body: args is %s, want a list", jsonKind(a))
		}
		t.Args = args
		t.RawArgs = rawBytes(body, spans.keys["args"])
	}
	t.Kwargs = map[string]any{}
	if k, ok := b["kwargs"]; ok && k != nil {
		kwargs, isMap := k.(map[string]any)
		if !isMap {
			return nil, fmt.Errorf("v1 body: kwargs is %s, want an object", jsonKind(k))
		}
		t.Kwargs = kwargs
		t.RawKwargs = rawBytes(body, spans.keys["kwargs"])
	}
	emb, err := embedFromMap(map[string]any{
		"callbacks": b["callbacks"], "errbacks": b["errbacks"], "chord": b["chord"],
	})
	if err != nil {
		return nil, fmt.Errorf("v1 body: %w", err)
	}
	t.Embed = emb
	if err := t.fillFromHeaders(h, utc); err != nil {
		return nil, err
	}
	t.finish(m)
	// Task.Headers keeps the real message headers only, not the body-derived defaults.
	t.Headers = m.Headers
	return t, nil
}

func (t *Task) finish(m *Message) {
	t.ReplyTo = m.Properties.ReplyTo
	t.CorrelationID = m.Properties.CorrelationID
	t.Priority = m.Properties.Priority
	if t.Headers == nil {
		t.Headers = m.Headers
	}
}

// fillFromHeaders sets the task's metadata fields from v2 headers (or the merged v1
// equivalent). utc says how a time without offset is read: UTC, or the local zone.
func (t *Task) fillFromHeaders(h map[string]any, utc bool) error {
	var err error
	if t.Name, err = headerString(h, "task"); err != nil {
		return err
	}
	if t.Name == "" {
		return errors.New("missing task name")
	}
	if t.ID, err = headerString(h, "id"); err != nil {
		return err
	}
	if t.ID == "" {
		return errors.New("missing task id")
	}
	for _, f := range []struct {
		key string
		dst *string
	}{
		{"shadow", &t.Shadow}, {"root_id", &t.RootID}, {"parent_id", &t.ParentID},
		{"group", &t.Group}, {"argsrepr", &t.ArgsRepr}, {"kwargsrepr", &t.KwargsRepr},
		{"origin", &t.Origin},
	} {
		if *f.dst, err = headerString(h, f.key); err != nil {
			return err
		}
	}
	if v := h["group_index"]; v != nil {
		n, ok := toInt(v)
		if !ok {
			return fmt.Errorf("header group_index: %v is not an integer", v)
		}
		t.GroupIndex = &n
	}
	if v := h["retries"]; v != nil {
		n, ok := toInt(v)
		if !ok {
			return fmt.Errorf("header retries: %v is not an integer", v)
		}
		t.Retries = n
	}
	if v := h["ignore_result"]; v != nil {
		b, ok := v.(bool)
		if !ok {
			return fmt.Errorf("header ignore_result: %v is not a boolean", v)
		}
		t.IgnoreResult = b
	}
	if t.ETA, err = headerTime(h, "eta", utc); err != nil {
		return err
	}
	if t.Expires, err = headerTime(h, "expires", utc); err != nil {
		return err
	}
	if v := h["timelimit"]; v != nil {
		tl, ok := v.([]any)
		if !ok || len(tl) != 2 {
			return fmt.Errorf("header timelimit: %v is not a [hard, soft] pair", v)
		}
		for i, x := range tl {
			if x == nil {
				continue
			}
			f, ok := toFloat(x)
			if !ok {
				return fmt.Errorf("header timelimit[%d]: %v is not a number", i, x)
			}
			t.TimeLimit[i] = &f
		}
	}
	return nil
}

func headerString(h map[string]any, key string) (string, error) {
	switch v := h[key].(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	default:
		return "", fmt.Errorf("header %s: %v (%T) is not a string", key, v, v)
	}
}

func headerTime(h map[string]any, key string, utc bool) (*time.Time, error) {
	v := h[key]
	if v == nil {
		return nil, nil
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("header %s: %v (%T) is not an ISO-8601 string", key, v, v)
	}
	if s == "" {
		return nil, nil // Python's maybe_iso8601 treats "" as absent
	}
	naive := time.UTC
	if !utc {
		naive = time.Local
	}
	tm, err := ParseISO8601(s, naive)
	if err != nil {
		return nil, fmt.Errorf("header %s: %w", key, err)
	}
	return &tm, nil
}

// ParseISO8601 parses the timestamps Celery puts in eta/expires:
// YYYY-MM-DD[THH:MM[:SS[.fraction]]][Z|±HH:MM|±HHMM]. The separator between date and time
// may be any single character, as in Celery's parser. A time without offset is read in
// the naive location (nil means UTC).
func ParseISO8601(s string, naive *time.Location) (time.Time, error) {
	if naive == nil {
		naive = time.UTC
	}
	bad := func() (time.Time, error) {
		return time.Time{}, fmt.Errorf("unable to parse ISO-8601 date string %q", s)
	}
	i := 0
	digits := func(min, max int) (int, bool) {
		j := i
		for j < len(s) && j-i < max && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j-i < min {
			return 0, false
		}
		n, _ := strconv.Atoi(s[i:j])
		i = j
		return n, true
	}
	expect := func(c byte) bool {
		if i < len(s) && s[i] == c {
			i++
			return true
		}
		return false
	}
	year, ok := digits(4, 4)
	if !ok || !expect('-') {
		return bad()
	}
	month, ok := digits(1, 2)
	if !ok || !expect('-') {
		return bad()
	}
	day, ok := digits(1, 2)
	if !ok {
		return bad()
	}
	var hour, minute, sec, nsec int
	loc := naive
	if i < len(s) {
		i++ // any separator
		if hour, ok = digits(2, 2); !ok || !expect(':') {
			return bad()
		}
		if minute, ok = digits(2, 2); !ok {
			return bad()
		}
		if expect(':') {
			if sec, ok = digits(2, 2); !ok {
				return bad()
			}
			if expect('.') {
				start := i
				for i < len(s) && s[i] >= '0' && s[i] <= '9' {
					i++
				}
				frac := s[start:i]
				if frac == "" {
					return bad()
				}
				if len(frac) > 9 {
					frac = frac[:9]
				}
				n, _ := strconv.Atoi(frac)
				nsec = n * int(math.Pow10(9-len(frac)))
			}
		}
		if i < len(s) {
			switch s[i] {
			case 'Z', 'z':
				i++
				loc = time.UTC
			case '+', '-':
				sign := 1
				if s[i] == '-' {
					sign = -1
				}
				i++
				oh, ok := digits(2, 2)
				if !ok {
					return bad()
				}
				expect(':')
				om, ok := digits(2, 2)
				if !ok {
					return bad()
				}
				off := sign * (oh*3600 + om*60)
				if off == 0 {
					loc = time.UTC
				} else {
					loc = time.FixedZone("", off)
				}
			default:
				return bad()
			}
		}
		if i != len(s) {
			return bad()
		}
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(time.Month(month), year) ||
		hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, fmt.Errorf("ISO-8601 date string %q is out of range", s)
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, nsec, loc), nil
}

func daysIn(m time.Month, year int) int {
	return time.Date(year, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// embedFromMap converts a decoded embed object into Embed.
func embedFromMap(e map[string]any) (Embed, error) {
	var emb Embed
	var err error
	if emb.Callbacks, err = signatureList(e["callbacks"]); err != nil {
		return emb, fmt.Errorf("callbacks: %w", err)
	}
	if emb.Errbacks, err = signatureList(e["errbacks"]); err != nil {
		return emb, fmt.Errorf("errbacks: %w", err)
	}
	if emb.Chain, err = signatureList(e["chain"]); err != nil {
		return emb, fmt.Errorf("chain: %w", err)
	}
	if c := e["chord"]; c != nil {
		s, err := SignatureFromValue(c)
		if err != nil {
			return emb, fmt.Errorf("chord: %w", err)
		}
		emb.Chord = &s
	}
	return emb, nil
}

func signatureList(v any) ([]Signature, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s, want a list of signatures", jsonKind(v))
	}
	out := make([]Signature, 0, len(list))
	for i, x := range list {
		s, err := SignatureFromValue(x)
		if err != nil {
			return nil, fmt.Errorf("[%d]: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// SignatureFromValue converts a decoded signature dict (as ParseJSON returns it) into a
// Signature. Missing args, kwargs and options become empty, as Celery's signature() does.
func SignatureFromValue(v any) (Signature, error) {
	var s Signature
	m, ok := v.(map[string]any)
	if !ok {
		return s, fmt.Errorf("signature is %s, want an object", jsonKind(v))
	}
	var err error
	if s.Task, err = headerString(m, "task"); err != nil {
		return s, fmt.Errorf("signature: %w", err)
	}
	switch a := m["args"].(type) {
	case nil:
		s.Args = []any{}
	case []any:
		s.Args = a
	default:
		return s, fmt.Errorf("signature %s: args is %s, want a list", s.Task, jsonKind(a))
	}
	switch k := m["kwargs"].(type) {
	case nil:
		s.Kwargs = map[string]any{}
	case map[string]any:
		s.Kwargs = k
	default:
		return s, fmt.Errorf("signature %s: kwargs is %s, want an object", s.Task, jsonKind(k))
	}
	switch o := m["options"].(type) {
	case nil:
		s.Options = map[string]any{}
	case map[string]any:
		s.Options = o
	default:
		return s, fmt.Errorf("signature %s: options is %s, want an object", s.Task, jsonKind(o))
	}
	switch st := m["subtask_type"].(type) {
	case nil:
	case string:
		s.SubtaskType = &st
	default:
		return s, fmt.Errorf("signature %s: subtask_type is %s, want a string", s.Task, jsonKind(st))
	}
	switch im := m["immutable"].(type) {
	case nil:
	case bool:
		s.Immutable = im
	default:
		return s, fmt.Errorf("signature %s: immutable is %s, want a boolean", s.Task, jsonKind(im))
	}
	return s, nil
}

// toInt converts a JSON-like integer (json.Number or any Go integer, or an integral
// float) to int.
func toInt(v any) (int, bool) {
	switch x := v.(type) {
	case json.Number:
		if n, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return int(n), true
		}
		if f, err := strconv.ParseFloat(string(x), 64); err == nil && f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return int(f), true
		}
		return 0, false
	case int:
		return x, true
	case int8:
		return int(x), true
	case int16:
		return int(x), true
	case int32:
		return int(x), true
	case int64:
		return int(x), true
	case uint8:
		return int(x), true
	case uint16:
		return int(x), true
	case uint32:
		return int(x), true
	case uint64:
		return int(x), true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int(x), true
		}
	case float32:
		if f := float64(x); f == math.Trunc(f) {
			return int(f), true
		}
	}
	return 0, false
}

// toFloat converts a JSON-like number to float64.
func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		return f, err == nil
	case float64:
		return x, true
	case float32:
		return float64(x), true
	}
	if n, ok := toInt(v); ok {
		return float64(n), true
	}
	return 0, false
}

// jsonKind names the JSON type of a decoded value for error messages.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case json.Number, float64:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("%T", v)
	}
}
