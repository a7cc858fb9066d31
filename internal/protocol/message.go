// Package protocol owns the Celery wire format: task messages (protocol v1 and v2), their
// JSON dialect (Python's NaN/Infinity, kombu >= 5.3 tagged values, large integers), the
// result-meta documents the result backends store, and exception encoding. It knows nothing
// about brokers: transports hand it a Message and take a Message back.
package protocol

// Properties are the AMQP basic properties Celery sets on a task message (emulated in the
// Redis envelope's "properties" object).
type Properties struct {
	CorrelationID string
	ReplyTo       string
	DeliveryMode  uint8 // 2 = persistent, 1 = transient
	Priority      uint8
	Expiration    string // milliseconds as a decimal string, as Celery >= 5.2 sets it
}

// Message is one message as it travels on any broker: properties, application headers and
// the serialized body. Body holds the bytes after any transport body encoding (Redis base64)
// has been removed, but before the Celery `compression` header has been applied: exactly
// what the AMQP body carries.
//
// Header values are normalized by the transports to JSON-like Go values: nil, bool, string,
// json.Number (every number), []any and map[string]any.
type Message struct {
	ContentType     string
	ContentEncoding string
	Properties      Properties
	Headers         map[string]any
	Body            []byte
}

// Clone returns a deep-enough copy of m: the header map (top level) and body are copied so
// that callers may add headers without touching the original.
func (m *Message) Clone() *Message {
	c := *m
	c.Headers = make(map[string]any, len(m.Headers)+8)
	for k, v := range m.Headers {
		c.Headers[k] = v
	}
	c.Body = append([]byte(nil), m.Body...)
	return &c
}
