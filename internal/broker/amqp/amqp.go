// Package amqp is the RabbitMQ transport of the fleet. It implements broker.Broker over
// supervised AMQP 0-9-1 connections (one for consuming, one for publishing, as Celery
// does): task queues are declared exactly as Celery declares them, deliveries come from
// one consuming channel with manual acks under Celery's channel-global QoS, and every
// publish goes through a confirm-mode channel with the mandatory flag so that nothing is
// lost silently. When a connection or channel drops, the transport reconnects with backoff
// and goes on delivering on the same Go channel.
package amqp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/coalesce"
)

// Options configure a Broker.
type Options struct {
	// URL is an amqp:// or amqps:// URL (credentials percent-encoded).
	URL string
	// QueueArguments are the x-arguments to declare a task queue with, by queue name
	// (e.g. {"tasks": {"x-max-priority": 10}}). A queue without an entry is declared with
	// no arguments, exactly as Celery does by default. Values follow the header rules
	// (ints, floats, json.Number, strings, bools, nested maps and slices).
	QueueArguments map[string]map[string]any
	// Logger receives state changes (connect, loss, reconnect); default slog.Default().
	Logger *slog.Logger
	// ReconnectMin and ReconnectMax bound the exponential reconnect backoff (defaults
	// 100ms and 5s); each wait is jittered between half and all of the current step.
	ReconnectMin, ReconnectMax time.Duration
}

// ErrUnroutable is returned by Publish when RabbitMQ could not route the message: it
// returned it (basic.return of a mandatory publish) or the exchange does not exist.
var ErrUnroutable = errors.New("amqp: message unroutable")

// ErrNacked is returned by Publish when RabbitMQ negatively confirmed the message.
var ErrNacked = errors.New("amqp: message nacked by the broker")

const (
	dialTimeout      = 10 * time.Second
	handshakeTimeout = 30 * time.Second
	maxPrefetch      = 65535 // basic.qos prefetch-count is a short
)

var _ broker.Broker = (*Broker)(nil)

// Broker is a supervised RabbitMQ connection implementing broker.Broker.
type Broker struct {
	opts      Options
	log       *slog.Logger
	queueArgs map[string]amqp091.Table
	addr      string      // host:port/vhost, without credentials, for logs and errors
	dialURL   string      // Options.URL, with amqps rewritten to amqp: TLS is done in dial
	tlsConfig *tls.Config // nil for amqp://

	ctx    context.Context // cancelled when Close starts
	cancel context.CancelFunc
	closed atomic.Bool // set when Close has finished

	supCtx    context.Context // cancelled when the supervisors must drop their connections
	supCancel context.CancelFunc

	// Consuming and publishing use separate connections, as Celery does: RabbitMQ blocks
	// a connection that publishes during a resource alarm, and acks must still flow then.
	// Declarations and Depth go over the consuming connection, which never publishes.
	cons, pub *link

	consumers sync.WaitGroup // running consumer goroutines
	bg        sync.WaitGroup // publisher dispatchers and one-off channel calls

	chanGen atomic.Uint64 // consume channel generations

	fan fanoutPub // Broadcast's channel (fanout.go)

	mu       sync.Mutex
	consumer *consumer // the active Consume, if any
	bgClosed bool      // no more background goroutines may start

	ackOnce   sync.Once
	acks      *coalesce.Coalescer[ackReq] // batched acks (ackbatch.go); nil until the first
	multiAcks atomic.Int64                // basic.ack frames with multiple=true written
}

// link is one supervised connection: its supervisor goroutine owns the connection,
// watches for its loss and replaces it, with backoff, until the broker is closed.
type link struct {
	b    *Broker
	name string // "consume" or "publish", in logs and the connection name

	mu    sync.Mutex
	sess  *session      // the live connection, nil while reconnecting
	ready chan struct{} // closed when a new session is installed
	gen   uint64
	done  chan struct{} // closed when the supervisor has exited
}

// session is one connection generation.
type session struct {
	gen    uint64
	conn   *amqp091.Connection
	closed <-chan *amqp091.Error // the connection's close notification
	done   chan struct{}         // closed once the supervisor has noticed the loss

	pubMu   sync.Mutex
	pub     *pubChan
	opening *pubOpen // the publish channel being opened, if any

	declMu   sync.Mutex
	declared map[string]bool // dead-letter queues declared on this connection
}

func (b *Broker) newLink(name string) *link {
	return &link{b: b, name: name, ready: make(chan struct{}), done: make(chan struct{})}
}

// New connects to RabbitMQ and starts the supervisor that keeps the connection alive.
func New(ctx context.Context, o Options) (*Broker, error) {
	uri, err := amqp091.ParseURI(o.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, password included
		}
		return nil, fmt.Errorf("amqp: parse URL: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = 100 * time.Millisecond
	}
	if o.ReconnectMax <= 0 {
		o.ReconnectMax = 5 * time.Second
	}
	if o.ReconnectMax < o.ReconnectMin {
		o.ReconnectMax = o.ReconnectMin
	}
	args := make(map[string]amqp091.Table, len(o.QueueArguments))
	for q, a := range o.QueueArguments {
		t, err := toTable(a)
		if err != nil {
			return nil, fmt.Errorf("amqp: arguments of queue %q: %w", q, err)
		}
		args[q] = t
	}

	dialURL, tlsCfg, err := dialTarget(o.URL, uri)
	if err != nil {
		return nil, fmt.Errorf("amqp: TLS settings of the URL: %w", err)
	}

	b := &Broker{
		dialURL:   dialURL,
		tlsConfig: tlsCfg,
		opts:      o,
		log:       o.Logger,
		queueArgs: args,
		addr:      net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)) + "/" + url.PathEscape(uri.Vhost),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.supCtx, b.supCancel = context.WithCancel(context.Background())
	b.cons, b.pub = b.newLink("consume"), b.newLink("publish")

	cs, err := b.cons.dial(ctx)
	if err != nil {
		b.cancel()
		b.supCancel()
		return nil, fmt.Errorf("amqp: connect to %s: %w", b.addr, err)
	}
	ps, err := b.pub.dial(ctx)
	if err != nil {
		_ = cs.conn.Close()
		b.cancel()
		b.supCancel()
		return nil, fmt.Errorf("amqp: connect to %s: %w", b.addr, err)
	}
	for _, ls := range []struct {
		l *link
		s *session
	}{{b.cons, cs}, {b.pub, ps}} {
		l, s := ls.l, ls.s
		l.install(s)
		b.log.Info("amqp: connected", "addr", b.addr, "conn", l.name, "conn_gen", s.gen)
		go l.supervise(s)
	}
	return b, nil
}

// dial opens one connection; the TCP connect and the AMQP handshake are bounded by ctx.
func (l *link) dial(ctx context.Context) (*session, error) {
	b := l.b
	var (
		mu      sync.Mutex
		stopCtx func() bool
	)
	cfg := amqp091.Config{
		Properties: amqp091.NewConnectionProperties(),
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			deadline := time.Now().Add(handshakeTimeout)
			if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
				deadline = dl
			}
			// The library clears the deadline once the AMQP handshake is complete.
			if err := conn.SetDeadline(deadline); err != nil {
				conn.Close()
				return nil, err
			}
			mu.Lock()
			stopCtx = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
			mu.Unlock()
			if b.tlsConfig != nil {
				tc := tls.Client(conn, b.tlsConfig)
				if err := tc.HandshakeContext(ctx); err != nil {
					conn.Close()
					return nil, fmt.Errorf("TLS handshake: %w", err)
				}
				conn = tc
			}
			return newFieldFixConn(conn), nil
		},
	}
	cfg.Properties.SetClientConnectionName("fleet " + l.name)
	conn, err := amqp091.DialConfig(b.dialURL, cfg)
	mu.Lock()
	interrupted := stopCtx != nil && !stopCtx()
	mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, err
	}
	if interrupted {
		// ctx ended after the handshake: the socket may carry an expired deadline.
		_ = conn.Close()
		return nil, ctx.Err()
	}
	s := &session{
		conn:     conn,
		closed:   conn.NotifyClose(make(chan *amqp091.Error, 1)),
		done:     make(chan struct{}),
		declared: make(map[string]bool),
	}
	blocked := conn.NotifyBlocked(make(chan amqp091.Blocking, 4))
	go func() {
		for bl := range blocked {
			if bl.Active {
				b.log.Warn("amqp: connection blocked by the broker", "addr", b.addr, "conn", l.name, "reason", bl.Reason)
			} else {
				b.log.Info("amqp: connection unblocked", "addr", b.addr, "conn", l.name)
			}
		}
	}()
	return s, nil
}

// dialTarget returns the URL to hand to amqp091-go and, for amqps://, the TLS settings.
// TLS is done by our dialer rather than the library so that fieldFixConn can sit above it:
// the library would wrap TLS around whatever the dialer returns. The URL keeps every
// other parameter (heartbeat, auth_mechanism, …); the amqps default port stays explicit.
func dialTarget(raw string, uri amqp091.URI) (string, *tls.Config, error) {
	if uri.Scheme != "amqps" {
		return raw, nil, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", nil, errors.New("invalid URL")
	}
	u.Scheme = "amqp"
	u.Host = net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: uri.ServerName}
	if cfg.ServerName == "" {
		cfg.ServerName = uri.Host
	}
	if uri.CACertFile != "" {
		pem, err := os.ReadFile(uri.CACertFile)
		if err != nil {
			return "", nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return "", nil, fmt.Errorf("no certificate in %s", uri.CACertFile)
		}
		cfg.RootCAs = pool
	}
	if uri.CertFile != "" || uri.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(uri.CertFile, uri.KeyFile)
		if err != nil {
			return "", nil, fmt.Errorf("load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return u.String(), cfg, nil
}

// install makes s the live session and wakes everyone waiting for a connection.
func (l *link) install(s *session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	s.gen = l.gen
	l.sess = s
	close(l.ready)
	l.ready = make(chan struct{})
}

// drop forgets s after its connection is gone.
func (l *link) drop(s *session) {
	l.mu.Lock()
	if l.sess == s {
		l.sess = nil
	}
	l.mu.Unlock()
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// current is the live session, or nil.
func (l *link) current() *session {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sess
}

// supervise owns the link's connection: it watches for its loss and reconnects with
// backoff until the broker is closed.
func (l *link) supervise(s *session) {
	b := l.b
	defer close(l.done)
	for {
		select {
		case <-b.supCtx.Done():
			l.drop(s)
			if err := s.conn.Close(); err != nil && !errors.Is(err, amqp091.ErrClosed) {
				b.log.Warn("amqp: close connection", "addr", b.addr, "conn", l.name, "err", err)
			}
			return
		case err := <-s.closed:
			l.drop(s)
			b.log.Warn("amqp: connection lost", "addr", b.addr, "conn", l.name, "conn_gen", s.gen, "err", errString(err))
		}
		if s = l.reconnect(); s == nil {
			return
		}
	}
}

// reconnect dials until it succeeds or the supervisor is stopped.
func (l *link) reconnect() *session {
	b := l.b
	for attempt := 0; ; attempt++ {
		if !sleep(b.supCtx, b.backoff(attempt)) {
			return nil
		}
		s, err := l.dial(b.supCtx)
		if err != nil {
			if b.supCtx.Err() != nil {
				return nil
			}
			b.log.Warn("amqp: reconnect failed", "addr", b.addr, "conn", l.name, "attempt", attempt+1, "err", err)
			continue
		}
		l.install(s)
		b.log.Info("amqp: reconnected", "addr", b.addr, "conn", l.name, "conn_gen", s.gen, "attempts", attempt+1)
		return s
	}
}

// backoff is the jittered wait before retry number attempt (0-based).
func (b *Broker) backoff(attempt int) time.Duration {
	d := b.opts.ReconnectMax
	if attempt < 30 {
		if step := b.opts.ReconnectMin << attempt; step > 0 && step < d {
			d = step
		}
	}
	half := d / 2
	return half + rand.N(half+1)
}

// wait returns the live session, waiting (ctx-bounded) while reconnecting.
func (l *link) wait(ctx context.Context) (*session, error) {
	b := l.b
	for {
		if b.ctx.Err() != nil {
			return nil, broker.ErrClosed
		}
		l.mu.Lock()
		s, ready := l.sess, l.ready
		l.mu.Unlock()
		wait := ready
		if s != nil {
			if !s.conn.IsClosed() {
				return s, nil
			}
			wait = s.done
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the %s connection to %s: %w", l.name, b.addr, ctx.Err())
		case <-b.ctx.Done():
			return nil, broker.ErrClosed
		}
	}
}

// callChannel runs fn on a short-lived channel of s, bounded by ctx. If ctx ends first the
// call finishes in the background and its channel is closed.
func callChannel[T any](ctx context.Context, b *Broker, s *session, fn func(*amqp091.Channel) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	res := make(chan result, 1)
	started := b.goBG(func() {
		ch, err := s.conn.Channel()
		if err != nil {
			var zero T
			res <- result{zero, fmt.Errorf("open channel: %w", err)}
			return
		}
		v, err := fn(ch)
		if !ch.IsClosed() {
			_ = ch.Close()
		}
		res <- result{v, err}
	})
	if !started {
		var zero T
		return zero, broker.ErrClosed
	}
	select {
	case r := <-res:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// Depth returns the number of ready messages in queue (a passive declare on a
// short-lived channel). It fails if the queue does not exist, with an error that
// matches broker.ErrQueueNotFound.
func (b *Broker) Depth(ctx context.Context, queue string) (int64, error) {
	s, err := b.cons.wait(ctx)
	if err != nil {
		return 0, fmt.Errorf("amqp: depth of %q: %w", queue, err)
	}
	n, err := callChannel(ctx, b, s, func(ch *amqp091.Channel) (int64, error) {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return int64(q.Messages), err
	})
	if isNotFound(err) {
		return 0, fmt.Errorf("amqp: depth of %q: %w: %w", queue, broker.ErrQueueNotFound, err)
	}
	if err != nil {
		return 0, fmt.Errorf("amqp: depth of %q: %w", queue, err)
	}
	return n, nil
}

// Close stops consuming (in-flight unsettled deliveries go back to their queues when their
// channel closes), fails pending publishes with broker.ErrClosed and closes the connection.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.ctx.Err() != nil {
		b.mu.Unlock()
		b.consumers.Wait()
		<-b.cons.done
		<-b.pub.done
		b.bg.Wait()
		return nil
	}
	b.cancel()
	b.mu.Unlock()

	b.consumers.Wait() // consumers cancel and hand back what they hold
	b.supCancel()
	<-b.cons.done // the connections are closed, and every channel with them
	<-b.pub.done
	b.mu.Lock()
	b.bgClosed = true
	b.mu.Unlock()
	b.bg.Wait()
	b.closed.Store(true)
	b.closeAcks()
	b.log.Info("amqp: closed", "addr", b.addr)
	return nil
}

// goBG runs fn in a goroutine that Close waits for; it reports false (and does not run
// fn) once Close has stopped accepting them.
func (b *Broker) goBG(fn func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bgClosed {
		return false
	}
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		fn()
	}()
	return true
}

// sleep waits d or until ctx ends; it reports whether the full wait elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func errString(err *amqp091.Error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}
