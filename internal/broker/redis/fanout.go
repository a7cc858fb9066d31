package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// This file is kombu's fanout emulation over Redis pub/sub (celery-protocol.md §2.6),
// which carries Celery's events and remote control, plus the read-only queue statistics
// and health probe the worker's metrics use.

var (
	_ broker.Fanout    = (*Broker)(nil)
	_ broker.Inspector = (*Broker)(nil)
	_ broker.Health    = (*Broker)(nil)
)

// fanoutTopic is the pub/sub channel of exchange and routing key, kombu's
// _get_publish_topic with fanout_patterns on: global_keyprefix + "/<db>." + exchange, plus
// "/" + key when the key is non-empty.
func (b *Broker) fanoutTopic(exchange, key string) string {
	t := b.keys.key("/" + strconv.Itoa(b.client.Options().DB) + "." + exchange)
	if key != "" {
		t += "/" + key
	}
	return t
}

// Broadcast publishes m as kombu does for a non-queue exchange: fanout and topic exchanges
// over pub/sub, direct ones onto the lists their binding sets route key to.
func (b *Broker) Broadcast(ctx context.Context, ex broker.Exchange, key string, m *protocol.Message) error {
	return b.BroadcastBatch(ctx, ex, key, []*protocol.Message{m})
}

var _ broker.BatchBroadcaster = (*Broker)(nil)

// BroadcastBatch is Broadcast of every message of ms, pipelined: one round trip for a
// fanout or topic exchange (direct exchanges route each message as Broadcast does).
func (b *Broker) BroadcastBatch(ctx context.Context, ex broker.Exchange, key string, ms []*protocol.Message) error {
	if slices.Contains(ms, nil) {
		return errors.New("redis: broadcast: nil message")
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.ops.Done()
	if ex.Kind == broker.KindDirect {
		for _, m := range ms {
			if err := b.broadcastDirect(ctx, ex.Name, key, m); err != nil {
				return err
			}
		}
		return nil
	}
	topic := b.fanoutTopic(ex.Name, key)
	p := b.client.Pipeline()
	for _, m := range ms {
		env, err := encodeEnvelope(m, ex.Name, key, newTag())
		if err != nil {
			return fmt.Errorf("redis: broadcast to %s: encode: %w", ex.Name, err)
		}
		p.Publish(ctx, topic, env)
	}
	if _, err := p.Exec(ctx); err != nil {
		return fmt.Errorf("redis: broadcast to %s: %w", topic, err)
	}
	return nil
}

// broadcastDirect routes m through the binding set of exchange (kombu's direct exchange
// over Redis); with no queue bound the message is dropped, as kombu's pidbox replies are.
func (b *Broker) broadcastDirect(ctx context.Context, exchange, key string, m *protocol.Message) error {
	members, err := b.client.SMembers(ctx, b.keys.binding(exchange)).Result()
	if err != nil {
		return fmt.Errorf("redis: broadcast to exchange %s: bindings: %w", exchange, err)
	}
	queues := directRoute(members, key)
	if len(queues) == 0 {
		return nil
	}
	prio := int(m.Properties.Priority)
	_, err = b.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		for _, q := range queues {
			env, err := encodeEnvelope(m, exchange, key, newTag())
			if err != nil {
				return fmt.Errorf("encode: %w", err)
			}
			p.LPush(ctx, b.keys.listFor(q, prio), env)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis: broadcast to exchange %s (queues %v): %w", exchange, queues, err)
	}
	return nil
}

// Subscribe adds the kombu binding-set member of bd.Queue and PSUBSCRIBEs to the exchange's
// topic (a binding key "#" becomes the pattern "*", as kombu rewrites it). go-redis
// re-subscribes by itself after a lost connection.
func (b *Broker) Subscribe(ctx context.Context, bd broker.Binding) (<-chan *protocol.Message, error) {
	if bd.Exchange.Name == "" {
		return nil, errors.New("redis: subscribe: no exchange")
	}
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.ops.Done()
	key := strings.ReplaceAll(bd.Key, "#", "*")
	if bd.Queue != "" {
		member := bindingMember(bd.Key, "", bd.Queue)
		if err := b.client.SAdd(ctx, b.keys.binding(bd.Exchange.Name), member).Err(); err != nil {
			return nil, fmt.Errorf("redis: subscribe %s: binding: %w", bd.Queue, err)
		}
	}
	topic := b.fanoutTopic(bd.Exchange.Name, key)
	ps := b.client.PSubscribe(ctx, topic)
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		_ = ps.Close()
		return nil, fmt.Errorf("redis: psubscribe %s: %w", topic, err)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = ps.Close()
		return nil, broker.ErrClosed
	}
	b.bg.Add(1)
	b.mu.Unlock()

	sctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(b.life, cancel)
	out := make(chan *protocol.Message, 64)
	go func() {
		defer b.bg.Done()
		defer close(out)
		defer stop()
		defer cancel()
		in := ps.Channel(goredis.WithChannelSize(256))
		go func() {
			<-sctx.Done()
			_ = ps.Close() // closes in
		}()
		for msg := range in {
			env, err := decodeEnvelope([]byte(msg.Payload))
			if err != nil {
				b.log.Warn("redis: dropped an undecodable broadcast", "channel", msg.Channel, "err", err)
				continue
			}
			select {
			case out <- env.msg:
			case <-sctx.Done():
			}
		}
	}()
	return out, nil
}

// QueueStats reads the ready messages of queue per priority sub-list (pipelined LLEN) and,
// where the oldest message of a sub-list carries the x-fleet-sent-at header, its publish
// time. Consumers is -1: Redis does not know who pops.
func (b *Broker) QueueStats(ctx context.Context, queue string) (broker.QueueStats, error) {
	st := broker.QueueStats{Consumers: -1, ByPriority: map[int]int64{}}
	if err := b.enter(); err != nil {
		return st, err
	}
	defer b.ops.Done()
	lens := make([]*goredis.IntCmd, len(b.keys.steps))
	tails := make([]*goredis.StringCmd, len(b.keys.steps))
	_, err := b.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, s := range b.keys.steps {
			k := b.keys.subList(queue, s)
			lens[i] = p.LLen(ctx, k)
			tails[i] = p.LIndex(ctx, k, -1) // the consuming end: the oldest message
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return st, fmt.Errorf("redis: stats of %s: %w", queue, err)
	}
	for i, s := range b.keys.steps {
		n := lens[i].Val()
		st.ByPriority[s] = n
		st.Ready += n
		if n == 0 {
			continue
		}
		if at, ok := sentAt([]byte(tails[i].Val())); ok && (st.OldestSentAt.IsZero() || at.Before(st.OldestSentAt)) {
			st.OldestSentAt = at
		}
	}
	return st, nil
}

// sentAt reads the x-fleet-sent-at header of a kombu envelope.
func sentAt(raw []byte) (time.Time, bool) {
	if len(raw) == 0 {
		return time.Time{}, false
	}
	env, err := decodeEnvelope(raw)
	if err != nil {
		return time.Time{}, false
	}
	return broker.ParseSentAt(env.msg.Headers[broker.HeaderSentAt])
}

// Connected pings the server (bounded by ctx and 2 s).
func (b *Broker) Connected(ctx context.Context) bool {
	if err := b.enter(); err != nil {
		return false
	}
	defer b.ops.Done()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return b.client.Ping(ctx).Err() == nil
}
