// Command loadtest proves a fleet at a multiple of its expected load: see loadtest/cli and
// docs/loadtest.md.
package main

import (
	"os"

	"denis.io/fleet/loadtest/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}
