package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults of HTTPConfig.
const (
	DefaultHTTPTimeout     = 30 * time.Second
	DefaultHTTPMaxAttempts = 4
	DefaultHTTPBackoff     = 500 * time.Millisecond
	DefaultHTTPMaxBackoff  = 30 * time.Second
	DefaultHTTPMaxResponse = 1 << 20
)

// HTTPRunner POSTs each job's payload as JSON to the configured URL and returns the JSON
// response. Connection errors, 408, 429 and 5xx are retried with backoff (honouring
// Retry-After); other 4xx fail permanently (ErrPermanent); a timed-out attempt fails with
// TimeoutError and is not retried. Every attempt of a job carries the same Idempotency-Key
// (the task id).
type HTTPRunner struct {
	cfg    HTTPConfig
	url    template
	values *placeholderValues
	opts   RunnerOptions
	client *http.Client
}

// NewHTTPRunner validates cfg for a task of the given kind and returns its runner.
func NewHTTPRunner(cfg HTTPConfig, kind string, opts RunnerOptions) (*HTTPRunner, error) {
	if err := cfg.Validate(kind); err != nil {
		return nil, fmt.Errorf("http runner: %w", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultHTTPTimeout
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultHTTPMaxAttempts
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = DefaultHTTPBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultHTTPMaxBackoff
	}
	if cfg.MaxResponse == 0 {
		cfg.MaxResponse = DefaultHTTPMaxResponse
	}
	if cfg.AuthHeader == "" {
		cfg.AuthHeader = "Authorization"
	}
	values, err := newPlaceholderValues(cfg.Placeholders)
	if err != nil {
		return nil, fmt.Errorf("http runner: %w", err)
	}
	opts = opts.withDefaults()
	client := &http.Client{}
	if opts.HTTPClient != nil {
		c := *opts.HTTPClient
		client = &c
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &HTTPRunner{cfg: cfg, url: parseTemplate(cfg.URL), values: values, opts: opts, client: client}, nil
}

// URL returns the URL the job is POSTed to, validating its placeholder values.
func (r *HTTPRunner) URL(job *Job) (string, error) {
	lookup := r.values.lookup(job)
	return r.url.expand(func(name string) (string, error) {
		v, err := lookup(name)
		if err != nil {
			return "", err
		}
		return url.PathEscape(v), nil
	})
}

// attemptResult is the outcome of one POST.
type attemptResult struct {
	value      any
	err        error
	retry      bool          // worth another attempt
	retryAfter time.Duration // the server's Retry-After, if any
	hasAfter   bool
}

// Run POSTs the job; see HTTPRunner.
func (r *HTTPRunner) Run(ctx context.Context, job *Job) (any, error) {
	target, err := r.URL(job)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(job.Payload)
	if err != nil {
		return nil, invalidInput("TypeError", "%s: payload is not JSON-serialisable: %v", jobDesc(job), err)
	}
	auth := ""
	if r.cfg.AuthEnv != "" {
		v, ok := r.opts.LookupEnv(r.cfg.AuthEnv)
		if !ok || v == "" {
			return nil, &Error{Type: "RuntimeError", Module: "builtins",
				Args: []any{fmt.Sprintf("%s: auth_env: the worker has no environment variable %s", jobDesc(job), r.cfg.AuthEnv)}}
		}
		auth = v
		if r.cfg.AuthScheme != "" {
			auth = r.cfg.AuthScheme + " " + v
		}
	}
	log := r.opts.Logger.With("task_id", job.TaskID, "task", job.TaskName, "runner", RunnerHTTP, "url", target)
	desc := jobDesc(job)
	backoff := r.cfg.Backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		res := r.attempt(ctx, job, target, body, auth, desc)
		if res.err == nil {
			log.Info("http runner succeeded", "attempt", attempt, "runtime_s", time.Since(start).Seconds())
			return res.value, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: POST %s stopped: %w", desc, target, context.Cause(ctx))
		}
		if !res.retry || attempt >= r.cfg.MaxAttempts {
			log.Info("http runner failed", "attempt", attempt, "error", res.err.Error())
			return nil, res.err
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, r.cfg.MaxBackoff)
		if res.hasAfter {
			if res.retryAfter > r.cfg.MaxBackoff {
				log.Info("http runner gives up: Retry-After beyond max_backoff", "attempt", attempt,
					"retry_after_s", res.retryAfter.Seconds(), "error", res.err.Error())
				return nil, res.err
			}
			wait = res.retryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			log.Info("http runner gives up: the task's deadline comes before the next attempt", "attempt", attempt, "error", res.err.Error())
			return nil, res.err
		}
		log.Warn("http runner retrying", "attempt", attempt, "wait_s", wait.Seconds(), "error", res.err.Error())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%s: POST %s stopped while waiting to retry (%v): %w", desc, target, res.err, context.Cause(ctx))
		case <-t.C:
		}
	}
}

func (r *HTTPRunner) attempt(ctx context.Context, job *Job, target string, body []byte, auth, desc string) attemptResult {
	actx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return attemptResult{err: fmt.Errorf("%s: %w", desc, err)}
	}
	for _, k := range slices.Sorted(maps.Keys(r.cfg.Headers)) {
		req.Header.Set(k, r.cfg.Headers[k])
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Idempotency-Key", job.TaskID)
	req.Header.Set("X-Fleet-Task-Id", job.TaskID)
	req.Header.Set("X-Fleet-Task-Name", job.TaskName)
	if auth != "" {
		req.Header.Set(r.cfg.AuthHeader, auth)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return attemptResult{err: err}
		case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
			return attemptResult{err: &Error{Type: "TimeoutError", Module: "builtins",
				Args:  []any{fmt.Sprintf("%s: POST %s: no response within %v", desc, target, r.cfg.Timeout)},
				Cause: fmt.Errorf("http runner timeout: %w", context.DeadlineExceeded)}}
		case isConnectError(err):
			return attemptResult{retry: true, err: &Error{Type: "ConnectionError", Module: "builtins",
				Args: []any{fmt.Sprintf("%s: POST %s: %v", desc, target, unwrapURLError(err))}, Cause: err}}
		}
		return attemptResult{err: &Error{Type: "ConnectionError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: POST %s: %v", desc, target, unwrapURLError(err))}, Cause: err}}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.MaxResponse+1))
	if err != nil {
		if ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || isTimeout(err)) {
			return attemptResult{err: &Error{Type: "TimeoutError", Module: "builtins",
				Args:  []any{fmt.Sprintf("%s: POST %s: response not complete within %v", desc, target, r.cfg.Timeout)},
				Cause: fmt.Errorf("http runner timeout: %w", context.DeadlineExceeded)}}
		}
		return attemptResult{err: &Error{Type: "ConnectionError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: POST %s: reading the response: %v", desc, target, err)}, Cause: err}}
	}
	if int64(len(data)) > r.cfg.MaxResponse {
		return attemptResult{err: &Error{Type: "RuntimeError", Module: "builtins",
			Args: []any{fmt.Sprintf("%s: POST %s: response larger than max_response (%d bytes)", desc, target, r.cfg.MaxResponse)}}}
	}
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		v, err := decodeResult(data)
		if err != nil {
			return attemptResult{err: &Error{Type: "RuntimeError", Module: "builtins",
				Args: []any{fmt.Sprintf("%s: POST %s: %d response is not one JSON value (%v): %q", desc, target, code, err, snippet(data))}, Cause: err}}
		}
		return attemptResult{value: v}
	}
	msg := fmt.Sprintf("%s: POST %s: %s: %q", desc, target, resp.Status, snippet(data))
	httpErr := &Error{Type: "HTTPError", Module: "fleet.errors", Args: []any{msg}}
	if code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500 {
		after, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now())
		return attemptResult{err: httpErr, retry: true, retryAfter: after, hasAfter: ok}
	}
	httpErr.Cause = fmt.Errorf("%w: HTTP %d", ErrPermanent, code)
	return attemptResult{err: httpErr}
}

func snippet(b []byte) string {
	return strings.TrimSpace(string(b[:min(len(b), maxSnippet)]))
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(h string, now time.Time) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(h, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isConnectError reports whether err happened before the request reached a server: dialing
// (refused, unreachable, DNS), so a retry cannot run the job twice.
func isConnectError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
