// Command profworker is bin/worker with profiling wrapped around it, for
// `go run ./bench/compare --profile DIR`: it runs the unchanged workercli.Main and writes,
// into $FLEET_BENCH_PROFILE_DIR, cpu.pprof (the whole run) and allocs.pprof (at exit).
// Read them with `go tool pprof -top cpu.pprof` (the binary's symbols are in the profile).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"

	"denis.io/fleet/internal/workercli"
)

func main() {
	os.Exit(run())
}

func run() int {
	dir := os.Getenv("FLEET_BENCH_PROFILE_DIR")
	if dir == "" {
		dir = "."
	}
	cpu, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "profworker: %v\n", err)
		return 1
	}
	defer cpu.Close()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		fmt.Fprintf(os.Stderr, "profworker: start CPU profile: %v\n", err)
		return 1
	}
	var env []string
	for _, kv := range os.Environ() {
		if len(kv) < 24 || kv[:24] != "FLEET_BENCH_PROFILE_DIR=" {
			env = append(env, kv)
		}
	}
	code := workercli.Main(os.Args[1:], env, os.Stdout, os.Stderr)
	pprof.StopCPUProfile()

	runtime.GC()
	if f, err := os.Create(filepath.Join(dir, "allocs.pprof")); err == nil {
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			fmt.Fprintf(os.Stderr, "profworker: allocs profile: %v\n", err)
		}
		_ = f.Close()
	}
	return code
}
