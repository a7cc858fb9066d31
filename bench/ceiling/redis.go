package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// kombu's names (transport/redis.py, default transport options).
const (
	sep             = "\x06\x16"
	unackedKey      = "unacked"
	unackedIndexKey = "unacked_index"
	brpopTimeout    = time.Second // kombu's
)

// popped is a message taken off a list: its delivery tag, the `unacked` record kombu
// writes for it and the task id (for the result).
type popped struct {
	tag    string
	record string
	id     string
}

// runRedis is kombu's consumer loop reduced to the broker work, pipelined.
func runRedis(ctx context.Context, o options, st *stats, log *slog.Logger) error {
	opt, err := goredis.ParseURL(o.broker)
	if err != nil {
		return fmt.Errorf("redis: broker URL: %w", err)
	}
	opt.ReadTimeout = brpopTimeout + 10*time.Second
	client := goredis.NewClient(opt)
	defer client.Close()
	bg := context.Background() // a popped message is never abandoned half-way on SIGTERM
	if err := client.Ping(bg).Err(); err != nil {
		return fmt.Errorf("redis: ping: %w", err)
	}
	// kombu's queue declaration: the binding of the queue to its own exchange.
	if err := client.SAdd(bg, "_kombu.binding."+o.queue, o.queue+sep+sep+o.queue).Err(); err != nil {
		return fmt.Errorf("redis: declare: %w", err)
	}
	var rw *resultWriter
	if o.results != "" {
		if rw, err = newResultWriter(bg, o.results); err != nil {
			return err
		}
		defer rw.Close()
	}
	fetchConn, ackConn := client.Conn(), client.Conn()
	defer fetchConn.Close()
	defer ackConn.Close()
	log.Info("ceiling consuming", "broker", "redis", "queue", o.queue, "prefetch", o.prefetch, "results", rw != nil)

	slots := make(chan struct{}, o.prefetch) // one token per popped, not yet acked message
	acks := make(chan popped, o.prefetch)
	ackDone := make(chan error, 1)
	go func() { ackDone <- redisAcker(ackConn, rw, acks, slots, o.batch, st) }()

	err = redisFetch(ctx, fetchConn, o.queue, slots, acks, log)
	close(acks)
	if aerr := <-ackDone; aerr != nil {
		err = errors.Join(err, aerr)
	}
	return err
}

// redisFetch pops messages until ctx is done. Every round trip carries the lease of the
// message popped last time and the BRPOP of the next one; a message is handed to the
// acker only once its lease is recorded.
func redisFetch(ctx context.Context, conn *goredis.Conn, queue string, slots chan struct{}, acks chan<- popped, log *slog.Logger) error {
	bg := context.Background()
	keys := []string{queue, queue + sep + "3", queue + sep + "6", queue + sep + "9"}
	var pending *popped
	for {
		stopping := ctx.Err() != nil
		if !stopping {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				stopping = true
			}
		}
		if stopping && pending == nil {
			return nil
		}
		p := conn.Pipeline()
		if pending != nil {
			score := strconv.FormatFloat(float64(time.Now().UnixMicro())/1e6, 'f', 6, 64)
			p.Do(bg, "MULTI")
			p.Do(bg, "ZADD", unackedIndexKey, score, pending.tag)
			p.Do(bg, "HSET", unackedKey, pending.tag, pending.record)
			p.Do(bg, "EXEC")
		}
		var brpop *goredis.Cmd
		if !stopping {
			// The lease just queued reaches the acker only when this round trip returns, so
			// with one pending the BRPOP must not sit out a full second on an empty queue.
			timeout := "1"
			if pending != nil {
				timeout = "0.01"
			}
			args := make([]any, 0, len(keys)+2)
			args = append(args, "BRPOP")
			for _, k := range keys {
				args = append(args, k)
			}
			brpop = p.Do(bg, append(args, timeout)...)
		}
		cmds, _ := p.Exec(bg)
		for _, c := range cmds {
			if err := c.Err(); err != nil && !errors.Is(err, goredis.Nil) {
				return fmt.Errorf("redis: fetch: %s: %w", c.Name(), err)
			}
		}
		if pending != nil {
			acks <- *pending
			pending = nil
		}
		if stopping {
			return nil
		}
		kv, err := brpop.StringSlice()
		if errors.Is(err, goredis.Nil) || len(kv) != 2 {
			<-slots // nothing popped
			continue
		}
		m, err := parseEnvelope(kv[1])
		if err != nil {
			log.Error("dropped an undecodable message", "err", err)
			<-slots
			continue
		}
		pending = &m
	}
}

// redisAcker settles leased messages in batches: results first (if any), then one
// MULTI ZREM HDEL EXEC per message, all in one pipeline.
func redisAcker(conn *goredis.Conn, rw *resultWriter, acks <-chan popped, slots <-chan struct{}, batch int, st *stats) error {
	bg := context.Background()
	ms := make([]popped, 0, batch)
	ids := make([]string, 0, batch)
	for m := range acks {
		ms = append(ms[:0], m)
	fill:
		for len(ms) < batch {
			select {
			case m, ok := <-acks:
				if !ok {
					break fill
				}
				ms = append(ms, m)
			default:
				break fill
			}
		}
		if rw != nil {
			ids = ids[:0]
			for _, m := range ms {
				ids = append(ids, m.id)
			}
			if err := rw.store(bg, ids); err != nil {
				return err
			}
		}
		p := conn.Pipeline()
		for _, m := range ms {
			p.Do(bg, "MULTI")
			p.Do(bg, "ZREM", unackedIndexKey, m.tag)
			p.Do(bg, "HDEL", unackedKey, m.tag)
			p.Do(bg, "EXEC")
		}
		if _, err := p.Exec(bg); err != nil {
			return fmt.Errorf("redis: ack: %w", err)
		}
		for range ms {
			<-slots
		}
		st.add(len(ms))
	}
	return nil
}

type envProps struct {
	CorrelationID string `json:"correlation_id"`
	DeliveryTag   string `json:"delivery_tag"`
	DeliveryInfo  struct {
		Exchange   string `json:"exchange"`
		RoutingKey string `json:"routing_key"`
	} `json:"delivery_info"`
}

var propertiesKey = []byte(`"properties":`)

// parseEnvelope reads what the bookkeeping needs from a kombu envelope. kombu writes
// "properties" last, so only that object is decoded; anything else takes the slow path.
func parseEnvelope(item string) (popped, error) {
	raw := []byte(item)
	var p envProps
	ok := false
	if i := bytes.LastIndex(raw, propertiesKey); i >= 0 {
		tail := bytes.TrimSpace(raw[i+len(propertiesKey):])
		if n := len(tail); n > 0 && tail[n-1] == '}' {
			ok = json.Unmarshal(tail[:n-1], &p) == nil && p.DeliveryTag != ""
		}
	}
	if !ok {
		var env struct {
			Properties envProps `json:"properties"`
		}
		if err := json.Unmarshal(raw, &env); err != nil {
			return popped{}, fmt.Errorf("envelope: %w", err)
		}
		p = env.Properties
		if p.DeliveryTag == "" {
			return popped{}, errors.New("envelope has no delivery_tag")
		}
	}
	ex, _ := json.Marshal(p.DeliveryInfo.Exchange)
	rk, _ := json.Marshal(p.DeliveryInfo.RoutingKey)
	// kombu's record: json.dumps([envelope, exchange, routing_key]).
	rec := "[" + item + ", " + string(ex) + ", " + string(rk) + "]"
	return popped{tag: p.DeliveryTag, record: rec, id: p.CorrelationID}, nil
}
