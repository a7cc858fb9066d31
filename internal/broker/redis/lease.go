package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// refreshLoop re-scores the unacked_index entry of every delivery this broker holds, so
// that no sweep (kombu's or ours) takes work in progress for a lost message.
func (b *Broker) refreshLoop() {
	t := time.NewTicker(b.refreshEvery)
	defer t.Stop()
	var bo backoff
	for {
		select {
		case <-b.life.Done():
			return
		case <-t.C:
		}
		err := b.refresh(b.life)
		switch {
		case err != nil && b.life.Err() == nil:
			if bo.fail() {
				b.log.Warn("redis: refreshing leases failed; will retry", "err", err)
			}
		case err == nil && bo.recover():
			b.log.Info("redis: refreshing leases recovered")
		}
	}
}

func (b *Broker) refresh(ctx context.Context) error {
	b.mu.Lock()
	members := make([]goredis.Z, 0, len(b.held))
	now := nowFloat()
	for l := range b.held {
		members = append(members, goredis.Z{Score: now, Member: l.tag})
	}
	b.mu.Unlock()
	if len(members) == 0 {
		return nil
	}
	if err := b.client.ZAddXX(ctx, b.keys.unackedIndex(), members...).Err(); err != nil {
		return fmt.Errorf("redis: refresh %d leases: %w", len(members), err)
	}
	return nil
}

// sweepLoop runs the restore sweep when a consumer starts and then periodically, until
// ctx is done.
func (b *Broker) sweepLoop(ctx context.Context) {
	t := time.NewTicker(b.sweepEvery)
	defer t.Stop()
	for {
		n, err := b.sweep(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			b.log.Warn("redis: restore sweep failed", "err", err)
		case n > 0:
			b.log.Info("redis: restored messages whose lease expired", "count", n,
				"visibility_timeout", b.vt)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweep is kombu's restore_visible: under unacked_mutex, restore every lease older than
// the visibility timeout, except those this broker holds itself. It returns how many
// messages it restored.
//
// Two departures keep a dead sweeper from blocking restores for kombu's 5 minutes: our
// sweeps hold the mutex for mutexTTL at most (a few sweep periods, the sweep's own
// deadline), and when someone else's holding of it outlasts both the visibility timeout
// and our mutexTTL (its holder died mid-sweep), we sweep without it. That is safe
// because every restore is one atomic script that checks the lease record first, and
// kombu's restore_by_tag removes a lease in one MULTI before pushing it: a lease is
// restored by exactly one sweeper whoever runs concurrently.
func (b *Broker) sweep(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, b.mutexTTL*3/4)
	defer cancel()
	token := newTag()
	got, err := b.client.SetNX(ctx, b.keys.mutex(), token, b.mutexTTL).Result()
	if err != nil {
		return 0, fmt.Errorf("redis: sweep: take %s: %w", b.keys.mutex(), err)
	}
	if got {
		b.stale.forget()
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := unlockScript.Run(uctx, b.client, []string{b.keys.mutex()}, token).Err(); err != nil {
				b.log.Warn("redis: sweep: release mutex", "err", err)
			}
		}()
	} else {
		holder, err := b.client.Get(ctx, b.keys.mutex()).Result()
		if err != nil && !errors.Is(err, goredis.Nil) {
			return 0, fmt.Errorf("redis: sweep: read %s: %w", b.keys.mutex(), err)
		}
		if !b.stale.abandoned(holder, max(b.vt, b.mutexTTL)) {
			return 0, nil // another consumer is sweeping
		}
		b.log.Warn("redis: sweep: unacked_mutex held by the same owner for longer than a sweep can take; its holder is presumed dead, sweeping without it",
			"mutex", b.keys.mutex(), "holder", holder)
	}

	ceil := nowFloat() - b.vt.Seconds()
	// ZREVRANGEBYSCORE index ceil 0, as kombu does (ZRANGE … BYSCORE REV: start is the max).
	stale, err := b.client.ZRangeArgs(ctx, goredis.ZRangeArgs{
		Key: b.keys.unackedIndex(), Start: formatScore(ceil), Stop: "0", ByScore: true, Rev: true,
	}).Result()
	if err != nil {
		return 0, fmt.Errorf("redis: sweep: scan %s: %w", b.keys.unackedIndex(), err)
	}
	if len(stale) == 0 {
		return 0, nil
	}
	mine := make(map[string]bool)
	b.mu.Lock()
	for l := range b.held {
		mine[l.tag] = true
	}
	b.mu.Unlock()
	restored := 0
	var errs []error
	for _, tag := range stale {
		if mine[tag] {
			continue
		}
		ok, err := b.restoreStale(ctx, tag, ceil)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if ok {
			restored++
		}
	}
	return restored, errors.Join(errs...)
}

// restoreStale restores one expired lease the way kombu's restore_by_tag does: the
// envelope, marked redelivered, goes to the consuming end of every queue its exchange
// and routing key lead to. A lease that leads nowhere is left in place and logged.
func (b *Broker) restoreStale(ctx context.Context, tag string, ceil float64) (bool, error) {
	base := []string{b.keys.unacked(), b.keys.unackedIndex()}
	rec, err := b.client.HGet(ctx, b.keys.unacked(), tag).Bytes()
	if errors.Is(err, goredis.Nil) {
		// A stray index entry: drop it (the script only removes what is unleased).
		err := restoreScript.Run(ctx, b.client, base, tag, "", "", formatScore(ceil)).Err()
		if err != nil {
			return false, fmt.Errorf("redis: sweep: clean index entry %s: %w", tag, err)
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("redis: sweep: read lease %s: %w", tag, err)
	}
	env, exchange, routingKey, err := parseRecord(rec)
	if err != nil {
		b.log.Warn("redis: sweep: unreadable lease left in place", "tag", tag, "err", err)
		return false, nil
	}
	var redelivered []byte
	var element string
	if json.Unmarshal(env, &element) == nil {
		// A placeholder lease of an element the fetch script could not read (its consumer
		// died before replacing it): the element goes back as it was.
		redelivered = []byte(element)
	} else if redelivered, err = markRedelivered(env); err != nil {
		b.log.Warn("redis: sweep: unreadable envelope left in place", "tag", tag, "err", err)
		return false, nil
	}
	var queues []string
	if exchange == "" {
		if routingKey != "" {
			queues = []string{routingKey}
		}
	} else {
		members, err := b.client.SMembers(ctx, b.keys.binding(exchange)).Result()
		if err != nil {
			return false, fmt.Errorf("redis: sweep: bindings of %s: %w", exchange, err)
		}
		queues = directRoute(members, routingKey)
	}
	if len(queues) == 0 {
		b.log.Warn("redis: sweep: expired lease routes to no queue; left in place",
			"tag", tag, "exchange", exchange, "routing_key", routingKey)
		return false, nil
	}
	prio := envelopePriority(env)
	keys := append(base[:2:2], make([]string, 0, len(queues))...)
	for _, q := range queues {
		keys = append(keys, b.keys.listFor(q, prio))
	}
	n, err := restoreScript.Run(ctx, b.client, keys, tag, rec, redelivered, formatScore(ceil)).Int()
	if err != nil {
		return false, fmt.Errorf("redis: sweep: restore %s: %w", tag, err)
	}
	return n == 1, nil
}

// envelopePriority reads properties.priority as kombu's _get_message_priority does.
func envelopePriority(env []byte) int {
	var e struct {
		Properties struct {
			Priority any `json:"priority"`
		} `json:"properties"`
	}
	if err := unmarshalPy(env, &e); err != nil {
		return 0
	}
	return clamp(integer(e.Properties.Priority, 0), 0, 9)
}

// heldMutex tracks who holds unacked_mutex across our sweeps, to tell a sweeper that died
// holding it from one that is working.
type heldMutex struct {
	mu     sync.Mutex
	holder string
	since  time.Time
}

// abandoned reports whether holder has held the mutex for longer than limit, as seen by
// successive calls.
func (h *heldMutex) abandoned(holder string, limit time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if holder == "" || holder != h.holder {
		h.holder, h.since = holder, time.Now()
		return false
	}
	return time.Since(h.since) > limit
}

func (h *heldMutex) forget() {
	h.mu.Lock()
	h.holder = ""
	h.mu.Unlock()
}
