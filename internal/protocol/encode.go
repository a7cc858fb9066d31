package protocol

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"
)

// NewTask returns a fresh protocol v2 task as Python's send_task makes it: a uuid4 id,
// root_id equal to the id, origin gen<pid>@<hostname>, and argsrepr/kwargsrepr as Celery's
// saferepr writes them (see ReprArgs). Nil args and kwargs become empty.
func NewTask(name string, args []any, kwargs map[string]any) *Task {
	if args == nil {
		args = []any{}
	}
	if kwargs == nil {
		kwargs = map[string]any{}
	}
	id := NewUUID()
	return &Task{
		Version:    2,
		ID:         id,
		Name:       name,
		RootID:     id,
		Args:       args,
		Kwargs:     kwargs,
		ArgsRepr:   ReprArgs(args),
		KwargsRepr: ReprKwargs(kwargs),
		Origin:     AnonNodeName(),
		Headers:    map[string]any{},
	}
}

// SetArgs replaces the positional arguments and forgets the producer's raw bytes and
// argsrepr, so EncodeTask serializes and describes the new ones.
func (t *Task) SetArgs(args []any) {
	t.Args = args
	t.RawArgs = nil
	t.ArgsRepr = ""
}

// SetKwargs replaces the keyword arguments and forgets the raw bytes and kwargsrepr.
func (t *Task) SetKwargs(kwargs map[string]any) {
	t.Kwargs = kwargs
	t.RawKwargs = nil
	t.KwargsRepr = ""
}

// SetEmbed replaces the embed (callbacks, errbacks, chain, chord) and forgets its raw
// bytes.
func (t *Task) SetEmbed(e Embed) {
	t.Embed = e
	t.RawEmbed = nil
}

// NewUUID returns a random (version 4) UUID in canonical form, like Python's uuid4().
func NewUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand.Read never fails on supported platforms (it panics itself
		// rather than return an error since Go 1.24).
		panic(fmt.Sprintf("protocol: crypto/rand: %v", err))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b[:])
}

// AnonNodeName is the node name a Celery client uses when it is not a worker:
// gen<pid>@<hostname> (the `origin` header of the messages it sends).
func AnonNodeName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return "gen" + strconv.Itoa(os.Getpid()) + "@" + host
}

// encodedHeader reports whether EncodeTask derives header k from Task fields (so a stale
// copy in Task.Headers must not override it) or drops it on purpose: `compression`
// (EncodeTask never compresses) and `redelivered` (set by the Redis transport on restore).
func encodedHeader(k string) bool {
	switch k {
	case "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
		"timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin",
		"ignore_result", "compression", "redelivered":
		return true
	}
	return false
}

// EncodeTask builds the protocol v2 message Celery 5.2.6 would send for t: every header
// Python sets (nulls as nil, numbers as json.Number), plus the other headers in t.Headers
// (stamps, custom headers); properties correlation_id = id, reply_to, delivery_mode 2,
// priority, and expiration (milliseconds until Expires, as a string, clamped at 0) when
// Expires is set; content type application/json, utf-8; and the body
// [args, kwargs, embed] in Python json.dumps format. RawArgs, RawKwargs and RawEmbed are
// reused verbatim when set, so an unchanged decoded task re-encodes byte for byte.
// Empty ArgsRepr/KwargsRepr are computed, an empty RootID is the id, an empty Origin is
// AnonNodeName(). The body is never compressed.
func EncodeTask(t *Task) (*Message, error) {
	if t == nil {
		return nil, errors.New("protocol: encode task: nil task")
	}
	if t.Name == "" {
		return nil, fmt.Errorf("protocol: encode task %s: empty task name", t.ID)
	}
	if t.ID == "" {
		return nil, fmt.Errorf("protocol: encode task %s: empty task id", t.Name)
	}
	body, err := t.encodeBody()
	if err != nil {
		return nil, fmt.Errorf("protocol: encode task %s[%s]: %w", t.Name, t.ID, err)
	}

	h := make(map[string]any, 16+len(t.Headers))
	for k, v := range t.Headers {
		if !encodedHeader(k) {
			h[k] = v
		}
	}
	rootID := t.RootID
	if rootID == "" {
		rootID = t.ID
	}
	argsRepr := t.ArgsRepr
	if argsRepr == "" {
		args, err := t.argsValue()
		if err != nil {
			return nil, fmt.Errorf("protocol: encode task %s[%s]: argsrepr: %w", t.Name, t.ID, err)
		}
		argsRepr = ReprArgs(args)
	}
	kwargsRepr := t.KwargsRepr
	if kwargsRepr == "" {
		kwargs, err := t.kwargsValue()
		if err != nil {
			return nil, fmt.Errorf("protocol: encode task %s[%s]: kwargsrepr: %w", t.Name, t.ID, err)
		}
		kwargsRepr = ReprKwargs(kwargs)
	}
	origin := t.Origin
	if origin == "" {
		origin = AnonNodeName()
	}
	h["lang"] = "py"
	h["task"] = t.Name
	h["id"] = t.ID
	h["shadow"] = strOrNil(t.Shadow)
	h["eta"] = timeOrNil(t.ETA)
	h["expires"] = timeOrNil(t.Expires)
	h["group"] = strOrNil(t.Group)
	if t.GroupIndex != nil {
		h["group_index"] = json.Number(strconv.Itoa(*t.GroupIndex))
	} else {
		h["group_index"] = nil
	}
	h["retries"] = json.Number(strconv.Itoa(t.Retries))
	h["timelimit"] = t.timelimitHeader()
	h["root_id"] = rootID
	h["parent_id"] = strOrNil(t.ParentID)
	h["argsrepr"] = argsRepr
	h["kwargsrepr"] = kwargsRepr
	h["origin"] = origin
	h["ignore_result"] = t.IgnoreResult

	props := Properties{
		CorrelationID: t.ID,
		ReplyTo:       t.ReplyTo,
		DeliveryMode:  2,
		Priority:      t.Priority,
	}
	if t.Expires != nil {
		ms := time.Until(*t.Expires) / time.Millisecond // int(seconds * 1000) truncates
		if ms < 0 {
			ms = 0 // Celery warns and sends expiration 0
		}
		props.Expiration = strconv.FormatInt(int64(ms), 10)
	}
	return &Message{
		ContentType:     ContentTypeJSON,
		ContentEncoding: "utf-8",
		Properties:      props,
		Headers:         h,
		Body:            body,
	}, nil
}

func (t *Task) encodeBody() ([]byte, error) {
	args := []byte(t.RawArgs)
	if len(args) == 0 {
		a := t.Args
		if a == nil {
			a = []any{}
		}
		var err error
		if args, err = MarshalJSON(a); err != nil {
			return nil, fmt.Errorf("args: %w", err)
		}
	}
	kwargs := []byte(t.RawKwargs)
	if len(kwargs) == 0 {
		k := t.Kwargs
		if k == nil {
			k = map[string]any{}
		}
		var err error
		if kwargs, err = MarshalJSON(k); err != nil {
			return nil, fmt.Errorf("kwargs: %w", err)
		}
	}
	embed := []byte(t.RawEmbed)
	if len(embed) == 0 {
		var err error
		if embed, err = MarshalJSON(t.Embed); err != nil {
			return nil, fmt.Errorf("embed: %w", err)
		}
	}
	body := make([]byte, 0, len(args)+len(kwargs)+len(embed)+6)
	body = append(body, '[')
	body = append(body, args...)
	body = append(body, ", "...)
	body = append(body, kwargs...)
	body = append(body, ", "...)
	body = append(body, embed...)
	body = append(body, ']')
	return body, nil
}

// argsValue returns the positional arguments, decoding RawArgs when only it is set.
func (t *Task) argsValue() ([]any, error) {
	if t.Args != nil || len(t.RawArgs) == 0 {
		return t.Args, nil
	}
	v, err := ParseJSON(t.RawArgs)
	if err != nil {
		return nil, err
	}
	a, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("raw args are %s, want a list", jsonKind(v))
	}
	return a, nil
}

func (t *Task) kwargsValue() (map[string]any, error) {
	if t.Kwargs != nil || len(t.RawKwargs) == 0 {
		return t.Kwargs, nil
	}
	v, err := ParseJSON(t.RawKwargs)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("raw kwargs are %s, want an object", jsonKind(v))
	}
	return m, nil
}

// timelimitHeader is [hard, soft]. The received header is reused when it still says the
// same, so 10 and 10.0 keep their original spelling.
func (t *Task) timelimitHeader() []any {
	if orig, ok := t.Headers["timelimit"].([]any); ok && len(orig) == 2 {
		same := true
		for i, x := range orig {
			switch {
			case x == nil:
				same = same && t.TimeLimit[i] == nil
			default:
				f, ok := toFloat(x)
				same = same && ok && t.TimeLimit[i] != nil && *t.TimeLimit[i] == f
			}
		}
		if same {
			return []any{orig[0], orig[1]}
		}
	}
	out := make([]any, 2)
	for i, p := range t.TimeLimit {
		if p == nil {
			continue
		}
		f := *p
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			out[i] = json.Number(strconv.FormatInt(int64(f), 10))
		} else {
			out[i] = json.Number(formatPyFloat(f))
		}
	}
	return out
}

func strOrNil(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func timeOrNil(t *time.Time) any {
	if t == nil {
		return nil
	}
	return pyISOFormat(*t)
}

// MarshalJSON writes the signature as Celery's dict, in Celery's key order and Python's
// json.dumps format; nil args, kwargs and options are written as [] and {}.
func (s Signature) MarshalJSON() ([]byte, error) {
	type wire struct {
		Task        string         `json:"task"`
		Args        []any          `json:"args"`
		Kwargs      map[string]any `json:"kwargs"`
		Options     map[string]any `json:"options"`
		SubtaskType *string        `json:"subtask_type"`
		Immutable   bool           `json:"immutable"`
	}
	w := wire(s)
	if w.Args == nil {
		w.Args = []any{}
	}
	if w.Kwargs == nil {
		w.Kwargs = map[string]any{}
	}
	if w.Options == nil {
		w.Options = map[string]any{}
	}
	return MarshalJSON(w)
}
