// Package chaos holds the load test's fault injectors that touch the network or the
// broker: a TCP proxy between the local workers and the broker whose connections can be
// cut, and a broker restart through a command the operator gives. Neither ever acts on a
// broker the operator did not point it at.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os/exec"
	"sync"
	"time"
)

// Proxy forwards every connection accepted on 127.0.0.1 to a target address; Cut closes
// the live connections (both sides), as a network fault would, and keeps listening so
// that clients reconnect.
type Proxy struct {
	target string
	ln     net.Listener
	log    *slog.Logger

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	cuts   int
	wg     sync.WaitGroup
}

// StartProxy listens on a free loopback port and forwards to target (host:port).
func StartProxy(target string, log *slog.Logger) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("chaos: proxy listen: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	p := &Proxy{target: target, ln: ln, log: log, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cuts is how many times Cut ran.
func (p *Proxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

// Conns is the number of live proxied connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) / 2
}

// Cut closes every live connection and returns how many pairs it cut.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.conns) / 2
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
	p.cuts++
	return n
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			p.log.Warn("chaos: proxy could not reach the broker", "target", p.target, "err", err)
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.conns[up] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// HostPort returns the host:port of a broker URL (default ports: AMQP 5672, AMQPS 5671,
// Redis 6379).
func HostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("chaos: broker URL: %w", err)
	}
	if u.Host == "" {
		return "", errors.New("chaos: broker URL has no host")
	}
	if u.Port() != "" {
		return u.Host, nil
	}
	port := map[string]string{"amqp": "5672", "pyamqp": "5672", "amqps": "5671", "redis": "6379", "rediss": "6379"}[u.Scheme]
	if port == "" {
		return "", fmt.Errorf("chaos: no default port for scheme %q", u.Scheme)
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// WithHost returns raw with its host:port replaced by addr (user, path and query kept).
func WithHost(raw, addr string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("chaos: broker URL: %w", err)
	}
	u.Host = addr
	return u.String(), nil
}

// RestartBroker runs the operator's restart command (through sh -c) and waits for it,
// bounded by ctx and timeout. The load test only restarts a broker this way: it never
// guesses how to restart a shared one.
func RestartBroker(ctx context.Context, command string, timeout time.Duration, log *slog.Logger) error {
	if command == "" {
		return errors.New("chaos: no broker restart command (--broker-restart-cmd)")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("chaos: broker restart command failed: %w: %s", err, tail(out, 500))
	}
	if log != nil {
		log.Warn("chaos: broker restarted", "command", command)
	}
	return nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
