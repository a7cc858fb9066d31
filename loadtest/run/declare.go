package run

import (
	"context"
	"errors"
	"fmt"
	"strings"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// declareTaskQueue makes sure queue exists the way Celery's producer declares it before
// publishing: on RabbitMQ a durable direct exchange and a durable queue of that name, bound
// by the name (left alone when the queue already exists, whatever its arguments, e.g.
// x-max-priority); on Redis kombu's binding (tr.DeclareDLQ adds exactly that member).
func declareTaskQueue(ctx context.Context, brokerURL string, tr transport, queue string) error {
	scheme, _, _ := strings.Cut(brokerURL, "://")
	switch scheme {
	case "redis", "rediss":
		return tr.DeclareDLQ(ctx, queue)
	case "pyamqp":
		brokerURL = "amqp" + strings.TrimPrefix(brokerURL, "pyamqp")
	}
	conn, err := amqp091.Dial(brokerURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	done := make(chan error, 1)
	go func() { done <- declareCelery(conn, queue) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = conn.Close()
		return ctx.Err()
	}
}

func declareCelery(conn *amqp091.Connection, queue string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("channel: %w", err)
	}
	_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err == nil {
		_ = ch.Close()
		return nil
	}
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.NotFound {
		return fmt.Errorf("passive declare: %w", err)
	}
	// The failed passive declare closed that channel.
	if ch, err = conn.Channel(); err != nil {
		return fmt.Errorf("channel: %w", err)
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare(queue, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange: %w", err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare: %w", err)
	}
	if err := ch.QueueBind(queue, queue, queue, false, nil); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}
