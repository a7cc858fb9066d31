package dlq

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

func v1Message(id string) *protocol.Message {
	return &protocol.Message{ContentType: "application/json", ContentEncoding: "utf-8",
		Properties: protocol.Properties{CorrelationID: id},
		Headers:    map[string]any{},
		Body:       []byte(`{"task": "legacy.add", "id": "` + id + `", "args": [1, 2], "kwargs": {}, "retries": 3}`)}
}

func TestDescribe(t *testing.T) {
	dead := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	fleet := Letter(&broker.Delivery{Queue: "crews", Message: original()}, ReasonUnknownTask, "NotRegistered('x')\nmore", "w1@h", dead)
	xdeath := original()
	xdeath.Headers["x-death"] = []any{map[string]any{"count": json.Number("2"), "reason": "expired", "queue": "crews",
		"time": "2026-03-04T06:00:00Z", "exchange": "", "routing-keys": []any{"crews"}}}
	both := fleet.Clone()
	both.Headers["x-death"] = []any{map[string]any{"count": json.Number("1"), "reason": "rejected", "queue": "crews",
		"time": "2026-03-04T07:00:00Z"}}
	older := fleet.Clone()
	older.Headers["x-death"] = []any{map[string]any{"count": json.Number("1"), "reason": "rejected", "queue": "other",
		"time": "2026-03-01T00:00:00Z"}}
	replayed := fleet.Clone()
	replayed.Headers[HeaderReplayed] = json.Number("2")
	invalid := &protocol.Message{ContentType: protocol.ContentTypeInvalidEnvelope,
		Headers: map[string]any{protocol.HeaderEnvelopeError: "invalid character 'n'"}, Body: []byte("nope")}

	tests := []struct {
		name                         string
		m                            *protocol.Message
		queue                        string
		source, reason, origin, task string
		taskID                       string
		attempts, replayed           int
		time                         time.Time
		errHas                       string
	}{
		{name: "fleet", m: fleet, queue: "crews.dlq", source: SourceFleet, reason: ReasonUnknownTask, origin: "crews",
			task: "research.add", taskID: "d85fcd87-bcd9-425b-a062-23a848698851", attempts: 1, time: dead, errHas: "NotRegistered"},
		{name: "x-death", m: xdeath, queue: "crews.dlq", source: SourceBroker, reason: ReasonExpired, origin: "crews",
			task: "research.add", taskID: "d85fcd87-bcd9-425b-a062-23a848698851", attempts: 2,
			time: time.Date(2026, 3, 4, 6, 0, 0, 0, time.UTC), errHas: "RabbitMQ dead-lettered it"},
		{name: "newer x-death wins", m: both, queue: "crews.dlq", source: SourceBroker, reason: ReasonRejected, origin: "crews",
			task: "research.add", taskID: "d85fcd87-bcd9-425b-a062-23a848698851", attempts: 1,
			time: time.Date(2026, 3, 4, 7, 0, 0, 0, time.UTC), errHas: "rejected"},
		{name: "older x-death loses", m: older, queue: "crews.dlq", source: SourceFleet, reason: ReasonUnknownTask, origin: "crews",
			task: "research.add", taskID: "d85fcd87-bcd9-425b-a062-23a848698851", attempts: 1, time: dead},
		{name: "replayed count", m: replayed, queue: "crews.dlq", source: SourceFleet, reason: ReasonUnknownTask, origin: "crews",
			task: "research.add", taskID: "d85fcd87-bcd9-425b-a062-23a848698851", attempts: 1, replayed: 2, time: dead},
		{name: "bare v1", m: v1Message("v1-id"), queue: "jobs.dlq", source: SourceUnknown, origin: "jobs", task: "legacy.add", taskID: "v1-id"},
		{name: "invalid envelope", m: invalid, queue: "jobs.dlq", source: SourceUnknown, origin: "jobs", errHas: "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := describe(&broker.Stored{Queue: tt.queue, Position: 3, Message: tt.m}, "abc")
			if e.Source != tt.source || e.Reason != tt.reason || e.Origin != tt.origin || e.Task != tt.task || e.TaskID != tt.taskID {
				t.Errorf("got source %q reason %q origin %q task %q id %q", e.Source, e.Reason, e.Origin, e.Task, e.TaskID)
			}
			if e.Attempts != tt.attempts || e.Replayed != tt.replayed || !e.Time.Equal(tt.time) {
				t.Errorf("got attempts %d replayed %d time %v", e.Attempts, e.Replayed, e.Time)
			}
			if !strings.Contains(e.Error, tt.errHas) {
				t.Errorf("error %q lacks %q", e.Error, tt.errHas)
			}
			if e.ID != "abc" || e.Position != 3 || e.Queue != tt.queue {
				t.Errorf("id %q position %d queue %q", e.ID, e.Position, e.Queue)
			}
		})
	}
	e := describe(&broker.Stored{Queue: "crews.dlq", Message: fleet}, "x")
	if got := e.ErrorHead(10); got != "NotRegist…" {
		t.Errorf("ErrorHead = %q", got)
	}
	if got := e.Age(dead.Add(time.Minute)); got != time.Minute {
		t.Errorf("Age = %v", got)
	}
}

func TestDigestAndIDs(t *testing.T) {
	a := original()
	b := original()
	b.Headers["redelivered"] = true // transport noise does not change the id
	if Digest(a) != Digest(b) || len(Digest(a)) != 12 {
		t.Fatalf("digest %s vs %s", Digest(a), Digest(b))
	}
	c := original()
	c.Body = append(c.Body, ' ')
	d := original()
	d.Headers["retries"] = json.Number("1")
	if Digest(c) == Digest(a) || Digest(d) == Digest(a) {
		t.Error("different content, same digest")
	}
	// Numbers are compared by value, whatever their Go type (AMQP and Redis headers differ).
	e := original()
	e.Headers["retries"] = 0
	if Digest(e) != Digest(a) {
		t.Error("json.Number(0) and int 0 give different digests")
	}
	ids := identifier{}
	got := []string{ids.next(a), ids.next(c), ids.next(b), ids.next(a)}
	want := []string{Digest(a), Digest(c), Digest(a) + "-2", Digest(a) + "-3"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("id %d = %s, want %s", i, got[i], want[i])
		}
	}
}

func TestFilter(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	e := &Entry{ID: "aaaaaaaaaaaa", TaskID: "t-1", Task: "crew.run", Reason: ReasonTaskFailed, Time: now.Add(-time.Hour)}
	unknownTime := &Entry{ID: "b", Task: "crew.run", Reason: ReasonTaskFailed}
	tests := []struct {
		name string
		f    Filter
		e    *Entry
		want bool
	}{
		{"empty", Filter{}, e, true},
		{"by id", Filter{IDs: []string{"x", "aaaaaaaaaaaa"}}, e, true},
		{"by task id", Filter{IDs: []string{"t-1"}}, e, true},
		{"other id", Filter{IDs: []string{"t-2"}}, e, false},
		{"reason", Filter{Reasons: []string{ReasonTaskFailed, ReasonRejected}}, e, true},
		{"other reason", Filter{Reasons: []string{ReasonRejected}}, e, false},
		{"task", Filter{Tasks: []string{"crew.run"}}, e, true},
		{"other task", Filter{Tasks: []string{"crew.other"}}, e, false},
		{"since inside", Filter{Since: 2 * time.Hour, Now: now}, e, true},
		{"since outside", Filter{Since: 30 * time.Minute, Now: now}, e, false},
		{"since unknown time", Filter{Since: 2 * time.Hour, Now: now}, unknownTime, false},
		{"all together", Filter{IDs: []string{"t-1"}, Reasons: []string{ReasonTaskFailed}, Tasks: []string{"crew.run"}, Since: 2 * time.Hour, Now: now}, e, true},
	}
	for _, tt := range tests {
		if got := tt.f.Match(tt.e); got != tt.want {
			t.Errorf("%s: Match = %v, want %v", tt.name, got, tt.want)
		}
	}
	if err := (Filter{Reasons: []string{"nope"}}).Validate(); err == nil || !strings.Contains(err.Error(), "decode_error") {
		t.Errorf("Validate: %v", err)
	}
	if !(Filter{}).Empty() || (Filter{Tasks: []string{"x"}}).Empty() {
		t.Error("Empty")
	}
}

func TestReplayMessage(t *testing.T) {
	now := time.Now()
	fleet := Letter(&broker.Delivery{Queue: "crews", Message: original()}, ReasonTaskFailed, "boom", "w", now)
	fleet.Headers["retries"] = json.Number("3")
	fleet.Headers["root_id"] = "d85fcd87-bcd9-425b-a062-23a848698851"
	xdeath := original()
	xdeath.Headers["x-death"] = []any{map[string]any{"count": json.Number("4"), "reason": "rejected", "queue": "crews"}}
	xdeath.Headers["x-first-death-reason"] = "rejected"
	xdeath.Headers[HeaderReplayed] = json.Number("1")

	tests := []struct {
		name              string
		m                 *protocol.Message
		newID, keep       bool
		wantRetries       any
		wantAttempts      any
		wantReplayed      int
		wantSameID        bool
		wantBodyUnchanged bool
	}{
		{name: "fleet letter", m: fleet, wantRetries: 0, wantAttempts: 1, wantReplayed: 1, wantSameID: true, wantBodyUnchanged: true},
		{name: "keep retries", m: fleet, keep: true, wantRetries: json.Number("3"), wantAttempts: 1, wantReplayed: 1, wantSameID: true, wantBodyUnchanged: true},
		{name: "new id", m: fleet, newID: true, wantRetries: 0, wantAttempts: 1, wantReplayed: 1, wantBodyUnchanged: true},
		{name: "x-death", m: xdeath, wantRetries: 0, wantAttempts: 4, wantReplayed: 2, wantSameID: true, wantBodyUnchanged: true},
		{name: "v1 body", m: v1Message("v1"), newID: true, wantRetries: nil, wantReplayed: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.m.Clone()
			r, err := ReplayMessage(tt.m, tt.newID, tt.keep)
			if err != nil {
				t.Fatal(err)
			}
			if len(tt.m.Headers) != len(before.Headers) {
				t.Fatal("ReplayMessage changed its input")
			}
			for k := range r.Headers {
				if (strings.HasPrefix(k, "x-fleet-dlq-") && k != HeaderAttempts) || strings.Contains(k, "death") {
					t.Errorf("header %s kept", k)
				}
			}
			if got := r.Headers["retries"]; !sameValue(got, tt.wantRetries) {
				t.Errorf("retries = %#v, want %#v", got, tt.wantRetries)
			}
			if got := r.Headers[HeaderAttempts]; !sameValue(got, tt.wantAttempts) {
				t.Errorf("attempts = %#v, want %#v", got, tt.wantAttempts)
			}
			if got := r.Headers[HeaderReplayed]; got != tt.wantReplayed {
				t.Errorf("replayed = %#v, want %d", got, tt.wantReplayed)
			}
			if r.Properties.Expiration != "" {
				t.Errorf("expiration kept: %q", r.Properties.Expiration)
			}
			task, err := protocol.Decode(r)
			if err != nil {
				t.Fatalf("replayed message does not decode: %v", err)
			}
			old, _ := protocol.Decode(tt.m)
			if (task.ID == old.ID) != tt.wantSameID || task.ID != r.Properties.CorrelationID {
				t.Errorf("id %q (was %q), correlation id %q", task.ID, old.ID, r.Properties.CorrelationID)
			}
			if tt.newID && r.Headers["root_id"] != nil && r.Headers["root_id"] != task.ID {
				t.Errorf("root_id %v not following the new id %s", r.Headers["root_id"], task.ID)
			}
			if string(r.Body) == string(tt.m.Body) != tt.wantBodyUnchanged {
				t.Errorf("body %s", r.Body)
			}
			if !tt.keep && task.Retries != 0 {
				t.Errorf("decoded retries %d", task.Retries)
			}
		})
	}
	if _, err := ReplayMessage(&protocol.Message{ContentType: protocol.ContentTypeInvalidEnvelope}, false, false); err == nil {
		t.Error("an invalid envelope was made replayable")
	}
}

func TestParseRetention(t *testing.T) {
	tests := []struct {
		in      string
		queue   string
		want    Retention
		wantErr bool
	}{
		{in: "1000", want: Retention{MaxLength: 1000}},
		{in: "1000/72h", want: Retention{MaxLength: 1000, MaxAge: 72 * time.Hour}},
		{in: "/168h", want: Retention{MaxAge: 168 * time.Hour}},
		{in: "crews=10/1h", queue: "crews", want: Retention{MaxLength: 10, MaxAge: time.Hour}},
		{in: "crews.dlq=0", queue: "crews.dlq"},
		{in: "=5", wantErr: true},
		{in: "x/y", wantErr: true},
		{in: "-3", wantErr: true},
		{in: "5/-1h", wantErr: true},
	}
	for _, tt := range tests {
		q, r, err := ParseRetention(tt.in)
		if (err != nil) != tt.wantErr || q != tt.queue || r != tt.want {
			t.Errorf("ParseRetention(%q) = %q %+v %v", tt.in, q, r, err)
		}
	}
	c := RetentionConfig{Default: Retention{MaxLength: 1}, Queues: map[string]Retention{"crews": {MaxAge: time.Hour}, "jobs.dlq": {MaxLength: 5}}}
	for q, want := range map[string]Retention{"crews.dlq": {MaxAge: time.Hour}, "jobs.dlq": {MaxLength: 5}, "other.dlq": {MaxLength: 1}} {
		if got := c.For(q); got != want {
			t.Errorf("For(%q) = %+v, want %+v", q, got, want)
		}
	}
	if (Retention{}).Enabled() || (Retention{}).String() != "keep everything" {
		t.Error("zero retention")
	}
}
