// Command worker runs a fleet worker: a drop-in Go replacement for `celery worker`.
// See `worker --help` and the README.
package main

import (
	"os"

	"denis.io/fleet/internal/workercli"
)

func main() {
	os.Exit(workercli.Main(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}
