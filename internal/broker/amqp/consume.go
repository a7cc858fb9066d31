package amqp

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/coalesce"
)

// handle is the Delivery.Handle of this transport: the consuming channel generation the
// delivery came on and its delivery tag there.
type handle struct {
	cc  *consumeChan
	tag uint64
}

// consumer is one Consume call: it survives connection and channel losses, each of which
// starts a new consumeChan generation.
type consumer struct {
	b      *Broker
	ctx    context.Context
	cancel func()
	out    chan *broker.Delivery

	opMu sync.Mutex // serializes AddQueue and CancelQueue (consumers.go)

	mu       sync.Mutex // guards queues, prefetch and cur; taken before any consumeChan.mu
	queues   []broker.QueueSpec
	prefetch int
	cur      *consumeChan

	// started is when Consume was called: the probe's answer until a channel generation
	// is set up.
	started time.Time
}

// consumeChan is one generation of the consuming channel.
type consumeChan struct {
	gen     uint64
	ch      *amqp091.Channel
	closes  <-chan *amqp091.Error
	cancels <-chan string
	ended   chan string   // a queue whose delivery stream ended unasked (consumers.go)
	lost    chan struct{} // closed once the channel is unusable
	pumps   sync.WaitGroup

	mu      sync.Mutex      // serializes every operation on ch
	subs    map[string]*sub // basic.consume per queue, by queue name
	tagSeq  uint64          // numbers the consumer tags of this generation
	closing bool            // consuming is ending: no new subscriptions
	gone    bool
	// goneAt (unix nanoseconds, set with gone) and closedSeen (the first time the probe
	// found ch closed while not gone) back ConsumerAlive without taking mu, which a
	// blocked channel operation may hold.
	goneAt     atomic.Int64
	closedSeen atomic.Int64
	stopped    bool                // consuming ended: close ch once unsettled is empty
	unsettled  map[uint64]struct{} // handed to the caller, not yet settled

	// Ack coalescing (ackbatch.go): every tag up to low is settled, above holds the
	// settled tags beyond it; noCoalesce once above grew too large.
	low        uint64
	above      map[uint64]struct{}
	noCoalesce bool
}

// Consume declares each queue as Celery does (direct exchange and durable queue of the same
// name, bound by the name), sets basic.qos(0, prefetch, global) and consumes with manual
// acks. The returned channel stays the same across reconnects; it is closed after ctx ends
// and consuming has stopped. Only one Consume may be active at a time.
func (b *Broker) Consume(ctx context.Context, queues []string, prefetch int) (<-chan *broker.Delivery, error) {
	if len(queues) == 0 {
		return nil, errors.New("amqp: consume: no queues")
	}
	if prefetch < 0 {
		return nil, fmt.Errorf("amqp: consume: negative prefetch %d", prefetch)
	}
	var qs []string
	var specs []broker.QueueSpec
	for _, q := range queues {
		if !slices.Contains(qs, q) {
			qs = append(qs, q)
			specs = append(specs, broker.TaskQueue(q))
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(b.ctx, cancel)
	c := &consumer{
		b:        b,
		ctx:      cctx,
		cancel:   func() { stop(); cancel() },
		queues:   specs,
		out:      make(chan *broker.Delivery),
		prefetch: min(prefetch, maxPrefetch),
	}
	c.started = time.Now()

	b.mu.Lock()
	switch {
	case b.ctx.Err() != nil:
		b.mu.Unlock()
		c.cancel()
		return nil, broker.ErrClosed
	case b.consumer != nil:
		b.mu.Unlock()
		c.cancel()
		return nil, errors.New("amqp: consume: another Consume is active on this broker")
	}
	b.consumer = c
	b.consumers.Add(1)
	b.mu.Unlock()

	// The first setup runs here so that a bad declaration (406) is reported to the caller.
	s, err := b.cons.wait(cctx)
	var cc *consumeChan
	if err == nil {
		cc, err = c.setup(s)
	}
	if err != nil && (s == nil || !s.conn.IsClosed()) {
		c.finish()
		if errors.Is(err, broker.ErrClosed) {
			return nil, err
		}
		return nil, fmt.Errorf("amqp: consume %v: %w", qs, err)
	}
	// else the connection dropped during setup: run reconnects.
	b.log.Info("amqp: consuming", "queues", qs, "prefetch", c.prefetch, "chan_gen", genOf(cc))
	go c.run(cc)
	return c.out, nil
}

var _ broker.ConsumerProbe = (*Broker)(nil)

// ConsumerAlive implements broker.ConsumerProbe: now while the consuming channel is open
// with its consumers registered (deliveries are pushed, so an open channel is a working
// consumer), else the moment it was lost (or the consumer started, if no channel was
// set up yet); the zero time when no Consume runs.
func (b *Broker) ConsumerAlive() time.Time {
	b.mu.Lock()
	c := b.consumer
	b.mu.Unlock()
	if c == nil || c.ctx.Err() != nil {
		return time.Time{}
	}
	c.mu.Lock()
	cc := c.cur
	c.mu.Unlock()
	if cc == nil {
		return c.started
	}
	return cc.aliveAt(time.Now())
}

// aliveAt is now while this generation consumes, else when it stopped: marked lost, or
// first seen closed (serve marks a closed channel lost at once; a channel left closed
// and unmarked is a stuck consumer, and its time stops advancing).
func (cc *consumeChan) aliveAt(now time.Time) time.Time {
	if at := cc.goneAt.Load(); at != 0 {
		return time.Unix(0, at)
	}
	if cc.ch.IsClosed() {
		cc.closedSeen.CompareAndSwap(0, now.UnixNano())
		return time.Unix(0, cc.closedSeen.Load())
	}
	return now
}

func genOf(cc *consumeChan) uint64 {
	if cc == nil {
		return 0
	}
	return cc.gen
}

// finish releases the consumer's slot on the broker.
func (c *consumer) finish() {
	c.cancel()
	c.b.mu.Lock()
	if c.b.consumer == c {
		c.b.consumer = nil
	}
	c.b.mu.Unlock()
	c.b.consumers.Done()
}

// run serves channel generations until ctx ends, re-establishing consumption after
// every loss.
func (c *consumer) run(cc *consumeChan) {
	defer c.finish()
	defer close(c.out)
	failures := 0
	for {
		if cc != nil {
			err := c.serve(cc)
			if c.ctx.Err() != nil {
				return
			}

			c.b.log.Warn("amqp: consuming channel lost, consuming again", "queues", c.queueNames(), "chan_gen", cc.gen, "err", err)
			cc = nil
		}
		s, err := c.b.cons.wait(c.ctx)
		if err != nil {
			return
		}
		cc, err = c.setup(s)
		if err != nil {
			cc = nil
			if c.ctx.Err() != nil {
				return
			}
			if s.conn.IsClosed() {
				continue // wait waits for the supervisor's next connection
			}
			failures++
			delay := c.b.backoff(failures)
			c.b.log.Error("amqp: consume setup failed", "queues", c.queueNames(), "err", err, "retry_in", delay)
			if !sleep(c.ctx, delay) {
				return
			}
			continue
		}
		failures = 0
		c.b.log.Info("amqp: consuming again", "queues", c.queueNames(), "chan_gen", cc.gen, "conn_gen", s.gen)
	}
}

// setup opens a channel on s, declares the queues, applies QoS and starts one consumer
// per queue (each with its own consumer tag, so that CancelQueue can stop one).
func (c *consumer) setup(s *session) (*consumeChan, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	fail := func(err error) (*consumeChan, error) {
		if !ch.IsClosed() {
			_ = ch.Close()
		}
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cc := &consumeChan{
		gen:       c.b.chanGen.Add(1),
		ch:        ch,
		closes:    ch.NotifyClose(make(chan *amqp091.Error, 1)),
		cancels:   ch.NotifyCancel(make(chan string, 1)),
		ended:     make(chan string, 1),
		lost:      make(chan struct{}),
		subs:      make(map[string]*sub),
		unsettled: make(map[uint64]struct{}),
	}
	for _, q := range c.queues {
		if err := c.b.declareQueue(ch, q); err != nil {
			return fail(err)
		}
	}
	// global=true as Celery sends it; RabbitMQ applies it per channel.
	if err := ch.Qos(c.prefetch, 0, true); err != nil {
		return fail(fmt.Errorf("basic.qos(prefetch %d): %w", c.prefetch, err))
	}
	subs := make([]*sub, 0, len(c.queues))
	for _, q := range c.queues {
		sb, err := cc.subscribeLocked(q.Name)
		if err != nil {
			return fail(err)
		}
		subs = append(subs, sb)
	}
	for _, sb := range subs {
		c.startPump(cc, sb)
	}
	c.cur = cc
	return cc, nil
}

// serve waits until the channel generation is lost or ctx ends; the pumps forward its
// deliveries meanwhile. On ctx end it cancels the consumers and requeues what it still
// holds.
func (c *consumer) serve(cc *consumeChan) error {
	select {
	case <-c.ctx.Done():
		cc.cancelConsumers()
		cc.pumps.Wait()
		cc.stop()
		c.b.log.Info("amqp: stopped consuming", "queues", c.queueNames(), "chan_gen", cc.gen)
		return nil
	case err := <-cc.closes:
		cc.markGone()
		cc.pumps.Wait()
		return fmt.Errorf("channel closed: %s", errString(err))
	case tag := <-cc.cancels:
		cc.markGone()
		_ = cc.ch.Close()
		cc.pumps.Wait()
		return fmt.Errorf("consumer %s cancelled by the broker (queue deleted?)", tag)
	case q := <-cc.ended:
		cc.markGone()
		_ = cc.ch.Close()
		cc.pumps.Wait()
		return fmt.Errorf("delivery stream of %q ended", q)
	}
}

// pump hands one queue's deliveries to the caller. Deliveries it cannot hand over because
// ctx ended or the queue was cancelled are requeued; those of a lost channel are already
// back in the queue.
func (c *consumer) pump(cc *consumeChan, sb *sub) {
	defer cc.pumps.Done()
	defer close(sb.done)
	for d := range sb.dels {
		if c.ctx.Err() != nil || sb.cancelled() {
			cc.requeueHeld(d.DeliveryTag)
			continue
		}
		if !cc.track(d.DeliveryTag) {
			continue
		}
		del := &broker.Delivery{
			Queue:       sb.queue,
			Exchange:    d.Exchange,
			RoutingKey:  d.RoutingKey,
			Redelivered: d.Redelivered,
			Message:     fromDelivery(&d),
			Handle:      handle{cc: cc, tag: d.DeliveryTag},
		}
		select {
		case c.out <- del:
		case <-c.ctx.Done():
			cc.untrack(d.DeliveryTag)
			cc.requeueHeld(d.DeliveryTag)
		case <-sb.stop:
			cc.untrack(d.DeliveryTag)
			cc.requeueHeld(d.DeliveryTag)
		case <-cc.lost:
		}
	}
	if c.ctx.Err() == nil && !sb.cancelled() {
		select { // the stream ended without our basic.cancel: the channel is unusable
		case cc.ended <- sb.queue:
		default:
		}
	}
}

func (cc *consumeChan) track(tag uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.gone {
		return false
	}
	cc.unsettled[tag] = struct{}{}
	return true
}

func (cc *consumeChan) untrack(tag uint64) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	delete(cc.unsettled, tag)
}

// requeueHeld nacks (requeue) a delivery that never reached the caller.
func (cc *consumeChan) requeueHeld(tag uint64) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if !cc.gone {
		_ = cc.ch.Nack(tag, false, true) // on failure the channel is dying: RabbitMQ requeues
		cc.settledLocked(tag)
	}
}

func (cc *consumeChan) cancelConsumers() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.closing = true
	if cc.gone {
		return
	}
	for _, sb := range cc.subs {
		if err := cc.ch.Cancel(sb.tag, false); err != nil {
			// Without the cancel the delivery streams would not end: drop the channel,
			// which requeues everything it holds.
			cc.gone = true
			close(cc.lost)
			_ = cc.ch.Close()
			return
		}
	}
}

func (cc *consumeChan) markGone() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if !cc.gone {
		cc.gone = true
		cc.goneAt.Store(time.Now().UnixNano())
		close(cc.lost)
	}
}

func (cc *consumeChan) isGone() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.gone
}

// stop marks consuming as ended and closes the channel once nothing is unsettled.
func (cc *consumeChan) stop() {
	cc.mu.Lock()
	cc.stopped = true
	closeNow := !cc.gone && len(cc.unsettled) == 0
	if closeNow {
		cc.gone = true
		close(cc.lost)
	}
	cc.mu.Unlock()
	if closeNow {
		_ = cc.ch.Close()
	}
}

// settle runs op on the delivery's channel if that channel is still the one it came on.
func (cc *consumeChan) settle(tag uint64, op func(*amqp091.Channel, uint64) error) error {
	cc.mu.Lock()
	if cc.gone {
		cc.mu.Unlock()
		return broker.ErrStaleDelivery
	}
	if _, ok := cc.unsettled[tag]; !ok {
		cc.mu.Unlock()
		return errors.New("delivery already settled")
	}
	if err := op(cc.ch, tag); err != nil {
		// Ack and Nack only write a frame: an error means the channel or the socket is
		// gone (possibly before the library has noticed), so RabbitMQ will redeliver.
		cc.mu.Unlock()
		return fmt.Errorf("%w: %w", broker.ErrStaleDelivery, err)
	}
	delete(cc.unsettled, tag)
	cc.settledLocked(tag)
	closeNow := cc.stopped && len(cc.unsettled) == 0
	if closeNow {
		cc.gone = true
		close(cc.lost)
	}
	cc.mu.Unlock()
	if closeNow {
		_ = cc.ch.Close()
	}
	return nil
}

func (b *Broker) handleOf(d *broker.Delivery, op string) (handle, error) {
	if b.closed.Load() {
		return handle{}, broker.ErrClosed
	}
	if d == nil {
		return handle{}, fmt.Errorf("amqp: %s: nil delivery", op)
	}
	h, ok := d.Handle.(handle)
	if !ok || h.cc == nil {
		return handle{}, fmt.Errorf("amqp: %s: delivery handle %T is not from this transport", op, d.Handle)
	}
	return h, nil
}

func (b *Broker) settle(ctx context.Context, d *broker.Delivery, op string, fn func(*amqp091.Channel, uint64) error) error {
	h, err := b.handleOf(d, op)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("amqp: %s delivery %d: %w", op, h.tag, err)
	}
	if err := h.cc.settle(h.tag, fn); err != nil {
		return fmt.Errorf("amqp: %s delivery %d (channel gen %d): %w", op, h.tag, h.cc.gen, err)
	}
	return nil
}

// Ack removes the delivery from its queue (basic.ack). Acks made while others are being
// written are written together, coalesced where that is exact (ackbatch.go); Ack returns
// once its own ack is written.
func (b *Broker) Ack(ctx context.Context, d *broker.Delivery) error {
	h, err := b.handleOf(d, "ack")
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("amqp: ack delivery %d: %w", h.tag, err)
	}
	acks := b.ackBatcher()
	if acks == nil {
		return broker.ErrClosed
	}
	if err := acks.Do(ctx, ackReq(h)); err != nil {
		if errors.Is(err, coalesce.ErrClosed) {
			err = broker.ErrStaleDelivery
		}
		return fmt.Errorf("amqp: ack delivery %d (channel gen %d): %w", h.tag, h.cc.gen, err)
	}
	return nil
}

// Requeue hands the delivery back to its queue (basic.nack with requeue); RabbitMQ
// redelivers it with the redelivered flag set.
func (b *Broker) Requeue(ctx context.Context, d *broker.Delivery) error {
	return b.settle(ctx, d, "requeue", func(ch *amqp091.Channel, tag uint64) error {
		return ch.Nack(tag, false, true)
	})
}

// SetPrefetch re-issues basic.qos(0, prefetch, global) on the live consuming channel and
// keeps the value for the channels of later reconnects.
func (b *Broker) SetPrefetch(ctx context.Context, prefetch int) error {
	if prefetch < 0 {
		return fmt.Errorf("amqp: set prefetch: negative prefetch %d", prefetch)
	}
	if b.ctx.Err() != nil {
		return broker.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("amqp: set prefetch %d: %w", prefetch, err)
	}
	prefetch = min(prefetch, maxPrefetch)
	b.mu.Lock()
	c := b.consumer
	b.mu.Unlock()
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prefetch = prefetch
	cc := c.cur
	if cc == nil {
		return nil
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.gone {
		return nil // the next channel generation starts with the new value
	}
	if err := cc.ch.Qos(prefetch, 0, true); err != nil {
		if cc.ch.IsClosed() {
			return nil
		}
		return fmt.Errorf("amqp: set prefetch %d: %w", prefetch, err)
	}
	return nil
}
