// Package procstat reads a process's CPU time and resident memory from Linux's /proc and
// turns cumulative CPU seconds into utilisation. It serves the autoscaler's local target
// (worker CPU as a pod's CPU) and the load test's samples.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (100 on every
// Linux architecture Go supports).
const clockTicks = 100

// ProcSample is a process's CPU time used so far and its resident memory.
type ProcSample struct {
	CPUSeconds float64
	RSSBytes   int64
}

// ReadProc reads utime+stime from /proc/<pid>/stat and the resident set from
// /proc/<pid>/statm.
func ReadProc(pid int) (ProcSample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcSample{}, fmt.Errorf("procstat: %w", err)
	}
	// The command name is in parentheses and may hold spaces: fields start after ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return ProcSample{}, fmt.Errorf("procstat: /proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return ProcSample{}, fmt.Errorf("procstat: /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return ProcSample{}, fmt.Errorf("procstat: /proc/%d/stat: bad utime/stime", pid)
	}
	s := ProcSample{CPUSeconds: float64(ut+st) / clockTicks}
	statm, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return ProcSample{}, fmt.Errorf("procstat: %w", err)
	}
	g := strings.Fields(string(statm))
	if len(g) >= 2 {
		pages, err := strconv.ParseInt(g[1], 10, 64)
		if err == nil {
			s.RSSBytes = pages * int64(os.Getpagesize())
		}
	}
	return s, nil
}

// CPUMeter turns cumulative CPU seconds into utilisation between two samples.
type CPUMeter struct {
	last map[string]cpuPoint
}

type cpuPoint struct {
	at  time.Time
	cpu float64
}

// Observe records the cumulative CPU seconds of worker key at time at and returns its
// utilisation (cores used: 1 = one core busy) since the previous observation; ok is false
// on the first one or after a reset (a restarted process).
func (m *CPUMeter) Observe(key string, at time.Time, cpuSeconds float64) (cores float64, ok bool) {
	if m.last == nil {
		m.last = map[string]cpuPoint{}
	}
	prev, had := m.last[key]
	m.last[key] = cpuPoint{at: at, cpu: cpuSeconds}
	dt := at.Sub(prev.at).Seconds()
	if !had || dt <= 0 || cpuSeconds < prev.cpu {
		return 0, false
	}
	return (cpuSeconds - prev.cpu) / dt, true
}

// Forget drops a worker's last sample (it has gone).
func (m *CPUMeter) Forget(key string) { delete(m.last, key) }

// Retain drops the last samples of the keys keep rejects.
func (m *CPUMeter) Retain(keep func(key string) bool) {
	for k := range m.last {
		if !keep(k) {
			delete(m.last, k)
		}
	}
}
