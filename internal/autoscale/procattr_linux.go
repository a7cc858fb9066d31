package autoscale

import "syscall"

// workerProcAttr puts a worker in its own process group (a terminal's Ctrl-C reaches only the
// autoscaler, which then drains the workers) and has the kernel send it SIGTERM should the
// autoscaler die without stopping it, so that no worker outlives its supervisor.
func workerProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
