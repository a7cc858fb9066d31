package broker

import (
	"context"
	"errors"

	"denis.io/fleet/internal/protocol"
)

// Stored is a message at rest in a queue as a Browser reads it: nobody consumes it while
// it is looked at, and it stays in the queue unless the visit decides otherwise.
type Stored struct {
	Queue string // the queue it is in
	// Position is its place in consume order when it was read (0 = the next to be consumed).
	Position   int
	Exchange   string // the exchange it was published to, as the broker recorded it
	RoutingKey string // its routing key, as the broker recorded it
	// Redelivered is the broker's flag; browsing itself may set it on RabbitMQ.
	Redelivered bool
	Message     *protocol.Message

	// Handle is the transport's own token; callers never interpret it.
	Handle any
}

// Verdict is what a Walk visit decides for one message.
type Verdict int

// Verdicts.
const (
	Keep   Verdict = iota // leave it where it is
	Remove                // delete it from the queue
	Move                  // publish Decision.To, then delete it: one atomic step
)

// Decision is a visit's answer for one message.
type Decision struct {
	Verdict Verdict
	// To is published in place of the message when Verdict is Move. Browsers move through
	// the default exchange only: To.Exchange must be "" and To.RoutingKey names the queue.
	To Publishing
}

// ErrStopWalk may be returned by a visit to end a Walk early without error; the Decision
// returned with it is still applied.
var ErrStopWalk = errors.New("broker: stop walk")

// Browser is the optional part of a transport that reads and edits queues at rest, for
// operator tools (dead-letter queues): list messages without consuming them, remove or move
// chosen ones, purge. A message that is moved is published and removed atomically, so an
// interrupted walk neither loses nor duplicates anything: what was applied is reported
// through applied, the rest is still in the queue.
type Browser interface {
	// Walk visits the messages of queue in consume order, each once, up to the number the
	// queue held when the walk started, and applies each Decision. A queue that does not
	// exist has no messages. applied (may be nil)
	// is called, in order, once a Remove or Move is durable on the broker. When ctx ends,
	// decisions already taken are applied (bounded by a short grace period) and
	// ctx.Err() is returned. A visit error ends the walk the same way and is returned.
	Walk(ctx context.Context, queue string, visit func(*Stored) (Decision, error),
		applied func(*Stored, Decision)) error

	// Heads returns, without removing them, the messages next in line in queue: one per
	// internal sub-queue (Redis: one per priority sub-list, AMQP: the head). Empty when the
	// queue is empty or does not exist.
	Heads(ctx context.Context, queue string) ([]*Stored, error)

	// Depth is the number of messages waiting in queue (on RabbitMQ, a queue that does not
	// exist is an error matching ErrQueueNotFound; on Redis it holds 0).
	Depth(ctx context.Context, queue string) (int64, error)

	// Purge deletes every message of queue at once and returns how many it deleted.
	Purge(ctx context.Context, queue string) (int64, error)

	// DeclareDLQ declares queue the way the transport declares dead-letter queues (AMQP: a
	// durable queue with no arguments; Redis: its kombu binding), so that it can receive
	// messages before any worker dead-lettered to it.
	DeclareDLQ(ctx context.Context, queue string) error

	// Publish sends a message and returns once the broker has confirmed it.
	Publish(ctx context.Context, p Publishing) error
}

// ErrQueueNotFound matches the error of an operation on a queue that does not exist
// (RabbitMQ's 404; Redis has no such thing: a missing list is an empty queue).
var ErrQueueNotFound = errors.New("broker: queue not found")

// QueueLister is the optional part of a transport (or of its management interface) that
// can list the queues it holds.
type QueueLister interface {
	Queues(ctx context.Context) ([]string, error)
}
