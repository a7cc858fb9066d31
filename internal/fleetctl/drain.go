package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"denis.io/fleet/internal/metrics"
)

const drainUsage = `Usage: fleetctl drain [--addr HOST:PORT] [--timeout D]

Asks a running worker to start draining: POST /drain on its metrics server. The worker stops
fetching, hands its prefetched messages back to the broker and reports /readyz not ready;
running tasks go on until SIGTERM and the shutdown timeout. The Helm chart runs it as the
worker container's preStop hook (the image has no shell or curl):
  fleetctl drain --addr 127.0.0.1:9808

Exit status: 0 the worker accepted; 1 it refused (or has no /drain); 64 bad command line;
69 nothing answers at the address.
`

func runDrain(ctx context.Context, g *globals, args []string, std IO) error {
	env := g.env(std)
	addr := "127.0.0.1" + metrics.DefaultAddr
	if a := env["FLEET_METRICS_ADDR"]; a != "" {
		addr = a
	}
	fs := pflag.NewFlagSet("fleetctl drain", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.StringVar(&addr, "addr", addr, "the worker's metrics address, HOST:PORT or :PORT for this host (env FLEET_METRICS_ADDR)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the worker's answer")
	g.addTo(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(std.Out, "%s\nOptions:\n%s", drainUsage, fs.FlagUsages())
			return err
		}
		return usagef("drain: %v", err)
	}
	if fs.NArg() > 0 {
		return usagef("drain: unexpected argument %q", fs.Arg(0))
	}
	if *timeout <= 0 {
		return usagef("drain: --timeout must be positive")
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://"))
	if err != nil || port == "" {
		return usagef("drain: --addr %q: want HOST:PORT or :PORT", addr)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1" // a wildcard listen address: the worker is on this host
	}
	url := "http://" + net.JoinHostPort(host, port) + "/drain"

	rctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, url, nil)
	if err != nil {
		return usagef("drain: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return unavailableError{fmt.Errorf("drain: %s: %w", url, err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	switch {
	case resp.StatusCode/100 == 2:
		if msg == "" {
			msg = resp.Status
		}
		fmt.Fprintf(std.Out, "drain started at %s: %s\n", url, msg)
		return nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		return fmt.Errorf("drain: %s answered %s: this worker has no drain route (an older version?)", url, resp.Status)
	default:
		return fmt.Errorf("drain: %s answered %s: %s", url, resp.Status, msg)
	}
}
