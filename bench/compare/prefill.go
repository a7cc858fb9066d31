package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
)

// benchTask is the no-op task every contender runs.
const benchTask = "diag.echo"

// kombu's queue/priority separator.
const sep = "\x06\x16"

// celeryHeaderOrder is the order Celery 5.2.6 writes the v2 headers in (docs §1.6), so the
// Redis envelope is byte-for-byte what Python's json.dumps writes.
var celeryHeaderOrder = []string{"lang", "task", "id", "shadow", "eta", "expires", "group",
	"group_index", "retries", "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr",
	"origin", "ignore_result"}

// newMessage is Python's `diag.echo.delay(i)` (send_task from a client whose reply_to oid
// is replyTo) as protocol v2.
func newMessage(i int, replyTo string) (*protocol.Message, error) {
	t := protocol.NewTask(benchTask, []any{i}, nil)
	t.ReplyTo = replyTo
	m, err := protocol.EncodeTask(t)
	if err != nil {
		return nil, fmt.Errorf("encode task %d: %w", i, err)
	}
	return m, nil
}

type pyEnvelope struct {
	Body            string          `json:"body"`
	ContentEncoding string          `json:"content-encoding"`
	ContentType     string          `json:"content-type"`
	Headers         json.RawMessage `json:"headers"`
	Properties      pyProperties    `json:"properties"`
}

type pyProperties struct {
	CorrelationID string         `json:"correlation_id"`
	ReplyTo       string         `json:"reply_to"`
	DeliveryMode  uint8          `json:"delivery_mode"`
	DeliveryInfo  pyDeliveryInfo `json:"delivery_info"`
	Priority      uint8          `json:"priority"`
	BodyEncoding  string         `json:"body_encoding"`
	DeliveryTag   string         `json:"delivery_tag"`
}

type pyDeliveryInfo struct {
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
}

// kombuEnvelope is the list element kombu 5.2.4 LPUSHes for m published to the default
// exchange with routing key queue: json.dumps formatting, Celery's header order, a fresh
// uuid4 delivery tag.
func kombuEnvelope(m *protocol.Message, queue string) ([]byte, error) {
	hdr := []byte{'{'}
	seen := make(map[string]bool, len(celeryHeaderOrder))
	add := func(k string, v any) error {
		if len(hdr) > 1 {
			hdr = append(hdr, ", "...)
		}
		kb, err := protocol.MarshalJSON(k)
		if err != nil {
			return err
		}
		vb, err := protocol.MarshalJSON(v)
		if err != nil {
			return fmt.Errorf("header %s: %w", k, err)
		}
		hdr = append(append(append(hdr, kb...), ": "...), vb...)
		return nil
	}
	for _, k := range celeryHeaderOrder {
		if v, ok := m.Headers[k]; ok {
			seen[k] = true
			if err := add(k, v); err != nil {
				return nil, err
			}
		}
	}
	for k, v := range m.Headers { // none for diag.echo; kept for completeness
		if !seen[k] {
			if err := add(k, v); err != nil {
				return nil, err
			}
		}
	}
	hdr = append(hdr, '}')
	env := pyEnvelope{
		Body:            base64.StdEncoding.EncodeToString(m.Body),
		ContentEncoding: m.ContentEncoding,
		ContentType:     m.ContentType,
		Headers:         hdr,
		Properties: pyProperties{
			CorrelationID: m.Properties.CorrelationID,
			ReplyTo:       m.Properties.ReplyTo,
			DeliveryMode:  m.Properties.DeliveryMode,
			DeliveryInfo:  pyDeliveryInfo{Exchange: "", RoutingKey: queue},
			Priority:      m.Properties.Priority,
			BodyEncoding:  "base64",
			DeliveryTag:   protocol.NewUUID(),
		},
	}
	b, err := protocol.MarshalJSON(env)
	if err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	return b, nil
}

// prefillRedis declares queue as kombu does (its binding) and pushes n envelopes with
// pipelined LPUSHes, then checks the list length.
func prefillRedis(ctx context.Context, rdb *goredis.Client, queue string, n int, replyTo string) error {
	if err := rdb.SAdd(ctx, "_kombu.binding."+queue, queue+sep+sep+queue).Err(); err != nil {
		return fmt.Errorf("redis prefill: declare %s: %w", queue, err)
	}
	const chunk = 1000
	batch := make([]any, 0, chunk)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		// One LPUSH of many values is what a loop of LPUSHes leaves behind, in one round trip.
		if err := rdb.LPush(ctx, queue, batch...).Err(); err != nil {
			return fmt.Errorf("redis prefill: lpush %s: %w", queue, err)
		}
		batch = batch[:0]
		return nil
	}
	for i := range n {
		m, err := newMessage(i, replyTo)
		if err != nil {
			return err
		}
		env, err := kombuEnvelope(m, queue)
		if err != nil {
			return fmt.Errorf("redis prefill: %w", err)
		}
		batch = append(batch, env)
		if len(batch) == chunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	got, err := rdb.LLen(ctx, queue).Result()
	if err != nil {
		return fmt.Errorf("redis prefill: llen %s: %w", queue, err)
	}
	if got != int64(n) {
		return fmt.Errorf("redis prefill: %s holds %d messages, want %d", queue, got, n)
	}
	return nil
}

// declareCeleryQueue declares queue exactly as Celery does (docs §3.1): a durable direct
// exchange and a durable queue of the same name, bound by the name.
func declareCeleryQueue(ch *amqp091.Channel, queue string) error {
	if err := ch.ExchangeDeclare(queue, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", queue, err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare queue %s: %w", queue, err)
	}
	if err := ch.QueueBind(queue, queue, queue, false, nil); err != nil {
		return fmt.Errorf("bind queue %s: %w", queue, err)
	}
	return nil
}

// prefillAMQP declares queue and publishes n messages to the default exchange (as Celery
// does) on a confirm-mode channel, waiting for the confirms batch by batch, then checks
// the queue depth.
func prefillAMQP(ctx context.Context, conn *amqp091.Connection, queue string, n int, replyTo string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp prefill: channel: %w", err)
	}
	defer ch.Close()
	if err := declareCeleryQueue(ch, queue); err != nil {
		return fmt.Errorf("amqp prefill: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("amqp prefill: confirm mode: %w", err)
	}
	const batch = 2000
	pending := make([]*amqp091.DeferredConfirmation, 0, batch)
	wait := func() error {
		for _, dc := range pending {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return fmt.Errorf("amqp prefill: confirm: %w", err)
			}
			if !ok {
				return fmt.Errorf("amqp prefill: message %d nacked by RabbitMQ", dc.DeliveryTag)
			}
		}
		pending = pending[:0]
		return nil
	}
	for i := range n {
		m, err := newMessage(i, replyTo)
		if err != nil {
			return err
		}
		headers, err := toTable(m.Headers)
		if err != nil {
			return fmt.Errorf("amqp prefill: %w", err)
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp091.Publishing{
			ContentType:     m.ContentType,
			ContentEncoding: m.ContentEncoding,
			DeliveryMode:    m.Properties.DeliveryMode,
			Priority:        m.Properties.Priority,
			CorrelationId:   m.Properties.CorrelationID,
			ReplyTo:         m.Properties.ReplyTo,
			Headers:         headers,
			Body:            m.Body,
		})
		if err != nil {
			return fmt.Errorf("amqp prefill: publish: %w", err)
		}
		pending = append(pending, dc)
		if len(pending) == batch {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	if err := wait(); err != nil {
		return err
	}
	var got int
	for deadline := time.Now().Add(5 * time.Second); ; {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("amqp prefill: depth of %s: %w", queue, err)
		}
		if got = q.Messages; got == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got != n {
		return fmt.Errorf("amqp prefill: %s holds %d messages, want %d", queue, got, n)
	}
	return nil
}

// toTable turns protocol header values (json.Number for numbers) into AMQP field values
// as py-amqp encodes Python's: integers as 32-bit when they fit, else 64-bit.
func toTable(h map[string]any) (amqp091.Table, error) {
	t := make(amqp091.Table, len(h))
	for k, v := range h {
		f, err := toField(v)
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", k, err)
		}
		t[k] = f
	}
	return t, nil
}

func toField(v any) (any, error) {
	switch x := v.(type) {
	case nil, bool, string:
		return x, nil
	case json.Number:
		if i, err := x.Int64(); err == nil {
			if i >= math.MinInt32 && i <= math.MaxInt32 {
				return int32(i), nil
			}
			return i, nil
		}
		f, err := x.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %q: %w", x, err)
		}
		return f, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			f, err := toField(e)
			if err != nil {
				return nil, err
			}
			out[i] = f
		}
		return out, nil
	case map[string]any:
		return toTable(x)
	default:
		return nil, fmt.Errorf("unsupported header value %T", v)
	}
}
