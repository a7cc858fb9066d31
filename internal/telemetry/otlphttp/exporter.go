// Package otlphttp is the worker's OTLP/HTTP span exporter: it sends SDK spans
// (go.opentelemetry.io/otel/sdk/trace.ReadOnlySpan) as a protobuf
// ExportTraceServiceRequest to an OTLP collector, configured by the standard
// OTEL_EXPORTER_OTLP_* environment variables as the OpenTelemetry OTLP exporter
// specification has it for http/protobuf (endpoint, headers, timeout, gzip compression,
// TLS and client certificates), with retries on throttling and unavailability.
//
// It owns the wire encoding (hand-written with protowire, following opentelemetry-proto
// trace/v1, common/v1, resource/v1 and collector/trace/v1), the HTTP exchange and the
// retry policy. It replaces otlptracehttp, which links grpc and the generated OTLP
// packages into the binary and builds a tree of proto structs for every span; here an
// export appends the request into one reused buffer.
package otlphttp

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	userAgent = "fleet-otlp-exporter/1"

	defaultMinBackoff = 100 * time.Millisecond
	defaultMaxBackoff = 5 * time.Second

	maxResponse  = 4 << 10  // response bytes read for a partial success or an error
	maxDrain     = 64 << 10 // response bytes drained, for connection reuse
	maxErrorBody = 200      // response bytes quoted in an error
	maxKeptBuf   = 8 << 20  // larger buffers are not kept for the next export
	keptStates   = 2        // export scratch spaces kept (the batch processor runs one export at a time)
)

// ErrShutdown is returned by ExportSpans after Shutdown, and is the cause of the
// cancellation of the exports Shutdown aborts.
var ErrShutdown = errors.New("otlphttp: exporter is shut down")

var errTimeout = errors.New("otlphttp: export timeout")

// Option configures an Exporter.
type Option func(*options)

type options struct {
	client *http.Client
	logger *slog.Logger
}

// WithHTTPClient sends the requests with c instead of a client of the exporter's own; the
// certificate variables are then ignored (c's transport has the say on TLS).
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// WithLogger makes the exporter log a partial success (spans the collector rejected) at
// warning level instead of returning it as an error, and log retries at debug level.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Exporter sends spans to an OTLP/HTTP collector. It implements
// go.opentelemetry.io/otel/sdk/trace.SpanExporter and is safe for concurrent use.
type Exporter struct {
	url     string
	header  http.Header
	timeout time.Duration
	gzip    bool
	client  *http.Client
	own     *http.Transport // the transport the exporter made, nil with WithHTTPClient
	log     *slog.Logger

	minBackoff, maxBackoff time.Duration

	// states keeps the scratch space of finished exports for the next ones. Not a
	// sync.Pool: a busy worker collects garbage many times between two exports, and a
	// pool emptied by every collection would make each export grow its buffers anew.
	states chan *state

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup
	stop     context.Context // canceled (cause ErrShutdown) to abort exports in flight
	abort    context.CancelCauseFunc
}

var _ sdktrace.SpanExporter = (*Exporter)(nil)

// New returns an exporter configured from the OTEL_* environment variables read through
// getenv (nil means os.Getenv):
//
//   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, the URL spans are posted to, or else
//     OTEL_EXPORTER_OTLP_ENDPOINT, a base URL /v1/traces is appended to; one is required.
//   - OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: key=value,... with percent-encoded values.
//   - OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT: milliseconds an export may take, retries
//     included; default 10000.
//   - OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION: gzip or none (the default).
//   - OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE: a PEM file of CAs to trust;
//     OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_CERTIFICATE and _CLIENT_KEY: PEM files of a client
//     certificate and its key.
//
// The TRACES_ variable of each pair wins. Invalid values are errors naming the variable.
func New(getenv func(string) string, opts ...Option) (*Exporter, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	cfg, err := readConfig(getenv)
	if err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	e := &Exporter{
		url:        cfg.endpoint,
		header:     cfg.header,
		timeout:    cfg.timeout,
		gzip:       cfg.gzip,
		client:     o.client,
		log:        o.logger,
		minBackoff: defaultMinBackoff,
		maxBackoff: defaultMaxBackoff,
	}
	if e.client == nil {
		if dt, ok := http.DefaultTransport.(*http.Transport); ok {
			e.own = dt.Clone()
		} else {
			e.own = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
		}
		if cfg.tls != nil {
			// Keep what the clone of the default transport has set (ALPN for HTTP/2).
			if tc := e.own.TLSClientConfig; tc != nil {
				tc.RootCAs, tc.Certificates = cfg.tls.RootCAs, cfg.tls.Certificates
				tc.MinVersion = max(tc.MinVersion, cfg.tls.MinVersion)
			} else {
				e.own.TLSClientConfig = cfg.tls
			}
		}
		e.client = &http.Client{Transport: e.own}
	}
	e.stop, e.abort = context.WithCancelCause(context.Background())
	e.states = make(chan *state, keptStates)
	return e, nil
}

// Endpoint is the URL spans are posted to.
func (e *Exporter) Endpoint() string { return e.url }

// ExportSpans sends spans in one request, retrying on 429, 502, 503, 504 and connection
// errors (honouring Retry-After) until the export timeout.
func (e *Exporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if !e.begin() {
		return ErrShutdown
	}
	defer e.inflight.Done()
	if len(spans) == 0 {
		return nil
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(e.stop, func() { cancel(ErrShutdown) })()
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, e.timeout, errTimeout)
	defer cancelTimeout()

	var st *state
	select {
	case st = <-e.states:
	default:
		st = &state{free: e.states}
	}
	st.refs.Store(1)
	defer st.release()

	data := st.enc.encode(spans)
	if len(data) == 0 {
		return nil // nothing but nil spans
	}
	if e.gzip {
		st.zbuf.Reset()
		if st.gz == nil {
			st.gz = gzip.NewWriter(&st.zbuf)
		} else {
			st.gz.Reset(&st.zbuf)
		}
		if _, err := st.gz.Write(data); err != nil {
			return fmt.Errorf("otlphttp: gzip: %w", err)
		}
		if err := st.gz.Close(); err != nil {
			return fmt.Errorf("otlphttp: gzip: %w", err)
		}
		data = st.zbuf.Bytes()
	}
	return e.send(ctx, st, data)
}

func (e *Exporter) begin() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.inflight.Add(1)
	return true
}

// send posts data until it is accepted, a failure is final or time is up.
func (e *Exporter) send(ctx context.Context, st *state, data []byte) error {
	backoff := e.minBackoff
	for attempt := 1; ; attempt++ {
		retry, after, err := e.post(ctx, st, data)
		if err == nil || !retry {
			return err
		}
		// Full backoff with ±50% jitter, or Retry-After when the server asks for longer.
		wait := max(after, backoff/2+rand.N(backoff+1))
		backoff = min(2*backoff, e.maxBackoff)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return fmt.Errorf("%w (attempt %d; giving up: retry in %v would pass the export timeout)", err, attempt, wait.Round(time.Millisecond))
		}
		if e.log != nil {
			e.log.Debug("OTLP export failed, retrying", "attempt", attempt, "in", wait, "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (attempt %d; %w)", err, attempt, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// post makes one request. retry says whether a failure is worth another; after is the
// server's Retry-After.
func (e *Exporter) post(ctx context.Context, st *state, data []byte) (retry bool, after time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, nil)
	if err != nil {
		return false, 0, fmt.Errorf("otlphttp: %w", err)
	}
	req.Header = e.header.Clone()
	req.ContentLength = int64(len(data))
	req.Body = st.body(data)
	req.GetBody = func() (io.ReadCloser, error) { return st.body(data), nil }

	resp, err := e.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return false, 0, fmt.Errorf("otlphttp: POST %s: %w", e.url, context.Cause(ctx))
		}
		return retryable(err), 0, fmt.Errorf("otlphttp: %w", err)
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
		_ = resp.Body.Close()
	}()

	n, _ := io.ReadFull(resp.Body, st.resp[:])
	body := st.resp[:n]
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		rejected, msg, err := partialSuccess(resp.Header.Get("Content-Type"), body)
		if err != nil || (rejected == 0 && msg == "") {
			return false, 0, nil // accepted; an unreadable response changes nothing
		}
		perr := &PartialSuccessError{RejectedSpans: rejected, Message: msg}
		if e.log != nil {
			e.log.Warn("OTLP collector rejected spans", "rejected_spans", rejected, "message", msg)
			return false, 0, nil
		}
		return false, 0, perr
	case code == http.StatusTooManyRequests, code == http.StatusBadGateway,
		code == http.StatusServiceUnavailable, code == http.StatusGatewayTimeout:
		return true, retryAfter(resp.Header.Get("Retry-After")), newHTTPError(e.url, resp, body)
	default:
		return false, 0, newHTTPError(e.url, resp, body)
	}
}

// retryable reports whether a transport error may go away: not a certificate the client
// refuses to trust.
func retryable(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verification     *tls.CertificateVerificationError
		record           tls.RecordHeaderError
	)
	return !errors.As(err, &unknownAuthority) && !errors.As(err, &hostname) &&
		!errors.As(err, &invalid) && !errors.As(err, &verification) && !errors.As(err, &record)
}

// retryAfter parses a Retry-After header: seconds or an HTTP date; 0 when absent or bad.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// HTTPError is a response other than 2xx.
type HTTPError struct {
	URL        string
	StatusCode int
	Status     string
	// Body is the start of the response body (at most 200 bytes).
	Body string
}

func newHTTPError(url string, resp *http.Response, body []byte) *HTTPError {
	body = bytes.TrimSpace(body)
	if len(body) > maxErrorBody {
		body = body[:maxErrorBody]
	}
	return &HTTPError{URL: url, StatusCode: resp.StatusCode, Status: resp.Status,
		Body: strings.ToValidUTF8(string(body), string(utf8.RuneError))}
}

func (e *HTTPError) Error() string {
	status := e.Status
	if status == "" {
		status = strconv.Itoa(e.StatusCode)
	}
	body := e.Body
	if body == "" {
		body = "(empty body)"
	}
	return "otlphttp: POST " + e.URL + ": " + status + ": " + body
}

// PartialSuccessError reports spans the collector accepted the request of but rejected.
type PartialSuccessError struct {
	RejectedSpans int64
	Message       string
}

func (e *PartialSuccessError) Error() string {
	s := "otlphttp: partial success: " + strconv.FormatInt(e.RejectedSpans, 10) + " spans rejected"
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// partialSuccess reads the partial_success of an ExportTraceServiceResponse, protobuf or
// (when the collector answers so) JSON.
func partialSuccess(contentType string, body []byte) (rejected int64, msg string, err error) {
	if len(body) == 0 {
		return 0, "", nil
	}
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == "application/json" {
		return partialSuccessJSON(body)
	}
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			return 0, "", protowire.ParseError(n)
		}
		body = body[n:]
		if num == fRespPartialSuccess && typ == protowire.BytesType {
			ps, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return 0, "", protowire.ParseError(n)
			}
			body = body[n:]
			// Fields of a repeated message merge: the last value of each wins.
			if rejected, msg, err = parsePartial(ps, rejected, msg); err != nil {
				return 0, "", err
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, body)
		if n < 0 {
			return 0, "", protowire.ParseError(n)
		}
		body = body[n:]
	}
	return rejected, msg, nil
}

func parsePartial(b []byte, rejected int64, msg string) (int64, string, error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, "", protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == fPartialRejected && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, "", protowire.ParseError(n)
			}
			rejected, b = int64(v), b[n:]
		case num == fPartialMessage && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, "", protowire.ParseError(n)
			}
			msg, b = string(v), b[n:]
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return 0, "", protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return rejected, msg, nil
}

func partialSuccessJSON(body []byte) (int64, string, error) {
	type partial struct {
		RejectedSpans  json.RawMessage `json:"rejectedSpans"`
		RejectedSpans2 json.RawMessage `json:"rejected_spans"`
		ErrorMessage   string          `json:"errorMessage"`
		ErrorMessage2  string          `json:"error_message"`
	}
	var r struct {
		PartialSuccess  *partial `json:"partialSuccess"`
		PartialSuccess2 *partial `json:"partial_success"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, "", err
	}
	p := r.PartialSuccess
	if p == nil {
		p = r.PartialSuccess2
	}
	if p == nil {
		return 0, "", nil
	}
	raw := p.RejectedSpans
	if raw == nil {
		raw = p.RejectedSpans2
	}
	var rejected int64
	if s := strings.Trim(string(raw), `"`); s != "" && s != "null" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, "", err
		}
		rejected = v
	}
	msg := p.ErrorMessage
	if msg == "" {
		msg = p.ErrorMessage2
	}
	return rejected, msg, nil
}

// Shutdown makes later exports fail with ErrShutdown, waits for the exports in flight
// until ctx is done (then aborts them and returns ctx's error) and closes idle
// connections. Calls after the first return nil.
func (e *Exporter) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()

	done := make(chan struct{})
	go func() {
		e.inflight.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		select {
		case <-done:
		default:
			err = fmt.Errorf("otlphttp: shutdown: %w", ctx.Err())
		}
	}
	e.abort(ErrShutdown)
	if e.own != nil {
		e.own.CloseIdleConnections()
	}
	return err
}

// state is the scratch space of one export: the encoder, the gzip writer and its output,
// kept between exports. The transport may read a request body after Do has
// returned, so the state is kept for reuse only when the export and every body made
// from it are done with it (refs).
type state struct {
	enc  encoder
	zbuf bytes.Buffer
	gz   *gzip.Writer
	resp [maxResponse]byte

	refs atomic.Int32
	free chan *state // the exporter's states
}

func (s *state) release() {
	if s.refs.Add(-1) != 0 {
		return
	}
	if cap(s.enc.buf) > maxKeptBuf {
		s.enc.buf = nil
	}
	if s.zbuf.Cap() > maxKeptBuf {
		s.zbuf = bytes.Buffer{}
	}
	select {
	case s.free <- s:
	default:
	}
}

// body returns a request body reading data that holds a reference to s until closed.
func (s *state) body(data []byte) io.ReadCloser {
	s.refs.Add(1)
	b := &body{st: s}
	b.r.Reset(data)
	return b
}

// body is a request body. Read and Close exclude each other: an HTTP/2 transport may
// close a body from another goroutine while a read is under way, and once closed the
// buffer may be reused.
type body struct {
	mu     sync.Mutex
	r      bytes.Reader
	st     *state
	closed bool
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	return b.r.Read(p)
}

func (b *body) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		b.st.release()
	}
	return nil
}

var errBodyClosed = errors.New("otlphttp: request body read after close")
