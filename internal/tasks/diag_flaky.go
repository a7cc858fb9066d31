package tasks

import (
	"context"
	"time"
)

// DiagFlaky is the name of the diagnostic task that fails a given number of times by
// asking for retries (see diagFlaky).
const DiagFlaky = "diag.flaky"

// flakyCountdown is the countdown of diag.flaky's retries.
const flakyCountdown = 100 * time.Millisecond

// diagFlaky is diag.flaky(failures): while its retries header is below failures it asks
// for a retry with countdown 0.1 s (no cause, as Celery's self.retry(countdown=0.1)); then
// it returns the number of attempts, failures + 1. With max_retries below failures it
// ends in FAILURE MaxRetriesExceededError.
func diagFlaky(_ context.Context, r *Request) (any, error) {
	n, err := r.Int(0, "failures")
	if err != nil {
		return nil, err
	}
	if int64(r.Retries) < n {
		return nil, Retry(nil, Countdown(flakyCountdown))
	}
	return r.Retries + 1, nil
}
