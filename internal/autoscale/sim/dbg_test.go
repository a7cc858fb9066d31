package sim

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

func TestDbg(t *testing.T) {
	if os.Getenv("DBG") == "" {
		t.Skip()
	}
	s := DefaultSetup()
	trs := Traces(s.Params)
	if n := os.Getenv("TR"); n != "" {
		tr, _ := TraceByName(s.Params, n)
		trs = []*Trace{tr}
	}
	start := time.Now()
	res, err := Run(context.Background(), s, trs, Seeds(1, 3), Options{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("elapsed", time.Since(start))
	for _, r := range res {
		fmt.Printf("%s %-12s s%d qmax=%4.0f above=%5.0f wp99=%6.1f wm=%6.1f x%.2f ev=%3.0f up=%2.0f dn=%2.0f rev=%2.0f ttr=%5.0f cpu=%.2f killed=%3.0f stop=%v/%v\n",
			r.Trace, r.Controller, r.Seed, r.Qmax, r.SecondsAbove100, r.WaitP99, r.WorkerMinutes, r.WorkerMinutesVsOr, r.ScaleEvents, r.ScaleUps, r.ScaleDowns, r.Reversals, r.TTR, r.CPUP95, r.KilledInFlight, r.StopLatency, r.StopViolations)
	}
}
