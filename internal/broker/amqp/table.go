package amqp

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/protocol"
)

// fromTable converts AMQP application headers into the JSON-like values protocol.Message
// documents: nil, bool, string, json.Number, []any and map[string]any. The result is never
// nil so that callers may add headers. t is converted in place and returned: amqp091-go
// decodes a fresh table per delivery, and a second map per message would double the
// garbage of the consume path.
func fromTable(t amqp091.Table) map[string]any {
	if t == nil {
		return map[string]any{}
	}
	for k, v := range t {
		switch v.(type) {
		case nil, bool, string: // already protocol values
		default:
			t[k] = fromField(v)
		}
	}
	return map[string]any(t)
}

// fromField converts one AMQP field value (as amqp091-go decodes it).
func fromField(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case bool:
		return x
	case string:
		return x
	case []byte:
		return string(x)
	case int8:
		return json.Number(strconv.FormatInt(int64(x), 10))
	case int16:
		return json.Number(strconv.FormatInt(int64(x), 10))
	case int32:
		return json.Number(strconv.FormatInt(int64(x), 10))
	case int64:
		return json.Number(strconv.FormatInt(x, 10))
	case int:
		return json.Number(strconv.FormatInt(int64(x), 10))
	case uint8:
		return json.Number(strconv.FormatUint(uint64(x), 10))
	case uint16:
		return json.Number(strconv.FormatUint(uint64(x), 10))
	case uint32:
		return json.Number(strconv.FormatUint(uint64(x), 10))
	case uint64:
		return json.Number(strconv.FormatUint(x, 10))
	case float32:
		return floatNumber(float64(x), 32)
	case float64:
		return floatNumber(x, 64)
	case amqp091.Decimal:
		return decimalNumber(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case []any: // converted in place, as fromTable
		for i, e := range x {
			x[i] = fromField(e)
		}
		return x
	case amqp091.Table:
		return fromTable(x)
	case map[string]any:
		return fromTable(amqp091.Table(x))
	default:
		// amqp091-go decodes no other types; keep something printable rather than a
		// transport type leaking into the protocol layer.
		return fmt.Sprint(x)
	}
}

// floatNumber formats f the way encoding/json does, then marks integral values with ".0"
// as Python's json does, so that a float stays a float when it is published again.
// Non-finite values use Python's JSON dialect (NaN, Infinity, -Infinity).
func floatNumber(f float64, bits int) json.Number {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	s := strconv.FormatFloat(f, format, -1, bits)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return json.Number(s)
}

// decimalNumber renders an AMQP decimal (Value × 10^-Scale) exactly.
func decimalNumber(d amqp091.Decimal) json.Number {
	neg := d.Value < 0
	digits := strconv.FormatInt(int64(d.Value), 10)
	if neg {
		digits = digits[1:]
	}
	scale := int(d.Scale)
	if scale > 0 {
		if len(digits) <= scale {
			digits = strings.Repeat("0", scale-len(digits)+1) + digits
		}
		digits = digits[:len(digits)-scale] + "." + digits[len(digits)-scale:]
	}
	if neg {
		digits = "-" + digits
	}
	return json.Number(digits)
}

// toTable converts protocol header values into an AMQP table. Integers are encoded the way
// py-amqp encodes Python ints (32-bit 'I' when they fit, 64-bit otherwise), non-integral
// numbers as doubles, nested maps as tables. A nil or empty map gives a nil table.
func toTable(m map[string]any) (amqp091.Table, error) {
	if len(m) == 0 {
		return nil, nil
	}
	t := make(amqp091.Table, len(m))
	for k, v := range m {
		f, err := toField(v)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", k, err)
		}
		t[k] = f
	}
	return t, nil
}

func toField(v any) (any, error) {
	switch x := v.(type) {
	case nil, bool, string:
		return x, nil
	case json.Number:
		return numberField(x)
	case int:
		return intField(int64(x)), nil
	case int8:
		return intField(int64(x)), nil
	case int16:
		return intField(int64(x)), nil
	case int32:
		return intField(int64(x)), nil
	case int64:
		return intField(x), nil
	case uint8:
		return intField(int64(x)), nil
	case uint16:
		return intField(int64(x)), nil
	case uint32:
		return intField(int64(x)), nil
	case uint:
		if uint64(x) > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d out of range", x)
		}
		return intField(int64(x)), nil
	case uint64:
		if x > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d out of range", x)
		}
		return intField(int64(x)), nil
	case float32:
		return float64(x), nil
	case float64:
		return x, nil
	case []byte:
		return string(x), nil
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano), nil
	case []string:
		out := make([]any, len(x))
		for i, s := range x {
			out[i] = s
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			f, err := toField(e)
			if err != nil {
				return nil, fmt.Errorf("element %d: %w", i, err)
			}
			out[i] = f
		}
		return out, nil
	case map[string]any:
		t, err := toTable(x)
		if err != nil {
			return nil, err
		}
		if t == nil {
			t = amqp091.Table{}
		}
		return t, nil
	case amqp091.Table:
		return toField(map[string]any(x))
	default:
		return nil, fmt.Errorf("unsupported header value type %T", v)
	}
}

// intField mirrors py-amqp: 'I' (int32) when the value fits, 'l' (int64) otherwise.
func intField(i int64) any {
	if i >= math.MinInt32 && i <= math.MaxInt32 {
		return int32(i)
	}
	return i
}

func numberField(n json.Number) (any, error) {
	s := string(n)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return intField(i), nil
	}
	switch s {
	case "NaN":
		return math.NaN(), nil
	case "Infinity":
		return math.Inf(1), nil
	case "-Infinity":
		return math.Inf(-1), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("number %q not representable in AMQP: %w", s, err)
	}
	return f, nil
}

// toPublishing builds the AMQP publishing for m.
func toPublishing(m *protocol.Message) (amqp091.Publishing, error) {
	if m == nil {
		return amqp091.Publishing{}, fmt.Errorf("nil message")
	}
	h, err := toTable(m.Headers)
	if err != nil {
		return amqp091.Publishing{}, err
	}
	if err := h.Validate(); err != nil {
		return amqp091.Publishing{}, fmt.Errorf("headers: %w", err)
	}
	return amqp091.Publishing{
		Headers:         h,
		ContentType:     m.ContentType,
		ContentEncoding: m.ContentEncoding,
		DeliveryMode:    m.Properties.DeliveryMode,
		Priority:        m.Properties.Priority,
		CorrelationId:   m.Properties.CorrelationID,
		ReplyTo:         m.Properties.ReplyTo,
		Expiration:      m.Properties.Expiration,
		Body:            m.Body,
	}, nil
}

// fromDelivery builds the protocol message carried by d.
func fromDelivery(d *amqp091.Delivery) *protocol.Message {
	return &protocol.Message{
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		Properties: protocol.Properties{
			CorrelationID: d.CorrelationId,
			ReplyTo:       d.ReplyTo,
			DeliveryMode:  d.DeliveryMode,
			Priority:      d.Priority,
			Expiration:    d.Expiration,
		},
		Headers: fromTable(d.Headers),
		Body:    d.Body,
	}
}
