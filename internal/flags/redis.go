package flags

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// loadRedis reads the hash and applies it; a failed read keeps the last good values.
func (f *Flags) loadRedis(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	vals, err := f.opts.Redis.HGetAll(ctx, f.opts.RedisKey).Result()
	if err != nil {
		err = fmt.Errorf("flags: redis HGETALL %s: %w", f.opts.RedisKey, err)
		f.sourceError(SourceRedis, err)
		return err
	}
	f.sourceLoaded(SourceRedis)
	f.apply(SourceRedis, vals)
	return nil
}

// redisWatcher keeps the Redis source live: a subscriber goroutine turns every message on
// the channel (and every (re)subscription) into a reload request; a loader goroutine reloads
// on request and every RedisResync.
type redisWatcher struct {
	f      *Flags
	pubsub *redis.PubSub
	reload chan struct{} // capacity 1: requests coalesce
	once   sync.Once
}

func newRedisWatcher(f *Flags) *redisWatcher {
	return &redisWatcher{f: f, reload: make(chan struct{}, 1)}
}

func (w *redisWatcher) start(ctx context.Context) {
	// Subscribe first, then read: a change published in between is not lost.
	w.pubsub = w.f.opts.Redis.Subscribe(ctx, w.f.opts.RedisChannel)
	_ = w.f.loadRedis(ctx)
	w.f.wg.Go(func() { w.receive(ctx) })
	w.f.wg.Go(func() { w.load(ctx) })
}

func (w *redisWatcher) request() {
	select {
	case w.reload <- struct{}{}:
	default:
	}
}

func (w *redisWatcher) receive(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		msg, err := w.pubsub.ReceiveTimeout(ctx, time.Second)
		if err != nil {
			var ne net.Error
			if ctx.Err() != nil || errors.Is(err, redis.ErrClosed) {
				return
			}
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			w.f.sourceError(SourceRedis, fmt.Errorf("flags: redis subscribe %s: %w", w.f.opts.RedisChannel, err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		switch msg.(type) {
		case *redis.Subscription, *redis.Message:
			// (Re)subscribed, possibly after missing messages, or told of a change.
			w.request()
		}
	}
}

func (w *redisWatcher) load(ctx context.Context) {
	t := time.NewTicker(w.f.opts.RedisResync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.reload:
		case <-t.C:
		}
		_ = w.f.loadRedis(ctx)
	}
}

func (w *redisWatcher) close() error {
	var err error
	w.once.Do(func() {
		if w.pubsub != nil {
			err = w.pubsub.Close()
		}
	})
	return err
}

// Store reads and writes the flags in Redis, for `fleetctl flags` and the rollback command.
// Set and Unset notify every worker on the channel.
type Store struct {
	rdb          redis.UniversalClient
	key, channel string
}

// NewStore returns a store on the hash key, notifying on channel ("" for the defaults
// fleet:flags and fleet:flags:changed).
func NewStore(rdb redis.UniversalClient, key, channel string) *Store {
	if key == "" {
		key = DefaultRedisKey
	}
	if channel == "" {
		channel = DefaultRedisChannel
	}
	return &Store{rdb: rdb, key: key, channel: channel}
}

// Get returns the value stored for name and whether there is one.
func (s *Store) Get(ctx context.Context, name string) (string, bool, error) {
	v, err := s.rdb.HGet(ctx, s.key, name).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("flags: get %s: %w", name, err)
	}
	return v, true, nil
}

// Set validates value for the named flag, stores its canonical form and notifies the
// workers. It returns the canonical value; an unknown name or bad value wraps ErrUnknownFlag
// or ErrInvalidValue and changes nothing.
func (s *Store) Set(ctx context.Context, name, value string) (string, error) {
	canon, err := Parse(name, value)
	if err != nil {
		return "", fmt.Errorf("flags: set: %w", err)
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.key, name, canon)
		p.Publish(ctx, s.channel, name)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("flags: set %s: %w", name, err)
	}
	return canon, nil
}

// Unset removes the Redis value of name (the file, env or default value applies again) and
// notifies the workers. Unknown names may be removed too, to clean up.
func (s *Store) Unset(ctx context.Context, name string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HDel(ctx, s.key, name)
		p.Publish(ctx, s.channel, name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("flags: unset %s: %w", name, err)
	}
	return nil
}

// List returns every value in the hash, including names this version does not know.
func (s *Store) List(ctx context.Context) (map[string]string, error) {
	m, err := s.rdb.HGetAll(ctx, s.key).Result()
	if err != nil {
		return nil, fmt.Errorf("flags: list: %w", err)
	}
	return m, nil
}
