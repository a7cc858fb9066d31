package result

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/protocol"
)

// KeyPrefix is the prefix of Celery's task result keys; the PUBLISH channel has the same name
// as the key.
const KeyPrefix = "celery-task-meta-"

// maxValueSize is the largest document Celery's Redis backend stores (its
// _MAX_STR_VALUE_SIZE, Redis' own string limit).
const maxValueSize = 512 * 1024 * 1024

// Key returns the Redis key (and pub/sub channel) of taskID's result.
func Key(taskID string) string { return KeyPrefix + taskID }

// RedisBackend is Celery's Redis result backend (celery/backends/redis.py), worker side.
type RedisBackend struct {
	client  *redis.Client
	expires time.Duration // <= 0: no TTL
	log     *slog.Logger
	now     func() time.Time
}

// OpenRedis connects to the Redis server of a redis:// or rediss:// URL (DB number and
// password from the URL, Celery's ssl_* and socket_* query parameters understood, other
// query parameters as go-redis' ParseURL takes them) and checks it with a PING.
func OpenRedis(ctx context.Context, rawURL string, o Options) (*RedisBackend, error) {
	o = o.withDefaults()
	opts, err := redisOptions(rawURL)
	if err != nil {
		return nil, fmt.Errorf("result: redis backend %s: %w", redactURL(rawURL), err)
	}
	client := redis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("result: redis backend %s: ping: %w", redactURL(rawURL), err)
	}
	return &RedisBackend{client: client, expires: o.Expires, log: o.Logger, now: time.Now}, nil
}

// Store writes r the way Celery's worker does (celery/backends/base.py _store_result):
// GET the key and leave it alone if it already holds SUCCESS (a duplicate delivery must not
// overwrite a success), then in one MULTI/EXEC: SETEX key <expires> <json> (SET without TTL
// when expiry is disabled) and PUBLISH key <json>, which is what a waiting
// AsyncResult.get() listens for.
func (b *RedisBackend) Store(ctx context.Context, r Record) error {
	if r.TaskID == "" {
		return errors.New("result: redis: store: empty task id")
	}
	key := Key(r.TaskID)

	cur, err := b.client.Get(ctx, key).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil:
		return fmt.Errorf("result: redis: get %s: %w", key, err)
	default:
		status, perr := statusOf(cur)
		if perr != nil {
			b.log.WarnContext(ctx, "result: overwriting an undecodable result", "key", key, "err", perr)
		} else if status == protocol.StateSuccess {
			b.log.DebugContext(ctx, "result: already SUCCESS, not overwriting",
				"task_id", r.TaskID, "status", r.Status)
			return nil
		}
	}

	body, err := r.Meta(b.now()).Encode()
	if err != nil {
		return fmt.Errorf("result: redis: store %s: %w", r.TaskID, err)
	}
	if len(body) > maxValueSize {
		return fmt.Errorf("result: redis: store %s: result of %d bytes is larger than Redis allows", r.TaskID, len(body))
	}

	_, err = b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if b.expires > 0 {
			p.SetEx(ctx, key, body, ttlSeconds(b.expires))
		} else {
			p.Set(ctx, key, body, 0)
		}
		p.Publish(ctx, key, body)
		return nil
	})
	if err != nil {
		return fmt.Errorf("result: redis: store %s (%s): %w", r.TaskID, r.Status, err)
	}
	return nil
}

// Get returns the stored result document of taskID, decoded with protocol.ParseJSON (numbers
// as json.Number, NaN/Infinity as float64), or nil with a nil error when there is none (the
// task is PENDING as far as Python can tell).
func (b *RedisBackend) Get(ctx context.Context, taskID string) (map[string]any, error) {
	key := Key(taskID)
	raw, err := b.client.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("result: redis: get %s: %w", key, err)
	}
	v, err := protocol.ParseJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("result: redis: decode %s: %w", key, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("result: redis: decode %s: not an object but %T", key, v)
	}
	return m, nil
}

// Close closes the connection pool.
func (b *RedisBackend) Close() error {
	if err := b.client.Close(); err != nil {
		return fmt.Errorf("result: redis: close: %w", err)
	}
	return nil
}

// statusOf extracts the status of a stored result document.
func statusOf(doc []byte) (string, error) {
	v, err := protocol.ParseJSON(doc)
	if err != nil {
		return "", err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return "", fmt.Errorf("result document is %T, not an object", v)
	}
	s, _ := m["status"].(string)
	return s, nil
}

// ttlSeconds rounds d up to whole seconds (SETEX takes seconds; at least 1).
func ttlSeconds(d time.Duration) time.Duration {
	s := (d + time.Second - 1) / time.Second
	return max(s, 1) * time.Second
}

// redisOptions parses a Celery Redis backend URL into go-redis options. Celery/redis-py query
// parameters are translated (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile,
// socket_timeout, socket_connect_timeout, max_connections) or dropped when they have no
// go-redis counterpart (health_check_interval, retry_on_timeout, socket_keepalive); everything
// else goes to go-redis' ParseURL.
func redisOptions(rawURL string) (*redis.Options, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse URL: %w", err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	q := u.Query()
	take := func(name string) (string, bool) {
		v, ok := q[name]
		if !ok {
			return "", false
		}
		q.Del(name)
		if len(v) == 0 {
			return "", true
		}
		return v[len(v)-1], true
	}

	certReqs, hasCertReqs := take("ssl_cert_reqs")
	caCerts, _ := take("ssl_ca_certs")
	certFile, _ := take("ssl_certfile")
	keyFile, _ := take("ssl_keyfile")
	socketTimeout, hasSocketTimeout := take("socket_timeout")
	connectTimeout, hasConnectTimeout := take("socket_connect_timeout")
	maxConns, hasMaxConns := take("max_connections")
	for _, ignored := range []string{"health_check_interval", "retry_on_timeout", "socket_keepalive"} {
		take(ignored)
	}
	u.RawQuery = q.Encode()

	opts, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, err
	}

	if hasSocketTimeout {
		d, err := seconds(socketTimeout)
		if err != nil {
			return nil, fmt.Errorf("socket_timeout: %w", err)
		}
		opts.ReadTimeout, opts.WriteTimeout = d, d
	}
	if hasConnectTimeout {
		d, err := seconds(connectTimeout)
		if err != nil {
			return nil, fmt.Errorf("socket_connect_timeout: %w", err)
		}
		opts.DialTimeout = d
	}
	if hasMaxConns {
		n, err := strconv.Atoi(maxConns)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("max_connections: invalid value %q", maxConns)
		}
		opts.PoolSize = n
	}

	if u.Scheme != "rediss" {
		if hasCertReqs || caCerts != "" || certFile != "" || keyFile != "" {
			return nil, errors.New("ssl_* parameters need a rediss:// URL")
		}
		return opts, nil
	}
	switch strings.ToLower(strings.TrimPrefix(strings.ToUpper(certReqs), "CERT_")) {
	case "", "required", "optional":
		// A client verifies the server's certificate under CERT_OPTIONAL too.
	case "none":
		opts.TLSConfig.InsecureSkipVerify = true
	default:
		return nil, fmt.Errorf("ssl_cert_reqs: invalid value %q (want required, optional or none)", certReqs)
	}
	if caCerts != "" {
		pem, err := os.ReadFile(caCerts)
		if err != nil {
			return nil, fmt.Errorf("ssl_ca_certs: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ssl_ca_certs: no certificate found in %s", caCerts)
		}
		opts.TLSConfig.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		if keyFile == "" {
			keyFile = certFile // redis-py: the key may be in the certificate file
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("ssl_certfile/ssl_keyfile: %w", err)
		}
		opts.TLSConfig.Certificates = []tls.Certificate{cert}
	}
	return opts, nil
}

// seconds parses a redis-py timeout in (possibly fractional) seconds.
func seconds(s string) (time.Duration, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("invalid number of seconds %q", s)
	}
	return time.Duration(f * float64(time.Second)), nil
}
