package redis

import (
	"context"
	"fmt"

	"denis.io/fleet/internal/broker"
)

// adoptInvalid hands a list element that is not a readable kombu envelope to the caller
// instead of dropping it: the Delivery's Message has content type
// protocol.ContentTypeInvalidEnvelope and the raw element as its body, which the worker
// dead-letters (reason decode_error) through its normal path. The lease records a kombu
// envelope wrapping that message, under tag when the fetch script already leased the
// element (the record is replaced) or under a new tag otherwise, so that whatever restores
// it later (a Go or a Python sweep) puts back an envelope every consumer can read.
func (b *Broker) adoptInvalid(ctx context.Context, queue string, item []byte, tag string, why error) *broker.Delivery {
	leased := tag != ""
	if !leased {
		tag = newTag()
	}
	b.log.Warn("redis: element is not a kombu envelope; delivering it for dead-lettering",
		"queue", queue, "tag", tag, "err", why, "element", truncateForLog(item))
	msg := invalidEnvelope(item, why)
	wrapped, err := encodeEnvelope(msg, "", queue, tag)
	if err == nil {
		var rec []byte
		if rec, err = makeRecord(wrapped, "", queue); err == nil {
			if err = b.recordLease(ctx, tag, rec); err == nil {
				return b.hold(queue, wrapped, tag, rec, &inEnvelope{msg: msg, tag: tag, routingKey: queue})
			}
		}
	}
	if leased {
		b.log.Error("redis: could not lease an unreadable element; it stays in unacked for a sweep",
			"queue", queue, "tag", tag, "err", err)
		return nil
	}
	// The element is only in memory now: put it back rather than lose it.
	b.log.Error("redis: could not lease an unreadable element; pushing it back", "queue", queue, "err", err)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownBudget)
	defer cancel()
	if perr := b.client.RPush(pctx, b.keys.listFor(queue, 0), item).Err(); perr != nil {
		b.log.Error("redis: element lost: neither leased nor pushed back", "queue", queue,
			"err", fmt.Errorf("%w (lease: %v)", perr, err), "element", string(item))
	}
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
