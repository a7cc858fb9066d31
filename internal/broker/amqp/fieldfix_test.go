package amqp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// enc helpers build AMQP wire fragments.
func shortstr(s string) []byte { return append([]byte{byte(len(s))}, s...) }

func long(n int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }

func table(entries ...[]byte) []byte {
	body := bytes.Join(entries, nil)
	return append(long(len(body)), body...)
}

func field(name string, typed []byte) []byte { return append(shortstr(name), typed...) }

func int64Field(typ byte, v int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{typ}, uint64(v))
}

// contentHeader is a basic-class content header payload with content-type,
// content-encoding and the given headers table.
func contentHeader(headers []byte) []byte {
	p := []byte{0, classBasic, 0, 0}
	p = binary.BigEndian.AppendUint64(p, 42)
	p = binary.BigEndian.AppendUint16(p, flagType|flagEncoding|flagHeaders|0x1000 /* delivery-mode */)
	p = append(p, shortstr("application/json")...)
	p = append(p, shortstr("utf-8")...)
	p = append(p, headers...)
	return append(p, 2)
}

func TestFixContentHeader(t *testing.T) {
	arr := func(vals ...[]byte) []byte {
		body := bytes.Join(vals, nil)
		return append([]byte{'A'}, append(long(len(body)), body...)...)
	}
	str := func(s string) []byte { return append(append([]byte{'S'}, long(len(s))...), s...) }
	tests := []struct {
		name string
		in   []byte
		want []byte
	}{
		{
			name: "top-level L",
			in:   contentHeader(table(field("a", str("x")), field("big", int64Field('L', 1<<41)))),
			want: contentHeader(table(field("a", str("x")), field("big", int64Field('l', 1<<41)))),
		},
		{
			name: "L inside array and nested table",
			in: contentHeader(table(
				field("arr", arr([]byte{'V'}, int64Field('L', -1<<40))),
				field("tab", append([]byte{'F'}, table(field("n", int64Field('L', 7)), field("b", []byte{'t', 1}))...)),
			)),
			want: contentHeader(table(
				field("arr", arr([]byte{'V'}, int64Field('l', -1<<40))),
				field("tab", append([]byte{'F'}, table(field("n", int64Field('l', 7)), field("b", []byte{'t', 1}))...)),
			)),
		},
		{
			name: "string bytes that look like L are untouched",
			in:   contentHeader(table(field("s", str("LLLL")), field("i", []byte{'I', 0, 0, 0, 'L'}))),
			want: contentHeader(table(field("s", str("LLLL")), field("i", []byte{'I', 0, 0, 0, 'L'}))),
		},
		{
			name: "malformed table is left alone",
			in:   contentHeader(append(long(100), field("x", int64Field('L', 1))...)),
			want: contentHeader(append(long(100), field("x", int64Field('L', 1))...)),
		},
		{
			name: "not the basic class",
			in:   append([]byte{0, 50}, contentHeader(table(field("x", int64Field('L', 1))))[2:]...),
			want: append([]byte{0, 50}, contentHeader(table(field("x", int64Field('L', 1))))[2:]...),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := bytes.Clone(tt.in)
			fixContentHeader(got)
			if !bytes.Equal(got, tt.want) {
				t.Errorf("got  %x\nwant %x", got, tt.want)
			}
		})
	}
}

// TestFieldFixConnStream: frames split across reads come out whole and patched; other
// frames and a server protocol header pass through unchanged.
func TestFieldFixConnStream(t *testing.T) {
	frame := func(typ byte, payload []byte) []byte {
		f := []byte{typ, 0, 1}
		f = append(f, long(len(payload))...)
		f = append(f, payload...)
		return append(f, frameEnd)
	}
	hdrIn := contentHeader(table(field("big", int64Field('L', 1<<41))))
	hdrOut := contentHeader(table(field("big", int64Field('l', 1<<41))))
	method := frame(1, []byte("method-payload-with-L"))
	body := frame(3, []byte("body L L L"))
	in := bytes.Join([][]byte{method, frame(frameHeader, hdrIn), body}, nil)
	want := bytes.Join([][]byte{method, frame(frameHeader, hdrOut), body}, nil)

	for _, chunk := range []int{1, 3, 7, 1024} {
		client, server := net.Pipe()
		go func() {
			for i := 0; i < len(in); i += chunk {
				_, _ = server.Write(in[i:min(i+chunk, len(in))])
			}
			server.Close()
		}()
		got, err := io.ReadAll(newFieldFixConn(client))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("chunk %d: got %x\nwant %x", chunk, got, want)
		}
	}

	client, server := net.Pipe()
	go func() {
		_, _ = server.Write([]byte("AMQP\x00\x00\x09\x01"))
		server.Close()
	}()
	got, err := io.ReadAll(newFieldFixConn(client))
	if err != nil || string(got) != "AMQP\x00\x00\x09\x01" {
		t.Errorf("protocol header: %q, %v", got, err)
	}
}

// tlsFront terminates TLS on a local port with a fresh self-signed certificate for
// "localhost" and forwards to RabbitMQ. It returns its address and the CA file.
func tlsFront(t *testing.T) (addr, caFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", u.Host)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(s, c); s.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	return ln.Addr().String(), caFile
}

// TestTLSWithBigIntHeader: amqps:// works (TLS by our dialer, CA from the URL) and the
// 'L' fix applies above TLS: a py-amqp message with a 64-bit header int is consumed.
func TestTLSWithBigIntHeader(t *testing.T) {
	addr, ca := tlsFront(t)
	a := newAdmin(t)
	q := uniqueName(t, "tls")
	a.cleanup(q)
	a.declareQueue(q)
	python(t, `
import sys
from kombu import Connection, Producer
with Connection(sys.argv[1]) as conn:
    Producer(conn.default_channel).publish({'n': 1}, routing_key=sys.argv[2], headers={'big': 2**41})
`, pythonURL(t), q)

	u, _ := url.Parse(amqpURL())
	tlsURL := "amqps://" + u.User.String() + "@" + addr + "/?server_name_indication=localhost&cacertfile=" + url.QueryEscape(ca)
	b := newBroker(t, Options{URL: tlsURL})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dels, err := b.Consume(ctx, []string{q}, 1)
	if err != nil {
		t.Fatal(err)
	}
	d := recv(t, dels)
	if d.Message.Headers["big"] != json.Number("2199023255552") {
		t.Errorf("big header = %#v", d.Message.Headers["big"])
	}
	if err := b.Ack(ctx, d); err != nil {
		t.Fatal(err)
	}

	// Without the CA the server certificate is refused.
	bad := "amqps://" + u.User.String() + "@" + addr + "/?server_name_indication=localhost"
	if _, err := New(ctx, Options{URL: bad, Logger: testLogger(t)}); err == nil {
		t.Error("TLS without the CA succeeded")
	}
}
