package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a contender process, started in its own process group.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *tailBuffer
	output *tailBuffer // stdout and stderr interleaved, for error reports
	done   chan struct{}
	err    error
}

func startProc(name string, argv, env []string, dir string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{name: name, cmd: cmd, stdout: newTailBuffer(16 << 10), output: newTailBuffer(16 << 10), done: make(chan struct{})}
	cmd.Stdout = multiWriter{p.stdout, p.output}
	cmd.Stderr = p.output
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

type multiWriter []*tailBuffer

func (m multiWriter) Write(b []byte) (int, error) {
	for _, w := range m {
		_, _ = w.Write(b)
	}
	return len(b), nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended (and with what).
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends sig (SIGTERM: warm shutdown) and kills the process group if the process has
// not exited within grace. It reports an error when the process had to be killed.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	if done, _ := p.exited(); done {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	p.killGroup() // the leader is not reaped yet, so the group id is still ours
	<-p.done
	return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, grace)
}

// killGroup kills the process group our child leads (it and e.g. its pool children).
func (p *proc) killGroup() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// rssSampler tracks the peak RSS of a process tree: VmHWM of every process seen in it
// (the root and its descendants, e.g. Python's prefork children), sampled periodically.
type rssSampler struct {
	root   int
	mu     sync.Mutex
	hwm    map[int]int64 // pid → highest VmHWM seen, KiB
	anon   map[int]int64 // pid → highest RssAnon seen, KiB
	cpu    map[int]int64 // pid → utime+stime last seen, clock ticks
	stop   chan struct{}
	wg     sync.WaitGroup
	nprocs int
}

func newRSSSampler(root int, every time.Duration) *rssSampler {
	s := &rssSampler{root: root, hwm: make(map[int]int64), anon: make(map[int]int64), cpu: make(map[int]int64),
		stop: make(chan struct{})}
	s.sample()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *rssSampler) sample() {
	pids := processTree(s.root)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pid := range pids {
		hwm, anon, ok := procMem(pid)
		if ok {
			s.hwm[pid] = max(s.hwm[pid], hwm)
			s.anon[pid] = max(s.anon[pid], anon)
		}
		if t, ok := procCPU(pid); ok {
			s.cpu[pid] = max(s.cpu[pid], t)
		}
	}
	s.nprocs = max(s.nprocs, len(pids))
}

// finish takes a last sample, stops sampling and returns the summed peak RSS in MiB, the
// summed peak of its anonymous part (the process's own memory: heap, stacks; the rest is
// file-backed, mostly the program's mapped binary, shared and reclaimable), the largest
// number of processes seen at once and the CPU time (user + system) the process tree had
// used by the last sample.
func (s *rssSampler) finish() (mib, anonMiB float64, procs int, cpu time.Duration) {
	s.sample()
	close(s.stop)
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var kb, anon int64
	for _, v := range s.hwm {
		kb += v
	}
	for _, v := range s.anon {
		anon += v
	}
	var ticks int64
	for _, v := range s.cpu {
		ticks += v
	}
	return float64(kb) / 1024, float64(anon) / 1024, s.nprocs, ticksToDuration(ticks)
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every Linux
// architecture Go builds for.
const clockTicks = 100

func ticksToDuration(t int64) time.Duration { return time.Duration(t) * time.Second / clockTicks }

// procCPU reads utime + stime of pid (clock ticks) from /proc/<pid>/stat.
func procCPU(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name (field 2) may hold spaces: fields are counted after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 { // state is field 3, utime 14, stime 15
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	return u + st, err1 == nil && err2 == nil
}

// serverCPU is the CPU time used so far by the broker and result-backend servers on this
// machine (RabbitMQ's beam.smp and redis-server), so that a run's cost on the servers can be
// told apart from its own.
func serverCPU() time.Duration {
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	var ticks int64
	for _, f := range dirs {
		comm, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		switch strings.TrimSpace(string(comm)) {
		case "beam.smp", "redis-server":
			pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			if err != nil {
				continue
			}
			if t, ok := procCPU(pid); ok {
				ticks += t
			}
		}
	}
	return ticksToDuration(ticks)
}

// processTree lists root and all its live descendants.
func processTree(root int) []int {
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children(out[i])...)
	}
	return out
}

// children lists pid's child processes from /proc/<pid>/task/*/children.
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, s := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(s); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// procMem reads the peak resident set size (VmHWM) and the current anonymous resident
// memory (RssAnon) of pid, in KiB.
func procMem(pid int) (hwm, anon int64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, false
	}
	field := func(line, name string) (int64, bool) {
		rest, found := strings.CutPrefix(line, name)
		if !found {
			return 0, false
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		return kb, err == nil
	}
	var gotHWM bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if kb, found := field(line, "VmHWM:"); found {
			hwm, gotHWM = kb, true
		} else if kb, found := field(line, "RssAnon:"); found {
			anon = kb
		}
	}
	return hwm, anon, gotHWM
}

// goBuild builds main packages of the module into dir (each binary named after its
// directory), with the flags `make build` uses.
func goBuild(ctx context.Context, root, dir string, pkgs ...string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return errors.New("the go command is not on PATH (needed to build the bench binaries)")
	}
	args := append([]string{"build", "-trimpath", "-ldflags", "-s -w", "-o", dir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, gobin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build and the image
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, buf.String())
	}
	return nil
}

// moduleRoot finds the directory of the fleet module's go.mod from the working directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module denis.io/fleet")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: no go.mod of denis.io/fleet above the working directory")
		}
		dir = parent
	}
}
