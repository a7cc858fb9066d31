package redis

import (
	"context"

	"denis.io/fleet/internal/broker"
)

// adoptInvalid hands a list element that is not a readable kombu envelope to the caller
// instead of dropping it: the Delivery's Message has content type
// protocol.ContentTypeInvalidEnvelope and the raw element as its body, which the worker
// dead-letters (reason decode_error) through its normal path. The fetch script leased the
// element under tag; here that lease's record is replaced by a kombu envelope wrapping the
// message, so that whatever restores it later (a Go or a Python sweep) puts back an
// envelope every consumer can read.
func (b *Broker) adoptInvalid(ctx context.Context, queue string, item []byte, tag string, why error) *broker.Delivery {
	b.log.Warn("redis: element is not a kombu envelope; delivering it for dead-lettering",
		"queue", queue, "tag", tag, "err", why, "element", truncateForLog(item))
	msg := invalidEnvelope(item, why)
	wrapped, err := encodeEnvelope(msg, "", queue, tag)
	if err == nil {
		var rec []byte
		if rec, err = makeRecord(wrapped, "", queue); err == nil {
			if err = b.recordLease(ctx, tag, rec); err == nil {
				return b.hold(&lease{tag: tag, queue: queue, envelope: wrapped, record: rec},
					&inEnvelope{msg: msg, tag: tag, routingKey: queue})
			}
		}
	}
	b.log.Error("redis: could not lease an unreadable element; it stays in unacked for a sweep",
		"queue", queue, "tag", tag, "err", err)
	return nil
}

// truncateForLog bounds an element quoted in a log line.
func truncateForLog(b []byte) string {
	const max = 512
	if len(b) <= max {
		return string(b)
	}
	return string(b[:max]) + "…"
}
