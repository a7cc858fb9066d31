package coalesce

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a Flush that records its batches and fails the items it is told to.
type recorder struct {
	mu      sync.Mutex
	batches [][]int
	fail    map[int]bool
	block   chan struct{} // when set, every flush waits for it
}

func (r *recorder) flush(_ context.Context, items []int) []error {
	if r.block != nil {
		<-r.block
	}
	r.mu.Lock()
	r.batches = append(r.batches, append([]int(nil), items...))
	r.mu.Unlock()
	var errs []error
	for i, it := range items {
		if r.fail[it] {
			if errs == nil {
				errs = make([]error, len(items))
			}
			errs[i] = fmt.Errorf("item %d failed", it)
		}
	}
	return errs
}

func (r *recorder) seen() map[int]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[int]int{}
	for _, b := range r.batches {
		for _, it := range b {
			m[it]++
		}
	}
	return m
}

func TestOutcomesAndBatching(t *testing.T) {
	tests := []struct {
		name     string
		calls    int
		limit    int
		parallel int
		fail     map[int]bool
	}{
		{"one call", 1, 8, 1, nil},
		{"many calls, small batches", 200, 4, 1, nil},
		{"many calls, some fail", 200, 64, 1, map[int]bool{3: true, 50: true, 199: true}},
		{"parallel round trips", 500, 16, 3, map[int]bool{7: true, 499: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{fail: tt.fail, block: make(chan struct{})}
			c := NewParallel(r.flush, tt.limit, tt.parallel, time.Second)
			defer c.Close()
			var wg sync.WaitGroup
			errs := make([]error, tt.calls)
			for i := range tt.calls {
				wg.Go(func() { errs[i] = c.Do(context.Background(), i) })
			}
			time.Sleep(50 * time.Millisecond) // let the calls queue up behind the first flush
			close(r.block)
			wg.Wait()
			for i, err := range errs {
				if (err != nil) != tt.fail[i] {
					t.Errorf("call %d: err %v, want failure %v", i, err, tt.fail[i])
				}
			}
			seen := r.seen()
			for i := range tt.calls {
				if seen[i] != 1 {
					t.Errorf("item %d flushed %d times", i, seen[i])
				}
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, b := range r.batches {
				if len(b) > tt.limit {
					t.Errorf("batch of %d > limit %d", len(b), tt.limit)
				}
			}
			if tt.calls > 1 && len(r.batches) >= tt.calls {
				t.Errorf("%d calls took %d round trips: nothing was coalesced", tt.calls, len(r.batches))
			}
		})
	}
}

// A call whose context ends before its item is sent is dropped; one already sent waits
// for its outcome.
func TestAbandonedCall(t *testing.T) {
	r := &recorder{block: make(chan struct{})}
	c := New(r.flush, 1, time.Second)
	defer c.Close()
	first := make(chan error, 1)
	go func() { first <- c.Do(context.Background(), 1) }() // taken, flush blocked
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := c.Do(ctx, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("abandoned call: %v", err)
	}
	close(r.block)
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}
	if err := c.Do(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	if seen := r.seen(); seen[2] != 0 || seen[1] != 1 || seen[3] != 1 {
		t.Errorf("flushed %v: the abandoned item must not be sent", seen)
	}
}

func TestClose(t *testing.T) {
	var flushed atomic.Int64
	c := New(func(_ context.Context, items []int) []error {
		time.Sleep(10 * time.Millisecond)
		flushed.Add(int64(len(items)))
		return nil
	}, 16, time.Second)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			if err := c.Do(context.Background(), i); err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("call %d: %v", i, err)
			}
		})
	}
	time.Sleep(5 * time.Millisecond)
	c.Close()
	wg.Wait()
	c.Close() // idempotent
	if err := c.Do(context.Background(), 99); !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close: %v", err)
	}
	if flushed.Load() == 0 {
		t.Error("nothing flushed")
	}
}

func TestWrongOutcomeCount(t *testing.T) {
	c := New(func(_ context.Context, items []int) []error { return make([]error, len(items)+1) }, 4, time.Second)
	defer c.Close()
	if err := c.Do(context.Background(), 1); err == nil {
		t.Error("a flush returning the wrong number of outcomes must fail its calls")
	}
}

// A lingering coalescer gathers calls that arrive one after another into one round trip,
// and sends a full batch without waiting out the linger.
func TestLinger(t *testing.T) {
	r := &recorder{}
	c := NewLingering(r.flush, 4, 200*time.Millisecond, time.Second)
	defer c.Close()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * 5 * time.Millisecond)
			if err := c.Do(context.Background(), i); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Errorf("a full batch waited %v", d)
	}
	r.mu.Lock()
	n := len(r.batches)
	r.mu.Unlock()
	if n != 1 {
		t.Errorf("%d round trips, want 1", n)
	}
	start = time.Now()
	if err := c.Do(context.Background(), 9); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("a lone call returned after %v, before the linger", d)
	}
}
