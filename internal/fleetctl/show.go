package fleetctl

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"denis.io/fleet/internal/dlq"
	"denis.io/fleet/internal/protocol"
	"denis.io/fleet/internal/result"
)

// detail is one message as `dlq show` presents it.
type detail struct {
	entryOut
	Traceback       string         `json:"traceback,omitempty"`
	TracebackFrom   string         `json:"traceback_from,omitempty"`
	Args            any            `json:"args"`
	Kwargs          any            `json:"kwargs"`
	Retries         int            `json:"retries"`
	ETA             *time.Time     `json:"eta,omitempty"`
	Expires         *time.Time     `json:"expires,omitempty"`
	DecodeError     string         `json:"decode_error,omitempty"`
	ContentType     string         `json:"content_type"`
	ContentEncoding string         `json:"content_encoding"`
	Properties      map[string]any `json:"properties"`
	Headers         map[string]any `json:"headers"`
	Body            string         `json:"body,omitempty"`
	BodyBase64      string         `json:"body_base64,omitempty"`

	argsText, kwargsText string
}

func describeDetail(ctx context.Context, e *dlq.Entry, tb *tracebacks) detail {
	m := e.Stored.Message
	d := detail{entryOut: toOut(e, time.Now()), ContentType: m.ContentType, ContentEncoding: m.ContentEncoding,
		Headers: m.Headers,
		Properties: map[string]any{"correlation_id": m.Properties.CorrelationID, "reply_to": m.Properties.ReplyTo,
			"delivery_mode": m.Properties.DeliveryMode, "priority": m.Properties.Priority},
	}
	if m.Properties.Expiration != "" {
		d.Properties["expiration"] = m.Properties.Expiration
	}
	if utf8.Valid(m.Body) {
		d.Body = string(m.Body)
	} else {
		d.BodyBase64 = base64.StdEncoding.EncodeToString(m.Body)
	}
	if t, err := protocol.Decode(m); err != nil {
		d.DecodeError = err.Error()
	} else {
		d.Args, d.Kwargs, d.Retries, d.ETA, d.Expires = t.Args, t.Kwargs, t.Retries, t.ETA, t.Expires
		if raw, err := protocol.MarshalJSON(t.Args); err == nil {
			d.argsText = string(raw)
		}
		if raw, err := protocol.MarshalJSON(t.Kwargs); err == nil {
			d.kwargsText = string(raw)
		}
	}
	if s, ok := m.Headers[dlq.HeaderTraceback].(string); ok && s != "" {
		d.Traceback, d.TracebackFrom = s, "header "+dlq.HeaderTraceback
	} else if text, from := tb.lookup(ctx, e.TaskID); text != "" {
		d.Traceback, d.TracebackFrom = text, from
	}
	return d
}

func (d *detail) print(w io.Writer) {
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-11s %s\n", k+":", v)
		}
	}
	block := func(k, v string) {
		if v == "" {
			return
		}
		fmt.Fprintf(w, "%s:\n", k)
		for _, l := range strings.Split(strings.TrimRight(v, "\n"), "\n") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	line("ID", d.ID)
	line("Queue", fmt.Sprintf("%s (from %s)", d.Queue, d.Origin))
	line("Task", strings.TrimSpace(d.Task+" "+bracket(d.TaskID)))
	line("Reason", fmt.Sprintf("%s (%s)", d.Reason, d.Source))
	when := "unknown"
	if d.Time != nil {
		when = fmt.Sprintf("%s (%s ago)", d.Time.UTC().Format(time.RFC3339), fmtAge(time.Duration(d.AgeSeconds*float64(time.Second))))
	}
	line("Since", when)
	line("Attempts", fmt.Sprintf("%d dead-lettered, %d replayed", d.Attempts, d.Replayed))
	line("Worker", d.Worker)
	block("Error", d.Error)
	if d.Traceback != "" {
		block("Traceback (from "+d.TracebackFrom+")", d.Traceback)
	}
	if d.DecodeError != "" {
		line("Decode", d.DecodeError)
	} else {
		line("Args", d.argsText)
		line("Kwargs", d.kwargsText)
		line("Retries", fmt.Sprint(d.Retries))
		if d.ETA != nil {
			line("ETA", d.ETA.UTC().Format(time.RFC3339))
		}
		if d.Expires != nil {
			line("Expires", d.Expires.UTC().Format(time.RFC3339))
		}
	}
	fmt.Fprintf(w, "Properties: content_type=%s content_encoding=%s", d.ContentType, d.ContentEncoding)
	keys := sortedKeys(d.Properties)
	for _, k := range keys {
		fmt.Fprintf(w, " %s=%v", k, d.Properties[k])
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Headers:")
	for _, k := range sortedKeys(d.Headers) {
		v, err := protocol.MarshalJSON(d.Headers[k])
		text := string(v)
		if err != nil {
			text = fmt.Sprint(d.Headers[k])
		}
		fmt.Fprintf(w, "  %s: %s\n", k, text)
	}
	if d.DecodeError != "" {
		if d.Body != "" {
			block("Body", d.Body)
		} else {
			line("Body", "(base64) "+d.BodyBase64)
		}
	}
}

func bracket(s string) string {
	if s == "" {
		return ""
	}
	return "[" + s + "]"
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// tracebacks reads tracebacks from a Celery Redis result backend, when one is given.
type tracebacks struct {
	rb  *result.RedisBackend
	err error
	url string
}

func newTracebacks(ctx context.Context, url string, s *session) *tracebacks {
	t := &tracebacks{url: url}
	if url == "" {
		return t
	}
	if !strings.HasPrefix(url, "redis://") && !strings.HasPrefix(url, "rediss://") {
		s.log.Warn("tracebacks can only be read from a redis:// result backend", "result_backend", url)
		return t
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t.rb, t.err = result.OpenRedis(cctx, url, result.Options{Logger: s.log})
	if t.err != nil {
		s.log.Warn("cannot read tracebacks from the result backend", "err", t.err)
	}
	return t
}

func (t *tracebacks) lookup(ctx context.Context, taskID string) (string, string) {
	if t.rb == nil || taskID == "" {
		return "", ""
	}
	doc, err := t.rb.Get(ctx, taskID)
	if err != nil || doc == nil {
		return "", ""
	}
	tb, _ := doc["traceback"].(string)
	return tb, "result backend"
}

func (t *tracebacks) close() {
	if t.rb != nil {
		_ = t.rb.Close()
	}
}
