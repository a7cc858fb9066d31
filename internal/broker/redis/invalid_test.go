package redis

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// An element of a queue that is not a kombu envelope is never dropped: it is delivered as
// an invalid-envelope message under a recorded lease, protocol.Decode rejects it with a
// decode error, and it can be dead-lettered (or restored) like any other delivery.
func TestInvalidElementsAreDelivered(t *testing.T) {
	tests := []struct {
		name    string
		element string
		why     string // in the x-fleet-envelope-error header
	}{
		{"not json", "not json at all", "invalid character"},
		{"json but no properties", `{"body": "x"}`, "no properties"},
		{"leased by the script, unreadable body", `{"body": "%%%", "headers": {}, "properties": {"delivery_tag": "t-1", "body_encoding": "base64"}}`, "base64"},
		{"leased by the script, unknown body encoding", `{"body": "x", "headers": {}, "properties": {"delivery_tag": "t-2", "body_encoding": "rot13"}}`, "rot13"},
		{"headers not an object", `{"body": "x", "headers": [1], "properties": {}}`, "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, b := browseFixture(t)
			ctx := context.Background()
			q := queueName("inv")
			f.rdb.LPush(ctx, f.prefix+q, tt.element)
			ch, _ := f.consume(b, 0, q)
			d := recv(t, ch)
			m := d.Message
			if m.ContentType != protocol.ContentTypeInvalidEnvelope || string(m.Body) != tt.element || d.Queue != q {
				t.Fatalf("delivered %q %q from %q", m.ContentType, m.Body, d.Queue)
			}
			if why, _ := m.Headers[protocol.HeaderEnvelopeError].(string); !strings.Contains(why, tt.why) {
				t.Errorf("envelope error %q, want it to mention %q", why, tt.why)
			}
			var de *protocol.DecodeError
			if _, err := protocol.Decode(m); !errors.As(err, &de) || de.Reason != protocol.ReasonDecodeError {
				t.Fatalf("Decode: %v, want a decode_error", err)
			}
			// The lease is recorded, holding a readable kombu envelope.
			l := d.Handle.(*lease)
			rec, err := f.rdb.HGet(ctx, f.ks.unacked(), l.tag).Bytes()
			if err != nil {
				t.Fatalf("no lease: %v", err)
			}
			env, _, rk, err := parseRecord(rec)
			if err != nil || rk != q {
				t.Fatalf("lease record %s: %v", rec, err)
			}
			if e, err := decodeEnvelope(env); err != nil || string(e.msg.Body) != tt.element {
				t.Fatalf("leased envelope %s: %v", env, err)
			}
			// Requeued it comes back the same; dead-lettered it lands in the DLQ intact.
			if err := b.Requeue(ctx, d); err != nil {
				t.Fatal(err)
			}
			d = recv(t, ch)
			if d.Message.ContentType != protocol.ContentTypeInvalidEnvelope || string(d.Message.Body) != tt.element || !d.Redelivered {
				t.Fatalf("after requeue: %q %q redelivered %v", d.Message.ContentType, d.Message.Body, d.Redelivered)
			}
			m2 := d.Message.Clone()
			m2.Headers["x-fleet-dlq-reason"] = "decode_error"
			if err := b.DeadLetter(ctx, d, q+".dlq", m2); err != nil {
				t.Fatal(err)
			}
			var got []*broker.Stored
			if err := b.Walk(ctx, q+".dlq", func(s *broker.Stored) (broker.Decision, error) {
				got = append(got, s)
				return broker.Decision{}, nil
			}, nil); err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || string(got[0].Message.Body) != tt.element || got[0].Message.Headers["x-fleet-dlq-reason"] != "decode_error" {
				t.Fatalf("dlq holds %d messages", len(got))
			}
			if n := f.hlen(f.ks.unacked()) + f.zcard(f.ks.unackedIndex()) + f.llen(f.prefix+q); n != 0 {
				t.Errorf("%d entries left in unacked/queue", n)
			}
		})
	}
}

// A worker that dies holding an invalid element loses nothing: another consumer's sweep
// restores the wrapped envelope and it is delivered again.
func TestInvalidElementSurvivesCrash(t *testing.T) {
	f, b := browseFixture(t)
	ctx := context.Background()
	q := queueName("invcrash")
	f.rdb.LPush(ctx, f.prefix+q, "\x00garbage\xff")
	ch, cancel := f.consume(b, 0, q)
	d := recv(t, ch)
	if d.Message.ContentType != protocol.ContentTypeInvalidEnvelope {
		t.Fatalf("got %q", d.Message.ContentType)
	}
	cancel()
	crash(b)

	b2, err := New(ctx, Options{URL: browseURL, KeyPrefix: f.prefix, VisibilityTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	time.Sleep(600 * time.Millisecond)
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	ch2, err := b2.Consume(cctx, []string{q}, 0)
	if err != nil {
		t.Fatal(err)
	}
	d2 := recv(t, ch2)
	if d2.Message.ContentType != protocol.ContentTypeInvalidEnvelope || string(d2.Message.Body) != "\x00garbage\xff" || !d2.Redelivered {
		t.Fatalf("restored %q %q redelivered %v", d2.Message.ContentType, d2.Message.Body, d2.Redelivered)
	}
	if err := b2.Ack(ctx, d2); err != nil {
		t.Fatal(err)
	}
	ccancel()
	for range ch2 {
	}
}
