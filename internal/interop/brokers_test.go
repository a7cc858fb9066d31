package interop

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"
)

// dead is one message found in a dead-letter queue.
type dead struct {
	Headers map[string]any
	Body    []byte
}

// brokerFixture gives a test a broker URL and independent (non-fleet) ways to look at it.
type brokerFixture struct {
	name string
	url  string
	// dlq returns (without removing) the messages in queue dlq.
	dlq func(t *testing.T, queue string) []dead
	// depth is the number of ready messages in queue (all priorities).
	depth func(t *testing.T, queue string) int
	// cleanup deletes the queues.
	cleanup func(queues ...string)
}

func brokers() []brokerFixture { return []brokerFixture{amqpFixture(), redisFixture()} }

func amqpFixture() brokerFixture {
	withChannel := func(t *testing.T, f func(ch *amqp.Channel)) {
		conn, err := amqp.Dial(amqpURL)
		if err != nil {
			t.Fatalf("amqp dial: %v", err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("amqp channel: %v", err)
		}
		defer ch.Close()
		f(ch)
	}
	return brokerFixture{
		name: "amqp",
		url:  amqpURL,
		dlq: func(t *testing.T, queue string) []dead {
			var out []dead
			withChannel(t, func(ch *amqp.Channel) {
				var tags []uint64
				for {
					m, ok, err := ch.Get(queue, false)
					if err != nil {
						t.Fatalf("basic.get %s: %v", queue, err)
					}
					if !ok {
						break
					}
					out = append(out, dead{Headers: map[string]any(m.Headers), Body: m.Body})
					tags = append(tags, m.DeliveryTag)
				}
				for _, tag := range tags {
					_ = ch.Nack(tag, false, true)
				}
			})
			return out
		},
		depth: func(t *testing.T, queue string) int {
			n := 0
			withChannel(t, func(ch *amqp.Channel) {
				q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
				if err != nil {
					t.Fatalf("passive declare %s: %v", queue, err)
				}
				n = q.Messages
			})
			return n
		},
		cleanup: func(queues ...string) {
			conn, err := amqp.Dial(amqpURL)
			if err != nil {
				return
			}
			defer conn.Close()
			for _, q := range queues {
				if ch, err := conn.Channel(); err == nil {
					_, _ = ch.QueueDelete(q, false, false, false)
					_ = ch.ExchangeDelete(q, false, false)
					ch.Close()
				}
			}
		},
	}
}

func redisFixture() brokerFixture {
	client := func() *goredis.Client {
		return goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379", DB: redisBrokerDB})
	}
	keys := func(q string) []string {
		return []string{q, q + "\x06\x163", q + "\x06\x166", q + "\x06\x169"}
	}
	return brokerFixture{
		name: "redis",
		url:  redisURL(redisBrokerDB),
		dlq: func(t *testing.T, queue string) []dead {
			c := client()
			defer c.Close()
			var out []dead
			for _, k := range keys(queue) {
				items, err := c.LRange(context.Background(), k, 0, -1).Result()
				if err != nil {
					t.Fatalf("lrange %s: %v", k, err)
				}
				for _, it := range items {
					var env struct {
						Body       string         `json:"body"`
						Headers    map[string]any `json:"headers"`
						Properties struct {
							BodyEncoding string `json:"body_encoding"`
						} `json:"properties"`
					}
					if err := json.Unmarshal([]byte(it), &env); err != nil {
						t.Fatalf("dlq element is not a kombu envelope: %v: %s", err, it)
					}
					body := []byte(env.Body)
					if env.Properties.BodyEncoding == "base64" {
						body, err = base64.StdEncoding.DecodeString(env.Body)
						if err != nil {
							t.Fatalf("dlq body: %v", err)
						}
					}
					out = append(out, dead{Headers: env.Headers, Body: body})
				}
			}
			return out
		},
		depth: func(t *testing.T, queue string) int {
			c := client()
			defer c.Close()
			n := 0
			for _, k := range keys(queue) {
				l, err := c.LLen(context.Background(), k).Result()
				if err != nil {
					t.Fatalf("llen: %v", err)
				}
				n += int(l)
			}
			return n
		},
		cleanup: func(queues ...string) {
			c := client()
			defer c.Close()
			ctx := context.Background()
			for _, q := range queues {
				c.Del(ctx, keys(q)...)
				c.Del(ctx, "_kombu.binding."+q)
			}
		},
	}
}

// waitFor polls cond until it is true or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

func headerString(h map[string]any, k string) string {
	if v, ok := h[k]; ok && v != nil {
		return fmt.Sprint(v)
	}
	return ""
}
