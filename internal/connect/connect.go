// Package connect turns the URLs a Celery user knows (broker_url, result_backend) into a
// broker.Broker and a result.Backend. Every binary (worker, fleetctl, loadtest) opens its
// connections here, so URL handling and error messages are the same everywhere.
package connect

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/broker/redis"
	"denis.io/fleet/internal/result"
)

// DefaultBrokerURL is Celery's default broker.
const DefaultBrokerURL = "amqp://guest:guest@localhost:5672//"

// BrokerOptions are the transport settings a user may set.
type BrokerOptions struct {
	// VisibilityTimeout is kombu's Redis visibility_timeout (default 1h).
	VisibilityTimeout time.Duration
	// KeyPrefix is kombu's Redis global_keyprefix.
	KeyPrefix string
	// QueueArguments are the AMQP x-arguments task queues are declared with, by queue
	// name (e.g. x-max-priority); Redis ignores them.
	QueueArguments map[string]map[string]any
	Logger         *slog.Logger
}

// CheckBrokerURL validates a broker URL without connecting.
func CheckBrokerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("bad broker URL %q: %w", redact(raw), err)
	}
	switch u.Scheme {
	case "amqp", "amqps", "pyamqp", "redis", "rediss":
	default:
		return fmt.Errorf("bad broker URL %q: scheme must be amqp://, amqps://, redis:// or rediss://", redact(raw))
	}
	if u.Host == "" {
		return fmt.Errorf("bad broker URL %q: no host", redact(raw))
	}
	return nil
}

// Broker connects to the broker named by raw. An unreachable broker is an error.
func Broker(ctx context.Context, raw string, o BrokerOptions) (broker.Broker, error) {
	if err := CheckBrokerURL(raw); err != nil {
		return nil, err
	}
	scheme := raw[:strings.Index(raw, ":")]
	switch scheme {
	case "redis", "rediss":
		b, err := redis.New(ctx, redis.Options{URL: raw, KeyPrefix: o.KeyPrefix,
			VisibilityTimeout: o.VisibilityTimeout, Logger: o.Logger})
		if err != nil {
			return nil, fmt.Errorf("broker %s unreachable: %w", redact(raw), err)
		}
		return b, nil
	default:
		if scheme == "pyamqp" {
			raw = "amqp" + raw[len("pyamqp"):]
		}
		b, err := amqp.New(ctx, amqp.Options{URL: raw, QueueArguments: o.QueueArguments, Logger: o.Logger})
		if err != nil {
			return nil, fmt.Errorf("broker %s unreachable: %w", redact(raw), err)
		}
		return b, nil
	}
}

// CheckResultURL validates a result backend URL without connecting ("" = disabled).
func CheckResultURL(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("bad result backend URL %q: %w", redact(raw), err)
	}
	switch u.Scheme {
	case "redis", "rediss", "rpc":
		return nil
	}
	return fmt.Errorf("bad result backend URL %q: scheme must be redis://, rediss:// or rpc://", redact(raw))
}

// Results opens the result backend named by raw; "" means results are disabled (nil, nil).
// rpc:// replies through b.
func Results(ctx context.Context, raw string, b broker.Broker, o result.Options) (result.Backend, error) {
	if err := CheckResultURL(raw); err != nil {
		return nil, err
	}
	rb, err := result.Open(ctx, raw, b, o)
	if err != nil {
		return nil, fmt.Errorf("result backend %s: %w", redact(raw), err)
	}
	return rb, nil
}

// Redact hides the password in a URL for logs and errors.
func Redact(raw string) string { return redact(raw) }

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
