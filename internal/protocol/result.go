package protocol

import (
	"fmt"
	"strconv"
	"time"
)

// Task states as Celery names them.
const (
	StatePending = "PENDING"
	StateStarted = "STARTED"
	StateRetry   = "RETRY"
	StateSuccess = "SUCCESS"
	StateFailure = "FAILURE"
	StateRevoked = "REVOKED"
)

// ReadyStates are the states after which AsyncResult.get() returns.
func IsReady(state string) bool {
	return state == StateSuccess || state == StateFailure || state == StateRevoked
}

// ExceptionInfo is how Celery's JSON result serializer encodes an exception; Python's
// AsyncResult.get() re-raises it as exc_module.exc_type(*exc_message).
type ExceptionInfo struct {
	Type    string `json:"exc_type"`
	Message []any  `json:"exc_message"`
	Module  string `json:"exc_module"`
}

// ResultMeta is the document Celery's key/value result backends store for a task
// (`celery-task-meta-<id>` on Redis) and, without date_done and the optional fields, what the
// rpc:// backend sends. Encode writes the keys in the order Celery 5.2.6 does.
type ResultMeta struct {
	Status string
	// Result is a JSON value (nil, bool, string, numbers including json.Number and float64
	// NaN/±Inf, []any, map[string]any, or anything MarshalJSON takes), or an ExceptionInfo
	// (or *ExceptionInfo) for FAILURE, RETRY and REVOKED.
	Result any
	// Traceback is the traceback text; empty is written as null.
	Traceback string
	// Children lists the result tuples of subtasks the task sent; nil is written as [].
	Children []any
	// DateDone is when the task reached a ready state. It is written as naive UTC ISO 8601
	// (`2026-11-26T14:34:00.221388`, as Celery 5.2.6 does) for ready states and as null
	// otherwise, or when zero.
	DateDone time.Time
	// GroupID and ParentID are written only when set.
	GroupID  string
	ParentID string
	TaskID   string

	// The result_extended fields, each written only when set.
	Name    string
	Args    []any
	Kwargs  map[string]any
	Worker  string
	Retries *int
	Queue   string
}

// Encode returns the JSON document, byte-compatible with what the Python Redis backend writes
// (json.dumps separators, ensure_ascii, NaN/Infinity): status, result, traceback, children,
// date_done, [group_id], [parent_id], [name, args, kwargs, worker, retries, queue], task_id.
func (m *ResultMeta) Encode() ([]byte, error) {
	var dateDone any
	if IsReady(m.Status) && !m.DateDone.IsZero() {
		dateDone = FormatDateDone(m.DateDone)
	}
	fields := []resultMetaField{
		{"status", m.Status},
		{"result", resultMetaValue(m.Result)},
		{"traceback", resultNullIfEmpty(m.Traceback)},
		{"children", resultChildren(m.Children)},
		{"date_done", dateDone},
	}
	if m.GroupID != "" {
		fields = append(fields, resultMetaField{"group_id", m.GroupID})
	}
	if m.ParentID != "" {
		fields = append(fields, resultMetaField{"parent_id", m.ParentID})
	}
	if m.Name != "" {
		fields = append(fields, resultMetaField{"name", m.Name})
	}
	if m.Args != nil {
		fields = append(fields, resultMetaField{"args", m.Args})
	}
	if m.Kwargs != nil {
		fields = append(fields, resultMetaField{"kwargs", m.Kwargs})
	}
	if m.Worker != "" {
		fields = append(fields, resultMetaField{"worker", m.Worker})
	}
	if m.Retries != nil {
		fields = append(fields, resultMetaField{"retries", *m.Retries})
	}
	if m.Queue != "" {
		fields = append(fields, resultMetaField{"queue", m.Queue})
	}
	fields = append(fields, resultMetaField{"task_id", m.TaskID})
	b, err := encodeResultObject(fields)
	if err != nil {
		return nil, fmt.Errorf("protocol: encode result meta of %s: %w", m.TaskID, err)
	}
	return b, nil
}

// RPCBody returns the body the rpc:// backend publishes to the reply queue:
// {"task_id", "status", "result", "traceback", "children"} (no date_done).
func (m *ResultMeta) RPCBody() ([]byte, error) {
	b, err := encodeResultObject([]resultMetaField{
		{"task_id", m.TaskID},
		{"status", m.Status},
		{"result", resultMetaValue(m.Result)},
		{"traceback", resultNullIfEmpty(m.Traceback)},
		{"children", resultChildren(m.Children)},
	})
	if err != nil {
		return nil, fmt.Errorf("protocol: encode rpc result of %s: %w", m.TaskID, err)
	}
	return b, nil
}

// FormatDateDone formats t the way Celery 5.2.6 writes date_done: Python's
// datetime.utcnow().isoformat(), i.e. naive UTC with microseconds, the fraction left out
// when it is zero.
func FormatDateDone(t time.Time) string {
	t = t.UTC()
	var a [26]byte
	b := appendDigits(a[:0], t.Year(), 4)
	b = appendDigits(append(b, '-'), int(t.Month()), 2)
	b = appendDigits(append(b, '-'), t.Day(), 2)
	b = appendDigits(append(b, 'T'), t.Hour(), 2)
	b = appendDigits(append(b, ':'), t.Minute(), 2)
	b = appendDigits(append(b, ':'), t.Second(), 2)
	if us := t.Nanosecond() / 1000; us != 0 {
		b = appendDigits(append(b, '.'), us, 6)
	}
	return string(b)
}

// appendDigits appends v (0 ≤ v < 10^width, or a year) zero-padded to width digits.
func appendDigits(b []byte, v, width int) []byte {
	if v < 0 || v >= pow10(width) {
		return strconv.AppendInt(b, int64(v), 10) // outside the format's range: as is
	}
	for d := pow10(width - 1); d > 0; d /= 10 {
		b = append(b, byte('0'+v/d%10))
	}
	return b
}

func pow10(n int) int {
	p := 1
	for range n {
		p *= 10
	}
	return p
}

type resultMetaField struct {
	key   string
	value any
}

// encodeResultObject writes an object with keys in the given order, using json.dumps' default
// separators (", " and ": ") and MarshalJSON for the values.
func encodeResultObject(fields []resultMetaField) ([]byte, error) {
	e := pyEncoder{buf: make([]byte, 0, 256)}
	e.buf = append(e.buf, '{')
	for i, f := range fields {
		if i > 0 {
			e.buf = append(e.buf, ", "...)
		}
		e.writeString(f.key)
		e.buf = append(e.buf, ": "...)
		if err := e.encode(f.value, 0); err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
	}
	e.buf = append(e.buf, '}')
	return e.buf, nil
}

// resultMetaValue normalizes an exception so that a nil message list is written as [].
func resultMetaValue(v any) any {
	switch e := v.(type) {
	case ExceptionInfo:
		return normalizedException(e)
	case *ExceptionInfo:
		if e == nil {
			return nil
		}
		return normalizedException(*e)
	}
	return v
}

func normalizedException(e ExceptionInfo) ExceptionInfo {
	if e.Message == nil {
		e.Message = []any{}
	}
	return e
}

func resultChildren(c []any) []any {
	if c == nil {
		return []any{}
	}
	return c
}

func resultNullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
