package amqp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"denis.io/fleet/internal/broker"
)

var _ broker.QueueLister = (*Management)(nil)

// DefaultManagementPort is the port of RabbitMQ's management plugin (HTTP).
const DefaultManagementPort = 15672

// ErrManagementUnavailable is returned when the management HTTP API cannot be reached
// (plugin not enabled, port closed).
var ErrManagementUnavailable = errors.New("amqp: RabbitMQ management API unavailable")

// Management is a client of RabbitMQ's management HTTP API for one virtual host: what AMQP
// itself cannot do (list queues, read and set policies).
type Management struct {
	base   string // scheme://host:port, no trailing slash
	user   string
	pass   string
	vhost  string
	client *http.Client
}

// NewManagement builds a client for the virtual host of brokerURL. managementURL may be
// empty (http://<broker host>:15672 with the broker URL's credentials; https for amqps);
// credentials in managementURL win over the broker URL's.
func NewManagement(brokerURL, managementURL string) (*Management, error) {
	uri, err := amqp091.ParseURI(brokerURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("amqp: management: parse broker URL: %w", err)
	}
	m := &Management{user: uri.Username, pass: uri.Password, vhost: uri.Vhost,
		client: &http.Client{Timeout: 15 * time.Second}}
	if managementURL == "" {
		scheme := "http"
		if uri.Scheme == "amqps" {
			scheme = "https"
		}
		m.base = scheme + "://" + net.JoinHostPort(uri.Host, strconv.Itoa(DefaultManagementPort))
		return m, nil
	}
	u, err := url.Parse(managementURL)
	if err != nil {
		return nil, errors.New("amqp: management URL: not a URL (want http(s)://host:port)")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("amqp: management URL %q: want http(s)://host:port", u.Redacted())
	}
	if u.User != nil {
		m.user = u.User.Username()
		m.pass, _ = u.User.Password()
	}
	m.base = u.Scheme + "://" + u.Host + strings.TrimRight(u.Path, "/")
	return m, nil
}

// Endpoint is the API's base URL (without credentials), for messages.
func (m *Management) Endpoint() string { return m.base }

// VHost is the virtual host the client works on.
func (m *Management) VHost() string { return m.vhost }

// do sends one request; out (may be nil) receives the JSON answer.
func (m *Management) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("amqp: management %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, m.base+path, body)
	if err != nil {
		return fmt.Errorf("amqp: management %s %s: %w", method, path, err)
	}
	req.SetBasicAuth(m.user, m.pass)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := m.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("amqp: management %s %s: %w", method, path, ctx.Err())
		}
		return fmt.Errorf("%w at %s: %v", ErrManagementUnavailable, m.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("amqp: management %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return &ManagementError{Method: method, Path: path, Status: resp.StatusCode, Body: strings.TrimSpace(string(data))}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("amqp: management %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// ManagementError is a non-2xx answer of the management API.
type ManagementError struct {
	Method, Path string
	Status       int
	Body         string
}

func (e *ManagementError) Error() string {
	body := e.Body
	if len(body) > 300 {
		body = body[:300] + "…"
	}
	return fmt.Sprintf("amqp: management %s %s: HTTP %d: %s", e.Method, e.Path, e.Status, body)
}

func (m *Management) vpath(parts ...string) string {
	var sb strings.Builder
	for _, p := range parts {
		sb.WriteByte('/')
		sb.WriteString(url.PathEscape(p))
	}
	return sb.String()
}

// Ping checks that the API answers with these credentials.
func (m *Management) Ping(ctx context.Context) error {
	var out map[string]any
	return m.do(ctx, http.MethodGet, "/api/whoami", nil, &out)
}

// QueueInfo is what the management API reports about one queue.
type QueueInfo struct {
	Name      string         `json:"name"`
	Messages  int64          `json:"messages"`
	Arguments map[string]any `json:"arguments"`
	// Policy is the name of the policy applied to the queue ("" when none).
	Policy string `json:"policy"`
	// EffectivePolicyDefinition is what the applied policy (and operator policy) set.
	EffectivePolicyDefinition map[string]any `json:"effective_policy_definition"`
}

// Queues lists the queue names of the virtual host, sorted.
func (m *Management) Queues(ctx context.Context) ([]string, error) {
	infos, err := m.QueueInfos(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(infos))
	for i, q := range infos {
		out[i] = q.Name
	}
	return out, nil
}

// QueueInfos lists the queues of the virtual host, sorted by name.
func (m *Management) QueueInfos(ctx context.Context) ([]QueueInfo, error) {
	var out []QueueInfo
	path := "/api/queues" + m.vpath(m.vhost) + "?columns=name,messages,arguments,policy,effective_policy_definition&sort=name"
	if err := m.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Queue reports one queue; a queue that does not exist gives a *ManagementError with
// Status 404.
func (m *Management) Queue(ctx context.Context, name string) (*QueueInfo, error) {
	var out QueueInfo
	if err := m.do(ctx, http.MethodGet, "/api/queues"+m.vpath(m.vhost, name), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Policy is a RabbitMQ policy as the management API represents it.
type Policy struct {
	Name       string         `json:"name,omitempty"`
	VHost      string         `json:"vhost,omitempty"`
	Pattern    string         `json:"pattern"`
	ApplyTo    string         `json:"apply-to"`
	Definition map[string]any `json:"definition"`
	Priority   int            `json:"priority"`
}

// Policies lists the policies of the virtual host.
func (m *Management) Policies(ctx context.Context) ([]Policy, error) {
	var out []Policy
	if err := m.do(ctx, http.MethodGet, "/api/policies"+m.vpath(m.vhost), nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// PutPolicy creates or replaces policy p.Name in the virtual host.
func (m *Management) PutPolicy(ctx context.Context, p Policy) error {
	if p.Name == "" {
		return errors.New("amqp: management: policy without a name")
	}
	body := Policy{Pattern: p.Pattern, ApplyTo: p.ApplyTo, Definition: p.Definition, Priority: p.Priority}
	return m.do(ctx, http.MethodPut, "/api/policies"+m.vpath(m.vhost, p.Name), body, nil)
}

// DeletePolicy removes a policy; removing one that does not exist is not an error.
func (m *Management) DeletePolicy(ctx context.Context, name string) error {
	err := m.do(ctx, http.MethodDelete, "/api/policies"+m.vpath(m.vhost, name), nil, nil)
	var me *ManagementError
	if errors.As(err, &me) && me.Status == http.StatusNotFound {
		return nil
	}
	return err
}
