// Package tcpproxy is a tiny TCP proxy for tests that need a network fault between a
// client and a real server (RabbitMQ, Redis): point the client at Addr(), then Cut() the
// live connections to simulate a connection loss, or Pause() to refuse new connections
// (an outage) until Resume(). It is test-only: Start ties its lifetime to a testing.TB.
package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards every connection accepted on Addr() to its target.
type Proxy struct {
	t      testing.TB
	target string
	ln     net.Listener

	mu     sync.Mutex
	paused bool
	closed bool
	conns  map[net.Conn]struct{} // both ends of every live pair
	wg     sync.WaitGroup
}

// Start listens on a free 127.0.0.1 port and proxies to target (host:port). The proxy is
// closed, with all its connections, in t.Cleanup.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tcpproxy: listen: %v", err)
	}
	p := &Proxy{t: t, target: target, ln: ln, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's listening address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every live connection (both sides) and keeps listening: clients see a
// connection reset/EOF and may reconnect at once.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Pause makes the proxy refuse new connections (each is accepted and closed at once)
// until Resume. Live connections are left alone; combine with Cut for a full outage.
func (p *Proxy) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume accepts and forwards new connections again.
func (p *Proxy) Resume() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
}

// Close stops listening, cuts every connection and waits for the proxy's goroutines.
// It is called by t.Cleanup and may be called earlier.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.t.Logf("tcpproxy: accept: %v", err)
			}
			return
		}
		p.mu.Lock()
		refuse := p.paused || p.closed
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		p.t.Logf("tcpproxy: dial %s: %v", p.target, err)
		client.Close()
		return
	}
	p.mu.Lock()
	if p.closed || p.paused {
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.conns[client] = struct{}{}
	p.conns[server] = struct{}{}
	p.mu.Unlock()

	var pipes sync.WaitGroup
	pipes.Add(2)
	pipe := func(dst, src net.Conn) {
		defer pipes.Done()
		_, _ = io.Copy(dst, src)
		// One direction ended: tear the pair down so the other side notices too.
		dst.Close()
		src.Close()
	}
	go pipe(server, client)
	go pipe(client, server)
	pipes.Wait()

	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}
