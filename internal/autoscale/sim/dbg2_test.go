package sim

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
	"denis.io/fleet/internal/autoscale"
)

func TestDbg2(t *testing.T) {
	if os.Getenv("DBG2") == "" {
		t.Skip()
	}
	s := DefaultSetup()
	tr, _ := TraceByName(s.Params, os.Getenv("TR"))
	seed, _ := strconv.Atoi(os.Getenv("SEED"))
	ctl := os.Getenv("CTL")
	ld := realise(s.Params, tr, uint64(seed))
	verbose := os.Getenv("V") != ""
	r, err := s.runOne(ld, ctl, uint64(seed), func(d autoscale.Decision) {
		if verbose || d.Changed() {
			fmt.Printf("%v cur=%d des=%d rule=%s need=%+v in=%+v | %s victims=%d\n", d.Time.Sub(simEpoch()).Round(time.Second), d.Current, d.Desired, d.Rule, d.Needs, d.Inputs, d.Reason, len(d.Victims))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range r.events {
		fmt.Printf("  %v %d→%d %s\n", e.at.Round(time.Second), e.from, e.to, e.by)
	}
	fmt.Printf("%+v\n", r)
}
