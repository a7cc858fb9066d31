package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// httpServer is a real local server whose responses follow a script, recording requests.
type httpServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []recorded
}

type recorded struct {
	at     time.Time
	path   string
	header http.Header
	body   map[string]any
}

// step answers the n-th request (0-based); returning false ends the handler without
// writing (used by the slow step).
type step func(w http.ResponseWriter, r *http.Request, n int)

func newHTTPServer(t *testing.T, s step) *httpServer {
	t.Helper()
	hs := &httpServer{}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		dec := json.NewDecoder(r.Body)
		dec.UseNumber()
		_ = dec.Decode(&body)
		hs.mu.Lock()
		n := len(hs.requests)
		hs.requests = append(hs.requests, recorded{at: time.Now(), path: r.URL.EscapedPath(), header: r.Header.Clone(), body: body})
		hs.mu.Unlock()
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want a JSON POST", http.StatusMethodNotAllowed)
			return
		}
		s(w, r, n)
	}))
	t.Cleanup(hs.Close)
	return hs
}

func (hs *httpServer) got() []recorded {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]recorded(nil), hs.requests...)
}

func jsonReply(code int, v any) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
}

func matReq(id string) *Request {
	return &Request{ID: id, Name: "denis.materializer.run", Args: []any{},
		Kwargs: map[string]any{"materializer": "daily_summary", "params": map[string]any{"day": "2026-01-01"}}}
}

func newMatHTTP(t *testing.T, cfg HTTPConfig, env map[string]string) (Handler, *syncLog) {
	t.Helper()
	log, logs := testLogger()
	flags := newFakeFlags()
	flags.set(FlagMaterializersEnabled, true)
	h, err := NewJobHandler(KindMaterializer, JobConfig{Runner: RunnerHTTP, Allow: []string{"daily_summary"}, HTTP: &cfg},
		RunnerOptions{Logger: log, Flags: flags, LookupEnv: testEnv(env)})
	if err != nil {
		t.Fatal(err)
	}
	return h, logs
}

func TestHTTPRunner(t *testing.T) {
	ok := map[string]any{"materialized": true, "rows": json.Number("42")}
	cases := []struct {
		name     string
		serve    step
		cfg      func(c *HTTPConfig)
		want     any
		errType  string
		errIs    error
		attempts int
		minTook  time.Duration
		maxTook  time.Duration
	}{
		{
			name: "200 with JSON result",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				jsonReply(200, ok)(w)
			},
			want: ok, attempts: 1, maxTook: time.Second,
		},
		{
			name: "5xx then 200: retried with backoff",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				if n < 2 {
					http.Error(w, "upstream down", []int{502, 503}[n])
					return
				}
				jsonReply(200, ok)(w)
			},
			want: ok, attempts: 3, maxTook: 2 * time.Second,
		},
		{
			name: "429 with Retry-After: waits as told",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				if n == 0 {
					w.Header().Set("Retry-After", "1")
					http.Error(w, "slow down", http.StatusTooManyRequests)
					return
				}
				jsonReply(200, ok)(w)
			},
			want: ok, attempts: 2, minTook: time.Second, maxTook: 3 * time.Second,
		},
		{
			name: "Retry-After beyond max_backoff: gives up",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				w.Header().Set("Retry-After", "3600")
				http.Error(w, "maintenance", http.StatusServiceUnavailable)
			},
			errType: "HTTPError", attempts: 1, maxTook: time.Second,
		},
		{
			name: "5xx every time: attempts exhausted, not permanent",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				http.Error(w, "boom", http.StatusInternalServerError)
			},
			errType: "HTTPError", attempts: 3, maxTook: 2 * time.Second,
		},
		{
			name: "4xx: permanent, no retry",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				jsonReply(422, map[string]any{"detail": "unknown day"})(w)
			},
			errType: "HTTPError", errIs: ErrPermanent, attempts: 1, maxTook: time.Second,
		},
		{
			name: "slow: attempt timeout, not retried",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
			},
			cfg:     func(c *HTTPConfig) { c.Timeout = 300 * time.Millisecond },
			errType: "TimeoutError", errIs: context.DeadlineExceeded, attempts: 1, minTook: 300 * time.Millisecond, maxTook: 2 * time.Second,
		},
		{
			name: "2xx that is not JSON",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				_, _ = w.Write([]byte("<html>ok</html>"))
			},
			errType: "RuntimeError", attempts: 1, maxTook: time.Second,
		},
		{
			name: "204: None",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				w.WriteHeader(http.StatusNoContent)
			},
			want: nil, attempts: 1, maxTook: time.Second,
		},
		{
			name: "redirect is not followed",
			serve: func(w http.ResponseWriter, r *http.Request, n int) {
				http.Redirect(w, r, "/elsewhere", http.StatusFound)
			},
			errType: "HTTPError", errIs: ErrPermanent, attempts: 1, maxTook: time.Second,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newHTTPServer(t, tc.serve)
			url := srv.URL + "/materializers/{materializer}"
			cfg := HTTPConfig{URL: url, Timeout: 2 * time.Second, Backoff: 50 * time.Millisecond, MaxBackoff: 10 * time.Second,
				MaxAttempts: 3, AuthEnv: "DENIS_TOKEN", AuthScheme: "Bearer", Headers: map[string]string{"X-Env": "test"}}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			h, logs := newMatHTTP(t, cfg, map[string]string{"DENIS_TOKEN": "tok-sekrit-99"})
			start := time.Now()
			got, err := h.ServeTask(context.Background(), matReq("task-h1"))
			took := time.Since(start)
			reqs := srv.got()
			if len(reqs) != tc.attempts {
				t.Fatalf("%d requests, want %d (err %v)", len(reqs), tc.attempts, err)
			}
			if took < tc.minTook || took > tc.maxTook {
				t.Fatalf("took %v, want %v..%v", took, tc.minTook, tc.maxTook)
			}
			if tc.errType == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("got %#v, want %#v", got, tc.want)
				}
			} else {
				if err == nil {
					t.Fatalf("want %s, got %v", tc.errType, got)
				}
				if e := AsError(err); e.Type != tc.errType {
					t.Fatalf("want %s, got %s: %v", tc.errType, e.Type, err)
				}
				if tc.errIs != nil && !errors.Is(err, tc.errIs) {
					t.Fatalf("want errors.Is %v: %v", tc.errIs, err)
				}
				if IsPermanent(err) != (tc.errIs == ErrPermanent) {
					t.Fatalf("IsPermanent = %v for %v", IsPermanent(err), err)
				}
			}
			for _, r := range reqs {
				if r.path != "/materializers/daily_summary" {
					t.Errorf("path %s", r.path)
				}
				if a := r.header.Get("Authorization"); a != "Bearer tok-sekrit-99" {
					t.Errorf("Authorization %q", a)
				}
				if r.header.Get("Idempotency-Key") != "task-h1" || r.header.Get("X-Env") != "test" {
					t.Errorf("headers %v", r.header)
				}
				want := map[string]any{"task_id": "task-h1", "task": "denis.materializer.run", "kind": "materializer",
					"materializer": "daily_summary", "params": map[string]any{"day": "2026-01-01"}}
				if !reflect.DeepEqual(r.body, want) {
					t.Errorf("body %#v", r.body)
				}
			}
			if tc.name == "429 with Retry-After: waits as told" {
				if gap := reqs[1].at.Sub(reqs[0].at); gap < time.Second {
					t.Fatalf("retried after %v despite Retry-After: 1", gap)
				}
			}
			if strings.Contains(logs.String(), "tok-sekrit-99") {
				t.Fatal("auth token logged")
			}
		})
	}
}

// TestHTTPRunnerConnectErrors: a refused connection is retried; a server that comes up in
// the meantime gets the job.
func TestHTTPRunnerConnectErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused

	t.Run("refused every time", func(t *testing.T) {
		h, logs := newMatHTTP(t, HTTPConfig{URL: "http://" + addr + "/run", Backoff: 20 * time.Millisecond, MaxAttempts: 3}, nil)
		_, err := h.ServeTask(context.Background(), matReq("t-conn"))
		if e := AsError(err); e.Type != "ConnectionError" || IsPermanent(err) {
			t.Fatalf("got %v", err)
		}
		if n := strings.Count(logs.String(), "http runner retrying"); n != 2 {
			t.Fatalf("want 2 retries logged, got %d", n)
		}
	})
	t.Run("server comes up", func(t *testing.T) {
		go func() {
			time.Sleep(150 * time.Millisecond)
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return // port taken meanwhile: the test below reports it
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				jsonReply(200, map[string]any{"up": true})(w)
			})}
			t.Cleanup(func() { _ = srv.Close() })
			_ = srv.Serve(l)
		}()
		h, _ := newMatHTTP(t, HTTPConfig{URL: "http://" + addr + "/run", Backoff: 100 * time.Millisecond, MaxAttempts: 6}, nil)
		got, err := h.ServeTask(context.Background(), matReq("t-up"))
		if err != nil || !reflect.DeepEqual(got, map[string]any{"up": true}) {
			t.Fatalf("got %v, %v", got, err)
		}
	})
}

// TestHTTPRunnerCancel: cancellation during the backoff wait and during a slow request
// ends the run at once.
func TestHTTPRunnerCancel(t *testing.T) {
	for _, slow := range []bool{false, true} {
		srv := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request, n int) {
			if slow {
				<-r.Context().Done()
				return
			}
			w.Header().Set("Retry-After", "5")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		})
		h, _ := newMatHTTP(t, HTTPConfig{URL: srv.URL, MaxAttempts: 5}, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		_, err := h.ServeTask(ctx, matReq("t-cancel"))
		cancel()
		if time.Since(start) > 2*time.Second {
			t.Fatalf("slow=%v: took %v", slow, time.Since(start))
		}
		if slow && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("slow: want the task deadline, got %v", err)
		}
		if !slow && err == nil {
			t.Fatal("want a failure")
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"3", 3 * time.Second, true},
		{" 0 ", 0, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
	}
	for _, tc := range cases {
		got, ok := retryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestHTTPRunnerMissingAuthEnv(t *testing.T) {
	srv := newHTTPServer(t, func(w http.ResponseWriter, r *http.Request, n int) { jsonReply(200, 1)(w) })
	h, _ := newMatHTTP(t, HTTPConfig{URL: srv.URL, AuthEnv: "NOT_SET"}, nil)
	_, err := h.ServeTask(context.Background(), matReq("t"))
	if err == nil || !strings.Contains(err.Error(), "NOT_SET") || len(srv.got()) != 0 {
		t.Fatalf("got %v after %d requests", err, len(srv.got()))
	}
}
