package protocol

import (
	"errors"
	"strings"
)

// ContentTypeInvalidEnvelope marks a Message that a transport could not read as a message
// at all (a Redis list element that is not a kombu envelope). Body holds the raw element
// and HeaderEnvelopeError why it was not readable. Decode always rejects it with
// ReasonDecodeError, so the worker dead-letters it through the normal path instead of the
// transport dropping it.
const ContentTypeInvalidEnvelope = "application/x-fleet-invalid-envelope"

// HeaderEnvelopeError carries, on a ContentTypeInvalidEnvelope message, the reason the
// transport could not read the element.
const HeaderEnvelopeError = "x-fleet-envelope-error"

// IsInvalidEnvelope reports whether m is a transport's wrapper around an unreadable element.
func IsInvalidEnvelope(m *Message) bool {
	return m != nil && strings.EqualFold(strings.TrimSpace(m.ContentType), ContentTypeInvalidEnvelope)
}

func invalidEnvelopeError(m *Message) error {
	why, _ := m.Headers[HeaderEnvelopeError].(string)
	if why == "" {
		why = "unreadable"
	}
	return errors.New("the broker element is not a message envelope: " + why)
}
