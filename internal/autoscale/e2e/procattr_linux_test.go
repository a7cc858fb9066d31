package e2e

import "syscall"

// childProcAttr has the kernel stop the autoscaler (SIGTERM: it drains its workers) when the
// test process dies, e.g. on a test timeout.
func childProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} }
