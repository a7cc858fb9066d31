package protocol

import (
	"encoding"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// MarshalJSON serializes v byte for byte as Python's json.dumps(v) does with its default
// arguments: separators ", " and ": ", ensure_ascii (every character outside printable
// ASCII becomes a lower-case \uXXXX escape, astral characters a surrogate pair), and the
// bare NaN, Infinity and -Infinity for non-finite floats. Floats are written as Python's
// repr writes them (1.0, 1e+16, 1e-05).
//
// Supported: nil, bool, string, json.Number (an integer literal is written as is, any
// other number re-formatted as the Python float it parses to), every int/uint/float type,
// slices and arrays, maps with string or integer keys (keys sorted, as Go maps have no
// order), json.RawMessage (written verbatim), []byte (a base64 string), time.Time
// (Python isoformat with offset), pointers and interfaces, and structs through their
// `json` tags in field order (omitempty, omitzero, string and "-" honoured, embedded
// structs flattened). Values implementing json.Marshaler are marshalled by it and the
// result re-formatted; encoding.TextMarshaler values become strings. Nil slices and maps
// are null, as with encoding/json.
func MarshalJSON(v any) ([]byte, error) {
	e := pyEncoder{buf: make([]byte, 0, 128)}
	if err := e.encode(v, 0); err != nil {
		return nil, err
	}
	return e.buf, nil
}

type pyEncoder struct {
	buf []byte
}

var (
	rawMessageType    = reflect.TypeFor[json.RawMessage]()
	numberType        = reflect.TypeFor[json.Number]()
	timeType          = reflect.TypeFor[time.Time]()
	marshalerType     = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

func (e *pyEncoder) encode(v any, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("json: nesting deeper than %d (cyclic value?)", maxJSONDepth)
	}
	switch x := v.(type) {
	case nil:
		e.buf = append(e.buf, "null"...)
	case bool:
		e.writeBool(x)
	case string:
		e.writeString(x)
	case json.Number:
		return e.writeNumber(string(x))
	case json.RawMessage:
		e.writeRaw(x)
	case float64:
		e.writeFloat(x, 64)
	case float32:
		e.writeFloat(float64(x), 32)
	case int:
		e.buf = strconv.AppendInt(e.buf, int64(x), 10)
	case int64:
		e.buf = strconv.AppendInt(e.buf, x, 10)
	case int32:
		e.buf = strconv.AppendInt(e.buf, int64(x), 10)
	case uint64:
		e.buf = strconv.AppendUint(e.buf, x, 10)
	case []any:
		if x == nil {
			e.buf = append(e.buf, "null"...)
			return nil
		}
		e.buf = append(e.buf, '[')
		for i, el := range x {
			if i > 0 {
				e.buf = append(e.buf, ", "...)
			}
			if err := e.encode(el, depth+1); err != nil {
				return err
			}
		}
		e.buf = append(e.buf, ']')
	case map[string]any:
		if x == nil {
			e.buf = append(e.buf, "null"...)
			return nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		e.buf = append(e.buf, '{')
		for i, k := range keys {
			if i > 0 {
				e.buf = append(e.buf, ", "...)
			}
			e.writeString(k)
			e.buf = append(e.buf, ": "...)
			if err := e.encode(x[k], depth+1); err != nil {
				return err
			}
		}
		e.buf = append(e.buf, '}')
	case []byte:
		if x == nil {
			e.buf = append(e.buf, "null"...)
			return nil
		}
		e.writeString(base64.StdEncoding.EncodeToString(x))
	case time.Time:
		e.writeString(pyISOFormat(x))
	default:
		return e.encodeValue(reflect.ValueOf(v), depth)
	}
	return nil
}

func (e *pyEncoder) encodeValue(rv reflect.Value, depth int) error {
	if depth > maxJSONDepth {
		return fmt.Errorf("json: nesting deeper than %d (cyclic value?)", maxJSONDepth)
	}
	if !rv.IsValid() {
		e.buf = append(e.buf, "null"...)
		return nil
	}
	t := rv.Type()
	switch t {
	case rawMessageType:
		e.writeRaw(rv.Bytes())
		return nil
	case numberType:
		return e.writeNumber(rv.String())
	case timeType:
		e.writeString(pyISOFormat(rv.Interface().(time.Time)))
		return nil
	}
	if (rv.Kind() == reflect.Pointer || rv.Kind() == reflect.Interface) && rv.IsNil() {
		e.buf = append(e.buf, "null"...)
		return nil
	}
	if t.Implements(marshalerType) && rv.Kind() != reflect.Pointer {
		return e.marshaler(rv)
	}
	if rv.Kind() != reflect.Pointer && rv.CanAddr() && reflect.PointerTo(t).Implements(marshalerType) {
		return e.marshaler(rv.Addr())
	}
	if t.Implements(textMarshalerType) && rv.Kind() != reflect.Pointer {
		return e.textMarshaler(rv)
	}
	if rv.Kind() != reflect.Pointer && rv.CanAddr() && reflect.PointerTo(t).Implements(textMarshalerType) {
		return e.textMarshaler(rv.Addr())
	}

	switch rv.Kind() {
	case reflect.Bool:
		e.writeBool(rv.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.buf = strconv.AppendInt(e.buf, rv.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		e.buf = strconv.AppendUint(e.buf, rv.Uint(), 10)
	case reflect.Float32:
		e.writeFloat(rv.Float(), 32)
	case reflect.Float64:
		e.writeFloat(rv.Float(), 64)
	case reflect.String:
		e.writeString(rv.String())
	case reflect.Pointer:
		// A pointer whose target implements json.Marshaler through a pointer receiver.
		if t.Implements(marshalerType) {
			return e.marshaler(rv)
		}
		if t.Implements(textMarshalerType) {
			return e.textMarshaler(rv)
		}
		return e.encodeValue(rv.Elem(), depth+1)
	case reflect.Interface:
		return e.encodeValue(rv.Elem(), depth+1)
	case reflect.Slice:
		if rv.IsNil() {
			e.buf = append(e.buf, "null"...)
			return nil
		}
		if t.Elem().Kind() == reflect.Uint8 && !reflect.PointerTo(t.Elem()).Implements(marshalerType) &&
			!reflect.PointerTo(t.Elem()).Implements(textMarshalerType) {
			e.writeString(base64.StdEncoding.EncodeToString(rv.Bytes()))
			return nil
		}
		return e.encodeList(rv, depth)
	case reflect.Array:
		return e.encodeList(rv, depth)
	case reflect.Map:
		if rv.IsNil() {
			e.buf = append(e.buf, "null"...)
			return nil
		}
		return e.encodeMap(rv, depth)
	case reflect.Struct:
		return e.encodeStruct(rv, depth)
	default:
		// Channels, funcs, complex numbers: encoding/json decides (it rejects them).
		raw, err := json.Marshal(rv.Interface())
		if err != nil {
			return fmt.Errorf("json: marshal %s: %w", t, err)
		}
		return e.reformat(raw)
	}
	return nil
}

func (e *pyEncoder) marshaler(rv reflect.Value) error {
	m, ok := rv.Interface().(json.Marshaler)
	if !ok {
		return fmt.Errorf("json: %s does not implement json.Marshaler", rv.Type())
	}
	raw, err := m.MarshalJSON()
	if err != nil {
		return fmt.Errorf("json: marshal %s: %w", rv.Type(), err)
	}
	return e.reformat(raw)
}

func (e *pyEncoder) textMarshaler(rv reflect.Value) error {
	m, ok := rv.Interface().(encoding.TextMarshaler)
	if !ok {
		return fmt.Errorf("json: %s does not implement encoding.TextMarshaler", rv.Type())
	}
	txt, err := m.MarshalText()
	if err != nil {
		return fmt.Errorf("json: marshal text %s: %w", rv.Type(), err)
	}
	e.writeString(string(txt))
	return nil
}

func (e *pyEncoder) encodeList(rv reflect.Value, depth int) error {
	e.buf = append(e.buf, '[')
	for i := 0; i < rv.Len(); i++ {
		if i > 0 {
			e.buf = append(e.buf, ", "...)
		}
		if err := e.encodeValue(rv.Index(i), depth+1); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, ']')
	return nil
}

func (e *pyEncoder) encodeMap(rv reflect.Value, depth int) error {
	type kv struct {
		key string
		val reflect.Value
	}
	kt := rv.Type().Key()
	pairs := make([]kv, 0, rv.Len())
	iter := rv.MapRange()
	for iter.Next() {
		k := iter.Key()
		var ks string
		switch {
		case kt.Kind() == reflect.String:
			ks = k.String()
		case kt.Implements(textMarshalerType):
			if k.Kind() == reflect.Pointer && k.IsNil() {
				ks = ""
				break
			}
			txt, err := k.Interface().(encoding.TextMarshaler).MarshalText()
			if err != nil {
				return fmt.Errorf("json: marshal map key %s: %w", kt, err)
			}
			ks = string(txt)
		default:
			switch kt.Kind() {
			case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
				ks = strconv.FormatInt(k.Int(), 10)
			case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
				ks = strconv.FormatUint(k.Uint(), 10)
			default:
				return fmt.Errorf("json: unsupported map key type %s", kt)
			}
		}
		pairs = append(pairs, kv{ks, iter.Value()})
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i].key < pairs[j].key })
	e.buf = append(e.buf, '{')
	for i, p := range pairs {
		if i > 0 {
			e.buf = append(e.buf, ", "...)
		}
		e.writeString(p.key)
		e.buf = append(e.buf, ": "...)
		if err := e.encodeValue(p.val, depth+1); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

// structField is one serialized field of a struct, following encoding/json's rules.
type structField struct {
	name      string
	index     []int
	tagged    bool
	omitEmpty bool
	omitZero  bool
	quoted    bool
}

// structFields lists t's JSON fields in encoding/json order, flattening embedded structs
// and resolving name conflicts the same way (shallowest wins, then the tagged one).
func structFields(t reflect.Type) []structField {
	type queued struct {
		typ   reflect.Type
		index []int
	}
	var all []structField
	current := []queued{}
	next := []queued{{typ: t}}
	visited := map[reflect.Type]bool{}
	for len(next) > 0 {
		current, next = next, current[:0]
		count := map[string]int{}
		var level []structField
		for _, q := range current {
			if visited[q.typ] {
				continue
			}
			visited[q.typ] = true
			for i := 0; i < q.typ.NumField(); i++ {
				sf := q.typ.Field(i)
				if sf.Anonymous {
					ft := sf.Type
					if ft.Kind() == reflect.Pointer {
						ft = ft.Elem()
					}
					if !sf.IsExported() && ft.Kind() != reflect.Struct {
						continue
					}
				} else if !sf.IsExported() {
					continue
				}
				tag := sf.Tag.Get("json")
				if tag == "-" {
					continue
				}
				name, opts, _ := strings.Cut(tag, ",")
				index := append(append([]int(nil), q.index...), i)
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if name == "" && sf.Anonymous && ft.Kind() == reflect.Struct {
					next = append(next, queued{typ: ft, index: index})
					continue
				}
				f := structField{name: name, index: index, tagged: name != ""}
				if f.name == "" {
					f.name = sf.Name
				}
				for _, o := range strings.Split(opts, ",") {
					switch o {
					case "omitempty":
						f.omitEmpty = true
					case "omitzero":
						f.omitZero = true
					case "string":
						switch ft.Kind() {
						case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32,
							reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32,
							reflect.Uint64, reflect.Uintptr, reflect.Float32, reflect.Float64, reflect.String:
							f.quoted = true
						}
					}
				}
				level = append(level, f)
				count[f.name]++
			}
		}
		// Names already taken at a shallower depth hide deeper ones.
		taken := map[string]bool{}
		for _, f := range all {
			taken[f.name] = true
		}
		byName := map[string][]structField{}
		for _, f := range level {
			byName[f.name] = append(byName[f.name], f)
		}
		for _, f := range level {
			if taken[f.name] {
				continue
			}
			group := byName[f.name]
			if len(group) == 1 {
				all = append(all, f)
				taken[f.name] = true
				continue
			}
			var tagged []structField
			for _, g := range group {
				if g.tagged {
					tagged = append(tagged, g)
				}
			}
			taken[f.name] = true // conflicting untagged duplicates are all dropped
			if len(tagged) == 1 {
				all = append(all, tagged[0])
			}
		}
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i].index, all[j].index
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] < b[k]
			}
		}
		return len(a) < len(b)
	})
	return all
}

func (e *pyEncoder) encodeStruct(rv reflect.Value, depth int) error {
	e.buf = append(e.buf, '{')
	first := true
	for _, f := range structFields(rv.Type()) {
		fv, ok := fieldByIndex(rv, f.index)
		if !ok {
			continue // behind a nil embedded pointer
		}
		if f.omitEmpty && isEmptyValue(fv) {
			continue
		}
		if f.omitZero && isZeroValue(fv) {
			continue
		}
		if !first {
			e.buf = append(e.buf, ", "...)
		}
		first = false
		e.writeString(f.name)
		e.buf = append(e.buf, ": "...)
		if f.quoted {
			inner := pyEncoder{}
			if err := inner.encodeValue(fv, depth+1); err != nil {
				return err
			}
			if fv.Kind() == reflect.Pointer && fv.IsNil() {
				e.buf = append(e.buf, inner.buf...)
			} else {
				e.writeString(string(inner.buf))
			}
			continue
		}
		if err := e.encodeValue(fv, depth+1); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

func fieldByIndex(v reflect.Value, index []int) (reflect.Value, bool) {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}, false
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v, true
}

func isEmptyValue(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Bool:
		return !v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return v.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return v.Float() == 0
	case reflect.Interface, reflect.Pointer:
		return v.IsNil()
	}
	return false
}

func isZeroValue(v reflect.Value) bool {
	if z, ok := v.Interface().(interface{ IsZero() bool }); ok {
		if (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) && v.IsNil() {
			return true
		}
		return z.IsZero()
	}
	return v.IsZero()
}

func (e *pyEncoder) writeBool(b bool) {
	if b {
		e.buf = append(e.buf, "true"...)
	} else {
		e.buf = append(e.buf, "false"...)
	}
}

func (e *pyEncoder) writeRaw(raw []byte) {
	if len(raw) == 0 {
		e.buf = append(e.buf, "null"...)
		return
	}
	e.buf = append(e.buf, raw...)
}

func (e *pyEncoder) writeFloat(f float64, bits int) {
	switch {
	case math.IsNaN(f):
		e.buf = append(e.buf, "NaN"...)
	case math.IsInf(f, 1):
		e.buf = append(e.buf, "Infinity"...)
	case math.IsInf(f, -1):
		e.buf = append(e.buf, "-Infinity"...)
	default:
		e.buf = append(e.buf, formatPyFloatBits(f, bits)...)
	}
}

// writeNumber writes json.Number text as Python would after loading and dumping it.
func (e *pyEncoder) writeNumber(s string) error {
	switch s {
	case "NaN", "Infinity", "-Infinity":
		e.buf = append(e.buf, s...)
		return nil
	}
	if !isJSONNumber(s) {
		return fmt.Errorf("json: invalid number literal %q", s)
	}
	if isIntLiteral(s) {
		if s == "-0" {
			s = "0"
		}
		e.buf = append(e.buf, s...)
		return nil
	}
	f, _ := strconv.ParseFloat(s, 64) // range errors give ±Inf or 0, as float() does
	e.writeFloat(f, 64)
	return nil
}

// isIntLiteral reports whether a valid JSON number has neither fraction nor exponent.
func isIntLiteral(s string) bool {
	return !strings.ContainsAny(s, ".eE")
}

// formatPyFloat formats a finite float64 as Python's repr(float) does.
func formatPyFloat(f float64) string { return formatPyFloatBits(f, 64) }

func formatPyFloatBits(f float64, bits int) string {
	s := strconv.FormatFloat(f, 'e', -1, bits)
	_, expStr, _ := strings.Cut(s, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp < -4 || exp >= 16 {
		return s // Go's shortest 'e' form matches Python: 1e+16, 1.5e-07
	}
	fixed := strconv.FormatFloat(f, 'f', -1, bits)
	if !strings.ContainsAny(fixed, ".") {
		fixed += ".0"
	}
	return fixed
}

const hexDigits = "0123456789abcdef"

// writeString writes s as a JSON string with Python's ensure_ascii escaping.
func (e *pyEncoder) writeString(s string) {
	e.buf = appendPyString(e.buf, s)
}

func appendPyString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch c {
			case '"':
				buf = append(buf, '\\', '"')
			case '\\':
				buf = append(buf, '\\', '\\')
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			default:
				if c < 0x20 || c == 0x7f {
					buf = appendU4(buf, rune(c))
				} else {
					buf = append(buf, c)
				}
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r >= 0x10000 {
			r1, r2 := utf16.EncodeRune(r)
			buf = appendU4(buf, r1)
			buf = appendU4(buf, r2)
		} else {
			buf = appendU4(buf, r)
		}
	}
	return append(buf, '"')
}

func appendU4(buf []byte, r rune) []byte {
	return append(buf, '\\', 'u', hexDigits[r>>12&0xf], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}

// reformat re-emits arbitrary JSON (from a json.Marshaler) in Python's format, keeping
// object key order.
func (e *pyEncoder) reformat(raw []byte) error {
	p := jsonParser{data: raw}
	p.skipSpace()
	if err := e.reformatValue(&p, 0); err != nil {
		return err
	}
	p.skipSpace()
	if p.pos != len(raw) {
		return p.errorf("extra data after JSON value")
	}
	return nil
}

func (e *pyEncoder) reformatValue(p *jsonParser, depth int) error {
	if depth > maxJSONDepth {
		return p.errorf("nesting deeper than %d", maxJSONDepth)
	}
	if p.pos >= len(p.data) {
		return p.errorf("unexpected end of input")
	}
	switch c := p.data[p.pos]; c {
	case '{', '[':
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		p.pos++
		e.buf = append(e.buf, c)
		p.skipSpace()
		if p.pos < len(p.data) && p.data[p.pos] == closer {
			p.pos++
			e.buf = append(e.buf, closer)
			return nil
		}
		for n := 0; ; n++ {
			if n > 0 {
				e.buf = append(e.buf, ", "...)
			}
			p.skipSpace()
			if c == '{' {
				if p.pos >= len(p.data) || p.data[p.pos] != '"' {
					return p.errorf("expected string key")
				}
				k, err := p.str()
				if err != nil {
					return err
				}
				e.writeString(k)
				p.skipSpace()
				if p.pos >= len(p.data) || p.data[p.pos] != ':' {
					return p.errorf("expected ':' after key")
				}
				p.pos++
				e.buf = append(e.buf, ": "...)
				p.skipSpace()
			}
			if err := e.reformatValue(p, depth+1); err != nil {
				return err
			}
			p.skipSpace()
			if p.pos >= len(p.data) {
				return p.errorf("unterminated container")
			}
			switch p.data[p.pos] {
			case ',':
				p.pos++
			case closer:
				p.pos++
				e.buf = append(e.buf, closer)
				return nil
			default:
				return p.errorf("expected ',' or %q", closer)
			}
		}
	case '"':
		s, err := p.str()
		if err != nil {
			return err
		}
		e.writeString(s)
		return nil
	default:
		v, err := p.value(depth)
		if err != nil {
			return err
		}
		return e.encode(v, depth)
	}
}

// pyISOFormat formats t as Python's datetime.isoformat() does for an aware datetime:
// microseconds only when non-zero, offset as +HH:MM (+HH:MM:SS when it has seconds).
func pyISOFormat(t time.Time) string {
	b := make([]byte, 0, 32)
	b = t.AppendFormat(b, "2006-01-02T15:04:05")
	if us := t.Nanosecond() / 1000; us != 0 {
		b = append(b, '.')
		b = append(b, fmt.Sprintf("%06d", us)...)
	}
	_, off := t.Zone()
	sign := byte('+')
	if off < 0 {
		sign = '-'
		off = -off
	}
	b = append(b, sign)
	b = append(b, fmt.Sprintf("%02d:%02d", off/3600, off/60%60)...)
	if off%60 != 0 {
		b = append(b, fmt.Sprintf(":%02d", off%60)...)
	}
	return string(b)
}
