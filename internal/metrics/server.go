package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is celery-exporter's port, so existing scrape configs find the worker.
const DefaultAddr = ":9808"

// Health backs /healthz and /readyz.
type Health struct {
	// MaxSilence is how long the process loop may go without a Beat before /healthz
	// fails (default 30 s).
	MaxSilence time.Duration
	// Ready reports whether the worker should receive traffic: nil when ready, else the
	// reason. nil Ready means always ready.
	Ready func(ctx context.Context) error
	// Drain, when set, is served at POST /drain (the preStop hook): it starts the worker's
	// drain and must return at once. nil: no /drain route.
	Drain func()

	started  time.Time
	lastBeat atomic.Int64 // unix nanoseconds
}

// NewHealth returns a Health whose silence clock starts now.
func NewHealth(maxSilence time.Duration, ready func(ctx context.Context) error) *Health {
	if maxSilence <= 0 {
		maxSilence = 30 * time.Second
	}
	return &Health{MaxSilence: maxSilence, Ready: ready, started: time.Now()}
}

// Beat records that the process loop is alive (the heartbeat tick calls it).
func (h *Health) Beat(now time.Time) { h.lastBeat.Store(now.UnixNano()) }

// Alive reports whether a Beat came within MaxSilence (or the process started less than
// MaxSilence ago).
func (h *Health) Alive(now time.Time) error {
	last := h.started
	if b := h.lastBeat.Load(); b != 0 {
		last = time.Unix(0, b)
	}
	if d := now.Sub(last); d > h.MaxSilence {
		return fmt.Errorf("no heartbeat for %s", d.Round(time.Second))
	}
	return nil
}

// Handler serves /metrics from g, /healthz, /readyz and, when h.Drain is set, /drain.
func Handler(g prometheus.Gatherer, h *Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.Alive(time.Now()); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if h.Ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
			defer cancel()
			if err := h.Ready(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	if h.Drain != nil {
		mux.HandleFunc("/drain", func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				w.Header().Set("Allow", http.MethodPost)
				http.Error(w, "method not allowed: POST /drain", http.StatusMethodNotAllowed)
				return
			}
			h.Drain()
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprintln(w, "draining")
		})
	}
	return mux
}

// PprofHandler serves net/http/pprof under /debug/pprof/.
func PprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// Server is an HTTP server started by Serve.
type Server struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// Serve listens on addr now (so a taken port is reported at start) and serves h in the
// background until Shutdown.
func Serve(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	s := &Server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, addr: ln.Addr(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.Error("http server failed", "addr", addr, "err", err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.addr }

// Shutdown stops the server, letting requests in flight finish within ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	<-s.done
	if err != nil {
		return fmt.Errorf("http server shutdown: %w", err)
	}
	return nil
}
