package redis

import (
	"reflect"
	"testing"
)

// slowEnvelope is the general decoder the fast one must agree with.
func slowEnvelope(raw []byte) (*wireEnvelope, error) {
	var w wireEnvelope
	if err := unmarshalPy(raw, &w); err != nil {
		return nil, err
	}
	return &w, nil
}

var envelopeSamples = []string{
	capturedKombu,
	`{"body": "eyJhIjogMX0=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {}, "properties": {"delivery_tag": "t"}}`,
	`{"body": null, "content-encoding": null, "content-type": null, "headers": null, "properties": {"delivery_tag": "t", "priority": 3}}`,
	`{"properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "t"}, "body": "x", "extra": [1, {"a": [true, false, null]}], "headers": {"n": -1.5e+10, "z": 0, "e": 1E3}}`,
	`{"body": "x", "headers": {"nan": NaN, "inf": Infinity, "ninf": -Infinity, "s": "NaN"}, "properties": {}}`,
	`{"body": "x", "headers": {"esc": "a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00\ud800x\udc00"}, "properties": {}}`,
	`{"body": "x", "headers": {"u": "plain ascii and é ü 漢字"}, "properties": {"a": 1}}`,
	` {"body":"x","headers":{"a":[],"b":{}},"properties":{"delivery_tag":"t"}} `,
	`{"body": {"not": "a string"}, "headers": {}, "properties": {}}`,
	`{"body": 12, "headers": {}, "properties": {}}`,
	`{"Body": "case", "headers": {}, "properties": {}}`,
	`{"headers": {"a": 1}, "headers": {"b": 2}, "properties": {}}`,
	`{"body": "x", "headers": {"bad": "` + "\xff\xfe" + `"}, "properties": {}}`,
	`{"body": "x", "headers": {"ctl": "a` + "\x01" + `"}, "properties": {}}`,
	`{"body": "x", "headers": {"n": 01}, "properties": {}}`,
	`{"body": "x", "headers": {"n": 1.}, "properties": {}}`,
	`{"body": "x", "headers": {"n": -}, "properties": {}}`,
	`{"body": "x", "headers": [1, 2], "properties": {}}`,
	`{"body": "x", "headers": {}, "properties": {}} trailing`,
	`{"body": "x", "headers": {}, "properties": {},}`,
	`{"body": "x", "content-type": 5, "headers": {}, "properties": {}}`,
	`[1, 2]`,
	`{}`,
	``,
	`{"body": "x", "headers": {"deep": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}, "properties": {}}`,
	`{"body": "x", "headers": {"k": "unterminated}, "properties": {}}`,
	`{"body": "x", "headers": {"k": "\u12"}, "properties": {}}`,
	`{"body": "x", "headers": {"k": "\x"}, "properties": {}}`,
}

// The fast decoder either gives exactly what encoding/json gives or steps aside.
func TestFastEnvelopeMatchesGeneral(t *testing.T) {
	for _, raw := range envelopeSamples {
		fast, ferr := fastDecodeEnvelope([]byte(raw))
		slow, serr := slowEnvelope([]byte(raw))
		if ferr != nil {
			continue // the general decoder decides
		}
		if serr != nil {
			t.Errorf("%q: fast decoder accepted what encoding/json rejects (%v)", raw, serr)
			continue
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("%q:\n fast %#v\n slow %#v", raw, fast, slow)
		}
	}
	if _, err := fastDecodeEnvelope([]byte(capturedKombu)); err != nil {
		t.Errorf("the captured kombu envelope takes the slow path: %v", err)
	}
}

func FuzzFastEnvelope(f *testing.F) {
	for _, s := range envelopeSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		fast, ferr := fastDecodeEnvelope(raw)
		if ferr != nil {
			return
		}
		slow, serr := slowEnvelope(raw)
		if serr != nil {
			t.Fatalf("%q: fast decoder accepted what encoding/json rejects (%v)", raw, serr)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q:\n fast %#v\n slow %#v", raw, fast, slow)
		}
	})
}

func BenchmarkDecodeEnvelope(b *testing.B) {
	raw := []byte(capturedKombu)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := fastDecodeEnvelope(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := slowEnvelope(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
