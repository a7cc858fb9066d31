package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// testRedisURL is the Redis DB of the worker-side tests (keys are unique per test).
const testRedisURL = "redis://127.0.0.1:6379/3"

// TestParseRate pins down Celery's rate syntax (celery.utils.time.rate).
func TestParseRate(t *testing.T) {
	cases := []struct {
		in       string
		want     Rate
		interval time.Duration
		bad      bool
	}{
		{"", 0, 0, false},
		{"0", 0, 0, false},
		{"10", 10, 100 * time.Millisecond, false},
		{"10/s", 10, 100 * time.Millisecond, false},
		{"5/s", 5, 200 * time.Millisecond, false},
		{"100/m", Rate(100.0 / 60), 600 * time.Millisecond, false},
		{"1000/h", Rate(1000.0 / 3600), 3600 * time.Millisecond, false},
		{"0.5/s", 0.5, 2 * time.Second, false},
		{"10/d", 0, 0, true},
		{"x/s", 0, 0, true},
		{"-1/s", 0, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseRate(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("ParseRate(%q) = %v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want || got.Interval() != tc.interval {
				t.Fatalf("ParseRate(%q) = %v (interval %v), %v; want %v (%v)", tc.in, got, got.Interval(), err, tc.want, tc.interval)
			}
		})
	}
}

// TestLocalBucket pins down Celery's per-worker TokenBucket(rate, capacity=1): the first
// task goes at once, the next ones one interval apart, in arrival order; unlimited tasks
// never wait.
func TestLocalBucket(t *testing.T) {
	l, err := New(map[string]string{"t.limited": "5/s", "t.free": ""}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(100, 0)
	l.now = func() time.Time { return now }
	var waits []time.Duration
	for range 20 {
		d, err := l.Reserve(context.Background(), "t.limited")
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, d)
	}
	for i, d := range waits {
		if want := time.Duration(i) * 200 * time.Millisecond; d != want {
			t.Fatalf("reservation %d waits %v, want %v", i, d, want)
		}
	}
	now = now.Add(10 * time.Second) // idle: the bucket is full again (capacity 1)
	if d, _ := l.Reserve(context.Background(), "t.limited"); d != 0 {
		t.Fatalf("after idling: wait %v, want 0", d)
	}
	if d, _ := l.Reserve(context.Background(), "t.free"); d != 0 || l.Limited("t.free") {
		t.Fatalf("unlimited task waits %v", d)
	}
}

// TestWaitCancelled: a waiter gives up with the context's cause.
func TestWaitCancelled(t *testing.T) {
	l, _ := New(map[string]string{"t": "1/h"}, nil, nil)
	if err := l.Wait(context.Background(), "t"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() {
		time.Sleep(50 * time.Millisecond)
		cancel(context.DeadlineExceeded)
	}()
	if err := l.Wait(ctx, "t"); err != context.DeadlineExceeded {
		t.Fatalf("Wait = %v, want the cause", err)
	}
}

// TestFleetWideGCRA pins down the fleet-wide mode: two limiters (two workers) sharing one
// Redis schedule hand out turns one interval apart between them, and a broken store falls
// back to the local bucket.
func TestFleetWideGCRA(t *testing.T) {
	opts, _ := goredis.ParseURL(testRedisURL)
	client := goredis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	if err := client.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("redis: %v", err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	store := NewRedisGCRA(client, "fleet.test."+hex.EncodeToString(b)+".")
	t.Cleanup(func() { client.Del(context.Background(), store.Key("t")) })
	var workers []*Limiter
	for range 2 {
		l, err := New(map[string]string{"t": "20/s"}, store, nil)
		if err != nil {
			t.Fatal(err)
		}
		l.SetFleetWide(true)
		workers = append(workers, l)
	}
	var mu sync.Mutex
	var waits []time.Duration
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := workers[i%2].Reserve(context.Background(), "t")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			waits = append(waits, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(waits)
	// Turns are 50ms apart on the server clock; calls made later wait less, so the k-th
	// turn waits at least k×50ms minus the time that passed since the first call.
	if waits[0] > 50*time.Millisecond || waits[9] < 350*time.Millisecond {
		t.Fatalf("waits %v: want 10 turns spread 50ms apart", waits)
	}
	if !workers[0].FleetWide() {
		t.Fatal("fleet-wide mode should be on")
	}

	broken := NewRedisGCRA(goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1}), "")
	l, _ := New(map[string]string{"t": "1/s"}, broken, nil)
	now := time.Unix(100, 0)
	l.now = func() time.Time { return now }
	l.SetFleetWide(true)
	for i, want := range []time.Duration{0, time.Second} {
		d, err := l.Reserve(context.Background(), "t")
		if err != nil || d != want {
			t.Fatalf("fallback reservation %d: %v, %v; want %v from the local bucket", i, d, err, want)
		}
	}
}
