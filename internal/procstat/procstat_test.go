package procstat

import (
	"os"
	"testing"
	"time"
)

func TestReadProcAndCPUMeter(t *testing.T) {
	s0, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s0.RSSBytes <= 0 {
		t.Fatalf("rss %d", s0.RSSBytes)
	}
	var m CPUMeter
	t0 := time.Now()
	if _, ok := m.Observe("me", t0, s0.CPUSeconds); ok {
		t.Fatal("first observation has no rate")
	}
	x := 0
	for time.Since(t0) < 300*time.Millisecond { // burn CPU
		x++
	}
	s1, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cores, ok := m.Observe("me", time.Now(), s1.CPUSeconds)
	if !ok || cores <= 0 || cores > 4 { // > 0: the machine may be busy with other tests
		t.Fatalf("busy loop measured at %.2f cores (ok %v, %d)", cores, ok, x)
	}
	if _, ok := m.Observe("me", time.Now(), 0); ok {
		t.Fatal("a counter reset (restarted process) must not give a rate")
	}
	if _, err := ReadProc(1 << 30); err == nil {
		t.Fatal("no such process: want an error")
	}
}
