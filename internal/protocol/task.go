package protocol

import (
	"encoding/json"
	"time"
)

// Task is a decoded task request: everything the worker needs from a v1 or v2 message.
// Raw* fields keep the exact JSON bytes the producer sent so that re-encoding an unchanged
// task (retries, dead letters) is byte-for-byte what Celery would send.
type Task struct {
	Version int // 1 or 2

	ID       string
	Name     string // the `task` header
	Shadow   string
	RootID   string
	ParentID string
	Group    string
	// GroupIndex is the position in a chord header; nil when absent.
	GroupIndex *int

	Args   []any          // decoded with json.Number for numbers
	Kwargs map[string]any // decoded with json.Number for numbers
	Embed  Embed

	Retries int
	ETA     *time.Time // nil when absent
	Expires *time.Time // nil when absent
	// TimeLimit is [hard, soft] in seconds as on the wire; nil elements are absent.
	TimeLimit [2]*float64

	IgnoreResult  bool
	ArgsRepr      string
	KwargsRepr    string
	Origin        string
	ReplyTo       string
	CorrelationID string
	// Priority is the message priority property (0-255; Celery uses 0-9).
	Priority uint8

	// Stamps, StampedHeaders and every other header are kept in Headers as received.
	// A decoded Task shares this map with its Message (no copy per message): read it,
	// and build a new map to send different headers.
	Headers map[string]any

	RawArgs   json.RawMessage
	RawKwargs json.RawMessage
	RawEmbed  json.RawMessage
}

// Embed is the third element of a v2 body: what to do after the task.
type Embed struct {
	Callbacks []Signature `json:"callbacks"`
	Errbacks  []Signature `json:"errbacks"`
	// Chain holds the remaining steps in reverse order: the next step is the last element.
	Chain []Signature `json:"chain"`
	Chord *Signature  `json:"chord"`
}

// Signature is a serialized Celery signature (a dict on the wire).
type Signature struct {
	Task        string         `json:"task"`
	Args        []any          `json:"args"`
	Kwargs      map[string]any `json:"kwargs"`
	Options     map[string]any `json:"options"`
	SubtaskType *string        `json:"subtask_type"`
	Immutable   bool           `json:"immutable"`
}
