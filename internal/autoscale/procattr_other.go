//go:build !linux

package autoscale

import "syscall"

// workerProcAttr puts a worker in its own process group (a terminal's Ctrl-C reaches only the
// autoscaler, which then drains the workers).
func workerProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
