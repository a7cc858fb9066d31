// Package dlq owns the fleet's dead-letter queues: their naming (`<queue>.dlq`), the closed
// set of reasons a message is dead-lettered for, the x-fleet-dlq-* headers added to the
// original message (kept intact otherwise, so that it can be replayed), and everything an
// operator does with them on either broker: reading dead letters (ours and RabbitMQ's own,
// which carry x-death), replaying, purging, exporting and importing them without losing or
// duplicating any, retention with counted and logged eviction, the fleet_dlq_*
// Prometheus metrics, and the fleet-wide redelivery count behind reason worker_lost
// (RedisRedeliveries). Moving messages is the transports' job (broker.Broker.DeadLetter,
// broker.Browser); this package decides what moves where.
package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Suffix is appended to a queue name to name its dead-letter queue.
const Suffix = ".dlq"

// Reasons a message is dead-lettered for. The set is closed: Move refuses anything else.
const (
	ReasonDecodeError        = "decode_error"         // the body or headers could not be decoded
	ReasonUnsupportedContent = "unsupported_content"  // content type or encoding not accepted
	ReasonUnknownTask        = "unknown_task"         // no handler registered for the task name
	ReasonMaxRetriesExceeded = "max_retries_exceeded" // retried as often as allowed
	ReasonTimeLimit          = "time_limit"           // the hard time limit expired
	ReasonTaskFailed         = "task_failed"          // the handler failed and the task asks for dead-lettering
	ReasonRejected           = "rejected"             // the handler rejected the message without requeue
	ReasonWorkerLost         = "worker_lost"          // redelivered more often than allowed (its workers kept dying)
	ReasonFlagDisabled       = "flag_disabled"        // the task is switched off by a feature flag
	// Reasons only RabbitMQ gives (x-death), through the policy `fleetctl dlq setup` applies.
	ReasonExpired   = "expired"    // its TTL ran out in the queue (Celery >= 5.2 sets it from `expires`)
	ReasonMaxLength = "max_length" // the queue's max-length overflowed
)

// reasons is the closed set of valid reasons.
var reasons = [...]string{
	ReasonDecodeError, ReasonUnsupportedContent, ReasonUnknownTask, ReasonMaxRetriesExceeded,
	ReasonTimeLimit, ReasonTaskFailed, ReasonRejected, ReasonWorkerLost, ReasonFlagDisabled,
	ReasonExpired, ReasonMaxLength,
}

// Reasons returns the closed set of reasons, in documentation order.
func Reasons() []string { return append([]string(nil), reasons[:]...) }

// Header names added to a dead-lettered message.
const (
	HeaderReason   = "x-fleet-dlq-reason"   // one of the Reason* constants
	HeaderError    = "x-fleet-dlq-error"    // error text, at most MaxErrorLen bytes
	HeaderQueue    = "x-fleet-dlq-queue"    // the queue the message was consumed from
	HeaderWorker   = "x-fleet-dlq-worker"   // node name of the worker that dead-lettered it
	HeaderTime     = "x-fleet-dlq-time"     // RFC 3339 UTC time of dead-lettering
	HeaderAttempts = "x-fleet-dlq-attempts" // how many times it was dead-lettered (int)
	// HeaderTraceback optionally carries the traceback of a failed task.
	HeaderTraceback = "x-fleet-dlq-traceback"
	// HeaderExpiration keeps the original AMQP expiration property (per-message TTL),
	// which a dead letter must not carry: RabbitMQ would drop it from the DLQ silently.
	HeaderExpiration = "x-fleet-dlq-expiration"
	// HeaderReplayed counts how many times the message was replayed from a DLQ (int).
	HeaderReplayed = "x-fleet-replayed"
)

// MaxErrorLen bounds the error text stored in HeaderError, in bytes.
const MaxErrorLen = 4096

const truncMark = "…[truncated]"

// ErrInvalidReason is returned by Move for a reason outside the closed set.
var ErrInvalidReason = errors.New("dlq: invalid reason")

// QueueName returns the dead-letter queue of queue: queue + ".dlq". A name that already is a
// dead-letter queue is returned unchanged, so a message failing again while being consumed
// from a DLQ stays there instead of starting a `.dlq.dlq` chain.
func QueueName(queue string) string {
	if IsDLQ(queue) {
		return queue
	}
	return queue + Suffix
}

// IsDLQ reports whether name is a dead-letter queue name.
func IsDLQ(name string) bool {
	return len(name) > len(Suffix) && strings.HasSuffix(name, Suffix)
}

// ValidReason reports whether reason is one of the Reason* constants.
func ValidReason(reason string) bool {
	for _, r := range reasons {
		if r == reason {
			return true
		}
	}
	return false
}

// Letter builds the dead-letter message for d: a copy of the original message (content type
// and encoding, headers and body bytes untouched, properties too except the per-message TTL,
// moved to HeaderExpiration so that RabbitMQ does not drop the dead letter when it runs
// out) with the x-fleet-dlq-* headers set. errText is cut to MaxErrorLen bytes; the
// attempts header is incremented if the message carries one already (it was dead-lettered
// and replayed before). When the delivery was consumed from a dead-letter queue, an
// existing queue header is kept so that it keeps naming the original queue.
func Letter(d *broker.Delivery, reason, errText, worker string, now time.Time) *protocol.Message {
	var m *protocol.Message
	if d.Message != nil {
		m = d.Message.Clone()
	} else {
		m = &protocol.Message{Headers: map[string]any{}}
	}
	if m.Headers == nil {
		m.Headers = map[string]any{}
	}

	attempts := 1
	if n, ok := headerInt(m.Headers[HeaderAttempts]); ok && n >= 0 && n < math.MaxInt32 {
		attempts = int(n) + 1
	}

	queue := sourceQueue(d)
	if prev, ok := m.Headers[HeaderQueue].(string); ok && prev != "" && IsDLQ(queue) {
		queue = prev
	}

	m.Headers[HeaderReason] = reason
	m.Headers[HeaderError] = truncate(errText, MaxErrorLen)
	m.Headers[HeaderQueue] = queue
	m.Headers[HeaderWorker] = worker
	m.Headers[HeaderTime] = now.UTC().Format(time.RFC3339)
	m.Headers[HeaderAttempts] = attempts
	if m.Properties.Expiration != "" {
		m.Headers[HeaderExpiration] = m.Properties.Expiration
		m.Properties.Expiration = ""
	}
	return m
}

// Mover is the part of a broker that dead-letters a delivery (broker.Broker has it): publish
// m to the queue dlq, confirmed, then remove d.
type Mover interface {
	DeadLetter(ctx context.Context, d *broker.Delivery, dlq string, m *protocol.Message) error
}

// Move dead-letters d through b: it builds the letter and hands it to b.DeadLetter for the
// dead-letter queue of the queue d was consumed from. On error the original delivery is
// still on the broker (the Mover removes it only after the letter is confirmed).
func Move(ctx context.Context, b Mover, d *broker.Delivery, reason, errText, worker string) error {
	if !ValidReason(reason) {
		return fmt.Errorf("dlq: move: %w %q", ErrInvalidReason, reason)
	}
	queue := sourceQueue(d)
	if queue == "" {
		return errors.New("dlq: move: delivery has neither a queue nor a routing key")
	}
	dead := QueueName(queue)
	m := Letter(d, reason, errText, worker, time.Now())
	if err := b.DeadLetter(ctx, d, dead, m); err != nil {
		return fmt.Errorf("dlq: move to %s (reason %s): %w", dead, reason, err)
	}
	return nil
}

// sourceQueue is the queue d was consumed from, falling back to its routing key.
func sourceQueue(d *broker.Delivery) string {
	if d.Queue != "" {
		return d.Queue
	}
	return d.RoutingKey
}

// headerInt reads an integer header in any of the shapes the transports produce.
func headerInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case float64:
		if n == math.Trunc(n) && !math.IsInf(n, 0) {
			return int64(n), true
		}
	case float32:
		if f := float64(n); f == math.Trunc(f) && !math.IsInf(f, 0) {
			return int64(f), true
		}
	case json.Number:
		if i, err := n.Int64(); err == nil {
			return i, true
		}
		if f, err := n.Float64(); err == nil && f == math.Trunc(f) {
			return int64(f), true
		}
	case string:
		if i, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64); err == nil {
			return i, true
		}
	}
	return 0, false
}

// truncate cuts s to at most max bytes on a rune boundary, marking the cut.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max - len(truncMark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + truncMark
}
