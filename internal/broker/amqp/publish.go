package amqp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Publish sends p with the mandatory flag on the confirm-mode channel and returns once
// RabbitMQ has confirmed it. During an outage it waits (bounded by ctx) for the reconnect;
// a publish whose channel died before its confirm is sent again (at-least-once).
// An unroutable message gives ErrUnroutable, a nack ErrNacked.
func (b *Broker) Publish(ctx context.Context, p broker.Publishing) error {
	msg, err := toPublishing(p.Message)
	if err != nil {
		return fmt.Errorf("amqp: publish to exchange %q key %q: %w", p.Exchange, p.RoutingKey, err)
	}
	return b.publish(ctx, p.Exchange, p.RoutingKey, msg)
}

func (b *Broker) publish(ctx context.Context, exchange, key string, msg amqp091.Publishing) error {
	for {
		pc, err := b.publisher(ctx)
		if err != nil {
			if errors.Is(err, broker.ErrClosed) {
				return err
			}
			return fmt.Errorf("amqp: publish to exchange %q key %q: %w", exchange, key, err)
		}
		err = pc.publish(ctx, exchange, key, msg)
		var retry *retryError
		if errors.As(err, &retry) {
			b.log.Debug("amqp: publish interrupted, publishing again", "exchange", exchange, "routing_key", key, "err", retry.err)
			continue
		}
		if err != nil {
			return fmt.Errorf("amqp: publish to exchange %q key %q: %w", exchange, key, err)
		}
		return nil
	}
}

// pubOpen is one attempt at opening a session's publish channel; done is closed when
// p or err is set.
type pubOpen struct {
	done chan struct{}
	p    *pubChan
	err  error
}

// publisher returns the session's confirm-mode channel, opening one if needed. Opening
// runs apart so that waiting for it is bounded by ctx even on a connection that has died
// without the library noticing yet.
func (b *Broker) publisher(ctx context.Context) (*pubChan, error) {
	for {
		s, err := b.pub.wait(ctx)
		if err != nil {
			return nil, err
		}
		s.pubMu.Lock()
		if s.pub != nil && !s.pub.isDead() {
			p := s.pub
			s.pubMu.Unlock()
			return p, nil
		}
		o := s.opening
		if o == nil {
			o = &pubOpen{done: make(chan struct{})}
			s.opening = o
			if !b.goBG(func() {
				p, err := b.openPub(s)
				s.pubMu.Lock()
				o.p, o.err = p, err
				if err == nil {
					s.pub = p
				}
				s.opening = nil
				s.pubMu.Unlock()
				close(o.done)
			}) {
				s.opening = nil
				s.pubMu.Unlock()
				return nil, broker.ErrClosed
			}
		}
		s.pubMu.Unlock()

		select {
		case <-o.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if o.err == nil {
			if !o.p.isDead() {
				return o.p, nil
			}
			continue
		}
		if errors.Is(o.err, broker.ErrClosed) {
			return nil, o.err
		}
		if s.conn.IsClosed() || errors.Is(o.err, amqp091.ErrClosed) {
			// The connection is going away: wait for the supervisor's next one.
			if !sleep(ctx, b.opts.ReconnectMin) {
				return nil, ctx.Err()
			}
			continue
		}
		return nil, fmt.Errorf("open publish channel: %w", o.err)
	}
}

// pubChan is a confirm-mode channel shared by concurrent publishers. Writes are serialized
// (sem) so that the sequence number registered before a write is the one the library
// assigns; confirmations and basic.returns are matched to pending publishes by one
// dispatcher goroutine which receives both from the connection's reader in wire order.
type pubChan struct {
	ch   *amqp091.Channel
	sem  chan struct{}
	dead chan struct{}
	once sync.Once
	// next is the sequence number of the next publish (guarded by sem). It is counted
	// here rather than read with GetNextPublishSeqNo: that takes a library lock the
	// reader holds while it hands confirmations to the dispatcher, which may be waiting
	// for mu.
	next uint64

	mu      sync.Mutex
	pending []*pending // in sequence order
}

type pending struct {
	seq      uint64
	exchange string
	key      string
	corrID   string
	body     []byte
	returned *amqp091.Return
	res      chan error // capacity 1; exactly one result is sent
}

// retryError means the publish may not have reached RabbitMQ because its channel or
// connection went away; Broker.publish sends it again on the next channel.
type retryError struct{ err error }

func (e *retryError) Error() string { return "channel lost before confirm: " + e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

var errChannelGone = errors.New("publish channel closed")

func (b *Broker) openPub(s *session) (*pubChan, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, err
	}
	p := &pubChan{ch: ch, sem: make(chan struct{}, 1), dead: make(chan struct{}), next: 1}
	// Unbuffered on purpose: the connection's reader hands returns and confirmations over
	// one at a time, so the dispatcher sees a message's basic.return before its ack.
	returns := ch.NotifyReturn(make(chan amqp091.Return))
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation))
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch.Confirm(false); err != nil {
		if !ch.IsClosed() {
			_ = ch.Close()
		}
		return nil, fmt.Errorf("confirm.select: %w", err)
	}
	b.bg.Add(1) // openPub itself runs under goBG, so Close is still waiting for bg
	go func() {
		defer b.bg.Done()
		p.dispatch(b, returns, confirms, closes)
	}()
	return p, nil
}

func (p *pubChan) isDead() bool {
	select {
	case <-p.dead:
		return true
	default:
		return false
	}
}

func (p *pubChan) markDead() { p.once.Do(func() { close(p.dead) }) }

// publish writes msg and waits for its confirmation.
func (p *pubChan) publish(ctx context.Context, exchange, key string, msg amqp091.Publishing) error {
	select {
	case p.sem <- struct{}{}:
	case <-p.dead:
		return &retryError{errChannelGone}
	case <-ctx.Done():
		return ctx.Err()
	}
	x := &pending{
		exchange: exchange,
		key:      key,
		corrID:   msg.CorrelationId,
		body:     msg.Body,
		res:      make(chan error, 1),
	}
	p.mu.Lock()
	if p.isDead() {
		p.mu.Unlock()
		<-p.sem
		return &retryError{errChannelGone}
	}
	x.seq = p.next
	p.pending = append(p.pending, x)
	p.mu.Unlock()

	// The write runs apart so that a socket stalled by a broker resource alarm does not
	// hold the caller beyond ctx.
	wrote := make(chan error, 1)
	go func() {
		err := p.ch.Publish(exchange, key, true, false, msg)
		if err != nil {
			p.remove(x) // the library took the sequence number back
			p.markDead()
		} else {
			p.next++
		}
		<-p.sem
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			return &retryError{err}
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-x.res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *pubChan) remove(x *pending) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := slices.Index(p.pending, x); i >= 0 {
		p.pending = slices.Delete(p.pending, i, i+1)
	}
}

// dispatch matches returns and confirmations to pending publishes until the channel
// closes, then fails whatever is still pending.
func (p *pubChan) dispatch(b *Broker, returns <-chan amqp091.Return, confirms <-chan amqp091.Confirmation, closes <-chan *amqp091.Error) {
	for returns != nil || confirms != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			if !p.onReturn(r) {
				b.log.Warn("amqp: basic.return matches no pending publish", "exchange", r.Exchange, "routing_key", r.RoutingKey, "reply", r.ReplyText)
			}
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			p.onConfirm(c)
		}
	}
	reason := <-closes // buffered before the notify channels are closed; nil if graceful
	if reason != nil && softError(reason) {
		b.log.Warn("amqp: publish channel closed by the broker", "addr", b.addr, "code", reason.Code, "reason", reason.Reason)
	}
	p.fail(reason)
}

// onReturn marks the oldest matching pending publish as returned. RabbitMQ sends a
// message's basic.return before its basic.ack, and returns in publish order.
func (p *pubChan) onReturn(r amqp091.Return) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, x := range p.pending {
		if x.returned == nil && x.exchange == r.Exchange && x.key == r.RoutingKey &&
			x.corrID == r.CorrelationId && bytes.Equal(x.body, r.Body) {
			x.returned = &r
			return true
		}
	}
	return false
}

func (p *pubChan) onConfirm(c amqp091.Confirmation) {
	p.mu.Lock()
	var x *pending
	for i, e := range p.pending {
		if e.seq == c.DeliveryTag {
			x = e
			p.pending = slices.Delete(p.pending, i, i+1)
			break
		}
	}
	p.mu.Unlock()
	if x == nil {
		return
	}
	switch {
	case !c.Ack:
		x.res <- ErrNacked
	case x.returned != nil:
		x.res <- fmt.Errorf("%w: %d %s", ErrUnroutable, x.returned.ReplyCode, x.returned.ReplyText)
	default:
		x.res <- nil
	}
}

// fail settles the publishes still pending when the channel closed. After a channel
// exception caused by a publish (no such exchange, access refused), the publishes to the
// exchange named in the error get it; every other pending publish is sent again. If the
// culprit cannot be told, all pending publishes get the error.
func (p *pubChan) fail(reason *amqp091.Error) {
	p.markDead()
	p.mu.Lock()
	list := p.pending
	p.pending = nil
	p.mu.Unlock()

	if reason == nil || !softError(reason) {
		var err error = errChannelGone
		if reason != nil {
			err = reason
		}
		for _, x := range list {
			x.res <- &retryError{err}
		}
		return
	}
	culprit := func(x *pending) bool {
		return x.exchange != "" && strings.Contains(reason.Reason, "'"+x.exchange+"'")
	}
	blamed := slices.ContainsFunc(list, culprit)
	var err error = reason
	if reason.Code == amqp091.NotFound {
		err = fmt.Errorf("%w: %w", ErrUnroutable, reason)
	}
	for _, x := range list {
		if !blamed || culprit(x) {
			x.res <- err
		} else {
			x.res <- &retryError{reason}
		}
	}
}

// softError reports whether e is a channel-level exception (the connection survives it).
func softError(e *amqp091.Error) bool {
	switch e.Code {
	case amqp091.ContentTooLarge, amqp091.NoRoute, amqp091.NoConsumers, amqp091.AccessRefused,
		amqp091.NotFound, amqp091.ResourceLocked, amqp091.PreconditionFailed:
		return true
	}
	return false
}

// DeadLetter declares dlq (durable, no arguments; once per connection), publishes m to it
// through the default exchange with a confirm, and only then acks the original delivery.
func (b *Broker) DeadLetter(ctx context.Context, d *broker.Delivery, dlq string, m *protocol.Message) error {
	h, err := b.handleOf(d, "dead-letter")
	if err != nil {
		return err
	}
	if h.cc.isGone() {
		return fmt.Errorf("amqp: dead-letter delivery %d (channel gen %d): %w", h.tag, h.cc.gen, broker.ErrStaleDelivery)
	}
	msg, err := toPublishing(m)
	if err != nil {
		return fmt.Errorf("amqp: dead-letter to %q: %w", dlq, err)
	}
	for attempt := 0; ; attempt++ {
		if err := b.declareDLQ(ctx, dlq); err != nil {
			return fmt.Errorf("amqp: dead-letter to %q: %w", dlq, err)
		}
		err := b.publish(ctx, "", dlq, msg)
		if errors.Is(err, ErrUnroutable) && attempt == 0 {
			b.forgetDLQ(dlq) // deleted since we declared it: declare again
			continue
		}
		if err != nil {
			return fmt.Errorf("amqp: dead-letter to %q: %w", dlq, err)
		}
		break
	}
	if err := b.Ack(ctx, d); err != nil {
		return fmt.Errorf("amqp: dead-letter to %q: published, but: %w", dlq, err)
	}
	return nil
}

func (b *Broker) declareDLQ(ctx context.Context, q string) error {
	s, err := b.cons.wait(ctx)
	if err != nil {
		return err
	}
	s.declMu.Lock()
	defer s.declMu.Unlock()
	if s.declared[q] {
		return nil
	}
	if _, err := callChannel(ctx, b, s, func(ch *amqp091.Channel) (struct{}, error) {
		_, err := ch.QueueDeclare(q, true, false, false, false, nil)
		return struct{}{}, err
	}); err != nil {
		return fmt.Errorf("declare queue %q: %w", q, err)
	}
	s.declared[q] = true
	return nil
}

func (b *Broker) forgetDLQ(q string) {
	s := b.cons.current()
	if s == nil {
		return
	}
	s.declMu.Lock()
	delete(s.declared, q)
	s.declMu.Unlock()
}
