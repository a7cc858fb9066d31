package dlq

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Sources of an Entry's dead-letter facts.
const (
	SourceFleet   = "fleet"   // x-fleet-dlq-* headers: a fleet worker dead-lettered it
	SourceBroker  = "broker"  // x-death: RabbitMQ dead-lettered it (reject, TTL, overflow)
	SourceUnknown = "unknown" // neither (published to the DLQ by hand, imported bare)
)

// Entry is one dead letter as the tools show it: its stable ID, what task it is and why
// it is in the DLQ, whichever way it got there.
type Entry struct {
	// ID is stable while the message sits in its queue and across export and import: a
	// digest of its content, with "-2", "-3"… for further identical copies in consume order.
	ID       string    `json:"id"`
	Queue    string    `json:"queue"`  // the dead-letter queue it is in
	Origin   string    `json:"origin"` // the queue it was dead-lettered from
	TaskID   string    `json:"task_id"`
	Task     string    `json:"task"`
	Reason   string    `json:"reason"`
	Error    string    `json:"error"`
	Worker   string    `json:"worker,omitempty"`
	Time     time.Time `json:"time"` // when it was dead-lettered; zero when unknown
	Attempts int       `json:"attempts"`
	Replayed int       `json:"replayed"`
	Source   string    `json:"source"`
	Position int       `json:"position"` // in consume order when read

	Stored *broker.Stored `json:"-"`
}

// Age is how long the entry has been dead at now; 0 when the time is unknown.
func (e *Entry) Age(now time.Time) time.Duration {
	if e.Time.IsZero() {
		return 0
	}
	return max(now.Sub(e.Time), 0)
}

// ErrorHead is the first line of the error, cut to n runes.
func (e *Entry) ErrorHead(n int) string {
	s, _, _ := strings.Cut(e.Error, "\n")
	r := []rune(s)
	if len(r) > n {
		return string(r[:max(n-1, 0)]) + "…"
	}
	return s
}

// identifier hands out entry IDs in consume order: the content digest, suffixed for
// identical copies.
type identifier map[string]int

func (ids identifier) next(m *protocol.Message) string {
	d := Digest(m)
	ids[d]++
	if n := ids[d]; n > 1 {
		return d + "-" + strconv.Itoa(n)
	}
	return d
}

// volatileHeaders are left out of the digest: transports add or change them.
var volatileHeaders = map[string]bool{"redelivered": true}

// Digest is the 12-hex-digit content digest at the heart of entry IDs: content type and
// encoding, correlation id, reply-to, priority, headers (in a canonical JSON form) and
// body. The transport's own envelope (delivery tag, redelivered flag) is left out.
func Digest(m *protocol.Message) string {
	h := sha256.New()
	w := func(s string) {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	w(m.ContentType)
	w(m.ContentEncoding)
	w(m.Properties.CorrelationID)
	w(m.Properties.ReplyTo)
	w(strconv.Itoa(int(m.Properties.Priority)))
	hs := make(map[string]any, len(m.Headers))
	for k, v := range m.Headers {
		if !volatileHeaders[k] {
			hs[k] = v
		}
	}
	if data, err := protocol.MarshalJSON(hs); err == nil {
		h.Write(data)
	} else {
		w(err.Error())
	}
	h.Write([]byte{0})
	h.Write(m.Body)
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// describe reads the dead-letter facts of a stored message: the x-fleet-dlq-* headers, or
// RabbitMQ's x-death when it is newer (or alone).
func describe(s *broker.Stored, id string) Entry {
	m := s.Message
	e := Entry{ID: id, Queue: s.Queue, Position: s.Position, Stored: s, Source: SourceUnknown}
	h := m.Headers
	e.TaskID, e.Task = taskIdentity(m)
	if v, ok := headerInt(h[HeaderReplayed]); ok {
		e.Replayed = int(v)
	}
	if r, ok := h[HeaderReason].(string); ok && r != "" {
		e.Source = SourceFleet
		e.Reason = r
		e.Error, _ = h[HeaderError].(string)
		e.Origin, _ = h[HeaderQueue].(string)
		e.Worker, _ = h[HeaderWorker].(string)
		if ts, ok := h[HeaderTime].(string); ok {
			e.Time, _ = time.Parse(time.RFC3339, ts)
		}
		if n, ok := headerInt(h[HeaderAttempts]); ok {
			e.Attempts = int(n)
		}
	}
	if d, ok := lastDeath(h); ok && (e.Source != SourceFleet || d.time.After(e.Time)) {
		e.Source = SourceBroker
		e.Reason = d.reason
		e.Origin = d.queue
		e.Worker = ""
		e.Time = d.time
		e.Attempts = d.count
		e.Error = "RabbitMQ dead-lettered it from " + strconv.Quote(d.queue) + ": " + d.raw
	}
	if e.Origin == "" && IsDLQ(s.Queue) {
		e.Origin = strings.TrimSuffix(s.Queue, Suffix)
	}
	if protocol.IsInvalidEnvelope(m) && e.Error == "" {
		e.Error, _ = h[protocol.HeaderEnvelopeError].(string)
	}
	return e
}

// taskIdentity finds the task id and name: v2 headers, else a v1 body, else the
// correlation id.
func taskIdentity(m *protocol.Message) (id, name string) {
	id, _ = m.Headers["id"].(string)
	name, _ = m.Headers["task"].(string)
	if (id == "" || name == "") && !protocol.IsInvalidEnvelope(m) {
		var de *protocol.DecodeError
		if t, err := protocol.Decode(m); err == nil {
			id, name = t.ID, t.Name
		} else if errors.As(err, &de) {
			if id == "" {
				id = de.TaskID
			}
			if name == "" {
				name = de.TaskName
			}
		}
	}
	if id == "" {
		id = m.Properties.CorrelationID
	}
	return id, name
}

// death is the newest x-death record.
type death struct {
	reason, queue, raw string
	time               time.Time
	count              int
}

// brokerReasons maps RabbitMQ's x-death reasons onto ours.
var brokerReasons = map[string]string{
	"rejected":       ReasonRejected,
	"expired":        ReasonExpired,
	"maxlen":         ReasonMaxLength,
	"delivery_limit": ReasonWorkerLost, // a quorum queue's delivery-limit: redelivered too often
}

// lastDeath reads x-death (newest record first, as RabbitMQ orders it).
func lastDeath(h map[string]any) (death, bool) {
	list, ok := h["x-death"].([]any)
	if !ok || len(list) == 0 {
		return death{}, false
	}
	rec, ok := list[0].(map[string]any)
	if !ok {
		return death{}, false
	}
	d := death{}
	d.raw, _ = rec["reason"].(string)
	d.queue, _ = rec["queue"].(string)
	d.reason = brokerReasons[d.raw]
	if d.reason == "" {
		d.reason = ReasonRejected
	}
	if ts, ok := rec["time"].(string); ok {
		d.time, _ = time.Parse(time.RFC3339, ts)
	}
	if n, ok := headerInt(rec["count"]); ok {
		d.count = int(n)
	}
	return d, true
}
