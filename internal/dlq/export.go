package dlq

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Record is one line of an export file (JSON Lines): the message as it is in the DLQ,
// byte for byte (body in base64), with a summary of the entry for people reading the file.
// Import only reads the message fields.
type Record struct {
	ID     string `json:"id"`
	Queue  string `json:"queue"`
	TaskID string `json:"task_id,omitempty"`
	Task   string `json:"task,omitempty"`
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
	Time   string `json:"time,omitempty"`

	ContentType     string           `json:"content_type"`
	ContentEncoding string           `json:"content_encoding"`
	Properties      RecordProperties `json:"properties"`
	Headers         map[string]any   `json:"headers"`
	Body            string           `json:"body"` // base64
}

// RecordProperties are the message properties of a Record.
type RecordProperties struct {
	CorrelationID string `json:"correlation_id,omitempty"`
	ReplyTo       string `json:"reply_to,omitempty"`
	DeliveryMode  uint8  `json:"delivery_mode,omitempty"`
	Priority      uint8  `json:"priority,omitempty"`
	Expiration    string `json:"expiration,omitempty"`
}

// NewRecord builds the export record of e.
func NewRecord(e *Entry) Record {
	m := e.Stored.Message
	r := Record{
		ID: e.ID, Queue: e.Queue, TaskID: e.TaskID, Task: e.Task, Reason: e.Reason, Error: e.Error,
		ContentType: m.ContentType, ContentEncoding: m.ContentEncoding,
		Properties: RecordProperties{CorrelationID: m.Properties.CorrelationID, ReplyTo: m.Properties.ReplyTo,
			DeliveryMode: m.Properties.DeliveryMode, Priority: m.Properties.Priority, Expiration: m.Properties.Expiration},
		Headers: m.Headers,
		Body:    base64.StdEncoding.EncodeToString(m.Body),
	}
	if !e.Time.IsZero() {
		r.Time = e.Time.UTC().Format(time.RFC3339)
	}
	if r.Headers == nil {
		r.Headers = map[string]any{}
	}
	return r
}

// Message rebuilds the message of r.
func (r Record) Message() (*protocol.Message, error) {
	body, err := base64.StdEncoding.DecodeString(r.Body)
	if err != nil {
		return nil, fmt.Errorf("body is not base64: %w", err)
	}
	h := r.Headers
	if h == nil {
		h = map[string]any{}
	}
	return &protocol.Message{
		ContentType: r.ContentType, ContentEncoding: r.ContentEncoding,
		Properties: protocol.Properties{CorrelationID: r.Properties.CorrelationID, ReplyTo: r.Properties.ReplyTo,
			DeliveryMode: r.Properties.DeliveryMode, Priority: r.Properties.Priority, Expiration: r.Properties.Expiration},
		Headers: h,
		Body:    body,
	}, nil
}

// Export writes the entries of dlq that f selects to w, one JSON record per line, and
// returns how many it wrote. The DLQ is left as it was.
func Export(ctx context.Context, b broker.Browser, dlq string, f Filter, w io.Writer) (int, error) {
	if err := f.Validate(); err != nil {
		return 0, fmt.Errorf("dlq: export %s: %w", dlq, err)
	}
	bw := bufio.NewWriter(w)
	n := 0
	err := Scan(ctx, b, dlq, func(e *Entry) error {
		if !f.Match(e) {
			return nil
		}
		line, err := protocol.MarshalJSON(NewRecord(e))
		if err != nil {
			return fmt.Errorf("message %s: %w", e.ID, err)
		}
		bw.Write(line)
		if err := bw.WriteByte('\n'); err != nil {
			return err
		}
		n++
		return nil
	})
	if ferr := bw.Flush(); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return n, fmt.Errorf("dlq: export %s: %w", dlq, err)
	}
	return n, nil
}

// ImportOptions configure Import.
type ImportOptions struct {
	DryRun   bool
	Progress func(done int)
	Logger   *slog.Logger
}

// ImportReport is what Import did.
type ImportReport struct {
	Imported int
	// Skipped counts records whose message is already in the DLQ (same ID): importing
	// the same file twice, or again after an interruption, adds each message once.
	Skipped int
}

// Import publishes the records read from r into dlq (declared first), each confirmed by
// the broker. A record whose message the DLQ already holds is skipped, which makes an
// interrupted import safe to run again.
func Import(ctx context.Context, b broker.Browser, dlq string, r io.Reader, o ImportOptions) (*ImportReport, error) {
	log := logger(o.Logger)
	rep := &ImportReport{}
	if !o.DryRun {
		if err := b.DeclareDLQ(ctx, dlq); err != nil {
			return rep, fmt.Errorf("dlq: import into %s: %w", dlq, err)
		}
	}
	present := map[string]bool{}
	if err := Scan(ctx, b, dlq, func(e *Entry) error { present[e.ID] = true; return nil }); err != nil {
		return rep, fmt.Errorf("dlq: import into %s: read what it holds: %w", dlq, err)
	}
	ids := identifier{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	line := 0
	for sc.Scan() {
		line++
		data := bytes.TrimSpace(sc.Bytes())
		if len(data) == 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rec, err := decodeRecord(data)
		if err != nil {
			return rep, fmt.Errorf("dlq: import into %s: line %d: %w", dlq, line, err)
		}
		m, err := rec.Message()
		if err != nil {
			return rep, fmt.Errorf("dlq: import into %s: line %d: %w", dlq, line, err)
		}
		id := ids.next(m)
		if present[id] {
			rep.Skipped++
			continue
		}
		if !o.DryRun {
			if err := b.Publish(ctx, broker.Publishing{RoutingKey: dlq, Message: m}); err != nil {
				return rep, fmt.Errorf("dlq: import into %s: line %d: %w", dlq, line, err)
			}
			log.Info("dlq: imported", "dlq", dlq, "id", id, "task_id", rec.TaskID, "task", rec.Task)
		}
		rep.Imported++
		if o.Progress != nil {
			o.Progress(rep.Imported + rep.Skipped)
		}
	}
	if err := sc.Err(); err != nil {
		return rep, fmt.Errorf("dlq: import into %s: read line %d: %w", dlq, line+1, err)
	}
	return rep, nil
}

// decodeRecord parses one line, numbers kept exact; Python's NaN and Infinity are accepted.
func decodeRecord(data []byte) (Record, error) {
	var rec Record
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	err := dec.Decode(&rec)
	if err == nil {
		return rec, nil
	}
	// Python's bare NaN/Infinity (our export writes them as Python does): parse generically.
	v, perr := protocol.ParseJSON(data)
	if perr != nil {
		return rec, fmt.Errorf("not a JSON record: %w", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return rec, errors.New("not a JSON object")
	}
	hs, _ := obj["headers"].(map[string]any)
	delete(obj, "headers")
	clean, merr := json.Marshal(obj)
	if merr != nil {
		return rec, fmt.Errorf("record: %w", merr)
	}
	dec = json.NewDecoder(bytes.NewReader(clean))
	dec.UseNumber()
	if err := dec.Decode(&rec); err != nil {
		return rec, fmt.Errorf("record: %w", err)
	}
	rec.Headers = hs
	return rec, nil
}
