// Command fleetctl is the fleet's operator tool: dead-letter queues on either broker
// (list, show, replay, purge, export, import, RabbitMQ setup, retention, metrics), feature
// flags and rollbacks, autoscaler decisions, `ping` (a diag task round trip), the
// Kubernetes emergency stop and resume, and the worker's `drain`. See `fleetctl --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"denis.io/fleet/internal/fleetctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := fleetctl.Main(ctx, os.Args[1:], fleetctl.IO{
		In: os.Stdin, Out: os.Stdout, Err: os.Stderr,
		InTerminal: isTerminal(os.Stdin), ErrTerminal: isTerminal(os.Stderr),
		Env: os.Environ(),
	})
	stop()
	os.Exit(code)
}
