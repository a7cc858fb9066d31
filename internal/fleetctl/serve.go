package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"denis.io/fleet/internal/dlq"
)

func cmdMetrics(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("metrics --addr ADDR [QUEUE...] [options]", `Serves the fleet_dlq_* metrics on http://ADDR/metrics (and /healthz) until interrupted: a
standalone exporter for clusters whose workers are scaled to zero. Without QUEUE it
watches every DLQ on the broker (RabbitMQ: through the management API). The broker is
read at most once per --min-interval, however often it is scraped.

With --retention it also applies retention every --interval: SPEC is LENGTH, LENGTH/AGE or
/AGE for every DLQ ("10000/168h"), or QUEUE=SPEC for one ("crews=1000/72h"); repeatable.
Every eviction is logged with its id and counted in fleet_dlq_evicted_total.`, g, std)
	addr := f.String("addr", ":9808", "listen address")
	minInterval := f.Duration("min-interval", 10*time.Second, "least time between two reads of the broker")
	interval := f.Duration("interval", time.Minute, "how often the retention runs")
	var specs []string
	f.StringArrayVar(&specs, "retention", nil, "retention SPEC or QUEUE=SPEC (repeatable; default: keep everything)")
	if err := f.parse(args, 0, -1); err != nil {
		return err
	}
	cfg := dlq.RetentionConfig{Queues: map[string]dlq.Retention{}}
	for _, sp := range specs {
		q, r, err := dlq.ParseRetention(sp)
		if err != nil {
			return usageError{err.Error()}
		}
		if q == "" {
			cfg.Default = r
		} else {
			cfg.Queues[q] = r
		}
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	o := dlq.CollectorOptions{Queues: f.Args(), MinInterval: *minInterval, Logger: s.log}
	if f.NArg() == 0 {
		if s.lister == nil {
			return usagef("dlq metrics: this broker cannot list its queues: name them")
		}
		o.Discover = s.lister.Queues
	}
	c := dlq.NewCollector(s.br, o)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return usagef("dlq metrics: listen on %s: %v", *addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.log.Info("serving DLQ metrics", "addr", ln.Addr().String(), "retention", cfg.Default.String())
	fmt.Fprintf(std.Err, "serving DLQ metrics on http://%s/metrics\n", ln.Addr())

	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	if cfg.Default.Enabled() || len(cfg.Queues) > 0 {
		k := &dlq.Keeper{Browser: s.br, Config: cfg, Queues: c.Queues, Interval: *interval, Metrics: c, Logger: s.log}
		go func() { errc <- k.Run(ctx) }()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, context.Canceled) {
			_ = srv.Close()
			return fmt.Errorf("dlq metrics: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}
