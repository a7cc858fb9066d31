package protocol

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ReprMaxSize is Celery's argsrepr_maxsize and kwargsrepr_maxsize.
const ReprMaxSize = 1024

// reprMaxLevels is saferepr's default nesting limit: deeper containers print as [...].
const reprMaxLevels = 3

// Repr returns Python's repr() of a JSON value: strings quoted by Python's rules
// ('x', "it's", escapes for control and non-printable characters), True/False/None,
// integers as written, floats as Python writes them (1.0, 1e+16, nan, inf), lists
// [1, 2] and dicts {'a': 1} with keys sorted (Go maps have no order). []byte prints as a
// Python bytes literal. Values of other types are first converted through MarshalJSON.
func Repr(v any) string {
	var b strings.Builder
	writeRepr(&b, normalizeValue(v))
	return b.String()
}

// ReprArgs is the argsrepr header Celery writes for positional arguments:
// saferepr(tuple(args), 1024), e.g. "(2, 3)", "(1,)", "()".
func ReprArgs(args []any) string {
	return safeRepr(pyTuple(normalizeList(args)), ReprMaxSize)
}

// ReprKwargs is the kwargsrepr header: saferepr(kwargs, 1024) with the keys sorted.
func ReprKwargs(kwargs map[string]any) string {
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	return safeRepr(normalizeValue(kwargs), ReprMaxSize)
}

// SafeRepr is Celery's celery.utils.saferepr.saferepr(v, maxlen) of a JSON value: like
// repr, but strings are always single-quoted with only ' escaped, containers nested
// deeper than 3 levels print as [...]/{...}, and once maxlen characters are written the
// rest is cut with ", ..." (closing brackets still written). maxlen <= 0 means no limit.
func SafeRepr(v any, maxlen int) string {
	return safeRepr(normalizeValue(v), maxlen)
}

// pyTuple marks a list that prints as a Python tuple.
type pyTuple []any

// pyFloat is a float in a normalized value (json.Number floats are converted to it).
type pyFloat float64

// pyInt is an integer literal kept as its decimal text (Python ints are unbounded).
type pyInt string

// normalizeValue maps v onto: nil, bool, string, pyInt, pyFloat, []byte, []any,
// map[string]any, pyTuple.
func normalizeValue(v any) any {
	switch x := v.(type) {
	case nil, bool, string, pyInt, pyFloat:
		return x
	case []byte:
		if x == nil {
			return nil
		}
		return x
	case pyTuple:
		return pyTuple(normalizeList(x))
	case json.Number:
		s := string(x)
		if isJSONNumber(s) && isIntLiteral(s) {
			if s == "-0" {
				s = "0"
			}
			return pyInt(s)
		}
		switch s {
		case "NaN":
			return pyFloat(math.NaN())
		case "Infinity":
			return pyFloat(math.Inf(1))
		case "-Infinity":
			return pyFloat(math.Inf(-1))
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil && !isJSONNumber(s) {
			return s // not a number at all: show the text
		}
		return pyFloat(f)
	case float64:
		return pyFloat(x)
	case float32:
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return pyFloat(f)
	case int:
		return pyInt(strconv.Itoa(x))
	case int64:
		return pyInt(strconv.FormatInt(x, 10))
	case int32:
		return pyInt(strconv.FormatInt(int64(x), 10))
	case uint64:
		return pyInt(strconv.FormatUint(x, 10))
	case []any:
		if x == nil {
			return nil
		}
		return normalizeList(x)
	case map[string]any:
		if x == nil {
			return nil
		}
		m := make(map[string]any, len(x))
		for k, el := range x {
			m[k] = normalizeValue(el)
		}
		return m
	case time.Time:
		return pyISOFormat(x)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Bool:
		return rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return pyInt(strconv.FormatInt(rv.Int(), 10))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return pyInt(strconv.FormatUint(rv.Uint(), 10))
	case reflect.Float32, reflect.Float64:
		return pyFloat(rv.Float())
	case reflect.String:
		if _, isMarshaler := v.(json.Marshaler); !isMarshaler {
			return rv.String()
		}
	}
	// Anything else: as the JSON it serializes to.
	raw, err := MarshalJSON(v)
	if err != nil {
		return fmt.Sprintf("<unrepresentable %T: %v>", v, err)
	}
	parsed, err := ParseJSON(raw)
	if err != nil {
		return fmt.Sprintf("<unrepresentable %T: %v>", v, err)
	}
	return normalizeValue(parsed)
}

func normalizeList(a []any) []any {
	out := make([]any, len(a))
	for i, el := range a {
		out[i] = normalizeValue(el)
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// pyFloatRepr is repr(float).
func pyFloatRepr(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return formatPyFloat(f)
}

func writeRepr(b *strings.Builder, v any) {
	switch x := v.(type) {
	case nil:
		b.WriteString("None")
	case bool:
		if x {
			b.WriteString("True")
		} else {
			b.WriteString("False")
		}
	case pyInt:
		b.WriteString(string(x))
	case pyFloat:
		b.WriteString(pyFloatRepr(float64(x)))
	case string:
		b.WriteString(pyStrRepr(x))
	case []byte:
		b.WriteString(pyBytesRepr(x))
	case []any:
		b.WriteByte('[')
		for i, el := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, el)
		}
		b.WriteByte(']')
	case pyTuple:
		b.WriteByte('(')
		for i, el := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writeRepr(b, el)
		}
		if len(x) == 1 {
			b.WriteByte(',')
		}
		b.WriteByte(')')
	case map[string]any:
		b.WriteByte('{')
		for i, k := range sortedKeys(x) {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(pyStrRepr(k))
			b.WriteString(": ")
			writeRepr(b, x[k])
		}
		b.WriteByte('}')
	default:
		fmt.Fprintf(b, "%v", x)
	}
}

// pyStrRepr is Python 3's repr(str).
func pyStrRepr(s string) string {
	quote := byte('\'')
	if strings.IndexByte(s, '\'') >= 0 && strings.IndexByte(s, '"') < 0 {
		quote = '"'
	}
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte(quote)
	for _, r := range s {
		switch {
		case r == rune(quote) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < ' ' || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x7f:
			b.WriteRune(r)
		case unicode.IsPrint(r) && r != utf8.RuneError:
			b.WriteRune(r)
		case r <= 0xff:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// pyBytesRepr is Python 3's repr(bytes).
func pyBytesRepr(p []byte) string {
	quote := byte('\'')
	if strings.IndexByte(string(p), '\'') >= 0 && strings.IndexByte(string(p), '"') < 0 {
		quote = '"'
	}
	var b strings.Builder
	b.WriteString("b")
	b.WriteByte(quote)
	for _, c := range p {
		switch {
		case c == quote || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c < ' ' || c >= 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte(quote)
	return b.String()
}

// safeReprState replays celery.utils.saferepr's token stream: every token is checked
// against the remaining budget before it is written; once the budget is spent ", ..." is
// written and only the closing brackets of the containers still open follow.
type safeReprState struct {
	b       strings.Builder
	limited bool
	left    int // characters (code points) left when limited
	level   int
	stopped bool
}

func safeRepr(v any, maxlen int) string {
	s := &safeReprState{limited: maxlen > 0, left: maxlen}
	s.value(v)
	return s.b.String()
}

// budgetSpent implements the check at the top of _saferepr's loop.
func (s *safeReprState) budgetSpent() bool {
	if s.stopped {
		return true
	}
	if s.limited && s.left <= 0 {
		s.b.WriteString(", ...")
		s.stopped = true
		return true
	}
	return false
}

func (s *safeReprState) write(val string) {
	s.b.WriteString(val)
	if s.limited {
		s.left -= utf8.RuneCountInString(val)
	}
}

// literal writes a bracket or separator token; false when the budget cut it off.
func (s *safeReprState) literal(val string) bool {
	if s.budgetSpent() {
		return false
	}
	s.write(val)
	return true
}

// text writes a value token (number, None, True, a [...] placeholder), truncated.
func (s *safeReprState) text(val string) bool {
	if s.budgetSpent() {
		return false
	}
	s.write(s.truncate(val))
	return true
}

// quoted writes a string token: '...' with only ' escaped, the content truncated.
func (s *safeReprState) quoted(val string) bool {
	if s.budgetSpent() {
		return false
	}
	s.write("'" + strings.ReplaceAll(s.truncate(val), "'", `\'`) + "'")
	return true
}

// truncate is celery.utils.text.truncate(val, maxlen) with the remaining budget.
func (s *safeReprState) truncate(val string) string {
	if !s.limited || s.left <= 0 {
		return val
	}
	if utf8.RuneCountInString(val) < s.left {
		return val
	}
	r := []rune(val)[:s.left]
	cut := string(r)
	if i := strings.LastIndexByte(cut, ' '); i >= 0 {
		cut = cut[:i]
	}
	return cut + "..."
}

func (s *safeReprState) bytesToken(p []byte) bool {
	if s.budgetSpent() {
		return false
	}
	show := func(c []byte) string {
		if utf8.Valid(c) {
			return string(c)
		}
		return hex.EncodeToString(c)
	}
	var val string
	if s.limited && len(p) > s.left {
		val = "b'" + show(p[:s.left]) + "...'"
	} else {
		val = "b'" + show(p) + "'"
	}
	s.write(val)
	return true
}

func (s *safeReprState) value(v any) {
	switch x := v.(type) {
	case nil:
		s.text("None")
	case bool:
		if x {
			s.text("True")
		} else {
			s.text("False")
		}
	case pyInt:
		s.text(string(x))
	case pyFloat:
		s.text(pyFloatRepr(float64(x)))
	case string:
		s.quoted(x)
	case []byte:
		s.bytesToken(x)
	case pyTuple:
		end := ")"
		if len(x) == 1 {
			end = ",)"
		}
		s.container("(", end, len(x), func(i int) {
			s.value(x[i])
		})
	case []any:
		s.container("[", "]", len(x), func(i int) {
			s.value(x[i])
		})
	case map[string]any:
		keys := sortedKeys(x)
		s.container("{", "}", len(keys), func(i int) {
			if !s.quoted(keys[i]) {
				return
			}
			if !s.literal(": ") {
				return
			}
			s.value(x[keys[i]])
		})
	default:
		s.text(fmt.Sprintf("%v", x))
	}
}

// container writes start, the n items separated by ", ", and end, following the token
// order of saferepr's reprstream and its rules for cutting off.
func (s *safeReprState) container(start, end string, n int, item func(i int)) {
	if s.level >= reprMaxLevels {
		s.text(start + "..." + end)
		return
	}
	if !s.literal(start) {
		// Cut at the opening token: saferepr still writes the dangling closing one.
		s.b.WriteString(end)
		return
	}
	s.level++
	for i := 0; i < n; i++ {
		item(i)
		if s.stopped {
			break
		}
		if i < n-1 && !s.literal(", ") {
			break
		}
	}
	s.level--
	if s.stopped {
		s.b.WriteString(end)
		return
	}
	// Cut exactly at the closing token: that token was consumed, so it is not written.
	s.literal(end)
}
