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

	"denis.io/fleet/internal/broker/coalesce"
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
// Concurrent Store calls share round trips (see Store).
type RedisBackend struct {
	client  *redis.Client
	expires time.Duration // <= 0: no TTL
	log     *slog.Logger
	now     func() time.Time
	writes  *coalesce.Coalescer[storeReq]
}

// storeBatch bounds the results written together, storeParallel the batches in flight
// at once; storeTimeout bounds a batch's round trips.
const (
	storeBatch    = 256
	storeParallel = 2
	storeTimeout  = 10 * time.Second
)

// OpenRedis connects to the Redis server of a redis:// or rediss:// URL (DB number and
// password from the URL, Celery's ssl_* and socket_* query parameters understood, other
// query parameters as go-redis' ParseURL takes them) and checks it with a PING.
func OpenRedis(ctx context.Context, rawURL string, o Options) (*RedisBackend, error) {
	o = o.withDefaults()
	opts, err := redisOptions(rawURL)
	if err != nil {
		return nil, fmt.Errorf("result: redis backend %s: %w", redactURL(rawURL), err)
	}
	// go-redis gives each connection 32 KiB read and write buffers, and each connection of
	// its pipeline pool 128 KiB ones: several MiB for a busy worker, whose result writes
	// (a few hundred bytes each, batched) need far less.
	opts.ReadBufferSize, opts.WriteBufferSize = 16<<10, 16<<10
	opts.PipelineReadBufferSize, opts.PipelineWriteBufferSize = 32<<10, 32<<10
	client := redis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("result: redis backend %s: ping: %w", redactURL(rawURL), err)
	}
	b := &RedisBackend{client: client, expires: o.Expires, log: o.Logger, now: time.Now}
	b.writes = coalesce.NewParallel(b.flushStores, storeBatch, storeParallel, storeTimeout)
	return b, nil
}

// storeScript is Celery's _store_result for keys that exist already, each in one atomic
// step: a stored SUCCESS is never overwritten (a duplicate delivery must not replace
// it), but published again, so that a client that missed the first publication (the
// write of it failed half-way and is being retried) still gets it; otherwise the
// document is written, with its TTL, and published on the channel of the key's name,
// which is what a waiting AsyncResult.get() listens for. One call handles a whole batch.
//
//	KEYS[i] celery-task-meta-<id>; ARGV[1] TTL in seconds (0: none), ARGV[i+1] the
//	document of KEYS[i]
//
// Returns one code per key: 1 written, 0 a SUCCESS was kept, 2 an undecodable document
// was overwritten. The stored status is read from the document's first key when that is
// `status` (as Celery and this package write it), else by decoding the whole document.
var storeScript = redis.NewScript(`
local ttl = ARGV[1]
local out = {}
local curs = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  local key, doc = KEYS[i], ARGV[i + 1]
  local cur = curs[i]
  local ret = 1
  local status = nil
  if cur then
    status = string.match(cur, '^{"status": ?"([^"\\]*)"')
    if not status then
      local ok, old = pcall(cjson.decode, cur)
      if ok and type(old) == 'table' then
        status = old.status
      else
        ret = 2
      end
    end
  end
  if status == 'SUCCESS' then
    redis.call('PUBLISH', key, cur)
    out[i] = 0
  else
    if ttl ~= '0' then
      redis.call('SETEX', key, ttl, doc)
    else
      redis.call('SET', key, doc)
    end
    redis.call('PUBLISH', key, doc)
    out[i] = ret
  end
end
return out
`)

// storeReq is one document to store.
type storeReq struct {
	id, status string
	key        string
	body       []byte
}

// Store writes r the way Celery's worker does (celery/backends/base.py _store_result):
// unless the key already holds SUCCESS (a duplicate delivery must not overwrite a
// success), SETEX key <expires> <json> (SET without TTL when expiry is disabled) and
// PUBLISH key <json>. Calls made while another write is in flight are written together
// (flushStores); each returns once its own document is stored and published.
func (b *RedisBackend) Store(ctx context.Context, r Record) error {
	if r.TaskID == "" {
		return errors.New("result: redis: store: empty task id")
	}
	body, err := r.Meta(b.now()).Encode()
	if err != nil {
		return fmt.Errorf("result: redis: store %s: %w", r.TaskID, err)
	}
	if len(body) > maxValueSize {
		return fmt.Errorf("result: redis: store %s: result of %d bytes is larger than Redis allows", r.TaskID, len(body))
	}
	err = b.writes.Do(ctx, storeReq{id: r.TaskID, status: r.Status, key: Key(r.TaskID), body: body})
	if errors.Is(err, coalesce.ErrClosed) {
		err = redis.ErrClosed
	}
	if err != nil {
		return fmt.Errorf("result: redis: store %s (%s): %w", r.TaskID, r.Status, err)
	}
	return nil
}

// flushStores writes a batch in two round trips: SET … NX (with the TTL) of every
// document, which stores those whose key does not exist yet, the usual case, without
// reading anything; then PUBLISH of each one stored, together with one storeScript call
// for the keys that existed (the SUCCESS rule is applied there, atomically).
func (b *RedisBackend) flushStores(ctx context.Context, reqs []storeReq) []error {
	errs := make([]error, len(reqs))
	var ttl time.Duration
	if b.expires > 0 {
		ttl = ttlSeconds(b.expires)
	}
	sets := make([]*redis.BoolCmd, len(reqs))
	_, _ = b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range reqs {
			sets[i] = p.SetNX(ctx, r.key, r.body, ttl)
		}
		return nil
	})
	var stored, existed []int
	for i, c := range sets {
		switch ok, err := c.Result(); {
		case err != nil:
			errs[i] = err
		case ok:
			stored = append(stored, i)
		default:
			existed = append(existed, i)
		}
	}
	if len(stored)+len(existed) == 0 {
		return errs
	}
	var keys []string
	var args []any
	if len(existed) > 0 {
		keys = make([]string, len(existed))
		args = make([]any, 0, len(existed)+1)
		args = append(args, strconv.FormatInt(int64(ttl/time.Second), 10))
		for k, i := range existed {
			keys[k] = reqs[i].key
			args = append(args, reqs[i].body)
		}
	}
	pubs := make([]*redis.IntCmd, len(stored))
	var script *redis.Cmd
	_, _ = b.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for k, i := range stored {
			pubs[k] = p.Publish(ctx, reqs[i].key, reqs[i].body)
		}
		if len(existed) > 0 {
			script = storeScript.EvalSha(ctx, p, keys, args...)
		}
		return nil
	})
	for k, i := range stored {
		// Stored but not published: the retry finds the key and its script publishes.
		errs[i] = pubs[k].Err()
	}
	if script == nil {
		return errs
	}
	codes, err := script.Int64Slice()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		codes, err = storeScript.Run(ctx, b.client, keys, args...).Int64Slice()
	}
	if err == nil && len(codes) != len(existed) {
		err = fmt.Errorf("store script returned %d codes for %d writes", len(codes), len(existed))
	}
	for k, i := range existed {
		if err != nil {
			errs[i] = err
			continue
		}
		r := reqs[i]
		switch codes[k] {
		case 0:
			b.log.Debug("result: already SUCCESS, not overwriting", "task_id", r.id, "status", r.status)
		case 2:
			b.log.Warn("result: overwrote an undecodable result", "key", r.key)
		}
	}
	return errs
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

// Close waits for the writes in flight and closes the connection pool.
func (b *RedisBackend) Close() error {
	b.writes.Close()
	if err := b.client.Close(); err != nil {
		return fmt.Errorf("result: redis: close: %w", err)
	}
	return nil
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
