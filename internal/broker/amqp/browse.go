package amqp

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
)

var _ broker.Browser = (*Broker)(nil)

const (
	// walkBatch and walkBatchAge bound how many removals and moves one transaction
	// carries and how long they wait for their commit.
	walkBatch    = 64
	walkBatchAge = 250 * time.Millisecond
	// walkOpTimeout bounds each AMQP operation of a walk. The operations themselves do
	// not follow the walk's context: it is only checked between messages, so that what was
	// decided is always committed or rolled back as a whole, never left in doubt.
	walkOpTimeout = 30 * time.Second
)

// Walk reads queue with basic.get on a channel of its own, holding every message it has
// read unacknowledged, so that nobody else takes it and the queue order is kept: when the
// walk ends, the channel closes and RabbitMQ puts the kept messages back in their places
// (flagged redelivered). It visits at most the number of messages the queue held when the
// first one was read.
//
// The channel is transactional (tx.select): a Move publishes the new message (mandatory,
// default exchange) and acks the old one in the same transaction, and tx.commit-ok is
// RabbitMQ's confirmation of both at once, so a walk killed at any point has either moved
// a message or left it in place, never both or neither. Decisions are committed in
// batches; applied is called after each commit. The destination queue of a Move must exist
// (checked with a passive declare before the first move to it).
func (b *Broker) Walk(ctx context.Context, queue string, visit func(*broker.Stored) (broker.Decision, error),
	applied func(*broker.Stored, broker.Decision)) error {
	s, err := b.pub.wait(ctx)
	if err != nil {
		return fmt.Errorf("amqp: walk %q: %w", queue, err)
	}
	w := &walker{b: b, s: s, queue: queue, applied: applied, targets: map[string]error{}}
	if err := w.open(); err != nil {
		return fmt.Errorf("amqp: walk %q: %w", queue, err)
	}
	err = w.run(ctx, visit)
	w.close(len(w.pending) == 0)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return fmt.Errorf("amqp: walk %q: %w", queue, err)
	}
	return nil
}

// walker is one Walk: its transactional channel and the decisions not yet committed.
type walker struct {
	b       *Broker
	s       *session
	queue   string
	applied func(*broker.Stored, broker.Decision)
	targets map[string]error // passive-declare result per Move destination

	ch      *amqp091.Channel
	returns chan amqp091.Return
	pending []walkItem
	since   time.Time // when the oldest pending decision was taken
	kept    uint64    // delivery tag of the last message kept
}

type walkItem struct {
	s *broker.Stored
	d broker.Decision
}

// op returns the context for one AMQP operation of the walk.
func op() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), walkOpTimeout)
}

func (w *walker) open() error {
	ctx, cancel := op()
	defer cancel()
	ch, err := call(ctx, w.s.conn.Channel)
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	w.ch = ch
	w.returns = make(chan amqp091.Return, walkBatch)
	ch.NotifyReturn(w.returns)
	if _, err := call(ctx, func() (struct{}, error) { return struct{}{}, ch.Tx() }); err != nil {
		return fmt.Errorf("tx.select: %w", err)
	}
	return nil
}

// close hands the kept messages back and drops the channel. When every decision is
// committed they are nacked (requeue) in a last transaction, so that they are back in the
// queue, in their places, when Walk returns; otherwise closing the channel makes RabbitMQ
// requeue them (and roll back the uncommitted decisions), a moment later.
func (w *walker) close(clean bool) {
	if w.ch == nil || w.ch.IsClosed() {
		return
	}
	if clean && w.kept > 0 {
		ctx, cancel := op()
		_, err := call(ctx, func() (struct{}, error) {
			if err := w.ch.Nack(w.kept, true, true); err != nil {
				return struct{}{}, err
			}
			return struct{}{}, w.ch.TxCommit()
		})
		cancel()
		if err != nil {
			w.b.log.Debug("amqp: walk: handing back kept messages; the channel close does it", "queue", w.queue, "err", err)
		}
	}
	_ = w.ch.Close()
}

func (w *walker) run(ctx context.Context, visit func(*broker.Stored) (broker.Decision, error)) error {
	limit := -1
	for pos := 0; limit < 0 || pos < limit; pos++ {
		if err := ctx.Err(); err != nil {
			return w.finish(err)
		}
		if len(w.pending) > 0 && time.Since(w.since) > walkBatchAge {
			if err := w.commit(); err != nil {
				return err
			}
		}
		type got struct {
			d  amqp091.Delivery
			ok bool
		}
		octx, cancel := op()
		g, err := call(octx, func() (got, error) {
			d, ok, err := w.ch.Get(w.queue, false)
			return got{d, ok}, err
		})
		cancel()
		if err != nil {
			if pos == 0 && isNotFound(err) {
				return nil // no such queue: nothing in it
			}
			return fmt.Errorf("basic.get (%d decisions rolled back): %w", len(w.pending), err)
		}
		if !g.ok {
			break
		}
		if limit < 0 {
			limit = int(g.d.MessageCount) + 1
		}
		st := &broker.Stored{
			Queue:       w.queue,
			Position:    pos,
			Exchange:    g.d.Exchange,
			RoutingKey:  g.d.RoutingKey,
			Redelivered: g.d.Redelivered,
			Message:     fromDelivery(&g.d),
			Handle:      g.d.DeliveryTag,
		}
		dec, verr := visit(st)
		if verr != nil && !errors.Is(verr, broker.ErrStopWalk) {
			return w.finish(verr)
		}
		if err := w.decide(st, dec); err != nil {
			return w.finish(err)
		}
		if len(w.pending) >= walkBatch {
			if err := w.commit(); err != nil {
				return err
			}
		}
		if verr != nil {
			break
		}
	}
	return w.commit()
}

// finish commits what was decided before the walk ended for cause, then returns cause.
func (w *walker) finish(cause error) error {
	if err := w.commit(); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// decide queues the AMQP operations of one decision in the open transaction.
func (w *walker) decide(st *broker.Stored, d broker.Decision) error {
	tag := st.Handle.(uint64)
	ctx, cancel := op()
	defer cancel()
	switch d.Verdict {
	case broker.Keep:
		w.kept = tag
		return nil
	case broker.Remove:
	case broker.Move:
		to := d.To
		if to.Exchange != "" || to.RoutingKey == "" || to.Message == nil {
			return fmt.Errorf("move: only to a queue through the default exchange (got exchange %q, routing key %q)",
				to.Exchange, to.RoutingKey)
		}
		if err := w.target(ctx, to.RoutingKey); err != nil {
			return err
		}
		msg, err := toPublishing(to.Message)
		if err != nil {
			return fmt.Errorf("move to %q: %w", to.RoutingKey, err)
		}
		if _, err := call(ctx, func() (struct{}, error) {
			return struct{}{}, w.ch.PublishWithContext(ctx, "", to.RoutingKey, true, false, msg)
		}); err != nil {
			return fmt.Errorf("move to %q: publish: %w", to.RoutingKey, err)
		}
	default:
		return fmt.Errorf("unknown verdict %d", d.Verdict)
	}
	if _, err := call(ctx, func() (struct{}, error) { return struct{}{}, w.ch.Ack(tag, false) }); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	if len(w.pending) == 0 {
		w.since = time.Now()
	}
	w.pending = append(w.pending, walkItem{st, d})
	return nil
}

// target checks once per walk that a Move destination exists, so that a move is never
// committed for an unroutable message.
func (w *walker) target(ctx context.Context, queue string) error {
	if err, ok := w.targets[queue]; ok {
		return err
	}
	_, err := callChannel(ctx, w.b, w.s, func(ch *amqp091.Channel) (struct{}, error) {
		_, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return struct{}{}, err
	})
	if err != nil {
		var ae *amqp091.Error
		if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
			err = fmt.Errorf("destination queue %q does not exist", queue)
		} else {
			err = fmt.Errorf("check destination queue %q: %w", queue, err)
		}
	}
	w.targets[queue] = err
	return err
}

// commit ends the open transaction and reports its decisions as applied. A message that
// RabbitMQ returned as unroutable although its queue existed (deleted meanwhile) was still
// removed from the walked queue by the commit: it is put back there, in a second
// transaction, and not reported.
func (w *walker) commit() error {
	if len(w.pending) == 0 {
		return nil
	}
	ctx, cancel := op()
	defer cancel()
	if _, err := call(ctx, func() (struct{}, error) { return struct{}{}, w.ch.TxCommit() }); err != nil {
		return fmt.Errorf("tx.commit (%d decisions not applied): %w", len(w.pending), err)
	}
	items := w.pending
	w.pending = nil
	var returned []amqp091.Return
	for drained := false; !drained; {
		select {
		case r, ok := <-w.returns:
			if !ok {
				drained = true // the channel closed: the library closed its listeners
				continue
			}
			returned = append(returned, r)
		default:
			drained = true
		}
	}
	var back []walkItem
	for _, it := range items {
		if it.d.Verdict == broker.Move && takeReturn(&returned, it.d) {
			back = append(back, it)
			continue
		}
		if w.applied != nil {
			w.applied(it.s, it.d)
		}
	}
	if len(back) == 0 {
		return nil
	}
	for _, it := range back {
		w.b.log.Error("amqp: moved message was returned unroutable (its queue was deleted?); putting it back",
			"queue", w.queue, "to", it.d.To.RoutingKey)
		msg, err := toPublishing(it.s.Message)
		if err == nil {
			err = w.ch.PublishWithContext(ctx, "", w.queue, false, false, msg)
		}
		if err != nil {
			return fmt.Errorf("put back a returned message into %q: %w", w.queue, err)
		}
	}
	if _, err := call(ctx, func() (struct{}, error) { return struct{}{}, w.ch.TxCommit() }); err != nil {
		return fmt.Errorf("put back %d returned messages into %q: tx.commit: %w", len(back), w.queue, err)
	}
	return fmt.Errorf("%d moved messages were unroutable and were put back into %q", len(back), w.queue)
}

// takeReturn removes from returned the return matching the publication of d, if any.
func takeReturn(returned *[]amqp091.Return, d broker.Decision) bool {
	for i, r := range *returned {
		if r.RoutingKey == d.To.RoutingKey && string(r.Body) == string(d.To.Message.Body) &&
			r.CorrelationId == d.To.Message.Properties.CorrelationID {
			*returned = append((*returned)[:i], (*returned)[i+1:]...)
			return true
		}
	}
	return false
}

// call runs fn, returning early with ctx's error if ctx ends first (fn then finishes in
// the background; callers drop the channel it was using).
func call[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	res := make(chan result, 1)
	go func() {
		v, err := fn()
		res <- result{v, err}
	}()
	select {
	case r := <-res:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// Heads returns the message at the head of queue (read with basic.get and put back in its
// place before Heads returns, flagged redelivered), or nothing when the queue is empty or
// does not exist.
func (b *Broker) Heads(ctx context.Context, queue string) ([]*broker.Stored, error) {
	s, err := b.cons.wait(ctx)
	if err != nil {
		return nil, fmt.Errorf("amqp: heads of %q: %w", queue, err)
	}
	st, err := callChannel(ctx, b, s, func(ch *amqp091.Channel) (*broker.Stored, error) {
		// Transactional, so that the message is back in place when tx.commit-ok arrives.
		if err := ch.Tx(); err != nil {
			return nil, err
		}
		d, ok, err := ch.Get(queue, false)
		if err != nil || !ok {
			return nil, err
		}
		if err := ch.Nack(d.DeliveryTag, false, true); err == nil {
			_ = ch.TxCommit() // on failure the channel close requeues it
		}
		return &broker.Stored{Queue: queue, Exchange: d.Exchange, RoutingKey: d.RoutingKey,
			Redelivered: d.Redelivered, Message: fromDelivery(&d)}, nil
	})
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("amqp: heads of %q: %w", queue, err)
	}
	if st == nil {
		return nil, nil
	}
	return []*broker.Stored{st}, nil
}

// Purge empties queue (queue.purge); a queue that does not exist holds nothing.
func (b *Broker) Purge(ctx context.Context, queue string) (int64, error) {
	s, err := b.cons.wait(ctx)
	if err != nil {
		return 0, fmt.Errorf("amqp: purge %q: %w", queue, err)
	}
	n, err := callChannel(ctx, b, s, func(ch *amqp091.Channel) (int64, error) {
		n, err := ch.QueuePurge(queue, false)
		return int64(n), err
	})
	if err != nil {
		if isNotFound(err) {
			return 0, nil
		}
		return 0, fmt.Errorf("amqp: purge %q: %w", queue, err)
	}
	return n, nil
}

// DeclareDLQ declares queue durable with no arguments, as DeadLetter does.
func (b *Broker) DeclareDLQ(ctx context.Context, queue string) error {
	s, err := b.cons.wait(ctx)
	if err != nil {
		return fmt.Errorf("amqp: declare %q: %w", queue, err)
	}
	_, err = callChannel(ctx, b, s, func(ch *amqp091.Channel) (struct{}, error) {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return struct{}{}, err
	})
	if err != nil {
		return fmt.Errorf("amqp: declare %q: %w", queue, err)
	}
	s.declMu.Lock()
	s.declared[queue] = true
	s.declMu.Unlock()
	return nil
}

func isNotFound(err error) bool {
	var ae *amqp091.Error
	return errors.As(err, &ae) && ae.Code == amqp091.NotFound
}
