// Package broker defines the transport seam of the fleet: a broker hands out deliveries under
// a lease and takes them back through a small set of transitions (ack, requeue, dead-letter),
// and publishes with confirmation. Implementations live in broker/amqp and broker/redis; no
// transport type leaks through this package.
package broker

import (
	"context"
	"errors"

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
