package protocol

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// maxJSONDepth bounds nesting in ParseJSON so hostile input cannot exhaust the stack.
// Python's own json module gives up far earlier (its recursion limit is ~1000).
const maxJSONDepth = 10000

// ParseJSON decodes data the way kombu's JSON serializer on the Python side reads it:
//
//   - numbers become json.Number (no float64 precision loss for large integers);
//   - Python's bare NaN, Infinity and -Infinity are accepted and become float64;
//   - objects become map[string]any, arrays []any, strings string, true/false bool, null nil;
//   - kombu >= 5.3 tagged objects (exactly the keys "__type__" and "__value__") become plain
//     values: datetime/date/time → the ISO string, uuid → the canonical uuid string,
//     decimal → json.Number, bytes/base64 → []byte. An unknown __type__ is an error, as it
//     is for kombu.
//
// Invalid UTF-8 inside strings is replaced by U+FFFD (kombu decodes bodies with
// errors='replace' in its transports). Leading and trailing whitespace is allowed.
func ParseJSON(data []byte) (any, error) {
	p := jsonParser{data: data}
	p.skipSpace()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos != len(p.data) {
		return nil, p.errorf("extra data after JSON value")
	}
	return v, nil
}

// jsonParser is a small recursive-descent parser over a byte slice. Its positions are
// byte offsets into data, which Decode uses to slice out the exact bytes of body elements.
type jsonParser struct {
	data []byte
	pos  int
}

// JSONSyntaxError reports malformed JSON with the byte offset where parsing stopped.
type JSONSyntaxError struct {
	Offset int
	Msg    string
}

func (e *JSONSyntaxError) Error() string {
	return fmt.Sprintf("json: %s at offset %d", e.Msg, e.Offset)
}

func (p *jsonParser) errorf(format string, args ...any) error {
	return &JSONSyntaxError{Offset: p.pos, Msg: fmt.Sprintf(format, args...)}
}

func (p *jsonParser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *jsonParser) hasPrefix(s string) bool {
	return len(p.data)-p.pos >= len(s) && string(p.data[p.pos:p.pos+len(s)]) == s
}

// value parses one JSON value starting at p.pos (whitespace already skipped).
func (p *jsonParser) value(depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, p.errorf("nesting deeper than %d", maxJSONDepth)
	}
	if p.pos >= len(p.data) {
		return nil, p.errorf("unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		return p.str()
	case c == 't':
		return p.literal("true", true)
	case c == 'f':
		return p.literal("false", false)
	case c == 'n':
		return p.literal("null", nil)
	case c == 'N':
		return p.literal("NaN", math.NaN())
	case c == 'I':
		return p.literal("Infinity", math.Inf(1))
	case c == '-' && p.hasPrefix("-Infinity"):
		return p.literal("-Infinity", math.Inf(-1))
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return nil, p.errorf("unexpected character %q", c)
	}
}

func (p *jsonParser) literal(lit string, v any) (any, error) {
	if !p.hasPrefix(lit) {
		return nil, p.errorf("invalid literal")
	}
	p.pos += len(lit)
	return v, nil
}

func (p *jsonParser) object(depth int) (any, error) {
	p.pos++ // '{'
	m := make(map[string]any)
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
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
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
			if len(m) == 2 {
				if _, ok := m["__type__"]; ok {
					if _, ok := m["__value__"]; ok {
						return untag(m)
					}
				}
			}
			return m, nil
		default:
			return nil, p.errorf("expected ',' or '}' in object")
		}
	}
}

func (p *jsonParser) array(depth int) (any, error) {
	p.pos++ // '['
	a := make([]any, 0)
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return a, nil
	}
	for {
		p.skipSpace()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
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

// number scans a JSON number (RFC 8259 grammar) and returns it as json.Number text.
func (p *jsonParser) number() (any, error) {
	start := p.pos
	d := p.data
	i := p.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		p.pos = i
		return nil, p.errorf("invalid number")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			p.pos = i
			return nil, p.errorf("invalid number: digit expected after '.'")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			p.pos = i
			return nil, p.errorf("invalid number: digit expected in exponent")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	p.pos = i
	return json.Number(string(d[start:i])), nil
}

// str parses a JSON string starting at the opening quote.
func (p *jsonParser) str() (string, error) {
	p.pos++ // opening quote
	start := p.pos
	d := p.data
	// Fast path: no escapes, no control characters, valid UTF-8.
	for i := start; i < len(d); i++ {
		c := d[i]
		if c == '"' {
			s := d[start:i]
			if utf8.Valid(s) {
				p.pos = i + 1
				return string(s), nil
			}
			break
		}
		if c == '\\' || c < 0x20 {
			break
		}
	}
	var b strings.Builder
	i := start
	for {
		if i >= len(d) {
			p.pos = i
			return "", p.errorf("unterminated string")
		}
		c := d[i]
		switch {
		case c == '"':
			p.pos = i + 1
			return b.String(), nil
		case c < 0x20:
			p.pos = i
			return "", p.errorf("invalid control character in string")
		case c == '\\':
			if i+1 >= len(d) {
				p.pos = i
				return "", p.errorf("unterminated string escape")
			}
			e := d[i+1]
			i += 2
			switch e {
			case '"', '\\', '/':
				b.WriteByte(e)
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'u':
				r, ok := hex4(d, i)
				if !ok {
					p.pos = i
					return "", p.errorf("invalid \\u escape")
				}
				i += 4
				if utf16.IsSurrogate(r) {
					// A high surrogate followed by an escaped low surrogate is one
					// character; a lone surrogate cannot be represented in UTF-8.
					if i+6 <= len(d) && d[i] == '\\' && d[i+1] == 'u' {
						if r2, ok := hex4(d, i+2); ok {
							if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
								b.WriteRune(dec)
								i += 6
								continue
							}
						}
					}
					r = utf8.RuneError
				}
				b.WriteRune(r)
			default:
				p.pos = i - 1
				return "", p.errorf("invalid escape \\%c", e)
			}
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, size := utf8.DecodeRune(d[i:])
			b.WriteRune(r) // RuneError for invalid bytes, as with errors='replace'
			i += size
		}
	}
}

func hex4(d []byte, i int) (rune, bool) {
	if i+4 > len(d) {
		return 0, false
	}
	var r rune
	for _, c := range d[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// untag turns a kombu >= 5.3 tagged object into a plain Go value.
func untag(m map[string]any) (any, error) {
	typ, ok := m["__type__"].(string)
	if !ok {
		return nil, fmt.Errorf("json: tagged object with non-string __type__ %v", m["__type__"])
	}
	val := m["__value__"]
	switch typ {
	case "datetime", "date", "time":
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("json: tagged %s: value is %T, want string", typ, val)
		}
		return s, nil
	case "uuid":
		var raw string
		switch v := val.(type) {
		case string:
			raw = v
		case map[string]any:
			h, ok := v["hex"].(string)
			if !ok {
				return nil, fmt.Errorf("json: tagged uuid: value has no string \"hex\"")
			}
			raw = h
		default:
			return nil, fmt.Errorf("json: tagged uuid: value is %T", val)
		}
		u, err := canonicalUUID(raw)
		if err != nil {
			return nil, fmt.Errorf("json: tagged uuid: %w", err)
		}
		return u, nil
	case "decimal":
		s, ok := val.(string)
		if !ok {
			if n, isNum := val.(json.Number); isNum {
				return n, nil
			}
			return nil, fmt.Errorf("json: tagged decimal: value is %T, want string", val)
		}
		return decimalValue(s)
	case "bytes":
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("json: tagged bytes: value is %T, want string", val)
		}
		return []byte(s), nil
	case "base64":
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("json: tagged base64: value is %T, want string", val)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("json: tagged base64: %w", err)
		}
		return b, nil
	default:
		return nil, fmt.Errorf("json: unsupported tagged type %q", typ)
	}
}

// canonicalUUID accepts what Python's uuid.UUID(hex=...) accepts (optional urn:uuid:
// prefix, braces, hyphens) and returns the lower-case 8-4-4-4-12 form.
func canonicalUUID(s string) (string, error) {
	h := strings.TrimPrefix(strings.TrimPrefix(s, "urn:"), "uuid:")
	h = strings.Trim(h, "{}")
	h = strings.ReplaceAll(h, "-", "")
	if len(h) != 32 {
		return "", fmt.Errorf("badly formed hexadecimal UUID string %q", s)
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return "", fmt.Errorf("badly formed hexadecimal UUID string %q", s)
	}
	return formatUUID(b), nil
}

func formatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// decimalValue converts the text of a Python Decimal to a JSON-compatible Go value.
func decimalValue(s string) (any, error) {
	t := strings.TrimSpace(s)
	if isJSONNumber(t) {
		return json.Number(t), nil
	}
	lower := strings.ToLower(strings.TrimLeft(t, "+-"))
	neg := strings.HasPrefix(t, "-")
	switch lower {
	case "nan", "snan":
		return math.NaN(), nil
	case "inf", "infinity":
		if neg {
			return math.Inf(-1), nil
		}
		return math.Inf(1), nil
	}
	// Forms Python accepts but JSON does not: "+1", ".5", "1.", "1E5" etc.
	if f, err := strconv.ParseFloat(t, 64); err == nil {
		if n := strings.TrimPrefix(t, "+"); isJSONNumber(n) {
			return json.Number(n), nil
		}
		return json.Number(formatPyFloat(f)), nil
	}
	return nil, fmt.Errorf("json: tagged decimal: invalid value %q", s)
}

// isJSONNumber reports whether s is exactly one JSON number.
func isJSONNumber(s string) bool {
	if s == "" {
		return false
	}
	p := jsonParser{data: []byte(s)}
	if _, err := p.number(); err != nil {
		return false
	}
	return p.pos == len(s)
}
