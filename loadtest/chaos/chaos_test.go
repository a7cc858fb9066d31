package chaos

import (
	"context"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// TestProxyCut: a Redis client through the proxy works, sees its connection cut, and works
// again on a new connection.
func TestProxyCut(t *testing.T) {
	p, err := StartProxy("127.0.0.1:6379", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := goredis.NewClient(&goredis.Options{Addr: p.Addr(), DB: 13, MaxRetries: -1, PoolSize: 1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if n := p.Cut(); n != 1 {
		t.Fatalf("cut %d connections, want 1", n)
	}
	if p.Conns() != 0 {
		t.Fatalf("%d connections left after the cut", p.Conns())
	}
	// go-redis notices the dead connection (at once or on the next command) and dials
	// again, through the proxy.
	var err2 error
	for range 3 {
		if err2 = c.Ping(ctx).Err(); err2 == nil {
			break
		}
	}
	if err2 != nil {
		t.Fatalf("no reconnect through the proxy: %v", err2)
	}
	if p.Conns() != 1 {
		t.Fatalf("%d connections after the reconnect, want 1", p.Conns())
	}
	if p.Cuts() != 1 {
		t.Fatalf("cuts %d", p.Cuts())
	}
}

func TestHostPort(t *testing.T) {
	tests := []struct{ url, want string }{
		{"amqp://guest:guest@127.0.0.1:5672//", "127.0.0.1:5672"},
		{"amqp://guest:guest@localhost//", "localhost:5672"},
		{"amqps://h/", "h:5671"},
		{"redis://127.0.0.1/13", "127.0.0.1:6379"},
		{"redis://:pw@10.0.0.1:6390/0", "10.0.0.1:6390"},
	}
	for _, tt := range tests {
		got, err := HostPort(tt.url)
		if err != nil || got != tt.want {
			t.Errorf("HostPort(%q) = %q, %v; want %q", tt.url, got, err, tt.want)
		}
	}
	u, err := WithHost("amqp://guest:guest@127.0.0.1:5672//", "127.0.0.1:40000")
	if err != nil || u != "amqp://guest:guest@127.0.0.1:40000//" {
		t.Errorf("WithHost = %q, %v", u, err)
	}
	if _, err := HostPort("ftp://x"); err == nil {
		t.Error("unknown scheme without port: want an error")
	}
}

func TestRestartBrokerCommand(t *testing.T) {
	ctx := context.Background()
	if err := RestartBroker(ctx, "true", time.Second, nil); err != nil {
		t.Fatal(err)
	}
	if err := RestartBroker(ctx, "echo nope >&2; exit 3", time.Second, nil); err == nil {
		t.Fatal("a failing command: want an error")
	}
	if err := RestartBroker(ctx, "", time.Second, nil); err == nil {
		t.Fatal("no command: want an error")
	}
}
