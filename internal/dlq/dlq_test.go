package dlq

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

func TestQueueName(t *testing.T) {
	tests := []struct {
		in, want string
		isDLQ    bool
	}{
		{"celery", "celery.dlq", false},
		{"research_tasks", "research_tasks.dlq", false},
		{"celery.dlq", "celery.dlq", true},
		{".dlq", ".dlq.dlq", false},
		{"a.dlqx", "a.dlqx.dlq", false},
	}
	for _, tt := range tests {
		if got := QueueName(tt.in); got != tt.want {
			t.Errorf("QueueName(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if got := IsDLQ(tt.in); got != tt.isDLQ {
			t.Errorf("IsDLQ(%q) = %v, want %v", tt.in, got, tt.isDLQ)
		}
	}
}

func TestValidReason(t *testing.T) {
	for _, r := range []string{"decode_error", "unsupported_content", "unknown_task",
		"max_retries_exceeded", "time_limit", "task_failed", "rejected", "worker_lost", "flag_disabled",
		"expired", "max_length"} {
		if !ValidReason(r) {
			t.Errorf("ValidReason(%q) = false", r)
		}
	}
	for _, r := range []string{"", "boom", "Rejected"} {
		if ValidReason(r) {
			t.Errorf("ValidReason(%q) = true", r)
		}
	}
}

func original() *protocol.Message {
	return &protocol.Message{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties: protocol.Properties{
			CorrelationID: "d85fcd87-bcd9-425b-a062-23a848698851",
			ReplyTo:       "45fc3a3f-a9ca-3ca8-be53-590d99303f4a",
			DeliveryMode:  2,
			Priority:      3,
			Expiration:    "120000",
		},
		Headers: map[string]any{
			"lang":      "py",
			"task":      "research.add",
			"id":        "d85fcd87-bcd9-425b-a062-23a848698851",
			"retries":   json.Number("0"),
			"timelimit": []any{nil, nil},
		},
		Body: []byte(`[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]`),
	}
}

func TestLetter(t *testing.T) {
	now := time.Date(2026, 11, 26, 15, 4, 5, 123456789, time.FixedZone("CET", 3600))
	long := strings.Repeat("é", MaxErrorLen) // 2 bytes per rune
	tests := []struct {
		name         string
		queue        string
		extra        map[string]any // headers already on the message
		errText      string
		wantAttempts int
		wantQueue    string
		wantErr      string
	}{
		{name: "first", queue: "celery", errText: "ValueError: boom", wantAttempts: 1, wantQueue: "celery", wantErr: "ValueError: boom"},
		{name: "attempts json.Number", queue: "celery", extra: map[string]any{HeaderAttempts: json.Number("2")}, wantAttempts: 3, wantQueue: "celery"},
		{name: "attempts int", queue: "celery", extra: map[string]any{HeaderAttempts: 4}, wantAttempts: 5, wantQueue: "celery"},
		{name: "attempts int64", queue: "celery", extra: map[string]any{HeaderAttempts: int64(1)}, wantAttempts: 2, wantQueue: "celery"},
		{name: "attempts float", queue: "celery", extra: map[string]any{HeaderAttempts: 7.0}, wantAttempts: 8, wantQueue: "celery"},
		{name: "attempts garbage", queue: "celery", extra: map[string]any{HeaderAttempts: "x"}, wantAttempts: 1, wantQueue: "celery"},
		{name: "from dlq keeps origin", queue: "celery.dlq", extra: map[string]any{HeaderQueue: "celery", HeaderAttempts: json.Number("1")}, wantAttempts: 2, wantQueue: "celery"},
		{name: "replayed overwrites queue", queue: "other", extra: map[string]any{HeaderQueue: "celery"}, wantAttempts: 1, wantQueue: "other"},
		{name: "long error", queue: "celery", errText: long, wantAttempts: 1, wantQueue: "celery"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := original()
			for k, v := range tt.extra {
				orig.Headers[k] = v
			}
			before := orig.Clone()
			d := &broker.Delivery{Queue: tt.queue, RoutingKey: tt.queue, Message: orig}

			m := Letter(d, ReasonTaskFailed, tt.errText, "fleet1@host", now)

			// The original delivery is untouched.
			if len(orig.Headers) != len(before.Headers) || !bytes.Equal(orig.Body, before.Body) {
				t.Fatalf("Letter modified the original message")
			}
			// Everything of the original is kept.
			if !bytes.Equal(m.Body, orig.Body) {
				t.Errorf("body = %q, want %q", m.Body, orig.Body)
			}
			// Everything but the per-message TTL, which is kept in a header instead.
			props := orig.Properties
			props.Expiration = ""
			if m.Properties != props || m.ContentType != orig.ContentType || m.ContentEncoding != orig.ContentEncoding {
				t.Errorf("properties/content changed: %+v", m)
			}
			if got := m.Headers[HeaderExpiration]; got != orig.Properties.Expiration {
				t.Errorf("expiration header = %v, want %q", got, orig.Properties.Expiration)
			}
			for k, v := range orig.Headers {
				if k == HeaderAttempts || k == HeaderQueue {
					continue
				}
				if got, ok := m.Headers[k]; !ok || !sameValue(got, v) {
					t.Errorf("header %s = %#v, want %#v", k, got, v)
				}
			}
			// The dead-letter headers.
			if got := m.Headers[HeaderReason]; got != ReasonTaskFailed {
				t.Errorf("reason = %v", got)
			}
			if got := m.Headers[HeaderWorker]; got != "fleet1@host" {
				t.Errorf("worker = %v", got)
			}
			if got := m.Headers[HeaderTime]; got != "2026-11-26T14:04:05Z" {
				t.Errorf("time = %v", got)
			}
			if got := m.Headers[HeaderAttempts]; got != tt.wantAttempts {
				t.Errorf("attempts = %#v, want %d", got, tt.wantAttempts)
			}
			if got := m.Headers[HeaderQueue]; got != tt.wantQueue {
				t.Errorf("queue = %v, want %s", got, tt.wantQueue)
			}
			e, _ := m.Headers[HeaderError].(string)
			if len(e) > MaxErrorLen || !utf8.ValidString(e) {
				t.Errorf("error text: %d bytes, valid utf-8 %v", len(e), utf8.ValidString(e))
			}
			if tt.wantErr != "" && e != tt.wantErr {
				t.Errorf("error = %q, want %q", e, tt.wantErr)
			}
			if len(tt.errText) > MaxErrorLen && !strings.HasSuffix(e, truncMark) {
				t.Errorf("long error not marked as truncated: ...%q", e[len(e)-20:])
			}
		})
	}
}

func sameValue(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

type recordingMover struct {
	d   *broker.Delivery
	dlq string
	m   *protocol.Message
	err error
}

func (r *recordingMover) DeadLetter(_ context.Context, d *broker.Delivery, dlq string, m *protocol.Message) error {
	r.d, r.dlq, r.m = d, dlq, m
	return r.err
}

func TestMove(t *testing.T) {
	ctx := context.Background()
	brokenErr := errors.New("channel closed")
	tests := []struct {
		name    string
		d       *broker.Delivery
		reason  string
		moverEr error
		wantDLQ string
		wantErr error
	}{
		{name: "queue", d: &broker.Delivery{Queue: "celery", Message: original()}, reason: ReasonUnknownTask, wantDLQ: "celery.dlq"},
		{name: "routing key fallback", d: &broker.Delivery{RoutingKey: "jobs", Message: original()}, reason: ReasonDecodeError, wantDLQ: "jobs.dlq"},
		{name: "from dlq", d: &broker.Delivery{Queue: "jobs.dlq", Message: original()}, reason: ReasonTaskFailed, wantDLQ: "jobs.dlq"},
		{name: "invalid reason", d: &broker.Delivery{Queue: "celery", Message: original()}, reason: "nope", wantErr: ErrInvalidReason},
		{name: "mover error", d: &broker.Delivery{Queue: "celery", Message: original()}, reason: ReasonRejected, moverEr: brokenErr, wantDLQ: "celery.dlq", wantErr: brokenErr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mv := &recordingMover{err: tt.moverEr}
			err := Move(ctx, mv, tt.d, tt.reason, "some error", "w1@h")
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if mv.dlq != tt.wantDLQ {
				t.Errorf("dlq = %q, want %q", mv.dlq, tt.wantDLQ)
			}
			if tt.wantDLQ == "" {
				return
			}
			if mv.d != tt.d {
				t.Errorf("mover got another delivery")
			}
			if mv.m.Headers[HeaderReason] != tt.reason || mv.m.Headers[HeaderError] != "some error" {
				t.Errorf("headers = %v", mv.m.Headers)
			}
			if !bytes.Equal(mv.m.Body, tt.d.Message.Body) {
				t.Errorf("body changed")
			}
		})
	}
	if err := Move(ctx, &recordingMover{}, &broker.Delivery{Message: original()}, ReasonRejected, "", "w"); err == nil {
		t.Errorf("Move without queue: want error")
	}
}

func TestLetterNilMessage(t *testing.T) {
	m := Letter(&broker.Delivery{Queue: "q"}, ReasonDecodeError, "bad", "w", time.Unix(0, 0))
	if m.Headers[HeaderReason] != ReasonDecodeError || m.Headers[HeaderAttempts] != 1 {
		t.Errorf("headers = %v", m.Headers)
	}
}
