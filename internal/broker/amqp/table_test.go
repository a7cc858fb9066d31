package amqp

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func TestFromField(t *testing.T) {
	ts := time.Date(2026, 11, 26, 14, 32, 36, 0, time.FixedZone("x", 3600))
	tests := []struct {
		name string
		in   any
		want any
	}{
		{"void", nil, nil},
		{"bool", true, true},
		{"string", "research.add", "research.add"},
		{"bytes", []byte("raw"), "raw"},
		{"int8", int8(-3), json.Number("-3")},
		{"uint8", uint8(200), json.Number("200")},
		{"int16", int16(-300), json.Number("-300")},
		{"uint16", uint16(60000), json.Number("60000")},
		{"int32", int32(0), json.Number("0")},
		{"uint32", uint32(4000000000), json.Number("4000000000")},
		{"int64", int64(1) << 40, json.Number("1099511627776")},
		{"float64", 1.5, json.Number("1.5")},
		{"integral float keeps a point", 30.0, json.Number("30.0")},
		{"large float", 1e22, json.Number("1e+22")},
		{"float32", float32(0.25), json.Number("0.25")},
		{"NaN", math.NaN(), json.Number("NaN")},
		{"-Inf", math.Inf(-1), json.Number("-Infinity")},
		{"decimal", amqp091.Decimal{Scale: 2, Value: 12345}, json.Number("123.45")},
		{"small decimal", amqp091.Decimal{Scale: 3, Value: -5}, json.Number("-0.005")},
		{"decimal scale 0", amqp091.Decimal{Scale: 0, Value: 7}, json.Number("7")},
		{"timestamp", ts, "2026-11-26T13:32:36Z"},
		{"timelimit array", []any{nil, int32(30)}, []any{nil, json.Number("30")}},
		{"nested table", amqp091.Table{"a": amqp091.Table{"b": []any{"c", false}}},
			map[string]any{"a": map[string]any{"b": []any{"c", false}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromField(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("fromField(%#v) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestToField(t *testing.T) {
	tests := []struct {
		name    string
		in      any
		want    any
		wantErr bool
	}{
		{"nil", nil, nil, false},
		{"small json int", json.Number("3"), int32(3), false},
		{"big json int", json.Number("4000000000"), int64(4000000000), false},
		{"json float", json.Number("2.5"), 2.5, false},
		{"json integral float", json.Number("30.0"), 30.0, false},
		{"json exponent", json.Number("1e+22"), 1e22, false},
		{"json Infinity", json.Number("Infinity"), math.Inf(1), false},
		{"json garbage", json.Number("x"), nil, true},
		{"go int", 7, int32(7), false},
		{"go int64 big", int64(1) << 40, int64(1) << 40, false},
		{"go uint64 too big", uint64(math.MaxUint64), nil, true},
		{"float32", float32(0.5), 0.5, false},
		{"bytes", []byte("b"), "b", false},
		{"string slice", []string{"a", "b"}, []any{"a", "b"}, false},
		{"array", []any{nil, json.Number("1")}, []any{nil, int32(1)}, false},
		{"map", map[string]any{"k": json.Number("1.5")}, amqp091.Table{"k": 1.5}, false},
		{"empty map", map[string]any{}, amqp091.Table{}, false},
		{"unsupported", struct{}{}, nil, true},
		{"unsupported nested", []any{make(chan int)}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := toField(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("toField(%#v) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if f, ok := tt.want.(float64); ok && math.IsInf(f, 0) {
				if g, ok := got.(float64); !ok || g != f {
					t.Errorf("toField(%#v) = %#v, want %v", tt.in, got, f)
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("toField(%#v) = %#v (%T), want %#v (%T)", tt.in, got, got, tt.want, tt.want)
			}
			if err := (amqp091.Table{"v": got}).Validate(); err != nil {
				t.Errorf("result is not a valid AMQP field: %v", err)
			}
		})
	}
}

// TestHeaderRoundTrip: normalized headers survive toTable → fromTable unchanged.
func TestHeaderRoundTrip(t *testing.T) {
	h := map[string]any{
		"lang":        "py",
		"shadow":      nil,
		"retries":     json.Number("0"),
		"timelimit":   []any{nil, json.Number("30.0")},
		"eta":         "2026-11-26T14:32:36.663135+00:00",
		"ignore":      false,
		"big":         json.Number("9007199254740993"),
		"neg":         json.Number("-2147483648"),
		"ratio":       json.Number("0.1"),
		"stamps":      map[string]any{"s": []any{"a"}},
		"empty_stamp": map[string]any{},
	}
	tab, err := toTable(h)
	if err != nil {
		t.Fatal(err)
	}
	if got := fromTable(tab); !reflect.DeepEqual(got, h) {
		t.Errorf("round trip:\n got %#v\nwant %#v", got, h)
	}
	if tab, err := toTable(nil); err != nil || tab != nil {
		t.Errorf("toTable(nil) = %v, %v; want nil table", tab, err)
	}
}
