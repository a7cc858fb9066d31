package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// This file carries Celery's broadcast traffic (events, pidbox requests and replies) the
// way kombu does: transient publishes without confirms on a channel of their own, and
// no-ack subscriptions on non-durable auto-delete queues (celery-protocol.md §3.1, §8, §9).
// It also has the read-only queue statistics and connection state the metrics use.

var (
	_ broker.Fanout           = (*Broker)(nil)
	_ broker.Inspector        = (*Broker)(nil)
	_ broker.Health           = (*Broker)(nil)
	_ broker.ReconnectCounter = (*Broker)(nil)
)

// fanoutPub is the publish connection's channel for Broadcast: no confirm mode, so a
// broadcast never waits for the broker, and exchanges declared once per channel.
type fanoutPub struct {
	mu       sync.Mutex
	sess     *session
	ch       *amqp091.Channel
	declared map[string]bool
}

// Broadcast declares ex (once per channel) and publishes m to it without the mandatory
// flag and without waiting for a confirm.
func (b *Broker) Broadcast(ctx context.Context, ex broker.Exchange, key string, m *protocol.Message) error {
	msg, err := toPublishing(m)
	if err != nil {
		return fmt.Errorf("amqp: broadcast to %q: %w", ex.Name, err)
	}
	s, err := b.pub.wait(ctx)
	if err != nil {
		if errors.Is(err, broker.ErrClosed) {
			return err
		}
		return fmt.Errorf("amqp: broadcast to %q: %w", ex.Name, err)
	}
	f := &b.fan
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch == nil || f.sess != s || f.ch.IsClosed() {
		ch, err := s.conn.Channel()
		if err != nil {
			return fmt.Errorf("amqp: broadcast to %q: open channel: %w", ex.Name, err)
		}
		if f.ch != nil && !f.ch.IsClosed() {
			_ = f.ch.Close()
		}
		f.sess, f.ch, f.declared = s, ch, map[string]bool{}
	}
	if !f.declared[ex.Name] {
		if err := f.ch.ExchangeDeclare(ex.Name, ex.Kind, ex.Durable, false, false, false, nil); err != nil {
			f.ch = nil // a failed declaration closes the channel
			return fmt.Errorf("amqp: broadcast: declare exchange %q: %w", ex.Name, err)
		}
		f.declared[ex.Name] = true
	}
	if err := f.ch.PublishWithContext(ctx, ex.Name, key, false, false, msg); err != nil {
		f.ch = nil
		return fmt.Errorf("amqp: broadcast to %q key %q: %w", ex.Name, key, err)
	}
	return nil
}

// Subscribe declares bd's exchange, its queue (non-durable, auto-delete, x-message-ttl and
// x-expires from bd) and binding, and consumes it with no_ack. After a channel or
// connection loss it sets everything up again on the next connection.
func (b *Broker) Subscribe(ctx context.Context, bd broker.Binding) (<-chan *protocol.Message, error) {
	if bd.Exchange.Name == "" || bd.Queue == "" {
		return nil, errors.New("amqp: subscribe: exchange and queue are required")
	}
	args := map[string]any{}
	if bd.MessageTTL > 0 {
		args["x-message-ttl"] = bd.MessageTTL.Milliseconds()
	}
	if bd.Expires > 0 {
		args["x-expires"] = bd.Expires.Milliseconds()
	}
	table, err := toTable(args)
	if err != nil {
		return nil, fmt.Errorf("amqp: subscribe %q: %w", bd.Queue, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(b.ctx, cancel)
	fail := func(err error) (<-chan *protocol.Message, error) {
		stop()
		cancel()
		return nil, err
	}
	s, err := b.cons.wait(sctx)
	if err != nil {
		if errors.Is(err, broker.ErrClosed) {
			return fail(err)
		}
		return fail(fmt.Errorf("amqp: subscribe %q: %w", bd.Queue, err))
	}
	ch, dels, err := subscribeOn(s, bd, table)
	if err != nil {
		return fail(fmt.Errorf("amqp: subscribe %q: %w", bd.Queue, err))
	}
	out := make(chan *protocol.Message, 64)
	started := b.goBG(func() {
		defer close(out)
		defer stop()
		defer cancel()
		closer := context.AfterFunc(sctx, func() { _ = ch.Close() })
		failures := 0
		for {
			for d := range dels {
				select {
				case out <- fromDelivery(&d):
				case <-sctx.Done():
				}
			}
			closer()
			if sctx.Err() != nil {
				return
			}
			// The channel or connection was lost: subscribe again.
			for {
				s, err := b.cons.wait(sctx)
				if err != nil {
					return
				}
				ch, dels, err = subscribeOn(s, bd, table)
				if err == nil {
					failures = 0
					break
				}
				failures++
				delay := b.backoff(failures)
				b.log.Warn("amqp: re-subscribing failed", "queue", bd.Queue, "err", err, "retry_in", delay)
				if !sleep(sctx, delay) {
					return
				}
			}
			closer = context.AfterFunc(sctx, func() { _ = ch.Close() })
			b.log.Info("amqp: subscribed again", "queue", bd.Queue, "exchange", bd.Exchange.Name)
		}
	})
	if !started {
		_ = ch.Close()
		return fail(broker.ErrClosed)
	}
	return out, nil
}

// subscribeOn sets up one generation of a subscription on s.
func subscribeOn(s *session, bd broker.Binding, args amqp091.Table) (*amqp091.Channel, <-chan amqp091.Delivery, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, nil, fmt.Errorf("open channel: %w", err)
	}
	fail := func(err error) (*amqp091.Channel, <-chan amqp091.Delivery, error) {
		if !ch.IsClosed() {
			_ = ch.Close()
		}
		return nil, nil, err
	}
	ex := bd.Exchange
	if err := ch.ExchangeDeclare(ex.Name, ex.Kind, ex.Durable, false, false, false, nil); err != nil {
		return fail(fmt.Errorf("declare exchange %q: %w", ex.Name, err))
	}
	if _, err := ch.QueueDeclare(bd.Queue, false, true, false, false, args); err != nil {
		return fail(fmt.Errorf("declare queue %q: %w", bd.Queue, err))
	}
	if err := ch.QueueBind(bd.Queue, bd.Key, ex.Name, false, nil); err != nil {
		return fail(fmt.Errorf("bind queue %q to %q: %w", bd.Queue, ex.Name, err))
	}
	dels, err := ch.Consume(bd.Queue, "", true, false, false, false, nil)
	if err != nil {
		return fail(fmt.Errorf("basic.consume %q: %w", bd.Queue, err))
	}
	return ch, dels, nil
}

// QueueStats reads the ready count and the consumer count of queue with a passive declare.
func (b *Broker) QueueStats(ctx context.Context, queue string) (broker.QueueStats, error) {
	st := broker.QueueStats{Consumers: -1}
	s, err := b.cons.wait(ctx)
	if err != nil {
		return st, fmt.Errorf("amqp: stats of %q: %w", queue, err)
	}
	q, err := callChannel(ctx, b, s, func(ch *amqp091.Channel) (amqp091.Queue, error) {
		return ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	})
	if err != nil {
		return st, fmt.Errorf("amqp: stats of %q: %w", queue, err)
	}
	st.Ready, st.Consumers = int64(q.Messages), int64(q.Consumers)
	return st, nil
}

// Connected reports whether both connections (consume and publish) are up.
func (b *Broker) Connected(context.Context) bool {
	if b.ctx.Err() != nil {
		return false
	}
	for _, l := range []*link{b.cons, b.pub} {
		s := l.current()
		if s == nil || s.conn.IsClosed() {
			return false
		}
	}
	return true
}

// Reconnects counts the connections re-established after a loss, both links together.
func (b *Broker) Reconnects() uint64 {
	var n uint64
	for _, l := range []*link{b.cons, b.pub} {
		l.mu.Lock()
		if l.gen > 1 {
			n += l.gen - 1
		}
		l.mu.Unlock()
	}
	return n
}
