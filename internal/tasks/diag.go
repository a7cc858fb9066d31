package tasks

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Names of the built-in diagnostic tasks. Tests, `fleetctl ping` and the load test rely on
// them; their names and semantics are part of the fleet's interface.
const (
	DiagAdd   = "diag.add"
	DiagEcho  = "diag.echo"
	DiagSleep = "diag.sleep"
	DiagCPU   = "diag.cpu"
	DiagFail  = "diag.fail"
)

// RegisterDiag registers the diagnostic tasks on reg:
//
//	diag.add(x, y)      x + y; integers stay exact integers, floats stay floats
//	diag.echo(value)    value unchanged
//	diag.sleep(seconds) sleeps, returns seconds; fails early when the task is cancelled
//	diag.cpu(ms)        burns one core for ms milliseconds, returns ms
//	diag.fail(message)  fails with builtins.RuntimeError(message)
//	diag.flaky(failures) retries itself (countdown 0.1 s) until its retries reach failures,
//	                    then returns the number of attempts
func RegisterDiag(reg *Registry) {
	reg.HandleFunc(DiagAdd, diagAdd)
	reg.HandleFunc(DiagEcho, diagEcho)
	reg.HandleFunc(DiagSleep, diagSleep)
	reg.HandleFunc(DiagCPU, diagCPU)
	reg.HandleFunc(DiagFail, diagFail)
	reg.HandleFunc(DiagFlaky, diagFlaky)
}

func diagAdd(_ context.Context, r *Request) (any, error) {
	x, err := r.Number(0, "x")
	if err != nil {
		return nil, err
	}
	y, err := r.Number(1, "y")
	if err != nil {
		return nil, err
	}
	return AddNumbers(x, y)
}

func diagEcho(_ context.Context, r *Request) (any, error) {
	v, ok := r.Value(0, "value")
	if !ok {
		return nil, TypeError("%s() missing required argument: 'value'", r.Name)
	}
	return v, nil
}

func diagSleep(ctx context.Context, r *Request) (any, error) {
	n, err := r.Number(0, "seconds")
	if err != nil {
		return nil, err
	}
	secs, err := r.Float(0, "seconds")
	if err != nil {
		return nil, err
	}
	if secs < 0 || math.IsNaN(secs) || math.IsInf(secs, 0) {
		return nil, ValueError("sleep length must be a finite non-negative number, got %s", n)
	}
	t := time.NewTimer(time.Duration(secs * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return n, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("diag.sleep(%s) interrupted: %w", n, context.Cause(ctx))
	}
}

func diagCPU(ctx context.Context, r *Request) (any, error) {
	n, err := r.Number(0, "ms")
	if err != nil {
		return nil, err
	}
	ms, err := r.Float(0, "ms")
	if err != nil {
		return nil, err
	}
	if ms < 0 || math.IsNaN(ms) || math.IsInf(ms, 0) {
		return nil, ValueError("ms must be a finite non-negative number, got %s", n)
	}
	deadline := time.Now().Add(time.Duration(ms * float64(time.Millisecond)))
	x := uint64(1)
	for i := 0; time.Now().Before(deadline); i++ {
		for j := 0; j < 1000; j++ { // a little arithmetic between clock reads
			x = x*6364136223846793005 + 1442695040888963407
		}
		if i%64 == 0 && ctx.Err() != nil {
			return nil, fmt.Errorf("diag.cpu(%s) interrupted: %w", n, context.Cause(ctx))
		}
	}
	_ = x
	return n, nil
}

func diagFail(_ context.Context, r *Request) (any, error) {
	msg, err := r.String(0, "message")
	if err != nil {
		return nil, err
	}
	return nil, Exception("builtins", "RuntimeError", msg)
}
