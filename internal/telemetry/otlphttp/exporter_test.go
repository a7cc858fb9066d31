package otlphttp

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestEndpoint(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string // URL, or a substring of the error
		err  bool
	}{
		{"base", map[string]string{envEndpoint: "http://collector:4318"}, "http://collector:4318/v1/traces", false},
		{"base trailing slash", map[string]string{envEndpoint: "http://collector:4318/"}, "http://collector:4318/v1/traces", false},
		{"base with path", map[string]string{envEndpoint: "https://gw.example/otlp/"}, "https://gw.example/otlp/v1/traces", false},
		{"base spaces", map[string]string{envEndpoint: " http://c:4318 "}, "http://c:4318/v1/traces", false},
		{"traces as is", map[string]string{envTracesEndpoint: "http://c:4318/custom/path"}, "http://c:4318/custom/path", false},
		{"traces no path", map[string]string{envTracesEndpoint: "https://c:4318"}, "https://c:4318/", false},
		{"traces wins", map[string]string{envTracesEndpoint: "http://t:1/x", envEndpoint: "http://b:2"}, "http://t:1/x", false},
		{"neither", map[string]string{}, envTracesEndpoint + " or " + envEndpoint, true},
		{"bad scheme", map[string]string{envEndpoint: "grpc://c:4317"}, envEndpoint, true},
		{"no scheme", map[string]string{envEndpoint: "localhost:4318"}, envEndpoint, true},
		{"bad traces", map[string]string{envTracesEndpoint: "unix:///sock", envEndpoint: "http://b:2"}, envTracesEndpoint, true},
		{"no host", map[string]string{envTracesEndpoint: "http:///v1/traces"}, "no host", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := New(env(tt.env))
			if tt.err {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %v, want one mentioning %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Endpoint() != tt.want {
				t.Errorf("endpoint %q, want %q", e.Endpoint(), tt.want)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		err  string // substring of the error; "" for none
		chk  func(t *testing.T, e *Exporter)
	}{
		{name: "defaults", chk: func(t *testing.T, e *Exporter) {
			if e.timeout != 10*time.Second || e.gzip || (e.own.TLSClientConfig != nil && e.own.TLSClientConfig.RootCAs != nil) {
				t.Errorf("timeout %v gzip %v tls %v", e.timeout, e.gzip, e.own.TLSClientConfig)
			}
		}},
		{name: "timeout", env: map[string]string{envTimeout: "2500"}, chk: func(t *testing.T, e *Exporter) {
			if e.timeout != 2500*time.Millisecond {
				t.Errorf("timeout %v", e.timeout)
			}
		}},
		{name: "traces timeout wins", env: map[string]string{envTimeout: "2500", envTracesTimeout: "700"}, chk: func(t *testing.T, e *Exporter) {
			if e.timeout != 700*time.Millisecond {
				t.Errorf("timeout %v", e.timeout)
			}
		}},
		{name: "bad timeout", env: map[string]string{envTracesTimeout: "10s"}, err: envTracesTimeout},
		{name: "zero timeout", env: map[string]string{envTimeout: "0"}, err: envTimeout},
		{name: "gzip", env: map[string]string{envCompression: "gzip"}, chk: func(t *testing.T, e *Exporter) {
			if !e.gzip || e.header.Get("Content-Encoding") != "gzip" {
				t.Error("gzip not on")
			}
		}},
		{name: "traces compression wins", env: map[string]string{envCompression: "gzip", envTracesCompression: "none"}, chk: func(t *testing.T, e *Exporter) {
			if e.gzip || e.header.Get("Content-Encoding") != "" {
				t.Error("gzip on")
			}
		}},
		{name: "bad compression", env: map[string]string{envCompression: "zstd"}, err: envCompression},
		{name: "headers", env: map[string]string{envHeaders: "a=1,b=2"}, chk: func(t *testing.T, e *Exporter) {
			if e.header.Get("a") != "1" || e.header.Get("b") != "2" {
				t.Errorf("headers %v", e.header)
			}
		}},
		{name: "traces headers win", env: map[string]string{envHeaders: "a=1", envTracesHeaders: "b=2"}, chk: func(t *testing.T, e *Exporter) {
			if e.header.Get("a") != "" || e.header.Get("b") != "2" {
				t.Errorf("headers %v", e.header)
			}
		}},
		{name: "header without =", env: map[string]string{envHeaders: "a=1,oops"}, err: envHeaders},
		{name: "header without key", env: map[string]string{envTracesHeaders: "=v"}, err: envTracesHeaders},
		{name: "header bad key", env: map[string]string{envHeaders: "a b=v"}, err: envHeaders},
		{name: "header bad escape", env: map[string]string{envHeaders: "a=%zz"}, err: envHeaders},
		{name: "header control char", env: map[string]string{envHeaders: "a=x%0Ay"}, err: envHeaders},
		{name: "missing CA file", env: map[string]string{envCA: filepath.Join(dir, "nope.pem")}, err: "nope.pem"},
		{name: "CA not PEM", env: map[string]string{envTracesCA: notPEM}, err: "not.pem"},
		{name: "client cert without key", env: map[string]string{envClientCert: notPEM}, err: envClientKey},
		{name: "client key without cert", env: map[string]string{envTracesClientKey: notPEM}, err: envTracesClientCert},
		{name: "bad client pair", env: map[string]string{envClientCert: notPEM, envClientKey: notPEM}, err: "not.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{envEndpoint: "http://c:4318"}
			for k, v := range tt.env {
				m[k] = v
			}
			e, err := New(env(m))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one mentioning %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.chk(t, e)
		})
	}
}

// collector is a test OTLP receiver: it records every request (body decompressed) and
// answers with respond (200 and no body when nil).
type collector struct {
	t       *testing.T
	srv     *httptest.Server
	respond func(w http.ResponseWriter, r *http.Request, attempt int) // attempt counts from 1

	mu   sync.Mutex
	reqs []received
}

type received struct {
	path   string
	header http.Header
	body   []byte // decompressed
	req    *collectortrace.ExportTraceServiceRequest
}

func newCollector(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, attempt int)) *collector {
	c := &collector{t: t, respond: respond}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *collector) serve(w http.ResponseWriter, r *http.Request) {
	var rd io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			c.t.Errorf("gzip: %v", err)
			w.WriteHeader(400)
			return
		}
		rd = zr
	}
	body, err := io.ReadAll(rd)
	if err != nil {
		c.t.Errorf("read: %v", err)
	}
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		c.t.Errorf("decode: %v", err)
	}
	c.mu.Lock()
	c.reqs = append(c.reqs, received{path: r.URL.Path, header: r.Header.Clone(), body: body, req: &req})
	n := len(c.reqs)
	c.mu.Unlock()
	if c.respond != nil {
		c.respond(w, r, n)
	}
}

func (c *collector) received() []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]received(nil), c.reqs...)
}

func newExporter(t *testing.T, m map[string]string, opts ...Option) *Exporter {
	t.Helper()
	e, err := New(env(m), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e
}

func countSpans(req *collectortrace.ExportTraceServiceRequest) int {
	n := 0
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.ScopeSpans {
			n += len(ss.Spans)
		}
	}
	return n
}

func TestExportHTTP(t *testing.T) {
	spans := sdkSpans(t)
	for _, gz := range []bool{false, true} {
		name := "plain"
		if gz {
			name = "gzip"
		}
		t.Run(name, func(t *testing.T) {
			c := newCollector(t, nil)
			m := map[string]string{envEndpoint: c.srv.URL + "/", envHeaders: "ignored=1",
				envTracesHeaders: "api-key=secret%20one%2Ctwo , X-Tenant = acme ,"}
			if gz {
				m[envTracesCompression] = "gzip"
			}
			e := newExporter(t, m)
			for range 3 { // reused buffers and gzip writers
				if err := e.ExportSpans(context.Background(), spans); err != nil {
					t.Fatal(err)
				}
			}
			got := c.received()
			if len(got) != 3 {
				t.Fatalf("%d requests", len(got))
			}
			want := encodeSpans(spans)
			for _, r := range got {
				if r.path != "/v1/traces" {
					t.Errorf("path %q", r.path)
				}
				if !bytes.Equal(r.body, want) || countSpans(r.req) != len(spans) {
					t.Errorf("body differs from the encoding (%d spans)", countSpans(r.req))
				}
				h := r.header
				if h.Get("Content-Type") != "application/x-protobuf" || h.Get("User-Agent") != "fleet-otlp-exporter/1" ||
					h.Get("Api-Key") != "secret one,two" || h.Get("X-Tenant") != "acme" || h.Get("Ignored") != "" {
					t.Errorf("headers %v", h)
				}
				if gz != (h.Get("Content-Encoding") == "gzip") {
					t.Errorf("Content-Encoding %q", h.Get("Content-Encoding"))
				}
			}
		})
	}
}

func TestExportEmpty(t *testing.T) {
	c := newCollector(t, nil)
	e := newExporter(t, map[string]string{envTracesEndpoint: c.srv.URL + "/v1/traces"})
	if err := e.ExportSpans(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if err := e.ExportSpans(context.Background(), []sdktrace.ReadOnlySpan{nil}); err != nil {
		t.Fatal(err)
	}
	if n := len(c.received()); n != 0 {
		t.Errorf("%d requests for no spans", n)
	}
}

func TestRetries(t *testing.T) {
	spans := stubSpans()
	longBody := strings.Repeat("e", 150) + strings.Repeat("f", 150)
	tests := []struct {
		name     string
		respond  func(w http.ResponseWriter, r *http.Request, attempt int)
		env      map[string]string
		err      string // substring of the error; "" for success
		attempts int
		minTime  time.Duration
		maxTime  time.Duration
	}{
		{
			name: "503 with Retry-After then 200",
			respond: func(w http.ResponseWriter, _ *http.Request, n int) {
				if n == 1 {
					w.Header().Set("Retry-After", "1")
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			},
			attempts: 2, minTime: time.Second, maxTime: 3 * time.Second,
		},
		{
			name: "429, 502, 504 then 200 with backoff",
			respond: func(w http.ResponseWriter, _ *http.Request, n int) {
				switch n {
				case 1:
					w.WriteHeader(http.StatusTooManyRequests)
				case 2:
					w.WriteHeader(http.StatusBadGateway)
				case 3:
					w.WriteHeader(http.StatusGatewayTimeout)
				}
			},
			// Backoffs of 100, 200 and 400 ms, each jittered by ±50%.
			attempts: 4, minTime: 350 * time.Millisecond, maxTime: 3 * time.Second,
		},
		{
			name: "400 is final",
			respond: func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.WriteHeader(http.StatusBadRequest)
				_, _ = io.WriteString(w, "  "+longBody)
			},
			err: "400 Bad Request: " + longBody[:200], attempts: 1, maxTime: time.Second,
		},
		{
			name: "500 is final",
			respond: func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.WriteHeader(http.StatusInternalServerError)
			},
			err: "500 Internal Server Error: (empty body)", attempts: 1, maxTime: time.Second,
		},
		{
			name: "always 503 until the timeout",
			respond: func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "busy")
			},
			env: map[string]string{envTimeout: "600"},
			err: "503 Service Unavailable: busy", minTime: 100 * time.Millisecond, maxTime: 900 * time.Millisecond,
		},
		{
			name: "Retry-After past the timeout gives up at once",
			respond: func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(http.StatusTooManyRequests)
			},
			err: "would pass the export timeout", attempts: 1, maxTime: time.Second,
		},
		{
			name: "a hanging collector",
			respond: func(_ http.ResponseWriter, r *http.Request, _ int) {
				<-r.Context().Done()
			},
			env: map[string]string{envTracesTimeout: "300"},
			err: "export timeout", attempts: 1, minTime: 300 * time.Millisecond, maxTime: 2 * time.Second,
		},
		{
			name: "a dropped connection is retried",
			respond: func(w http.ResponseWriter, _ *http.Request, n int) {
				if n == 1 {
					conn, _, err := http.NewResponseController(w).Hijack()
					if err == nil {
						_ = conn.Close()
					}
				}
			},
			attempts: 2, maxTime: 2 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCollector(t, tt.respond)
			m := map[string]string{envEndpoint: c.srv.URL}
			for k, v := range tt.env {
				m[k] = v
			}
			e := newExporter(t, m)
			start := time.Now()
			err := e.ExportSpans(context.Background(), spans)
			elapsed := time.Since(start)
			if tt.err == "" && err != nil {
				t.Fatalf("error %v", err)
			}
			if tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("error %v, want one with %q", err, tt.err)
			}
			got := len(c.received())
			if tt.attempts > 0 && got != tt.attempts {
				t.Errorf("%d attempts, want %d", got, tt.attempts)
			}
			if tt.attempts == 0 && got < 2 {
				t.Errorf("%d attempts, want retries", got)
			}
			if elapsed < tt.minTime || elapsed > tt.maxTime {
				t.Errorf("took %v, want %v to %v", elapsed, tt.minTime, tt.maxTime)
			}
			if tt.err != "" && strings.Contains(tt.err, "Bad Request") && strings.Contains(err.Error(), longBody[:201]) {
				t.Error("the body in the error is not cut at 200 bytes")
			}
		})
	}
}

func TestConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	e := newExporter(t, map[string]string{envEndpoint: "http://" + addr, envTimeout: "400"})
	start := time.Now()
	err = e.ExportSpans(context.Background(), stubSpans())
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("error %v", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Errorf("took %v: connection errors are retried until the timeout", d)
	}
}

func TestCallerContext(t *testing.T) {
	c := newCollector(t, func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(http.StatusServiceUnavailable) })
	e := newExporter(t, map[string]string{envEndpoint: c.srv.URL})
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := e.ExportSpans(ctx, stubSpans())
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("error %v after %v", err, time.Since(start))
	}
}

func partialResponse(t *testing.T, rejected int64, msg string) []byte {
	b, err := proto.Marshal(&collectortrace.ExportTraceServiceResponse{
		PartialSuccess: &collectortrace.ExportTracePartialSuccess{RejectedSpans: rejected, ErrorMessage: msg}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPartialSuccess(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        []byte
		rejected    int64
		msg         string
	}{
		{"protobuf", "application/x-protobuf", partialResponse(t, 2, "bad spans"), 2, "bad spans"},
		{"message only", "application/x-protobuf", partialResponse(t, 0, "warning"), 0, "warning"},
		{"success", "application/x-protobuf", partialResponse(t, 0, ""), 0, ""},
		{"empty body", "application/x-protobuf", nil, 0, ""},
		{"json", "application/json; charset=utf-8", []byte(`{"partialSuccess":{"rejectedSpans":"3","errorMessage":"j"}}`), 3, "j"},
		{"json number", "application/json", []byte(`{"partialSuccess":{"rejectedSpans":4}}`), 4, ""},
		{"json empty", "application/json", []byte(`{}`), 0, ""},
		{"garbage", "application/x-protobuf", []byte{0xff, 0xff}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				w.Header().Set("Content-Type", tt.contentType)
				_, _ = w.Write(tt.body)
			})
			e := newExporter(t, map[string]string{envEndpoint: c.srv.URL})
			err := e.ExportSpans(context.Background(), stubSpans())
			if tt.rejected == 0 && tt.msg == "" {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				return
			}
			var perr *PartialSuccessError
			if !errors.As(err, &perr) || perr.RejectedSpans != tt.rejected || perr.Message != tt.msg {
				t.Fatalf("error %v, want a partial success of %d, %q", err, tt.rejected, tt.msg)
			}
			if len(c.received()) != 1 {
				t.Error("a partial success was retried")
			}

			// With a logger it is logged, not returned.
			var logs bytes.Buffer
			le := newExporter(t, map[string]string{envEndpoint: c.srv.URL},
				WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if err := le.ExportSpans(context.Background(), stubSpans()); err != nil {
				t.Fatalf("with a logger: %v", err)
			}
			if !strings.Contains(logs.String(), "rejected_spans=") || !strings.Contains(logs.String(), tt.msg) {
				t.Errorf("log %q", logs.String())
			}
		})
	}
}

func TestShutdown(t *testing.T) {
	release := make(chan struct{})
	var started atomic.Int32
	c := newCollector(t, func(_ http.ResponseWriter, r *http.Request, _ int) {
		started.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	e := newExporter(t, map[string]string{envEndpoint: c.srv.URL})

	// An export in flight: Shutdown waits for it until its ctx is done, then aborts it.
	errc := make(chan error, 1)
	go func() { errc <- e.ExportSpans(context.Background(), stubSpans()) }()
	for started.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := e.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("shutdown: %v, want the deadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("shutdown took %v", d)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrShutdown) {
			t.Errorf("aborted export: %v, want ErrShutdown", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the export in flight was not aborted")
	}

	if err := e.ExportSpans(context.Background(), stubSpans()); !errors.Is(err, ErrShutdown) {
		t.Errorf("export after shutdown: %v", err)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
}

func TestShutdownIdle(t *testing.T) {
	c := newCollector(t, nil)
	e := newExporter(t, map[string]string{envEndpoint: c.srv.URL})
	if err := e.ExportSpans(context.Background(), stubSpans()); err != nil {
		t.Fatal(err)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.ExportSpans(context.Background(), nil); !errors.Is(err, ErrShutdown) {
		t.Errorf("export after shutdown: %v", err)
	}
}

// TestConcurrent exports from several goroutines (run with -race): buffers come from the
// pool and go back only when no request body reads them.
func TestConcurrent(t *testing.T) {
	spans := sdkSpans(t)
	want := encodeSpans(spans)
	c := newCollector(t, func(w http.ResponseWriter, _ *http.Request, n int) {
		if n%3 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable) // some retries
		}
	})
	for _, gz := range []string{"none", "gzip"} {
		e := newExporter(t, map[string]string{envEndpoint: c.srv.URL, envCompression: gz})
		e.minBackoff = time.Millisecond
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 5 {
					if err := e.ExportSpans(context.Background(), spans); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
	}
	for _, r := range c.received() {
		if !bytes.Equal(r.body, want) {
			t.Fatal("a request body differs")
		}
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey := newCA(t)
	clientCert, clientKey := newLeaf(t, caCert, caKey, "fleet-worker")
	writePEM(t, filepath.Join(dir, "client.pem"), "CERTIFICATE", clientCert.Raw)
	keyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "client.key"), "EC PRIVATE KEY", keyDER)

	var peer, protocol atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			peer.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
		}
		protocol.Store(r.Proto)
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.EnableHTTP2 = true
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	t.Cleanup(srv.Close)
	writePEM(t, filepath.Join(dir, "server-ca.pem"), "CERTIFICATE", srv.Certificate().Raw)

	// Without the server's CA: a certificate error, not retried.
	e := newExporter(t, map[string]string{envEndpoint: srv.URL})
	start := time.Now()
	if err := e.ExportSpans(context.Background(), stubSpans()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted server: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a certificate error was retried for %v", d)
	}

	// Trusting the server's CA, with a client certificate (the traces variables win).
	e = newExporter(t, map[string]string{envEndpoint: srv.URL,
		envTracesCA: filepath.Join(dir, "server-ca.pem"), envCA: filepath.Join(dir, "missing.pem"),
		envTracesClientCert: filepath.Join(dir, "client.pem"), envTracesClientKey: filepath.Join(dir, "client.key")})
	if err := e.ExportSpans(context.Background(), stubSpans()); err != nil {
		t.Fatal(err)
	}
	if cn, _ := peer.Load().(string); cn != "fleet-worker" {
		t.Errorf("client certificate %q", cn)
	}
	if p, _ := protocol.Load().(string); p != "HTTP/2.0" {
		t.Errorf("protocol %q: HTTP/2 is negotiated over TLS", p)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		v    string
		want time.Duration
	}{
		{"", 0}, {"3", 3 * time.Second}, {" 2 ", 2 * time.Second}, {"-1", 0}, {"soon", 0},
		{time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.v); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
	if d := retryAfter(time.Now().Add(time.Minute).UTC().Format(http.TimeFormat)); d < 50*time.Second || d > time.Minute {
		t.Errorf("an HTTP date a minute away: %v", d)
	}
}
