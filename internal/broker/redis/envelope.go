package redis

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"denis.io/fleet/internal/protocol"
)

// outEnvelope is the JSON document kombu pushes onto a Redis list, fields in kombu's
// order. Only used for encoding.
type outEnvelope struct {
	Body            string         `json:"body"`
	ContentEncoding *string        `json:"content-encoding"`
	ContentType     *string        `json:"content-type"`
	Headers         map[string]any `json:"headers"`
	Properties      outProperties  `json:"properties"`
}

type outProperties struct {
	CorrelationID string          `json:"correlation_id,omitempty"`
	ReplyTo       string          `json:"reply_to,omitempty"`
	DeliveryMode  uint8           `json:"delivery_mode"`
	Expiration    string          `json:"expiration,omitempty"`
	DeliveryInfo  outDeliveryInfo `json:"delivery_info"`
	Priority      uint8           `json:"priority"`
	BodyEncoding  string          `json:"body_encoding"`
	DeliveryTag   string          `json:"delivery_tag"`
}

type outDeliveryInfo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

// encodeEnvelope builds the kombu envelope for m as published to exchange with
// routingKey, under delivery tag tag.
func encodeEnvelope(m *protocol.Message, exchange, routingKey, tag string) ([]byte, error) {
	if m == nil {
		return nil, errors.New("nil message")
	}
	// The body is spliced in, base64 straight into the output: encoding/json would scan
	// every byte of it for escapes (base64 needs none), and event batches and dead letters
	// can be hundreds of KiB.
	rest, err := marshal(envelopeOf(m, exchange, routingKey, tag))
	if err != nil {
		return nil, err
	}
	const open = `{"body":""`
	if !bytes.HasPrefix(rest, []byte(open)) {
		return nil, fmt.Errorf("envelope encoding starts with %.20q", rest)
	}
	rest = rest[len(open):]
	out := make([]byte, 0, len(open)+base64.StdEncoding.EncodedLen(len(m.Body))+len(rest))
	out = append(out, open[:len(open)-1]...)
	out = base64.StdEncoding.AppendEncode(out, m.Body)
	out = append(out, '"')
	return append(out, rest...), nil
}

// envelopeOf is the envelope of m without its body: headers never null, delivery mode 2
// unless set, body encoding base64.
func envelopeOf(m *protocol.Message, exchange, routingKey, tag string) outEnvelope {
	headers := m.Headers
	if headers == nil {
		headers = map[string]any{}
	}
	mode := m.Properties.DeliveryMode
	if mode == 0 {
		mode = 2
	}
	return outEnvelope{
		ContentEncoding: optString(m.ContentEncoding),
		ContentType:     optString(m.ContentType),
		Headers:         headers,
		Properties: outProperties{
			CorrelationID: m.Properties.CorrelationID,
			ReplyTo:       m.Properties.ReplyTo,
			DeliveryMode:  mode,
			Expiration:    m.Properties.Expiration,
			DeliveryInfo:  outDeliveryInfo{Exchange: exchange, RoutingKey: routingKey},
			Priority:      m.Properties.Priority,
			BodyEncoding:  "base64",
			DeliveryTag:   tag,
		},
	}
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// marshal encodes v as compact JSON without Go's HTML escaping (kombu does not escape).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// inEnvelope is a decoded kombu envelope.
type inEnvelope struct {
	msg         *protocol.Message
	tag         string
	exchange    string
	routingKey  string
	redelivered bool
	priority    int // properties.priority as kombu reads it (0 when absent or invalid)
}

type wireEnvelope struct {
	Body            json.RawMessage `json:"body"`
	ContentEncoding *string         `json:"content-encoding"`
	ContentType     *string         `json:"content-type"`
	Headers         map[string]any  `json:"headers"`
	Properties      map[string]any  `json:"properties"`
}

// decodeEnvelope parses a kombu envelope. Numbers are kept as json.Number; Python's
// NaN/Infinity (which json.dumps writes) become null. A missing body_encoding means a
// plain body.
func decodeEnvelope(raw []byte) (*inEnvelope, error) {
	w, err := readEnvelope(raw)
	if err != nil {
		return nil, err
	}
	if w.Properties == nil {
		return nil, errors.New("envelope has no properties")
	}
	p := w.Properties
	body, err := decodeBody(w.Body, str(p["body_encoding"]))
	if err != nil {
		return nil, err
	}
	m := &protocol.Message{
		Headers: w.Headers,
		Body:    body,
		Properties: protocol.Properties{
			CorrelationID: str(p["correlation_id"]),
			ReplyTo:       str(p["reply_to"]),
			DeliveryMode:  uint8(clamp(integer(p["delivery_mode"], 0), 0, 255)),
			Expiration:    str(p["expiration"]),
		},
	}
	if m.Headers == nil {
		m.Headers = map[string]any{}
	}
	if w.ContentType != nil {
		m.ContentType = *w.ContentType
	}
	if w.ContentEncoding != nil {
		m.ContentEncoding = *w.ContentEncoding
	}
	prio := clamp(integer(p["priority"], 0), 0, 9)
	m.Properties.Priority = uint8(prio)
	env := &inEnvelope{msg: m, tag: str(p["delivery_tag"]), priority: prio}
	if di, ok := p["delivery_info"].(map[string]any); ok {
		env.exchange = str(di["exchange"])
		env.routingKey = str(di["routing_key"])
		env.redelivered = di["redelivered"] == true
	}
	if w.Headers["redelivered"] == true {
		env.redelivered = true
	}
	return env, nil
}

// readEnvelope parses the envelope's JSON: the fast decoder when it can, else
// encoding/json, which gives the same result.
func readEnvelope(raw []byte) (*wireEnvelope, error) {
	if w, err := fastDecodeEnvelope(raw); err == nil {
		return w, nil
	}
	var w wireEnvelope
	if err := unmarshalPy(raw, &w); err != nil {
		return nil, err
	}
	return &w, nil
}

func decodeBody(raw json.RawMessage, encoding string) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	if raw[0] != '"' {
		// Not a string: hand the JSON over as the body bytes.
		return append([]byte(nil), raw...), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	switch encoding {
	case "":
		return []byte(s), nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			var err2 error
			if b, err2 = base64.RawStdEncoding.DecodeString(s); err2 != nil {
				return nil, fmt.Errorf("body: base64: %w", err)
			}
		}
		return b, nil
	default:
		return nil, fmt.Errorf("body: unsupported body_encoding %q", encoding)
	}
}

// markRedelivered returns raw with headers.redelivered and
// properties.delivery_info.redelivered set to true (kombu _do_restore_message). Every
// other field is kept as it was.
func markRedelivered(raw []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := unmarshalPy(raw, &top); err != nil {
		return nil, err
	}
	if top == nil {
		return nil, errors.New("envelope is not an object")
	}
	setIn := func(obj json.RawMessage, key string, val json.RawMessage) (json.RawMessage, error) {
		var m map[string]json.RawMessage
		if len(obj) > 0 {
			if err := unmarshalPy(obj, &m); err != nil {
				return nil, err
			}
		}
		if m == nil {
			m = map[string]json.RawMessage{}
		}
		m[key] = val
		return marshal(m)
	}
	yes := json.RawMessage("true")
	var err error
	if top["headers"], err = setIn(top["headers"], "redelivered", yes); err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	var props map[string]json.RawMessage
	if err := unmarshalPy(top["properties"], &props); err != nil || props == nil {
		return nil, errors.New("envelope has no properties object")
	}
	if props["delivery_info"], err = setIn(props["delivery_info"], "redelivered", yes); err != nil {
		return nil, fmt.Errorf("delivery_info: %w", err)
	}
	if top["properties"], err = marshal(props); err != nil {
		return nil, err
	}
	return marshal(top)
}

// setDeliveryTag returns raw with properties.delivery_tag set to tag.
func setDeliveryTag(raw []byte, tag string) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := unmarshalPy(raw, &top); err != nil {
		return nil, err
	}
	var props map[string]json.RawMessage
	if err := unmarshalPy(top["properties"], &props); err != nil || props == nil {
		return nil, errors.New("envelope has no properties object")
	}
	var err error
	if props["delivery_tag"], err = marshal(tag); err != nil {
		return nil, err
	}
	if top["properties"], err = marshal(props); err != nil {
		return nil, err
	}
	return marshal(top)
}

// parseRecord splits an `unacked` hash value, JSON [envelope, exchange, routing_key].
func parseRecord(rec []byte) (env json.RawMessage, exchange, routingKey string, err error) {
	var parts []json.RawMessage
	if err := unmarshalPy(rec, &parts); err != nil {
		return nil, "", "", err
	}
	if len(parts) != 3 {
		return nil, "", "", fmt.Errorf("unacked record has %d elements, want 3", len(parts))
	}
	var ex, rk any
	if err := json.Unmarshal(parts[1], &ex); err != nil {
		return nil, "", "", err
	}
	if err := json.Unmarshal(parts[2], &rk); err != nil {
		return nil, "", "", err
	}
	return parts[0], str(ex), str(rk), nil
}

// makeRecord builds an `unacked` hash value from an envelope as popped.
func makeRecord(env []byte, exchange, routingKey string) ([]byte, error) {
	ex, err := marshal(exchange)
	if err != nil {
		return nil, err
	}
	rk, err := marshal(routingKey)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(env)+len(ex)+len(rk)+4)
	out = append(out, '[')
	out = append(out, env...)
	out = append(out, ',')
	out = append(out, ex...)
	out = append(out, ',')
	out = append(out, rk...)
	out = append(out, ']')
	return out, nil
}

// unmarshalPy decodes JSON with json.Number numbers. If the standard decoder rejects the
// input, it retries once with Python's NaN, Infinity and -Infinity replaced by null.
func unmarshalPy(raw []byte, v any) error {
	err := unmarshalNumber(raw, v)
	if err == nil {
		return nil
	}
	if fixed, changed := nullPyConstants(raw); changed {
		if err2 := unmarshalNumber(fixed, v); err2 == nil {
			return nil
		}
	}
	return err
}

func unmarshalNumber(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	return nil
}

// nullPyConstants replaces the bare tokens NaN, Infinity and -Infinity outside strings
// with null.
func nullPyConstants(raw []byte) ([]byte, bool) {
	out := make([]byte, 0, len(raw))
	changed := false
	inStr, esc := false, false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if inStr {
			out = append(out, c)
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		if c == '"' {
			inStr = true
			out = append(out, c)
			continue
		}
		matched := false
		for _, tok := range []string{"-Infinity", "Infinity", "NaN"} {
			if bytes.HasPrefix(raw[i:], []byte(tok)) {
				out = append(out, "null"...)
				i += len(tok) - 1
				matched, changed = true, true
				break
			}
		}
		if !matched {
			out = append(out, c)
		}
	}
	return out, changed
}

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case nil:
		return ""
	case bool:
		return strconv.FormatBool(x)
	default:
		return fmt.Sprint(x)
	}
}

// integer reads a JSON number (or numeric string) as int, like Python's int() on the
// value; anything else yields def.
func integer(v any, def int) int {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = x.String()
	case string:
		s = x
	default:
		return def
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return int(clamp64(n))
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f == f {
		switch {
		case f > 1<<31:
			return 1 << 31
		case f < -(1 << 31):
			return -(1 << 31)
		}
		return int(f)
	}
	return def
}

func clamp64(n int64) int64 {
	if n > 1<<31 {
		return 1 << 31
	}
	if n < -(1 << 31) {
		return -(1 << 31)
	}
	return n
}

func clamp(n, lo, hi int) int {
	if n < lo {
		return lo
	}
	if n > hi {
		return hi
	}
	return n
}

// newTag returns a random (version 4) UUID, as kombu's delivery tags are.
func newTag() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crashes the program instead) since Go 1.24
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}
