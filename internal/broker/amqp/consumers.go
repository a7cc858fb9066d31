package amqp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
)

var _ broker.ConsumerController = (*Broker)(nil)

// sub is one basic.consume of a channel generation: one queue, its own consumer tag.
type sub struct {
	queue string
	tag   string
	dels  <-chan amqp091.Delivery

	stop     chan struct{} // closed when CancelQueue asked for the consumer to end
	stopOnce sync.Once
	done     chan struct{} // closed when its pump has returned
}

func (sb *sub) cancel() { sb.stopOnce.Do(func() { close(sb.stop) }) }

func (sb *sub) cancelled() bool {
	select {
	case <-sb.stop:
		return true
	default:
		return false
	}
}

// subscribeLocked starts basic.consume on queue with a fresh consumer tag. cc.mu must
// be held, or cc not yet shared.
func (cc *consumeChan) subscribeLocked(queue string) (*sub, error) {
	tag := fmt.Sprintf("fleet-%d-%d", cc.gen, cc.tagSeq)
	cc.tagSeq++
	dels, err := cc.ch.Consume(queue, tag, false, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("basic.consume %q: %w", queue, err)
	}
	sb := &sub{queue: queue, tag: tag, dels: dels, stop: make(chan struct{}), done: make(chan struct{})}
	cc.subs[queue] = sb
	return sb, nil
}

// startPump runs sb's pump. The caller holds cc.mu (with cc neither gone nor closing) or
// has not shared cc yet, so that the Add cannot race serve's Wait.
func (c *consumer) startPump(cc *consumeChan, sb *sub) {
	cc.pumps.Add(1)
	go c.pump(cc, sb)
}

// queueNames lists the consumed queues.
func (c *consumer) queueNames() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.queues))
	for i, q := range c.queues {
		out[i] = q.Name
	}
	return out
}

// consumes reports whether queue is in the consumed set; c.mu must be held.
func (c *consumer) consumesLocked(queue string) int {
	return slices.IndexFunc(c.queues, func(q broker.QueueSpec) bool { return q.Name == queue })
}

// declareQueue declares q as Celery's add_queue does (§3.1): its exchange (ExchangeType,
// default direct; durable), the queue (durable, Options.QueueArguments[q.Name]) and the
// binding with q.RoutingKey. The default exchange ("") is neither declared nor bound.
func (b *Broker) declareQueue(ch *amqp091.Channel, q broker.QueueSpec) error {
	kind := q.ExchangeType
	if kind == "" {
		kind = amqp091.ExchangeDirect
	}
	if q.Exchange != "" {
		if err := ch.ExchangeDeclare(q.Exchange, kind, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %q: %w", q.Exchange, err)
		}
	}
	if _, err := ch.QueueDeclare(q.Name, true, false, false, false, b.queueArgs[q.Name]); err != nil {
		return fmt.Errorf("declare queue %q: %w", q.Name, err)
	}
	if q.Exchange != "" {
		if err := ch.QueueBind(q.Name, q.RoutingKey, q.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to %q with %q: %w", q.Name, q.Exchange, q.RoutingKey, err)
		}
	}
	return nil
}

func (b *Broker) activeConsumer() *consumer {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.consumer
}

// AddQueue declares q and consumes it on the running Consume's channel with its own
// consumer tag (Celery's add_consumer). The declaration runs on a short-lived channel
// first, so that a refused one (406: the queue or exchange exists with other settings)
// fails this call without closing the consuming channel and its unsettled deliveries.
func (b *Broker) AddQueue(ctx context.Context, q broker.QueueSpec) error {
	if q.Name == "" {
		return errors.New("amqp: add queue: empty queue name")
	}
	if q.RoutingKey == "" && q.Exchange != "" {
		q.RoutingKey = q.Name
	}
	c := b.activeConsumer()
	if c == nil {
		return fmt.Errorf("amqp: add queue %q: not consuming", q.Name)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.Lock()
	has := c.consumesLocked(q.Name) >= 0
	c.mu.Unlock()
	if has {
		return nil
	}
	s, err := b.cons.wait(ctx)
	if err != nil {
		return fmt.Errorf("amqp: add queue %q: %w", q.Name, err)
	}
	if _, err := callChannel(ctx, b, s, func(ch *amqp091.Channel) (struct{}, error) {
		return struct{}{}, b.declareQueue(ch, q)
	}); err != nil {
		return fmt.Errorf("amqp: add queue %q: %w", q.Name, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx.Err() != nil {
		return fmt.Errorf("amqp: add queue %q: %w", q.Name, broker.ErrClosed)
	}
	c.queues = append(c.queues, q)
	cc := c.cur
	if cc == nil {
		return nil // reconnecting: the next channel generation consumes it
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.gone || cc.closing {
		return nil
	}
	sb, err := cc.subscribeLocked(q.Name)
	if err != nil {
		// The channel may be closed by now (e.g. 403 on an exclusive queue); do not retry
		// the queue on the next generation.
		c.queues = slices.DeleteFunc(c.queues, func(x broker.QueueSpec) bool { return x.Name == q.Name })
		return fmt.Errorf("amqp: add queue %q: %w", q.Name, err)
	}
	c.startPump(cc, sb)
	b.log.Info("amqp: consuming queue", "queue", q.Name, "exchange", q.Exchange, "routing_key", q.RoutingKey,
		"tag", sb.tag, "chan_gen", cc.gen)
	return nil
}

// CancelQueue stops consuming queue (basic.cancel of its consumer tag, Celery's
// cancel_consumer). Deliveries RabbitMQ pushed before the cancel-ok that were not handed
// to the caller yet are requeued (basic.nack requeue); it returns once that is done.
func (b *Broker) CancelQueue(ctx context.Context, queue string) error {
	c := b.activeConsumer()
	if c == nil {
		return nil
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.Lock()
	i := c.consumesLocked(queue)
	if i < 0 {
		c.mu.Unlock()
		return nil
	}
	c.queues = slices.Delete(c.queues, i, i+1)
	cc := c.cur
	c.mu.Unlock()
	if cc == nil {
		return nil // reconnecting: the next generation leaves it out
	}
	sb := cc.unsubscribe(queue)
	if sb == nil {
		return nil
	}
	select {
	case <-sb.done:
	case <-ctx.Done():
		return fmt.Errorf("amqp: cancel queue %q: waiting for its deliveries to be handed back: %w", queue, ctx.Err())
	}
	b.log.Info("amqp: stopped consuming queue", "queue", queue, "tag", sb.tag, "chan_gen", cc.gen)
	return nil
}

// unsubscribe cancels queue's consumer on this channel generation and returns it (nil if
// it has none). Its pump requeues whatever still arrives. Should basic.cancel fail, the
// channel is dropped, which requeues everything it holds.
func (cc *consumeChan) unsubscribe(queue string) *sub {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	sb := cc.subs[queue]
	if sb == nil {
		return nil
	}
	delete(cc.subs, queue)
	sb.cancel()
	if cc.gone {
		return sb
	}
	if err := cc.ch.Cancel(sb.tag, false); err != nil {
		cc.gone = true
		close(cc.lost)
		_ = cc.ch.Close()
	}
	return sb
}
