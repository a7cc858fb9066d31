package ratelimit

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// TestSetRate: a rate set at run time applies from the next reservation with a fresh
// bucket (Celery's reset_rate_limits), replaces an existing one, and 0 lifts it; other
// tasks keep theirs.
func TestSetRate(t *testing.T) {
	l, err := New(map[string]string{"t.a": "1/s", "t.b": "2/s"}, nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(100, 0)
	l.now = func() time.Time { return now }
	reserve := func(task string) time.Duration {
		t.Helper()
		d, err := l.Reserve(context.Background(), task)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	reserve("t.a")
	reserve("t.a") // t.a's next turn is now 2 s away
	steps := []struct {
		name    string
		task    string
		rate    Rate
		limited bool
		waits   []time.Duration // successive reservations after the change
	}{
		{"new limit", "t.new", 10, true, []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond}},
		{"replaced limit gets a fresh bucket", "t.a", 4, true, []time.Duration{0, 250 * time.Millisecond}},
		{"lifted", "t.a", 0, false, []time.Duration{0, 0, 0}},
		{"lifting an unlimited task", "t.none", 0, false, []time.Duration{0}},
	}
	for _, st := range steps {
		l.SetRate(st.task, st.rate)
		if l.Limited(st.task) != st.limited || l.Rate(st.task) != st.rate {
			t.Errorf("%s: limited %v rate %v, want %v %v", st.name, l.Limited(st.task), l.Rate(st.task), st.limited, st.rate)
		}
		for i, want := range st.waits {
			if d := reserve(st.task); d != want {
				t.Errorf("%s: reservation %d waits %v, want %v", st.name, i, d, want)
			}
		}
	}
	if l.Rate("t.b") != 2 || reserve("t.b") != 0 || reserve("t.b") != 500*time.Millisecond {
		t.Error("t.b's limit changed with the others")
	}
}

// TestSetRateConcurrent: SetRate runs safely alongside reservations (go test -race).
func TestSetRateConcurrent(t *testing.T) {
	l, err := New(nil, nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if l.Limited("t.x") {
					_, _ = l.Reserve(ctx, "t.x")
				}
			}
		}()
	}
	for i := range 200 {
		l.SetRate("t.x", Rate(i%3)*1000)
	}
	cancel()
	wg.Wait()
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
