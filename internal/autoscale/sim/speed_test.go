package sim

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestSpeed(t *testing.T) {
	if os.Getenv("SPEED") == "" {
		t.Skip()
	}
	s := DefaultSetup()
	start := time.Now()
	_, err := Run(context.Background(), s, Traces(s.Params), Seeds(1, 3), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("7 traces x 3 seeds x 5: %v", time.Since(start))
}
