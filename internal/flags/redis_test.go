package flags

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis tests use the real server at 127.0.0.1:6379, DB 7 only, each under its own key and
// channel, deleted afterwards.
const (
	testRedisAddr = "127.0.0.1:6379"
	testRedisDB   = 7
)

type redisFixture struct {
	rdb          *redis.Client
	key, channel string
	store        *Store
}

func newRedisFixture(t *testing.T) *redisFixture {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: testRedisAddr, DB: testRedisDB})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("redis at %s is required: %v", testRedisAddr, err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	prefix := "fleettest:" + hex.EncodeToString(b) + ":"
	fx := &redisFixture{rdb: rdb, key: prefix + DefaultRedisKey, channel: prefix + DefaultRedisChannel}
	fx.store = NewStore(rdb, fx.key, fx.channel)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rdb.Del(ctx, fx.key)
		_ = rdb.Close()
	})
	return fx
}

// worker starts a Flags like a worker does, with its own client.
func (fx *redisFixture) worker(t *testing.T, opts Options) (*Flags, *logBuf) {
	t.Helper()
	log, lb := newLogger()
	rdb := redis.NewClient(&redis.Options{Addr: testRedisAddr, DB: testRedisDB})
	opts.Logger, opts.Redis, opts.RedisKey, opts.RedisChannel = log, rdb, fx.key, fx.channel
	if opts.LookupEnv == nil {
		opts.LookupEnv = envOf(nil)
	}
	f, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
		_ = rdb.Close()
	})
	return f, lb
}

func TestStore(t *testing.T) {
	fx := newRedisFixture(t)
	ctx := context.Background()
	s := fx.store
	if _, ok, err := s.Get(ctx, VoiceEnabled); ok || err != nil {
		t.Fatalf("empty store: %v %v", ok, err)
	}
	cases := []struct {
		name, value, want string
		err               error
	}{
		{VoiceEnabled, "On", "true", nil},
		{MaterializersPercent, " 10", "10", nil},
		{MaterializersPercent, "1000", "", ErrInvalidValue},
		{"VOICE_ENABLE", "true", "", ErrUnknownFlag},
	}
	for _, tc := range cases {
		got, err := s.Set(ctx, tc.name, tc.value)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Fatalf("Set(%s, %s): want %v, got %v", tc.name, tc.value, tc.err, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Fatalf("Set(%s, %s) = %q, %v", tc.name, tc.value, got, err)
		}
		// Plain strings in the hash, as Python reads them.
		if raw := fx.rdb.HGet(ctx, fx.key, tc.name).Val(); raw != tc.want {
			t.Fatalf("hash holds %q, want %q", raw, tc.want)
		}
	}
	all, err := s.List(ctx)
	if err != nil || len(all) != 2 || all[VoiceEnabled] != "true" || all[MaterializersPercent] != "10" {
		t.Fatalf("List = %v, %v", all, err)
	}
	if err := s.Unset(ctx, VoiceEnabled); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := s.Get(ctx, VoiceEnabled); ok || err != nil {
		t.Fatalf("after Unset: %q %v %v", v, ok, err)
	}
	if v, ok, _ := s.Get(ctx, MaterializersPercent); !ok || v != "10" {
		t.Fatalf("Get = %q %v", v, ok)
	}
}

// TestRedisChangeAppliedLive: two running workers apply a Set, a Python-style write and an
// Unset within 1 s, each logged with source redis.
func TestRedisChangeAppliedLive(t *testing.T) {
	fx := newRedisFixture(t)
	ctx := context.Background()
	// An hour of resync: only pub/sub can make these changes visible in time.
	env := envOf(map[string]string{MaterializersEnabled: "true"})
	w1, lb1 := fx.worker(t, Options{LookupEnv: env, RedisResync: time.Hour})
	w2, _ := fx.worker(t, Options{LookupEnv: env, RedisResync: time.Hour})
	workers := []*Flags{w1, w2}
	var mu sync.Mutex
	var got []Change
	w1.Subscribe(func(c Change) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, c)
	})

	steps := []struct {
		desc   string
		do     func() error
		want   bool
		source Source
	}{
		{"fleetctl flags set (rollback)", func() error {
			_, err := fx.store.Set(ctx, MaterializersEnabled, "false")
			return err
		}, false, SourceRedis},
		{"Python hset + publish", func() error {
			if err := fx.rdb.HSet(ctx, fx.key, MaterializersEnabled, "true").Err(); err != nil {
				return err
			}
			return fx.rdb.Publish(ctx, fx.channel, MaterializersEnabled).Err()
		}, true, SourceRedis},
		{"fleetctl flags unset", func() error { return fx.store.Unset(ctx, MaterializersEnabled) }, true, SourceEnv},
		{"set again", func() error {
			_, err := fx.store.Set(ctx, MaterializersEnabled, "0")
			return err
		}, false, SourceRedis},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.desc, err)
		}
		for i, w := range workers {
			took := eventually(t, time.Second, st.desc, func() bool {
				s, _ := w.Get(MaterializersEnabled)
				return s.Bool() == st.want && s.Source == st.source
			})
			t.Logf("%s: worker %d applied it after %v", st.desc, i+1, took)
		}
	}
	if n := strings.Count(lb1.String(), "source=redis"); n < 3 {
		t.Fatalf("changes not logged with source redis:\n%s", lb1)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 4 {
		t.Fatalf("subscriber saw %d changes, want 4: %+v", len(got), got)
	}
}

// TestRedisBadValueAndResync: a bad value written straight into the hash is rejected with a
// log line and the last good value stays; a write without a notification is picked up by
// the periodic re-read.
func TestRedisBadValueAndResync(t *testing.T) {
	fx := newRedisFixture(t)
	ctx := context.Background()
	if _, err := fx.store.Set(ctx, MaterializersPercent, "10"); err != nil {
		t.Fatal(err)
	}
	w, lb := fx.worker(t, Options{RedisResync: 200 * time.Millisecond})
	if s, _ := w.Get(MaterializersPercent); s.Value != "10" || s.Source != SourceRedis {
		t.Fatalf("initial read: %+v", s)
	}
	if err := fx.rdb.HSet(ctx, fx.key, MaterializersPercent, "eleven").Err(); err != nil {
		t.Fatal(err)
	}
	if err := fx.rdb.Publish(ctx, fx.channel, "x").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "rejection logged", func() bool { return strings.Contains(lb.String(), "flag value rejected") })
	time.Sleep(500 * time.Millisecond) // a few resyncs: still one line, still 10
	if n := strings.Count(lb.String(), "flag value rejected"); n != 1 || w.Int(MaterializersPercent) != 10 {
		t.Fatalf("want one rejection and 10 kept; got %d lines, %d", n, w.Int(MaterializersPercent))
	}
	// No publish: only the safety-net re-read sees it.
	if err := fx.rdb.HSet(ctx, fx.key, MaterializersPercent, "25").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "resync", func() bool { return w.Int(MaterializersPercent) == 25 })
	snap := w.Snapshot()
	if last := snap.Sources[len(snap.Sources)-1]; last.Source != SourceRedis || last.Rejections != 1 || last.LastLoad.IsZero() {
		t.Fatalf("redis source status: %+v", last)
	}
}

// TestRedisUnavailableAtStart: Start does not fail; the defaults hold and the error shows in
// the snapshot.
func TestRedisUnavailableAtStart(t *testing.T) {
	log, _ := newLogger()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DB: testRedisDB, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer rdb.Close()
	f, err := New(Options{Logger: log, LookupEnv: envOf(nil), Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(context.Background()); err == nil {
		t.Fatal("Reload should report the unreachable Redis")
	}
	snap := f.Snapshot()
	if last := snap.Sources[len(snap.Sources)-1]; last.LastError == "" {
		t.Fatalf("want the error in the snapshot: %+v", snap.Sources)
	}
	if f.Int(MaterializersPercent) != 100 {
		t.Fatal("defaults should hold")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
