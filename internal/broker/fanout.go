package broker

import (
	"context"
	"strconv"
	"time"

	"denis.io/fleet/internal/protocol"
)

// Exchange kinds used by Celery's broadcast traffic.
const (
	KindDirect = "direct"
	KindFanout = "fanout"
	KindTopic  = "topic"
)

// Exchange names an exchange of Celery's broadcast traffic and how AMQP declares it
// (celery-protocol.md §3.1): `celeryev` is a durable topic exchange, `celery.pidbox` a
// non-durable fanout, `reply.celery.pidbox` a non-durable direct exchange.
type Exchange struct {
	Name    string
	Kind    string // KindDirect, KindFanout or KindTopic
	Durable bool
}

// Binding is a subscription to an exchange: on AMQP a queue of its own, declared
// non-durable and auto-delete with the given TTLs and bound with Key; on Redis a pub/sub
// pattern subscription (kombu's fanout emulation, §2.6) plus the kombu binding-set member.
type Binding struct {
	Exchange Exchange
	// Queue is the subscriber's queue, e.g. "<hostname>.celery.pidbox" or "celeryev.<uuid>".
	Queue string
	// Key is the binding key: "" for every message of a fanout, "#" or "worker.#" on a topic.
	Key string
	// MessageTTL and Expires are the AMQP queue's x-message-ttl and x-expires (0: unset).
	MessageTTL, Expires time.Duration
}

// Fanout is implemented by transports that carry Celery's broadcast traffic: worker and
// task events, remote control (pidbox) requests and their replies. Both transports of the
// fleet implement it; callers find it with a type assertion on their Broker.
type Fanout interface {
	// Broadcast publishes m to ex under routingKey, fire and forget, as kombu publishes
	// events and pidbox traffic: no publisher confirm and no mandatory flag, so a message
	// nobody listens for is dropped. AMQP declares ex first (once per channel). Redis
	// publishes fanout and topic exchanges over pub/sub (`PUBLISH /<db>.<exchange>/<key>`,
	// Celery turns celeryev into a fanout exchange there) and routes direct exchanges
	// through kombu's binding sets (LPUSH onto each bound list; none bound: dropped).
	Broadcast(ctx context.Context, ex Exchange, routingKey string, m *protocol.Message) error

	// Subscribe declares b and delivers its messages until ctx ends, when the channel is
	// closed. Messages are consumed without acknowledgement (kombu's no_ack for pidbox and
	// event queues). A lost connection does not close the channel: the transport
	// re-subscribes once it is back, and what was broadcast in between is lost, as it is
	// for Celery.
	Subscribe(ctx context.Context, b Binding) (<-chan *protocol.Message, error)
}

// BatchBroadcaster is implemented by transports that send several broadcasts to one
// exchange and routing key in a single round trip (Redis: pipelined PUBLISH), with
// Broadcast's semantics for each message. Event dispatchers flushing a backlog use it.
type BatchBroadcaster interface {
	BroadcastBatch(ctx context.Context, ex Exchange, routingKey string, ms []*protocol.Message) error
}

// QueueStats is what a transport can tell about a queue without consuming from it.
type QueueStats struct {
	// Ready is the number of messages waiting, over all priorities.
	Ready int64
	// ByPriority splits Ready by priority sub-list where the transport keeps them apart
	// (Redis: step → count); nil when it does not (AMQP).
	ByPriority map[int]int64
	// Consumers is the number of consumers attached (AMQP), -1 when unknown (Redis).
	Consumers int64
	// OldestSentAt is when the oldest ready message was published, when the broker can
	// tell (a message carrying the x-fleet-sent-at header at the consuming end of a Redis
	// list); zero otherwise.
	OldestSentAt time.Time
}

// Inspector is implemented by transports that report queue statistics (metrics).
type Inspector interface {
	QueueStats(ctx context.Context, queue string) (QueueStats, error)
}

// Health is implemented by transports that report their connection state (metrics and
// /readyz): whether the broker is reachable now.
type Health interface {
	Connected(ctx context.Context) bool
}

// ReconnectCounter is implemented by transports that count the connections they
// re-established after a loss since start (AMQP).
type ReconnectCounter interface {
	Reconnects() uint64
}

// HeaderSentAt is the optional header with the publish time (epoch seconds as a float)
// that fleet producers set; it lets the worker measure queue wait time
// (celery_task_queue_wait_time) and the broker tell the age of its oldest message.
const HeaderSentAt = "x-fleet-sent-at"

// ParseSentAt reads an x-fleet-sent-at header value (epoch seconds, a number or a decimal
// string).
func ParseSentAt(v any) (time.Time, bool) {
	var f float64
	switch x := v.(type) {
	case nil:
		return time.Time{}, false
	case float64:
		f = x
	case interface{ Float64() (float64, error) }:
		g, err := x.Float64()
		if err != nil {
			return time.Time{}, false
		}
		f = g
	case string:
		g, err := strconv.ParseFloat(x, 64)
		if err != nil {
			return time.Time{}, false
		}
		f = g
	default:
		return time.Time{}, false
	}
	if f <= 0 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(f*1e9)), true
}
