package observe

import (
	"context"

	"denis.io/fleet/internal/broker"
)

// DepthReader is the part of a transport that counts waiting messages (both of the
// fleet's transports have it).
type DepthReader interface {
	Depth(ctx context.Context, queue string) (int64, error)
}

// QueueDepth is one queue's waiting messages at a moment.
type QueueDepth struct {
	Queue string
	Ready int64
	// ByPriority splits Ready by priority sub-list on Redis (step → count); nil on AMQP,
	// whose priority queues report one total.
	ByPriority map[int]int64
	Err        error
}

// ReadDepths reads the depth of each queue, through the transport's Inspector (priority
// split, oldest message age) when it has one, else through Depth. Errors are per queue.
func ReadDepths(ctx context.Context, b DepthReader, queues []string) []QueueDepth {
	out := make([]QueueDepth, 0, len(queues))
	in, hasStats := b.(broker.Inspector)
	for _, q := range queues {
		d := QueueDepth{Queue: q}
		if hasStats {
			st, err := in.QueueStats(ctx, q)
			d.Ready, d.ByPriority, d.Err = st.Ready, st.ByPriority, err
		} else {
			d.Ready, d.Err = b.Depth(ctx, q)
		}
		out = append(out, d)
	}
	return out
}
