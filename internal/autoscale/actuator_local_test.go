package autoscale

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The local fleet supervises real processes: small shell scripts standing in for workers,
// which log their name and what they do on SIGTERM.

// script writes an executable shell script and returns its path.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "worker.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func podNames(t *testing.T, f *LocalFleet) (running, terminating []string) {
	t.Helper()
	st, err := f.ReadWorkload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pods {
		if p.Terminating {
			terminating = append(terminating, p.Name)
		} else {
			running = append(running, p.Name)
		}
	}
	return running, terminating
}

func startFleet(t *testing.T, cfg LocalConfig) *LocalFleet {
	t.Helper()
	f, err := NewLocalFleet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Error("local fleet did not shut down")
		}
	})
	return f
}

func TestLocalFleetScaleAndDrain(t *testing.T) {
	logDir := t.TempDir()
	// A worker that drains for 300 ms after SIGTERM and exits 0.
	sh := script(t, `trap 'echo drained; sleep 0.3; exit 0' TERM
echo "started $1"
while :; do sleep 0.05; done
`)
	f := startFleet(t, LocalConfig{Name: "w", Command: []string{sh, "{name}"}, LogDir: logDir,
		Grace: 10 * time.Second, ReadyAfter: 100 * time.Millisecond})
	ctx := context.Background()

	tests := []struct {
		name      string
		marks     []string
		replicas  int
		wantAlive []string
	}{
		{"scale up from zero", nil, 3, []string{"w-1", "w-2", "w-3"}},
		{"scale in takes the marked pods, in mark order", []string{"w-2"}, 2, []string{"w-1", "w-3"}},
		{"unmarked scale in takes the newest", nil, 1, []string{"w-1"}},
		{"scale up again gets new names", nil, 2, []string{"w-1", "w-4"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := f.MarkForDeletion(ctx, tc.marks); err != nil {
				t.Fatal(err)
			}
			if err := f.Scale(ctx, tc.replicas); err != nil {
				t.Fatal(err)
			}
			// Each new worker must have set its trap before a later step signals it.
			waitFor(t, 20*time.Second, "the workers' traps", func() bool {
				r, _ := podNames(t, f)
				for _, p := range r {
					data, _ := os.ReadFile(filepath.Join(logDir, p+".log"))
					if !strings.Contains(string(data), "started "+p) {
						return false
					}
				}
				return true
			})
			waitFor(t, 20*time.Second, "the fleet to settle", func() bool {
				r, term := podNames(t, f)
				return slices.Equal(r, tc.wantAlive) && len(term) == 0
			})
			st, _ := f.ReadWorkload(ctx)
			if st.Workload.SpecReplicas != tc.replicas || st.Workload.StatusReplicas != tc.replicas {
				t.Fatalf("workload %+v", st.Workload)
			}
		})
	}
	// The stopped workers drained (the trap ran) and none was killed.
	data, err := os.ReadFile(filepath.Join(logDir, "w-2.log"))
	if err != nil || !strings.Contains(string(data), "started w-2") || !strings.Contains(string(data), "drained") {
		t.Fatalf("w-2.log: %q %v", data, err)
	}
	if killed, crashed := f.Stats(); killed != 0 || crashed != 0 {
		t.Fatalf("killed %d, crashed %d", killed, crashed)
	}
}

func TestLocalFleetKillsAfterGraceAndRestartsCrashes(t *testing.T) {
	cases := []struct {
		name  string
		body  string
		check func(t *testing.T, f *LocalFleet)
	}{
		{"a worker ignoring SIGTERM is killed after the grace period", "trap '' TERM\necho ready\nwhile :; do sleep 0.05; done\n",
			func(t *testing.T, f *LocalFleet) {
				if err := f.Scale(context.Background(), 0); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 20*time.Second, "the kill", func() bool { k, _ := f.Stats(); return k == 1 })
				waitFor(t, 20*time.Second, "the pod to go", func() bool { r, term := podNames(t, f); return len(r)+len(term) == 0 })
			}},
		{"a crashing worker is restarted with backoff", "sleep 0.2; exit 3\n",
			func(t *testing.T, f *LocalFleet) {
				waitFor(t, 30*time.Second, "two restarts", func() bool { _, c := f.Stats(); return c >= 2 })
				r, _ := podNames(t, f)
				if len(r) > 1 {
					t.Fatalf("more workers than spec: %v", r)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logDir := t.TempDir()
			f := startFleet(t, LocalConfig{Name: "w", Command: []string{script(t, tc.body)}, Grace: 500 * time.Millisecond,
				LogDir: logDir})
			if err := f.Scale(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "a worker", func() bool { r, _ := podNames(t, f); return len(r) == 1 })
			if strings.Contains(tc.body, "echo ready") {
				// Signal it only once its trap is set (the machine may be slow to start sh).
				waitFor(t, 20*time.Second, "the worker's trap", func() bool {
					data, _ := os.ReadFile(filepath.Join(logDir, "w-1.log"))
					return strings.Contains(string(data), "ready")
				})
			}
			tc.check(t, f)
		})
	}
}

// With CPU on, a worker's CPU is read from /proc as usage ÷ CPURequest cores: a process
// spinning one core shows up busy, a sleeping one idle.
func TestLocalFleetMeasuresWorkerCPU(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this system")
	}
	for _, tc := range []struct {
		name     string
		body     string
		min, max float64
	}{
		{"busy", "trap 'exit 0' TERM\nwhile :; do :; done\n", 0.2, 4},
		{"idle", "trap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n", 0, 0.2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFleet(t, LocalConfig{Name: "w", Command: []string{script(t, tc.body)},
				Grace: time.Second, CPU: true, CPURequest: 0.5})
			if err := f.Scale(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			var cpu float64
			waitFor(t, 20*time.Second, "a CPU sample", func() bool {
				st, err := f.ReadWorkload(context.Background())
				if err != nil || len(st.Pods) != 1 || st.Pods[0].CPUAt.IsZero() {
					return false
				}
				cpu = st.Pods[0].CPU
				return true
			})
			time.Sleep(500 * time.Millisecond)
			st, _ := f.ReadWorkload(context.Background())
			cpu = st.Pods[0].CPU
			if cpu < tc.min || cpu > tc.max {
				t.Fatalf("CPU ÷ request %.2f, want within [%.1f, %.1f]", cpu, tc.min, tc.max)
			}
		})
	}
}
