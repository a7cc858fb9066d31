package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeInvalidEnvelope(t *testing.T) {
	tests := []struct {
		name, contentType string
		why               any
		want              string
	}{
		{"with reason", ContentTypeInvalidEnvelope, "invalid character 'n'", "not a message envelope: invalid character 'n'"},
		{"case and spaces", " Application/X-Fleet-Invalid-Envelope ", "x", "not a message envelope: x"},
		{"no reason", ContentTypeInvalidEnvelope, nil, "not a message envelope: unreadable"},
	}
	for _, tt := range tests {
		m := &Message{ContentType: tt.contentType, Headers: map[string]any{HeaderEnvelopeError: tt.why}, Body: []byte("raw element")}
		_, err := Decode(m)
		var de *DecodeError
		if !errors.As(err, &de) || de.Reason != ReasonDecodeError || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Decode = %v, want a decode_error with %q", tt.name, err, tt.want)
		}
		if !IsInvalidEnvelope(m) {
			t.Errorf("%s: IsInvalidEnvelope = false", tt.name)
		}
	}
	if IsInvalidEnvelope(&Message{ContentType: ContentTypeJSON}) || IsInvalidEnvelope(nil) {
		t.Error("IsInvalidEnvelope of a JSON message or nil")
	}
}
