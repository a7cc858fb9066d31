package tcpproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes lines back until the client goes away.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, msg string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return line[:len(line)-1], nil
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestProxy(t *testing.T) {
	p := Start(t, echoServer(t))

	c := dial(t, p)
	if got, err := roundTrip(c, "hello"); err != nil || got != "hello" {
		t.Fatalf("round trip through the proxy: %q, %v", got, err)
	}

	p.Cut()
	if _, err := roundTrip(c, "after cut"); err == nil {
		t.Fatal("connection still works after Cut")
	}
	c2 := dial(t, p)
	if got, err := roundTrip(c2, "again"); err != nil || got != "again" {
		t.Fatalf("new connection after Cut: %q, %v", got, err)
	}

	p.Pause()
	if got, err := roundTrip(c2, "live while paused"); err != nil || got != "live while paused" {
		t.Fatalf("live connection during Pause: %q, %v", got, err)
	}
	c3 := dial(t, p)
	if _, err := roundTrip(c3, "refused"); err == nil {
		t.Fatal("new connection served while paused")
	}

	p.Resume()
	c4 := dial(t, p)
	if got, err := roundTrip(c4, "resumed"); err != nil || got != "resumed" {
		t.Fatalf("after Resume: %q, %v", got, err)
	}

	p.Close()
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("proxy still listening after Close")
	}
}
