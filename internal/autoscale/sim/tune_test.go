//go:build !race

package sim

import (
	"context"
	"testing"
)

// TestTuneRecorded runs the full grid search on the training seeds and checks that
// DefaultSetup records its outcome (RESULTS.md quotes it). It is left out under the race
// detector, which makes the 250 runs too slow; the search itself is covered by TestTune.
func TestTuneRecorded(t *testing.T) {
	if testing.Short() {
		t.Skip("the full grid search takes a few seconds")
	}
	s := DefaultSetup()
	got, err := Tune(context.Background(), s, Grid(s.Params), TrainingSeeds(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.Best.HPA != s.HPA || got.Best.KEDAQL != s.KEDAQL || got.Best.KEDARate != s.KEDARate {
		for _, c := range got.Candidates[:8] {
			t.Logf("%v: Qmax %.0f, %.0f s above 100, %.1f worker-min", c, c.Qmax, c.Above100, c.WorkerMinutes)
		}
		t.Fatalf("grid search found\n  %+v\n  %+v\n  %+v\nDefaultSetup records\n  %+v\n  %+v\n  %+v",
			got.Best.HPA, got.Best.KEDAQL, got.Best.KEDARate, s.HPA, s.KEDAQL, s.KEDARate)
	}
}
