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

var (
	_ broker.Browser     = (*Broker)(nil)
	_ broker.QueueLister = (*Broker)(nil)
)

// walkChunk is how many elements a Walk reads per LRANGE.
const walkChunk = 256

// stored is the Handle of a broker.Stored read by this transport: the exact element and
// the sub-list holding it.
type stored struct {
	key string
	raw []byte
}

// moveScript removes one exact element from a list and, only if it was there, pushes the
// replacement envelope onto the producing end of the destination list: a move that can
// neither lose nor duplicate the message.
//
//	KEYS[1] source list, KEYS[2] destination list
//	ARGV[1] the element, ARGV[2] the envelope to push
var moveScript = goredis.NewScript(`
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
`)

// Walk visits queue's messages in consume order (priority sub-lists from the highest
// priority, each from its consuming end), at most as many per sub-list as it held when the
// walk reached it. Remove deletes the exact element (LREM); Move deletes it and pushes the
// new envelope in one script, so a message that another tool removed meanwhile is neither
// removed nor moved twice. An element that is not a kombu envelope is shown as a
// protocol.ContentTypeInvalidEnvelope message.
func (b *Broker) Walk(ctx context.Context, queue string, visit func(*broker.Stored) (broker.Decision, error),
	applied func(*broker.Stored, broker.Decision)) error {
	if err := b.enter(); err != nil {
		return err
	}
	defer b.ops.Done()
	pos := 0
	for _, key := range b.keys.queueKeys(queue) {
		n, err := b.client.LLen(ctx, key).Result()
		if err != nil {
			return fmt.Errorf("redis: walk %s: %w", queue, err)
		}
		// visited elements of this list, and how many of them are gone from it since.
		var visited, removed int64
		for visited < n {
			if err := ctx.Err(); err != nil {
				return err
			}
			kept := visited - removed // visited elements still at the consuming end
			c := min(int64(walkChunk), n-visited)
			items, err := b.client.LRange(ctx, key, -kept-c, -kept-1).Result()
			if err != nil {
				return fmt.Errorf("redis: walk %s: %w", queue, err)
			}
			if len(items) == 0 {
				break
			}
			for i := len(items) - 1; i >= 0; i-- {
				if err := ctx.Err(); err != nil {
					return err
				}
				raw := []byte(items[i])
				s := b.storedOf(queue, key, pos, raw)
				pos++
				visited++
				d, verr := visit(s)
				if verr != nil && !errors.Is(verr, broker.ErrStopWalk) {
					return verr
				}
				done, err := b.applyDecision(ctx, s, d)
				if err != nil {
					return fmt.Errorf("redis: walk %s: %w", queue, err)
				}
				if done {
					removed++
					if applied != nil {
						applied(s, d)
					}
				}
				if verr != nil {
					return nil
				}
			}
		}
	}
	return nil
}

// applyGrace bounds applying a decision taken just before the walk's context ended.
const applyGrace = 10 * time.Second

// applyDecision carries out one decision, even when ctx ended after it was taken; it
// reports whether the element left the list.
func (b *Broker) applyDecision(ctx context.Context, s *broker.Stored, d broker.Decision) (bool, error) {
	if d.Verdict == broker.Keep {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyGrace)
	defer cancel()
	return b.apply(ctx, s, d)
}

// apply carries out one decision; it reports whether the element left the list.
func (b *Broker) apply(ctx context.Context, s *broker.Stored, d broker.Decision) (bool, error) {
	h := s.Handle.(stored)
	switch d.Verdict {
	case broker.Keep:
		return false, nil
	case broker.Remove:
		n, err := b.client.LRem(ctx, h.key, -1, h.raw).Result()
		if err != nil {
			return false, fmt.Errorf("remove from %s: %w", s.Queue, err)
		}
		return n == 1, nil
	case broker.Move:
		to := d.To
		if to.Exchange != "" || to.RoutingKey == "" || to.Message == nil {
			return false, fmt.Errorf("move from %s: only to a queue through the default exchange (got exchange %q, routing key %q)",
				s.Queue, to.Exchange, to.RoutingKey)
		}
		env, err := encodeEnvelope(to.Message, "", to.RoutingKey, newTag())
		if err != nil {
			return false, fmt.Errorf("move from %s: encode: %w", s.Queue, err)
		}
		dst := b.keys.listFor(to.RoutingKey, int(to.Message.Properties.Priority))
		n, err := moveScript.Run(ctx, b.client, []string{h.key, dst}, h.raw, env).Int()
		if err != nil {
			return false, fmt.Errorf("move from %s to %s: %w", s.Queue, to.RoutingKey, err)
		}
		return n == 1, nil
	}
	return false, fmt.Errorf("unknown verdict %d", d.Verdict)
}

// storedOf turns one list element into a broker.Stored.
func (b *Broker) storedOf(queue, key string, pos int, raw []byte) *broker.Stored {
	s := &broker.Stored{Queue: queue, Position: pos, Handle: stored{key: key, raw: raw}}
	env, err := decodeEnvelope(raw)
	if err != nil {
		s.Message = invalidEnvelope(raw, err)
		return s
	}
	s.Message = env.msg
	s.Exchange, s.RoutingKey, s.Redelivered = env.exchange, env.routingKey, env.redelivered
	return s
}

// invalidEnvelope wraps a list element that is not a kombu envelope into a message that
// protocol.Decode rejects with a decode error: the raw element is its body.
func invalidEnvelope(raw []byte, why error) *protocol.Message {
	return &protocol.Message{
		ContentType:     protocol.ContentTypeInvalidEnvelope,
		ContentEncoding: "binary",
		Properties:      protocol.Properties{DeliveryMode: 2},
		Headers:         map[string]any{protocol.HeaderEnvelopeError: why.Error()},
		Body:            append([]byte(nil), raw...),
	}
}

// Heads returns the element at the consuming end of each non-empty priority sub-list of
// queue, highest priority first.
func (b *Broker) Heads(ctx context.Context, queue string) ([]*broker.Stored, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.ops.Done()
	keys := b.keys.queueKeys(queue)
	lens := make([]*goredis.IntCmd, len(keys))
	heads := make([]*goredis.StringCmd, len(keys))
	_, err := b.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		for i, k := range keys {
			lens[i] = p.LLen(ctx, k)
			heads[i] = p.LIndex(ctx, k, -1)
		}
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: heads of %s: %w", queue, err)
	}
	var out []*broker.Stored
	pos := 0
	for i, k := range keys {
		raw, err := heads[i].Bytes()
		if err == nil {
			out = append(out, b.storedOf(queue, k, pos, raw))
		}
		pos += int(lens[i].Val())
	}
	return out, nil
}

// Purge deletes every priority sub-list of queue in one transaction.
func (b *Broker) Purge(ctx context.Context, queue string) (int64, error) {
	if err := b.enter(); err != nil {
		return 0, err
	}
	defer b.ops.Done()
	keys := b.keys.queueKeys(queue)
	lens := make([]*goredis.IntCmd, len(keys))
	_, err := b.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		for i, k := range keys {
			lens[i] = p.LLen(ctx, k)
		}
		p.Del(ctx, keys...)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redis: purge %s: %w", queue, err)
	}
	var n int64
	for _, c := range lens {
		n += c.Val()
	}
	return n, nil
}

// DeclareDLQ adds queue's kombu binding, as DeadLetter does.
func (b *Broker) DeclareDLQ(ctx context.Context, queue string) error {
	if queue == "" {
		return errors.New("redis: declare: empty queue name")
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.ops.Done()
	if err := b.client.SAdd(ctx, b.keys.binding(queue), bindingMember(queue, "", queue)).Err(); err != nil {
		return fmt.Errorf("redis: declare %s: %w", queue, err)
	}
	return nil
}

// Queues lists the queues that hold messages (a list under the key prefix, priority
// sub-lists folded into their queue), sorted.
func (b *Broker) Queues(ctx context.Context) ([]string, error) {
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.ops.Done()
	seen := map[string]bool{}
	var cursor uint64
	match := escapeGlob(b.keys.prefix) + "*"
	for {
		keys, next, err := b.client.ScanType(ctx, cursor, match, 1000, "list").Result()
		if err != nil {
			return nil, fmt.Errorf("redis: list queues: %w", err)
		}
		for _, k := range keys {
			if name := b.queueOfKey(k); name != "" {
				seen[name] = true
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	out := make([]string, 0, len(seen))
	for q := range seen {
		out = append(out, q)
	}
	slices.Sort(out)
	return out, nil
}

// queueOfKey maps a list key back to its queue name ("" if it is not one of ours).
func (b *Broker) queueOfKey(key string) string {
	name, ok := strings.CutPrefix(key, b.keys.prefix)
	if !ok || name == "" {
		return ""
	}
	if i := strings.LastIndex(name, sep); i >= 0 {
		step, err := strconv.Atoi(name[i+len(sep):])
		if err != nil || !slices.Contains(b.keys.steps, step) {
			return ""
		}
		name = name[:i]
	}
	return name
}

// escapeGlob quotes the characters Redis's glob-style MATCH treats specially.
func escapeGlob(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}
