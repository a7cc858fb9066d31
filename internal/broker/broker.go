// Package broker defines the transport seam of the fleet: a broker hands out deliveries under
// a lease and takes them back through a small set of transitions (ack, requeue, dead-letter),
// and publishes with confirmation. Implementations live in broker/amqp and broker/redis; no
// transport type leaks through this package.
package broker

import (
	"context"
	"errors"
	"time"

	"denis.io/fleet/internal/protocol"
)

// Delivery is one message handed to the worker under a lease. It stays on the broker
// (AMQP: unacked on the channel; Redis: kombu's `unacked` hash) until it is settled exactly
// once with Ack, Requeue or DeadLetter.
type Delivery struct {
	Queue       string // the queue it was consumed from
	Exchange    string // delivery_info.exchange as the producer published it
	RoutingKey  string // delivery_info.routing_key
	Redelivered bool
	Message     *protocol.Message

	// Handle is the transport's own token for settling this delivery. Callers never
	// interpret it.
	Handle any
}

// Publishing is a message to publish: to Exchange with RoutingKey. The empty exchange is
// the default exchange, which routes to the queue named by RoutingKey on both transports.
type Publishing struct {
	Exchange   string
	RoutingKey string
	Message    *protocol.Message
}

// ErrStaleDelivery is returned when settling a delivery whose connection or channel is gone.
// The broker already took the message back (AMQP requeues unacked messages of a closed
// channel), so the caller only logs it.
var ErrStaleDelivery = errors.New("broker: delivery belongs to a closed connection; the broker will redeliver it")

// ErrClosed is returned by calls on a broker after Close.
var ErrClosed = errors.New("broker: closed")

// Broker is what the worker needs from a transport.
type Broker interface {
	// Consume declares the queues the way Celery does and starts delivering from them.
	// At most prefetch deliveries are unsettled at once (AMQP: channel QoS; Redis: no
	// BRPOP while the limit is reached). The channel is closed once ctx is done and the
	// consumer has stopped fetching; deliveries still in it must be settled (Requeue) by
	// the caller. Losing the connection does not close the channel: the transport
	// reconnects with backoff and goes on delivering.
	Consume(ctx context.Context, queues []string, prefetch int) (<-chan *Delivery, error)

	// Ack removes the delivery from the broker: its outcome has been recorded.
	Ack(ctx context.Context, d *Delivery) error

	// Requeue hands the delivery back so another consumer gets it (AMQP nack with requeue;
	// Redis restore to the consuming end with `redelivered` set, as kombu does).
	Requeue(ctx context.Context, d *Delivery) error

	// DeadLetter publishes m (normally the original message plus dead-letter headers) to
	// the queue named dlq, declared as a durable queue, waits for the broker to confirm it,
	// and only then removes the original delivery.
	DeadLetter(ctx context.Context, d *Delivery, dlq string, m *protocol.Message) error

	// Publish sends a message and returns once the broker has confirmed it.
	Publish(ctx context.Context, p Publishing) error

	// SetPrefetch changes the limit of unsettled deliveries (held ETA tasks raise it).
	SetPrefetch(ctx context.Context, prefetch int) error

	// Close stops consuming and releases the connection. Deliveries still unsettled are
	// handed back to the broker (AMQP: the closing channel requeues them; Redis: they are
	// restored, kombu's restore_at_shutdown).
	Close() error
}

// QueueSpec is a task queue as Celery's add_consumer declares it: the queue, the
// exchange it is bound to (ExchangeType, default direct) and the binding's routing key.
// Exchange "" means the default exchange: nothing is declared or bound besides the queue.
type QueueSpec struct {
	Name         string
	Exchange     string
	ExchangeType string
	RoutingKey   string
}

// TaskQueue is q as Celery declares a task queue by default: a direct exchange of the same
// name, bound with the queue name as routing key.
func TaskQueue(q string) QueueSpec {
	return QueueSpec{Name: q, Exchange: q, ExchangeType: "direct", RoutingKey: q}
}

// ConsumerController is implemented by transports whose running Consume can start and
// stop consuming single queues (Celery's add_consumer and cancel_consumer).
type ConsumerController interface {
	// AddQueue declares q and starts delivering its messages on the channel of the
	// running Consume, under the same prefetch. Adding a consumed queue does nothing.
	AddQueue(ctx context.Context, q QueueSpec) error
	// CancelQueue stops consuming queue. When it returns, no delivery of queue will be
	// handed out any more: those fetched but not yet handed to the caller were given back
	// to the broker. Deliveries already handed out stay the caller's to settle.
	// Cancelling a queue that is not consumed does nothing.
	CancelQueue(ctx context.Context, queue string) error
}

// ConsumerProbe is implemented by transports that can tell whether their running Consume
// is working (a /readyz check). ConsumerAlive is the last time the consumer showed it
// was: now while it is healthy (a fetch loop turning, polls coming back empty included,
// or waiting for a free prefetch slot because the worker is busy; a consuming channel
// open with its consumers registered), the moment it stopped working otherwise (a fetch
// loop failing or stuck, a channel lost and not yet consumed again). The zero time means
// no Consume is running.
type ConsumerProbe interface {
	ConsumerAlive() time.Time
}

// Unwrapper is implemented by broker decorators (tracing, …): Unwrap returns the broker
// they wrap, so that optional interfaces of the transport can still be found.
type Unwrapper interface {
	Unwrap() Broker
}

// As finds the first broker in b's Unwrap chain that implements T.
func As[T any](b Broker) (T, bool) {
	for b != nil {
		if t, ok := b.(T); ok {
			return t, true
		}
		u, ok := b.(Unwrapper)
		if !ok {
			break
		}
		b = u.Unwrap()
	}
	var zero T
	return zero, false
}
