package result

import (
	"context"
	"errors"
	"sync"
	"testing"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// recordingPublisher keeps what it is asked to publish.
type recordingPublisher struct {
	mu  sync.Mutex
	got []broker.Publishing
	err error
}

func (p *recordingPublisher) Publish(_ context.Context, pub broker.Publishing) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, pub)
	return p.err
}

func TestRPCStore(t *testing.T) {
	tests := []struct {
		name     string
		rec      Record
		wantCorr string
		wantBody string
	}{
		{
			name:     "success",
			rec:      Record{TaskID: "8d3a57e1", Status: protocol.StateSuccess, Result: 3, ReplyTo: "research_rpc_reply", CorrelationID: "8d3a57e1"},
			wantCorr: "8d3a57e1",
			wantBody: `{"task_id": "8d3a57e1", "status": "SUCCESS", "result": 3, "traceback": null, "children": []}`,
		},
		{
			name:     "started",
			rec:      Record{TaskID: "8d3a57e1", Status: protocol.StateStarted, Result: map[string]any{"pid": 22296, "hostname": "research3@vm"}, ReplyTo: "research_rpc_reply", CorrelationID: "8d3a57e1"},
			wantCorr: "8d3a57e1",
			wantBody: `{"task_id": "8d3a57e1", "status": "STARTED", "result": {"hostname": "research3@vm", "pid": 22296}, "traceback": null, "children": []}`,
		},
		{
			name: "failure, correlation id falls back to task id, extended fields ignored",
			rec: Record{TaskID: "f7de80f3", Status: protocol.StateFailure, Result: Failure("ValueError", ModuleBuiltins, "bad"),
				Traceback: "Traceback …", ReplyTo: "45fc3a3f-a9ca-3ca8-be53-590d99303f4a", Name: "x", Queue: "q", GroupID: "g"},
			wantCorr: "f7de80f3",
			wantBody: `{"task_id": "f7de80f3", "status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}, "traceback": "Traceback \u2026", "children": []}`,
		},
		{
			name:     "revoked with distinct correlation id",
			rec:      Record{TaskID: "t1", Status: protocol.StateRevoked, Result: Revoked(RevokedReasonExpired), ReplyTo: "r", CorrelationID: "c1"},
			wantCorr: "c1",
			wantBody: `{"task_id": "t1", "status": "REVOKED", "result": {"exc_type": "TaskRevokedError", "exc_message": ["expired"], "exc_module": "celery.exceptions"}, "traceback": null, "children": []}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &recordingPublisher{}
			b := NewRPC(pub, Options{})
			if err := b.Store(context.Background(), tt.rec); err != nil {
				t.Fatal(err)
			}
			if len(pub.got) != 1 {
				t.Fatalf("published %d messages, want 1", len(pub.got))
			}
			p := pub.got[0]
			if p.Exchange != "" || p.RoutingKey != tt.rec.ReplyTo {
				t.Errorf("exchange %q routing key %q, want \"\" and %q", p.Exchange, p.RoutingKey, tt.rec.ReplyTo)
			}
			m := p.Message
			want := protocol.Properties{CorrelationID: tt.wantCorr, DeliveryMode: 1}
			if m.Properties != want {
				t.Errorf("properties = %+v, want %+v", m.Properties, want)
			}
			if m.ContentType != "application/json" || m.ContentEncoding != "utf-8" {
				t.Errorf("content %q/%q", m.ContentType, m.ContentEncoding)
			}
			if len(m.Headers) != 0 {
				t.Errorf("headers = %v, want none", m.Headers)
			}
			if string(m.Body) != tt.wantBody {
				t.Errorf("body:\n got %s\nwant %s", m.Body, tt.wantBody)
			}
		})
	}
}

func TestRPCStoreSkipsWithoutReplyTo(t *testing.T) {
	pub := &recordingPublisher{}
	if err := NewRPC(pub, Options{}).Store(context.Background(), Record{TaskID: "t", Status: protocol.StateSuccess}); err != nil {
		t.Fatal(err)
	}
	if len(pub.got) != 0 {
		t.Errorf("published %d messages without reply_to", len(pub.got))
	}
}

func TestRPCStoreErrors(t *testing.T) {
	boom := errors.New("connection reset")
	b := NewRPC(&recordingPublisher{err: boom}, Options{})
	err := b.Store(context.Background(), Record{TaskID: "t", Status: protocol.StateSuccess, ReplyTo: "r"})
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want wrapped %v", err, boom)
	}
	if err := b.Store(context.Background(), Record{Status: protocol.StateSuccess, ReplyTo: "r"}); err == nil {
		t.Errorf("empty task id: want error")
	}
	if err := b.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}
