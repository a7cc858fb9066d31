package amqp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/coalesce"
)

// Acks made within ackLinger of each other are written together (Broker.Ack): when every
// delivery up to some tag is settled, by this batch or before, one basic.ack with
// multiple=true covers that run of the batch; the rest are acked one by one. Nothing is
// acked before its own Ack call: multiple=true only ever covers deliveries that are in
// the batch (the others it spans are settled already, which RabbitMQ skips). Each Ack
// returns once its own ack frame is written, as an unbatched one would, at most
// ackLinger later. Under load this saves most ack frames, and RabbitMQ most of its work
// per ack.

const (
	maxAckBatch = 512
	ackLinger   = time.Millisecond
	ackTimeout  = 10 * time.Second
	// maxAbove bounds the settled tags remembered above a delivery that stays unsettled
	// (a long task, a held ETA message): past it a channel stops coalescing.
	maxAbove = 1 << 16
)

type ackReq struct {
	cc  *consumeChan
	tag uint64
}

// ackBatcher returns the broker's ack coalescer, nil once Close has finished.
func (b *Broker) ackBatcher() *coalesce.Coalescer[ackReq] {
	b.ackOnce.Do(func() {
		if !b.closed.Load() {
			b.acks = coalesce.NewLingering(b.flushAcks, maxAckBatch, ackLinger, ackTimeout)
		}
	})
	return b.acks
}

// closeAcks stops the ack coalescer (at the end of Close).
func (b *Broker) closeAcks() {
	b.ackOnce.Do(func() {})
	if b.acks != nil {
		b.acks.Close()
	}
}

// flushAcks writes the acks of a batch, channel generation by channel generation.
func (b *Broker) flushAcks(_ context.Context, reqs []ackReq) []error {
	errs := make([]error, len(reqs))
	done := make([]bool, len(reqs))
	for i := range reqs {
		if done[i] {
			continue
		}
		cc := reqs[i].cc
		var idx []int
		for k := i; k < len(reqs); k++ {
			if reqs[k].cc == cc {
				idx = append(idx, k)
				done[k] = true
			}
		}
		tags := make([]uint64, len(idx))
		for n, k := range idx {
			tags[n] = reqs[k].tag
		}
		outcomes, multi := cc.ackBatch(tags)
		for n, err := range outcomes {
			errs[idx[n]] = err
		}
		if multi {
			b.multiAcks.Add(1)
		}
	}
	return errs
}

// ackBatch acks tags (deliveries of this channel generation) and returns each one's
// outcome, in order, and whether it wrote a multiple ack.
func (cc *consumeChan) ackBatch(tags []uint64) (errs []error, multi bool) {
	errs = make([]error, len(tags))
	cc.mu.Lock()
	if cc.gone {
		cc.mu.Unlock()
		for i := range errs {
			errs[i] = broker.ErrStaleDelivery
		}
		return errs, false
	}
	// The tags this batch may ack, ascending, each once.
	valid := make([]uint64, 0, len(tags))
	for i, t := range tags {
		if _, ok := cc.unsettled[t]; !ok || slices.Contains(tags[:i], t) {
			errs[i] = errors.New("delivery already settled")
			continue
		}
		valid = append(valid, t)
	}
	slices.Sort(valid)

	// x: the highest tag such that every tag in (low, x] is settled or in the batch.
	covered := 0 // valid[:covered] are <= x
	if !cc.noCoalesce {
		x := cc.low
		for {
			next := x + 1
			if covered < len(valid) && valid[covered] == next {
				covered++
			} else if _, ok := cc.above[next]; !ok {
				break
			}
			x = next
		}
	}
	failed := make(map[uint64]error)
	switch {
	case covered >= 2:
		multi = true
		if err := cc.ch.Ack(valid[covered-1], true); err != nil {
			for _, t := range valid[:covered] {
				failed[t] = err
			}
		}
	default:
		covered = 0
	}
	for _, t := range valid[covered:] {
		if err := cc.ch.Ack(t, false); err != nil {
			failed[t] = err
		}
	}
	for _, t := range valid {
		if failed[t] == nil {
			delete(cc.unsettled, t)
			cc.settledLocked(t)
		}
	}
	for i, t := range tags {
		if errs[i] == nil && failed[t] != nil {
			// Ack only writes a frame: an error means the channel or the socket is gone,
			// so RabbitMQ will redeliver.
			errs[i] = fmt.Errorf("%w: %w", broker.ErrStaleDelivery, failed[t])
		}
	}
	closeNow := cc.stopped && len(cc.unsettled) == 0 && !cc.gone
	if closeNow {
		cc.gone = true
		close(cc.lost)
	}
	cc.mu.Unlock()
	if closeNow {
		_ = cc.ch.Close()
	}
	return errs, multi
}

// settledLocked records that tag is settled (acked, or nacked back to its queue), for
// ackBatch's coalescing. cc.mu must be held.
func (cc *consumeChan) settledLocked(tag uint64) {
	if cc.noCoalesce || tag <= cc.low {
		return
	}
	if tag == cc.low+1 && len(cc.above) == 0 {
		cc.low = tag
		return
	}
	if cc.above == nil {
		cc.above = make(map[uint64]struct{})
	}
	cc.above[tag] = struct{}{}
	for {
		if _, ok := cc.above[cc.low+1]; !ok {
			break
		}
		delete(cc.above, cc.low+1)
		cc.low++
	}
	if len(cc.above) > maxAbove {
		cc.noCoalesce, cc.above = true, nil
	}
}
