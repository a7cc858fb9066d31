// Command profworker is bin/worker with profiling wrapped around it, for
// `go run ./bench/compare --profile DIR`: it runs the unchanged workercli.Main and writes,
// into $FLEET_BENCH_PROFILE_DIR, cpu.pprof (the whole run), allocs.pprof (at exit) and
// heap.pprof (taken when the live heap was largest, with peak.txt: heap, stacks,
// goroutines and every /memory/classes/ metric at that moment, and goroutines.txt: their
// stacks, grouped). Read them with `go tool pprof -top cpu.pprof` (the binary's symbols
// are in the profile).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"denis.io/fleet/internal/workercli"
)

func main() {
	os.Exit(run())
}

func run() int {
	if r := os.Getenv("FLEET_BENCH_MEMPROFILE_RATE"); r != "" {
		if n, err := strconv.Atoi(r); err == nil && n > 0 {
			runtime.MemProfileRate = n // finer heap profiles, at some cost
		}
	}
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
		if !strings.HasPrefix(kv, "FLEET_BENCH_") {
			env = append(env, kv)
		}
	}
	stopPeak := watchPeak(dir)
	code := workercli.Main(os.Args[1:], env, os.Stdout, os.Stderr)
	stopPeak()
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

// watchPeak samples the live heap every 100 ms and writes heap.pprof and peak.txt each
// time it is 10 % above the largest seen so far. The returned function stops it.
func watchPeak(dir string) (stop func()) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	var classes []metrics.Sample // every /memory/classes/ metric, for peak.txt
	for _, d := range metrics.All() {
		if strings.HasPrefix(d.Name, "/memory/classes/") {
			classes = append(classes, metrics.Sample{Name: d.Name})
		}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		var peak uint64
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			metrics.Read(samples)
			heap := samples[0].Value.Uint64()
			if heap < peak+peak/10 {
				continue
			}
			peak = heap
			if f, err := os.Create(filepath.Join(dir, "heap.pprof")); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				_ = f.Close()
			}
			if f, err := os.Create(filepath.Join(dir, "goroutines.txt")); err == nil {
				_ = pprof.Lookup("goroutine").WriteTo(f, 1)
				_ = f.Close()
			}
			out := fmt.Appendf(nil,
				"heap objects %.1f MiB, stacks %.1f MiB, runtime total %.1f MiB, goroutines %d\n",
				float64(heap)/(1<<20), float64(samples[1].Value.Uint64())/(1<<20),
				float64(samples[2].Value.Uint64())/(1<<20), samples[3].Value.Uint64())
			metrics.Read(classes)
			for _, c := range classes {
				out = fmt.Appendf(out, "%-45s %6.2f MiB\n", c.Name, float64(c.Value.Uint64())/(1<<20))
			}
			_ = os.WriteFile(filepath.Join(dir, "peak.txt"), out, 0o644)
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
