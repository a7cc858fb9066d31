// Command autoscaler sizes the fleet's worker Deployment from broker truth and worker load.
// `autoscaler simulate` runs the simulator; see `autoscaler --help`.
package main

import (
	"os"

	"denis.io/fleet/internal/autoscale/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
