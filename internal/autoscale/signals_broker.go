package autoscale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
)

// ---- Redis (kombu's transport) ----

// QueueInspector reads a queue's ready count (internal/broker/redis and amqp implement it).
type QueueInspector interface {
	QueueStats(ctx context.Context, queue string) (broker.QueueStats, error)
}

// RedisProbe reads a kombu Redis queue: the ready messages over every priority sub-list
// (through the broker's QueueStats) and the queue's in-flight messages, counted from kombu's
// global `unacked` hash, whose values are [envelope, exchange, routing_key]: a lease counts
// for the queue its routing key names. (A bare LLEN misses both the lower-priority sub-lists
// and every prefetched or running task; autoscaling.md §2.5.)
type RedisProbe struct {
	Stats QueueInspector
	// Client is a client of the broker's Redis database; UnackedKey defaults to "unacked"
	// (kombu's unacked_key with the global key prefix).
	Client     goredis.UniversalClient
	UnackedKey string
	Now        func() time.Time

	mu      sync.Mutex
	byQueue map[string]int
	at      time.Time
}

// Probe implements QueueProbe.
func (p *RedisProbe) Probe(ctx context.Context, queue string) (QueueSample, error) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	at := now()
	st, err := p.Stats.QueueStats(ctx, queue)
	if err != nil {
		return QueueSample{}, fmt.Errorf("ready count of %s: %w", queue, err)
	}
	in, err := p.inFlight(ctx, queue, at)
	if err != nil {
		return QueueSample{}, err
	}
	return QueueSample{At: at, Ready: int(st.Ready), InFlight: in}, nil
}

// inFlight counts the leases per routing key once per second at most (one scan serves
// every queue of a reconcile).
func (p *RedisProbe) inFlight(ctx context.Context, queue string, at time.Time) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byQueue != nil && at.Sub(p.at) < time.Second && !at.Before(p.at) {
		return p.byQueue[queue], nil
	}
	key := p.UnackedKey
	if key == "" {
		key = "unacked"
	}
	counts := map[string]int{}
	var cursor uint64
	for {
		kv, next, err := p.Client.HScan(ctx, key, cursor, "", 1000).Result()
		if err != nil {
			return 0, fmt.Errorf("scan %s: %w", key, err)
		}
		for i := 1; i < len(kv); i += 2 {
			var rec []json.RawMessage
			if json.Unmarshal([]byte(kv[i]), &rec) != nil || len(rec) < 3 {
				continue
			}
			var rk string
			if json.Unmarshal(rec[2], &rk) == nil {
				counts[rk]++
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	p.byQueue, p.at = counts, at
	return counts[queue], nil
}

// ---- RabbitMQ ----

// RabbitProbe reads a RabbitMQ queue through the management HTTP API (messages_ready,
// messages_unacknowledged and the publish rate; KEDA's AMQP mode sees only the ready count,
// autoscaling.md §2.4), and falls back to a passive declare over AMQP (ready only; in-flight
// then comes from the workers' heartbeats) while the API cannot be reached.
type RabbitProbe struct {
	// Management is the API client; nil uses AMQP only.
	Management *ManagementClient
	// AMQP is the fallback (the amqp broker's QueueStats); nil: none.
	AMQP QueueInspector
	Now  func() time.Time

	mu       sync.Mutex
	degraded bool
	onChange func(degraded bool, err error)
}

// OnDegraded sets a callback for switches between the management API and the AMQP
// fallback (for a log line).
func (p *RabbitProbe) OnDegraded(fn func(degraded bool, err error)) { p.onChange = fn }

// Probe implements QueueProbe.
func (p *RabbitProbe) Probe(ctx context.Context, queue string) (QueueSample, error) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	var mErr error
	if p.Management != nil {
		q, err := p.Management.Queue(ctx, queue)
		if err == nil {
			p.setDegraded(false, nil)
			return QueueSample{At: now(), Ready: q.Ready, InFlight: q.Unacked, PublishRate: q.PublishRate, RateKnown: true}, nil
		}
		var nf *notFoundError
		if errors.As(err, &nf) {
			// The queue is not declared yet: nothing waits in it.
			return QueueSample{At: now(), RateKnown: true}, nil
		}
		mErr = err
	}
	if p.AMQP == nil {
		return QueueSample{}, mErr
	}
	st, err := p.AMQP.QueueStats(ctx, queue)
	if err != nil {
		return QueueSample{}, errors.Join(mErr, err)
	}
	if mErr != nil {
		p.setDegraded(true, mErr)
	}
	return QueueSample{At: now(), Ready: int(st.Ready), InFlight: -1}, nil
}

func (p *RabbitProbe) setDegraded(d bool, err error) {
	p.mu.Lock()
	changed := p.degraded != d
	p.degraded = d
	fn := p.onChange
	p.mu.Unlock()
	if changed && fn != nil {
		fn(d, err)
	}
}

// ManagementClient is a minimal client of RabbitMQ's management API: one queue's counters.
type ManagementClient struct {
	base, user, pass, vhost string
	client                  *http.Client
}

// ManagementQueue is what the autoscaler reads of a queue.
type ManagementQueue struct {
	Ready       int
	Unacked     int
	PublishRate float64
}

type notFoundError struct{ queue string }

func (e *notFoundError) Error() string { return "queue " + e.queue + " not found" }

// NewManagementClient builds a client for the virtual host of brokerURL; managementURL may
// be empty (http://<broker host>:15672 with the broker URL's credentials, https for amqps).
func NewManagementClient(brokerURL, managementURL string) (*ManagementClient, error) {
	raw := brokerURL
	if strings.HasPrefix(raw, "pyamqp://") {
		raw = "amqp://" + strings.TrimPrefix(raw, "pyamqp://")
	}
	uri, err := amqp091.ParseURI(raw)
	if err != nil {
		return nil, fmt.Errorf("management API: parse broker URL: %w", err)
	}
	m := &ManagementClient{user: uri.Username, pass: uri.Password, vhost: uri.Vhost,
		client: &http.Client{Timeout: 10 * time.Second}}
	if managementURL == "" {
		scheme := "http"
		if uri.Scheme == "amqps" {
			scheme = "https"
		}
		m.base = scheme + "://" + net.JoinHostPort(uri.Host, "15672")
		return m, nil
	}
	u, err := url.Parse(managementURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("management API URL: want http(s)://host:port")
	}
	if u.User != nil {
		m.user = u.User.Username()
		m.pass, _ = u.User.Password()
	}
	m.base = u.Scheme + "://" + u.Host + strings.TrimRight(u.Path, "/")
	return m, nil
}

// Queue reads one queue's counters.
func (m *ManagementClient) Queue(ctx context.Context, name string) (ManagementQueue, error) {
	path := "/api/queues/" + url.PathEscape(m.vhost) + "/" + url.PathEscape(name) +
		"?columns=messages_ready,messages_unacknowledged,message_stats.publish_details.rate"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+path, nil)
	if err != nil {
		return ManagementQueue{}, fmt.Errorf("management API: %w", err)
	}
	req.SetBasicAuth(m.user, m.pass)
	resp, err := m.client.Do(req)
	if err != nil {
		return ManagementQueue{}, fmt.Errorf("management API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return ManagementQueue{}, fmt.Errorf("management API: read %s: %w", name, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return ManagementQueue{}, &notFoundError{queue: name}
	case resp.StatusCode != http.StatusOK:
		return ManagementQueue{}, fmt.Errorf("management API: GET queue %s: %s", name, resp.Status)
	}
	var out struct {
		Ready        *int `json:"messages_ready"`
		Unacked      *int `json:"messages_unacknowledged"`
		MessageStats struct {
			PublishDetails struct {
				Rate float64 `json:"rate"`
			} `json:"publish_details"`
		} `json:"message_stats"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return ManagementQueue{}, fmt.Errorf("management API: queue %s: %w", name, err)
	}
	if out.Ready == nil || out.Unacked == nil {
		// A queue the broker has just declared reports no counters until its first
		// statistics emission.
		return ManagementQueue{}, fmt.Errorf("management API: queue %s: no message counts yet", name)
	}
	return ManagementQueue{Ready: *out.Ready, Unacked: *out.Unacked, PublishRate: out.MessageStats.PublishDetails.Rate}, nil
}

// Endpoint is the API's base URL, for messages.
func (m *ManagementClient) Endpoint() string { return m.base }
