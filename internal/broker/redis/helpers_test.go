package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Tests run against the real Redis at 127.0.0.1:6379. They share DB testDB and isolate
// themselves with a unique global key prefix (which kombu applies to every key).
const (
	testAddr = "127.0.0.1:6379"
	testDB   = 12
	testURL  = "redis://127.0.0.1:6379/12"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fixture is one test's slice of Redis: a unique key prefix and a raw client.
type fixture struct {
	t      *testing.T
	prefix string
	rdb    *goredis.Client
	ks     keyspace
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: testAddr, DB: testDB})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis at %s is required: %v", testAddr, err)
	}
	f := &fixture{t: t, prefix: "fleettest:" + randHex(6) + ":", rdb: rdb}
	f.ks = keyspace{prefix: f.prefix, steps: []int{0, 3, 6, 9}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keys, err := rdb.Keys(ctx, f.prefix+"*").Result()
		if err == nil && len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		_ = rdb.Close()
	})
	return f
}

// broker opens a Broker on the fixture's prefix, closed at cleanup.
func (f *fixture) broker(mod func(*Options)) *Broker {
	f.t.Helper()
	o := Options{URL: testURL, KeyPrefix: f.prefix}
	if mod != nil {
		mod(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := New(ctx, o)
	if err != nil {
		f.t.Fatalf("New: %v", err)
	}
	f.t.Cleanup(func() {
		if err := b.Close(); err != nil {
			f.t.Errorf("Close: %v", err)
		}
	})
	return b
}

func (f *fixture) consume(b *Broker, prefetch int, queues ...string) (<-chan *broker.Delivery, context.CancelFunc) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := b.Consume(ctx, queues, prefetch)
	if err != nil {
		cancel()
		f.t.Fatalf("Consume: %v", err)
	}
	f.t.Cleanup(func() {
		cancel()
		for range ch {
		}
	})
	return ch, cancel
}

func (f *fixture) publish(b *Broker, queue string, m *protocol.Message) {
	f.t.Helper()
	if err := b.Publish(context.Background(), broker.Publishing{RoutingKey: queue, Message: m}); err != nil {
		f.t.Fatalf("Publish: %v", err)
	}
}

func (f *fixture) llen(key string) int64 {
	f.t.Helper()
	n, err := f.rdb.LLen(context.Background(), key).Result()
	if err != nil {
		f.t.Fatalf("LLEN %q: %v", key, err)
	}
	return n
}

func (f *fixture) hlen(key string) int64 {
	f.t.Helper()
	n, err := f.rdb.HLen(context.Background(), key).Result()
	if err != nil {
		f.t.Fatalf("HLEN %q: %v", key, err)
	}
	return n
}

func (f *fixture) zcard(key string) int64 {
	f.t.Helper()
	n, err := f.rdb.ZCard(context.Background(), key).Result()
	if err != nil {
		f.t.Fatalf("ZCARD %q: %v", key, err)
	}
	return n
}

func (f *fixture) lrange(key string) []string {
	f.t.Helper()
	v, err := f.rdb.LRange(context.Background(), key, 0, -1).Result()
	if err != nil {
		f.t.Fatalf("LRANGE %q: %v", key, err)
	}
	return v
}

func queueName(base string) string { return base + "-" + randHex(4) }

func msg(id string, prio uint8) *protocol.Message {
	return &protocol.Message{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties:      protocol.Properties{CorrelationID: id, DeliveryMode: 2, Priority: prio},
		Headers:         map[string]any{"id": id, "task": "test.task", "lang": "go"},
		Body:            []byte(`[[], {"id": "` + id + `"}, {}]`),
	}
}

func idOf(d *broker.Delivery) string {
	s, _ := d.Message.Headers["id"].(string)
	return s
}

func recv(t *testing.T, ch <-chan *broker.Delivery) *broker.Delivery {
	t.Helper()
	select {
	case d, ok := <-ch:
		if !ok {
			t.Fatal("delivery channel closed")
		}
		return d
	case <-time.After(15 * time.Second):
		t.Fatal("no delivery within 15s")
	}
	return nil
}

// expectNone checks that nothing arrives for a while (used for the prefetch bound).
func expectNone(t *testing.T, ch <-chan *broker.Delivery, wait time.Duration) {
	t.Helper()
	select {
	case d := <-ch:
		t.Fatalf("unexpected delivery %q", idOf(d))
	case <-time.After(wait):
	}
}

func ack(t *testing.T, b *Broker, d *broker.Delivery) {
	t.Helper()
	if err := b.Ack(context.Background(), d); err != nil {
		t.Fatalf("Ack: %v", err)
	}
}

// crash stops b's background work and drops its connections without restoring anything,
// as if the process had died.
func crash(b *Broker) {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancelLife()
	b.bg.Wait()
	_ = b.client.Close()
}

// python runs a snippet with the system Python (Celery 5.2.6 / kombu 5.2.4).
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import kombu, celery").Run(); err != nil {
		t.Skipf("/usr/bin/python3 lacks kombu/celery: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", append([]string{"-c", script}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("python: %v\nstderr:\n%s", err, ee.Stderr)
		}
		t.Fatalf("python: %v", err)
	}
	return string(out)
}

// proxy is a TCP forwarder to Redis that can be taken down and brought back, to
// simulate losing the server.
type proxy struct {
	t     *testing.T
	addr  string
	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startProxy(t *testing.T) *proxy {
	t.Helper()
	p := &proxy{t: t, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.down)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", testAddr)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(up, c); up.Close(); c.Close() }()
			go func() { defer p.wg.Done(); _, _ = io.Copy(c, up); up.Close(); c.Close() }()
		}
	}()
}

// down closes the listener and every forwarded connection.
func (p *proxy) down() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
	p.mu.Unlock()
	p.wg.Wait()
}

// up listens again on the same address.
func (p *proxy) up() {
	p.t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("proxy relisten on %s: %v", p.addr, err)
	}
	p.serve(ln)
}
