package redis

import (
	"encoding/json"
	"errors"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// errSlowPath makes decodeEnvelope fall back to encoding/json: the fast decoder only
// takes the inputs it reads exactly as encoding/json (with UseNumber and Python's
// constants as null) would.
var errSlowPath = errors.New("envelope needs the general decoder")

// fastDecodeEnvelope reads a kombu envelope in one pass, giving the same result as the
// encoding/json decode of wireEnvelope (numbers as json.Number, NaN and ±Infinity as
// nil), several times faster. It returns errSlowPath (or another error) for anything it
// does not read exactly the same way; the caller then uses the general decoder.
func fastDecodeEnvelope(raw []byte) (*wireEnvelope, error) {
	p := &fastParser{data: raw}
	p.space()
	if !p.eat('{') {
		return nil, errSlowPath
	}
	var w wireEnvelope
	seen := 0
	p.space()
	if p.eat('}') {
		return nil, errSlowPath
	}
	for {
		p.space()
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		p.space()
		if !p.eat(':') {
			return nil, errSlowPath
		}
		p.space()
		bit := 0
		for i, k := range envelopeKeys {
			if k == key {
				bit = 1 << i
			}
		}
		if seen&bit != 0 {
			return nil, errSlowPath // encoding/json merges repeated objects
		}
		seen |= bit
		switch key {
		case "body":
			start := p.pos
			if p.peek() == '"' {
				if _, err := p.str(); err != nil {
					return nil, err
				}
			} else if !p.lit("null") {
				return nil, errSlowPath
			}
			w.Body = json.RawMessage(raw[start:p.pos])
		case "content-encoding", "content-type":
			var s *string
			if p.peek() == '"' {
				v, err := p.str()
				if err != nil {
					return nil, err
				}
				s = &v
			} else if !p.lit("null") {
				return nil, errSlowPath
			}
			if key == "content-type" {
				w.ContentType = s
			} else {
				w.ContentEncoding = s
			}
		case "headers", "properties":
			var m map[string]any
			if p.peek() == '{' {
				v, err := p.value(0)
				if err != nil {
					return nil, err
				}
				m = v.(map[string]any)
			} else if !p.lit("null") {
				return nil, errSlowPath
			}
			if key == "headers" {
				w.Headers = m
			} else {
				w.Properties = m
			}
		default:
			for _, k := range envelopeKeys {
				if strings.EqualFold(k, key) {
					return nil, errSlowPath // encoding/json matches field names case-insensitively
				}
			}
			if _, err := p.value(0); err != nil {
				return nil, err
			}
		}
		p.space()
		if p.eat(',') {
			continue
		}
		if p.eat('}') {
			break
		}
		return nil, errSlowPath
	}
	p.space()
	if p.pos != len(p.data) {
		return nil, errSlowPath
	}
	return &w, nil
}

// envelopeKeys are the fields of wireEnvelope.
var envelopeKeys = [...]string{"body", "content-encoding", "content-type", "headers", "properties"}

// maxFastDepth bounds nesting; deeper documents take the general decoder.
const maxFastDepth = 512

type fastParser struct {
	data []byte
	pos  int
}

func (p *fastParser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *fastParser) peek() byte {
	if p.pos < len(p.data) {
		return p.data[p.pos]
	}
	return 0
}

func (p *fastParser) eat(c byte) bool {
	if p.peek() == c {
		p.pos++
		return true
	}
	return false
}

func (p *fastParser) lit(s string) bool {
	if len(p.data)-p.pos >= len(s) && string(p.data[p.pos:p.pos+len(s)]) == s {
		p.pos += len(s)
		return true
	}
	return false
}

// value parses any JSON value into encoding/json's generic types (UseNumber).
func (p *fastParser) value(depth int) (any, error) {
	if depth > maxFastDepth {
		return nil, errSlowPath
	}
	switch c := p.peek(); {
	case c == '{':
		p.pos++
		m := make(map[string]any)
		p.space()
		if p.eat('}') {
			return m, nil
		}
		for {
			p.space()
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			p.space()
			if !p.eat(':') {
				return nil, errSlowPath
			}
			p.space()
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			m[k] = v
			p.space()
			if p.eat(',') {
				continue
			}
			if p.eat('}') {
				return m, nil
			}
			return nil, errSlowPath
		}
	case c == '[':
		p.pos++
		a := make([]any, 0, 4)
		p.space()
		if p.eat(']') {
			return a, nil
		}
		for {
			p.space()
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
			p.space()
			if p.eat(',') {
				continue
			}
			if p.eat(']') {
				return a, nil
			}
			return nil, errSlowPath
		}
	case c == '"':
		return p.str()
	case c == 't':
		if p.lit("true") {
			return true, nil
		}
	case c == 'f':
		if p.lit("false") {
			return false, nil
		}
	case c == 'n':
		if p.lit("null") {
			return nil, nil
		}
	case c == 'N':
		if p.lit("NaN") {
			return nil, nil // Python's constants become null (nullPyConstants)
		}
	case c == 'I':
		if p.lit("Infinity") {
			return nil, nil
		}
	case c == '-' && p.pos+1 < len(p.data) && p.data[p.pos+1] == 'I':
		if p.lit("-Infinity") {
			return nil, nil
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return nil, errSlowPath
}

// number reads a JSON number as encoding/json's grammar allows it.
func (p *fastParser) number() (any, error) {
	d, i := p.data, p.pos
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
		return nil, errSlowPath
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return nil, errSlowPath
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
			return nil, errSlowPath
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	n := json.Number(d[p.pos:i])
	p.pos = i
	return n, nil
}

// str reads a JSON string; unpaired surrogates become U+FFFD as in encoding/json. Invalid
// UTF-8 is left to the general decoder.
func (p *fastParser) str() (string, error) {
	if !p.eat('"') {
		return "", errSlowPath
	}
	d := p.data
	start := p.pos
	for i := start; i < len(d); i++ {
		c := d[i]
		switch {
		case c == '"':
			p.pos = i + 1
			s := d[start:i]
			if !utf8.Valid(s) {
				return "", errSlowPath // encoding/json replaces each invalid byte
			}
			return string(s), nil
		case c == '\\':
			return p.strSlow(start)
		case c < 0x20:
			return "", errSlowPath
		}
	}
	return "", errSlowPath
}

// strSlow decodes a string with escapes, from start (just past the opening quote).
func (p *fastParser) strSlow(start int) (string, error) {
	d := p.data
	out := make([]byte, 0, 64)
	for i := start; i < len(d); {
		c := d[i]
		switch {
		case c == '"':
			p.pos = i + 1
			return string(out), nil
		case c < 0x20:
			return "", errSlowPath
		case c == '\\':
			if i+1 >= len(d) {
				return "", errSlowPath
			}
			switch e := d[i+1]; e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := hex4(d, i+2)
				if !ok {
					return "", errSlowPath
				}
				i += 6
				if utf16.IsSurrogate(r) {
					if r2, ok := surrogatePair(d, i); ok {
						if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
							out = utf8.AppendRune(out, dec)
							i += 6
							continue
						}
					}
					r = utf8.RuneError
				}
				out = utf8.AppendRune(out, r)
				continue
			default:
				return "", errSlowPath
			}
			i += 2
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, size := utf8.DecodeRune(d[i:])
			if r == utf8.RuneError && size == 1 {
				return "", errSlowPath
			}
			out = append(out, d[i:i+size]...)
			i += size
		}
	}
	return "", errSlowPath
}

func surrogatePair(d []byte, i int) (rune, bool) {
	if i+1 < len(d) && d[i] == '\\' && d[i+1] == 'u' {
		return hex4(d, i+2)
	}
	return 0, false
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
