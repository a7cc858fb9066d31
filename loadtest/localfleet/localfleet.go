// Package localfleet runs a fixed number of local `bin/worker` processes for a load test:
// it starts them, waits until each says it is consuming, SIGKILLs one at random on demand
// (chaos) and starts its replacement as a Deployment would, and stops them gracefully.
package localfleet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes the workers to run.
type Config struct {
	Bin   string // the worker binary
	Count int
	// Args are the worker flags shared by every worker (broker, backend, queues, …);
	// "{i}" in an argument is replaced by the worker's slot number (0, 1, …), e.g. to give
	// each its own --metrics-addr port.
	Args []string
	// LogDir receives worker-<slot>.log (stdout and stderr); empty: discarded.
	LogDir string
	// Restart starts a replacement after a worker was killed (after RestartDelay).
	Restart      bool
	RestartDelay time.Duration
	// MetricsAddrFlag, when set (the worker's "--metrics-addr"), gives each worker its
	// own free loopback port for /metrics, reported in Member.MetricsURL.
	MetricsAddrFlag string
	// ReadyTimeout bounds the wait for "worker ready" in a new worker's log.
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// Member is a running worker.
type Member struct {
	Slot int
	Name string // its node name
	PID  int
	// MetricsURL is its /metrics endpoint ("" when Config.MetricsAddrFlag is not set).
	MetricsURL string
}

type proc struct {
	Member
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	ready chan struct{}
	log   io.WriteCloser
}

// Fleet is the set of local workers.
type Fleet struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	procs   map[int]*proc // slot → current process
	gen     map[int]int   // slot → generation (restarts)
	kills   int
	stopped bool
	quit    chan struct{} // closed by Stop
	wg      sync.WaitGroup
}

// Start starts cfg.Count workers and waits until each is ready.
func Start(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Count < 1 {
		return nil, errors.New("localfleet: at least one worker")
	}
	if _, err := os.Stat(cfg.Bin); err != nil {
		return nil, fmt.Errorf("localfleet: worker binary: %w (run `make build`)", err)
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger, procs: map[int]*proc{}, gen: map[int]int{}, quit: make(chan struct{})}
	var started []*proc
	for slot := range cfg.Count {
		p, err := f.spawn(slot)
		if err != nil {
			f.Stop(5 * time.Second)
			return nil, err
		}
		started = append(started, p)
	}
	for _, p := range started {
		if err := f.waitReady(ctx, p); err != nil {
			f.Stop(5 * time.Second)
			return nil, err
		}
	}
	return f, nil
}

func (f *Fleet) spawn(slot int) (*proc, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return nil, errors.New("localfleet: stopped")
	}
	f.gen[slot]++
	name := fmt.Sprintf("loadtest-%d-%d@%%h", slot, f.gen[slot])
	args := make([]string, 0, len(f.cfg.Args)+2)
	for _, a := range f.cfg.Args {
		args = append(args, strings.ReplaceAll(a, "{i}", strconv.Itoa(slot)))
	}
	args = append(args, "--hostname", name)
	metricsURL := ""
	if f.cfg.MetricsAddrFlag != "" {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		args = append(args, f.cfg.MetricsAddrFlag, addr)
		metricsURL = "http://" + addr + "/metrics"
	}
	cmd := exec.Command(f.cfg.Bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var logw io.WriteCloser = nopCloser{io.Discard}
	if f.cfg.LogDir != "" {
		lf, err := os.OpenFile(filepath.Join(f.cfg.LogDir, fmt.Sprintf("worker-%d.log", slot)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("localfleet: worker log: %w", err)
		}
		logw = lf
	}
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		_ = logw.Close()
		return nil, fmt.Errorf("localfleet: start worker %d: %w", slot, err)
	}
	host, _ := os.Hostname()
	p := &proc{Member: Member{Slot: slot, Name: strings.ReplaceAll(name, "%h", host), PID: cmd.Process.Pid, MetricsURL: metricsURL},
		cmd: cmd, done: make(chan struct{}), ready: make(chan struct{}), log: logw}
	f.procs[slot] = p
	f.wg.Add(2)
	go func() { // copy the output, spotting readiness
		defer f.wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = logw.Write(append(line, '\n'))
			if strings.Contains(string(line), "worker ready") {
				once.Do(func() { close(p.ready) })
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		defer f.wg.Done()
		p.err = cmd.Wait()
		_ = pw.Close()
		close(p.done)
		_ = logw.Close()
	}()
	f.log.Info("local worker started", "slot", slot, "name", p.Name, "pid", p.PID)
	return p, nil
}

func (f *Fleet) waitReady(ctx context.Context, p *proc) error {
	t := time.NewTimer(f.cfg.ReadyTimeout)
	defer t.Stop()
	select {
	case <-p.ready:
		return nil
	case <-p.done:
		return fmt.Errorf("localfleet: worker %s exited before it was ready: %v (see its log)", p.Name, p.err)
	case <-t.C:
		return fmt.Errorf("localfleet: worker %s not ready after %s", p.Name, f.cfg.ReadyTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Members lists the workers running now.
func (f *Fleet) Members() []Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Member
	for slot := range f.cfg.Count {
		p, ok := f.procs[slot]
		if !ok {
			continue
		}
		select {
		case <-p.done:
			continue
		default:
		}
		out = append(out, p.Member)
	}
	return out
}

// Kills is how many workers KillRandom killed.
func (f *Fleet) Kills() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kills
}

// KillRandom SIGKILLs a random running worker (its process group) and, with Restart,
// starts its replacement after RestartDelay (even once ctx has ended: only Stop prevents
// it, as a Deployment replaces a pod). It returns the killed worker.
func (f *Fleet) KillRandom(_ context.Context, r *rand.Rand) (Member, error) {
	live := f.Members()
	if len(live) == 0 {
		return Member{}, errors.New("localfleet: no worker to kill")
	}
	victim := live[r.IntN(len(live))]
	f.mu.Lock()
	p := f.procs[victim.Slot]
	f.kills++
	f.mu.Unlock()
	if err := syscall.Kill(-p.PID, syscall.SIGKILL); err != nil {
		return victim, fmt.Errorf("localfleet: kill %s: %w", victim.Name, err)
	}
	<-p.done
	f.log.Warn("chaos: local worker SIGKILLed", "name", victim.Name, "pid", victim.PID)
	if f.cfg.Restart {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			select {
			case <-time.After(f.cfg.RestartDelay):
			case <-f.quit:
				return
			}
			np, err := f.spawn(victim.Slot)
			if err != nil {
				f.log.Warn("localfleet: replacement worker did not start", "slot", victim.Slot, "err", err)
				return
			}
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-f.quit:
				case <-np.done:
				}
				cancel()
			}()
			defer cancel()
			if err := f.waitReady(ctx, np); err != nil {
				f.log.Error("localfleet: replacement worker not ready", "slot", victim.Slot, "err", err)
			}
		}()
	}
	return victim, nil
}

// Stop sends SIGTERM to every worker (a warm shutdown: running tasks finish, prefetched
// ones go back to the broker) and SIGKILLs those still running after grace. It returns the
// workers that did not exit cleanly.
func (f *Fleet) Stop(grace time.Duration) error {
	f.mu.Lock()
	if !f.stopped {
		close(f.quit)
	}
	f.stopped = true
	procs := make([]*proc, 0, len(f.procs))
	for _, p := range f.procs {
		procs = append(procs, p)
	}
	f.mu.Unlock()
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	var errs []error
	for _, p := range procs {
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-p.done:
			t.Stop()
		case <-t.C:
			_ = syscall.Kill(-p.PID, syscall.SIGKILL)
			<-p.done
			errs = append(errs, fmt.Errorf("localfleet: %s did not stop within %s; killed", p.Name, grace))
		}
	}
	f.wg.Wait()
	return errors.Join(errs...)
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("localfleet: free port: %w", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// SupportsFlag reports whether the worker binary's --help lists flag (for optional
// features of newer workers, such as --metrics-addr).
func SupportsFlag(ctx context.Context, bin, flag string) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--help").Output()
	if err != nil {
		return false
	}
	return strings.Contains(string(out), flag+" ")
}
