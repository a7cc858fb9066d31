package autoscale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"denis.io/fleet/internal/procstat"
)

// LocalFleet supervises worker processes on this machine as a Deployment would run pods:
// Scale starts processes or stops the marked (idle) ones with SIGTERM, which makes the
// worker stop consuming and finish its running tasks; a process still alive after Grace is
// killed. A worker that exits on its own is restarted with backoff. It is both the Actuator
// and the WorkloadReader of the local target, so the same Policy and Source drive it.
type LocalFleet struct {
	cfg LocalConfig
	log *slog.Logger

	mu      sync.Mutex
	spec    int
	seq     int
	procs   map[string]*localProc
	marks   map[string]int // victim rank
	backoff time.Duration
	nextAt  time.Time // no restart before
	closed  bool
	kicked  chan struct{}
	wg      sync.WaitGroup
	kills   int
	crashes int
	cpu     procstat.CPUMeter
}

// LocalConfig configures a LocalFleet.
type LocalConfig struct {
	// Name is the pool's name: process i is the "pod" <Name>-<i>, its worker's node name
	// fleet@<Name>-<i>.
	Name string
	// Command is the worker command (argv); Args go between the program and its own
	// arguments (so that the command's own options win), and "{name}" in either is
	// replaced by the pod name (e.g. --hostname fleet@{name}).
	Command []string
	Args    []string
	// Env is added to the environment of every worker.
	Env []string
	// LogDir receives <pod>.log per worker; empty: the workers write to Stderr.
	LogDir string
	Stderr io.Writer
	// Grace is how long a worker may drain after SIGTERM before SIGKILL (default 30 s).
	Grace time.Duration
	// ReadyAfter is how long a process must have run to count as Ready (default 1 s).
	ReadyAfter time.Duration
	// MaxBackoff caps the restart backoff after crashes (default 30 s).
	MaxBackoff time.Duration
	// CPU measures each worker's CPU from /proc (Linux) as a pod's usage ÷ request, the
	// request being CPURequest cores (default 1).
	CPU        bool
	CPURequest float64
	Log        *slog.Logger
}

type localProc struct {
	name     string
	cmd      *exec.Cmd
	started  time.Time
	stopping bool
	stopAt   time.Time
	done     chan struct{}
	err      error
	logFile  *os.File
}

// NewLocalFleet returns a supervisor with 0 processes; Run starts supervising.
func NewLocalFleet(cfg LocalConfig) (*LocalFleet, error) {
	if len(cfg.Command) == 0 {
		return nil, errors.New("autoscale: local target needs a worker command")
	}
	if cfg.Name == "" {
		cfg.Name = "worker"
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.ReadyAfter <= 0 {
		cfg.ReadyAfter = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.CPURequest <= 0 {
		cfg.CPURequest = 1
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LocalFleet{cfg: cfg, log: log, procs: map[string]*localProc{}, marks: map[string]int{},
		kicked: make(chan struct{}, 1)}, nil
}

// Run supervises until ctx ends, then stops every worker gracefully (SIGTERM, SIGKILL after
// Grace) and returns once all have exited.
func (f *LocalFleet) Run(ctx context.Context) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		f.reconcile()
		select {
		case <-ctx.Done():
			f.shutdown()
			return nil
		case <-t.C:
		case <-f.kicked:
		}
	}
}

func (f *LocalFleet) kick() {
	select {
	case f.kicked <- struct{}{}:
	default:
	}
}

// Scale implements Actuator.
func (f *LocalFleet) Scale(_ context.Context, replicas int) error {
	if replicas < 0 {
		return fmt.Errorf("local fleet: negative replica count %d", replicas)
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return errors.New("local fleet: shut down")
	}
	f.spec = replicas
	f.mu.Unlock()
	f.reconcile()
	return nil
}

// MarkForDeletion implements Actuator: the named processes go first, in order, when the
// count drops; earlier marks are forgotten.
func (f *LocalFleet) MarkForDeletion(_ context.Context, pods []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marks = map[string]int{}
	for i, p := range pods {
		f.marks[p] = i + 1
	}
	return nil
}

// ReadWorkload implements WorkloadReader.
func (f *LocalFleet) ReadWorkload(context.Context) (WorkloadState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	w := Workload{Name: f.cfg.Name, SpecReplicas: f.spec, GracePeriod: f.cfg.Grace}
	names := make([]string, 0, len(f.procs))
	for n := range f.procs {
		names = append(names, n)
	}
	sort.Strings(names)
	var pods []PodSignal
	for _, n := range names {
		p := f.procs[n]
		ready := !p.stopping && now.Sub(p.started) >= f.cfg.ReadyAfter
		ps := PodSignal{Name: n, Ready: ready, Terminating: p.stopping}
		if f.cfg.CPU && p.cmd.Process != nil && !exited(p) {
			if s, err := procstat.ReadProc(p.cmd.Process.Pid); err == nil {
				if cores, ok := f.cpu.Observe(n, now, s.CPUSeconds); ok {
					ps.CPU, ps.CPUAt = cores/f.cfg.CPURequest, now
				}
			}
		}
		pods = append(pods, ps)
		if !p.stopping {
			w.StatusReplicas++
			w.UpdatedReplicas++
			if ready {
				w.ReadyReplicas++
			}
		}
	}
	f.cpu.Retain(func(name string) bool { return f.procs[name] != nil })
	return WorkloadState{Workload: w, Pods: pods}, nil
}

// Stats returns the workers killed after their grace period and the crashes seen so far.
func (f *LocalFleet) Stats() (killed, crashed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kills, f.crashes
}

// reconcile starts or stops processes until the running ones match spec, and kills the
// ones whose grace period is over.
func (f *LocalFleet) reconcile() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	now := time.Now()
	var running []*localProc
	for _, p := range f.procs {
		switch {
		case p.stopping && now.Sub(p.stopAt) >= f.cfg.Grace && p.cmd.Process != nil && !exited(p):
			f.log.Warn("autoscale: local worker still running after its grace period: killing it", "pod", p.name, "grace", f.cfg.Grace)
			_ = p.cmd.Process.Kill()
			f.kills++
			p.stopAt = now.Add(time.Hour) // once
		case !p.stopping:
			running = append(running, p)
		}
	}
	switch n := len(running); {
	case n < f.spec:
		if now.Before(f.nextAt) {
			return
		}
		for i := n; i < f.spec; i++ {
			if err := f.startLocked(); err != nil {
				f.log.Error("autoscale: cannot start a local worker", "err", err)
				f.crashedLocked(now)
				return
			}
		}
	case n > f.spec:
		// Victims: marked first (in mark order), then not ready yet, then the newest.
		sort.Slice(running, func(i, j int) bool {
			a, b := running[i], running[j]
			ma, mb := f.marks[a.name], f.marks[b.name]
			if (ma > 0) != (mb > 0) {
				return ma > 0
			}
			if ma != mb {
				return ma < mb
			}
			ra, rb := now.Sub(a.started) >= f.cfg.ReadyAfter, now.Sub(b.started) >= f.cfg.ReadyAfter
			if ra != rb {
				return !ra
			}
			return a.started.After(b.started)
		})
		for _, p := range running[:n-f.spec] {
			f.stopLocked(p, now)
		}
	}
}

func exited(p *localProc) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (f *LocalFleet) startLocked() error {
	f.seq++
	name := f.cfg.Name + "-" + strconv.Itoa(f.seq)
	var args []string
	for _, a := range append(append([]string{}, f.cfg.Args...), f.cfg.Command[1:]...) {
		args = append(args, strings.ReplaceAll(a, "{name}", name))
	}
	cmd := exec.Command(f.cfg.Command[0], args...)
	cmd.Env = append(os.Environ(), f.cfg.Env...)
	cmd.SysProcAttr = workerProcAttr()
	p := &localProc{name: name, cmd: cmd, done: make(chan struct{})}
	if f.cfg.LogDir != "" {
		lf, err := os.OpenFile(filepath.Join(f.cfg.LogDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("worker log: %w", err)
		}
		cmd.Stdout, cmd.Stderr, p.logFile = lf, lf, lf
	} else {
		cmd.Stdout, cmd.Stderr = f.cfg.Stderr, f.cfg.Stderr
	}
	if err := cmd.Start(); err != nil {
		if p.logFile != nil {
			_ = p.logFile.Close()
		}
		return fmt.Errorf("start %s: %w", f.cfg.Command[0], err)
	}
	p.started = time.Now()
	f.procs[name] = p
	f.log.Info("autoscale: local worker started", "pod", name, "pid", cmd.Process.Pid)
	f.wg.Add(1)
	go f.wait(p)
	return nil
}

func (f *LocalFleet) stopLocked(p *localProc, now time.Time) {
	p.stopping, p.stopAt = true, now
	delete(f.marks, p.name)
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	f.log.Info("autoscale: local worker stopping (SIGTERM: drain)", "pod", p.name, "grace", f.cfg.Grace)
}

// wait reaps a process; one that exits without being stopped has crashed and is replaced
// by the next reconcile, after the backoff.
func (f *LocalFleet) wait(p *localProc) {
	defer f.wg.Done()
	err := p.cmd.Wait()
	if p.logFile != nil {
		_ = p.logFile.Close()
	}
	f.mu.Lock()
	p.err = err
	close(p.done)
	delete(f.procs, p.name)
	now := time.Now()
	if p.stopping {
		f.log.Info("autoscale: local worker exited", "pod", p.name, "after", now.Sub(p.stopAt).Round(time.Millisecond), "status", exitStatus(err))
	} else if !f.closed {
		f.crashes++
		f.log.Warn("autoscale: local worker exited on its own: restarting it", "pod", p.name, "status", exitStatus(err), "ran", now.Sub(p.started).Round(time.Millisecond))
		if now.Sub(p.started) > time.Minute {
			f.backoff = 0
		}
		f.crashedLocked(now)
	}
	f.mu.Unlock()
	f.kick()
}

func (f *LocalFleet) crashedLocked(now time.Time) {
	switch {
	case f.backoff == 0:
		f.backoff = 500 * time.Millisecond
	default:
		f.backoff = min(2*f.backoff, f.cfg.MaxBackoff)
	}
	f.nextAt = now.Add(f.backoff)
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + ws.Signal().String()
		}
		return "exit " + strconv.Itoa(ee.ExitCode())
	}
	return err.Error()
}

// shutdown stops every worker gracefully and waits for them.
func (f *LocalFleet) shutdown() {
	f.mu.Lock()
	f.closed = true
	now := time.Now()
	for _, p := range f.procs {
		if !p.stopping {
			f.stopLocked(p, now)
		}
	}
	f.mu.Unlock()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	t := time.NewTimer(f.cfg.Grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	f.mu.Lock()
	for _, p := range f.procs {
		if p.cmd.Process != nil {
			f.log.Warn("autoscale: local worker still running after its grace period: killing it", "pod", p.name)
			_ = p.cmd.Process.Kill()
			f.kills++
		}
	}
	f.mu.Unlock()
	<-done
}
