package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

const consumerTag = "fleet-bench-ceiling"

// runAMQP consumes with manual acks under Celery's global QoS and acks every message on
// its own. With results, a batch of deliveries gets its results stored first.
func runAMQP(ctx context.Context, o options, st *stats, log *slog.Logger) error {
	conn, err := amqp091.Dial(o.broker)
	if err != nil {
		return fmt.Errorf("amqp: dial: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp: channel: %w", err)
	}
	// Declared exactly as Celery declares a task queue (a no-op when it exists).
	if err := ch.ExchangeDeclare(o.queue, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("amqp: declare exchange: %w", err)
	}
	if _, err := ch.QueueDeclare(o.queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("amqp: declare queue: %w", err)
	}
	if err := ch.QueueBind(o.queue, o.queue, o.queue, false, nil); err != nil {
		return fmt.Errorf("amqp: bind queue: %w", err)
	}
	if err := ch.Qos(o.prefetch, 0, true); err != nil {
		return fmt.Errorf("amqp: basic.qos: %w", err)
	}
	dels, err := ch.Consume(o.queue, consumerTag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("amqp: basic.consume: %w", err)
	}
	log.Info("ceiling consuming", "broker", "amqp", "queue", o.queue, "prefetch", o.prefetch, "results", o.results != "")
	go func() {
		<-ctx.Done()
		// basic.cancel: RabbitMQ stops delivering; what was delivered still arrives on
		// dels, is acked, and then dels is closed.
		_ = ch.Cancel(consumerTag, false)
	}()

	if o.results == "" {
		for d := range dels {
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("amqp: ack: %w", err)
			}
			st.add(1)
		}
		return endErr(ctx, conn)
	}

	rw, err := newResultWriter(context.Background(), o.results)
	if err != nil {
		return err
	}
	defer rw.Close()
	work := make(chan amqp091.Delivery, o.prefetch)
	done := make(chan error, 1)
	go func() { done <- ackWithResults(rw, work, o.batch, st) }()
	for d := range dels {
		work <- d
	}
	close(work)
	if err := <-done; err != nil {
		return err
	}
	return endErr(ctx, conn)
}

// ackWithResults takes whatever deliveries are waiting (up to batch), stores their
// results in one round of pipelines, then acks each of them.
func ackWithResults(rw *resultWriter, work <-chan amqp091.Delivery, batch int, st *stats) error {
	ds := make([]amqp091.Delivery, 0, batch)
	ids := make([]string, 0, batch)
	for d := range work {
		ds = append(ds[:0], d)
	fill:
		for len(ds) < batch {
			select {
			case d, ok := <-work:
				if !ok {
					break fill
				}
				ds = append(ds, d)
			default:
				break fill
			}
		}
		ids = ids[:0]
		for _, d := range ds {
			id := d.CorrelationId
			if s, ok := d.Headers["id"].(string); ok && s != "" {
				id = s
			}
			ids = append(ids, id)
		}
		if err := rw.store(context.Background(), ids); err != nil {
			return err
		}
		for _, d := range ds {
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("amqp: ack: %w", err)
			}
		}
		st.add(len(ds))
	}
	return nil
}

// endErr tells a clean stop (ctx done) from a lost connection.
func endErr(ctx context.Context, conn *amqp091.Connection) error {
	if ctx.Err() != nil {
		return nil
	}
	if conn.IsClosed() {
		return errors.New("amqp: connection lost")
	}
	return errors.New("amqp: consumer cancelled by the broker")
}
