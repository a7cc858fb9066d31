package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"denis.io/fleet/internal/broker"
)

var _ broker.ConsumerController = (*Broker)(nil)

// queueSet is the queue set of one Consume. Its fetch loop brings its round robin up to
// date before every fetch (refresh) and hands deliveries over through handOver;
// AddQueue and CancelQueue change it.
type queueSet struct {
	opMu sync.Mutex // serializes AddQueue and CancelQueue

	mu      sync.Mutex
	queues  []string
	stops   map[string]chan struct{} // per consumed queue, closed when it is cancelled
	changed chan struct{}            // closed and replaced on every change
	version atomic.Uint64
	applied uint64 // the version the fetch loop's round robin reflects; fetch loop only

	// handMu is held while a delivery is handed over, so that CancelQueue can wait for a
	// hand-over of the cancelled queue to finish (or give the delivery back).
	handMu sync.Mutex
}

func newQueueSet(queues []string) *queueSet {
	qs := &queueSet{queues: slices.Clone(queues), stops: make(map[string]chan struct{}, len(queues)),
		changed: make(chan struct{})}
	for _, q := range queues {
		qs.stops[q] = make(chan struct{})
	}
	qs.version.Store(1) // the fetch loop's round robin starts empty, at version 0
	return qs
}

// refresh makes rr's order the current queue set (queues still consumed keep their
// rotation, added ones go last), waiting while the set is empty. It reports false once
// ctx has ended.
func (qs *queueSet) refresh(ctx context.Context, rr *roundRobin) bool {
	for !qs.apply(rr) {
		qs.mu.Lock()
		changed, empty := qs.changed, len(qs.queues) == 0
		qs.mu.Unlock()
		if !empty {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// apply brings rr up to date with the set if it changed, and reports whether there is a
// queue to fetch from. Only the fetch loop calls it.
func (qs *queueSet) apply(rr *roundRobin) bool {
	if qs.version.Load() != qs.applied {
		qs.mu.Lock()
		order := make([]string, 0, len(qs.queues))
		for _, q := range rr.order {
			if slices.Contains(qs.queues, q) {
				order = append(order, q)
			}
		}
		for _, q := range qs.queues {
			if !slices.Contains(order, q) {
				order = append(order, q)
			}
		}
		rr.order = order
		qs.applied = qs.version.Load()
		qs.mu.Unlock()
	}
	return len(rr.order) > 0
}

// signalLocked publishes a change of the set; qs.mu must be held.
func (qs *queueSet) signalLocked() {
	qs.version.Add(1)
	close(qs.changed)
	qs.changed = make(chan struct{})
}

// handOver passes the fetched deliveries to out in order, giving back those whose queue
// has been cancelled (before or while waiting to hand them over). It reports false when
// ctx ended first: the deliveries not handed over have then been given back too.
// CancelQueue waits for a hand-over in progress, so that when it returns the batch's
// messages of the cancelled queue are back in their list.
func (qs *queueSet) handOver(ctx context.Context, b *Broker, out chan<- *broker.Delivery, ds []*broker.Delivery) bool {
	qs.handMu.Lock()
	defer qs.handMu.Unlock()
	for i, d := range ds {
		qs.mu.Lock()
		stop, consumed := qs.stops[d.Queue]
		qs.mu.Unlock()
		if consumed && ctx.Err() == nil {
			select {
			case out <- d:
				continue
			case <-ctx.Done():
			case <-stop:
			}
		}
		if ctx.Err() != nil {
			b.giveBackAll(ds[i:])
			return false
		}
		l := d.Handle.(*lease)
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownBudget)
		err := b.giveBack(gctx, l)
		cancel()
		if err != nil {
			b.log.Error("redis: could not restore a message of a cancelled queue; a sweep will restore it",
				"tag", l.tag, "queue", l.queue, "err", err)
		}
	}
	return true
}

// consumeSet registers qs as the queue set AddQueue and CancelQueue act on, and returns
// the function that unregisters it.
func (b *Broker) consumeSet(qs *queueSet) func() {
	b.mu.Lock()
	b.consuming = qs
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		if b.consuming == qs {
			b.consuming = nil
		}
		b.mu.Unlock()
	}
}

func (b *Broker) currentSet() *queueSet {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.consuming
}

// AddQueue declares q's kombu binding (as Celery's add_consumer does) and adds it to the
// fetch loop of the latest Consume, under the same prefetch limit.
func (b *Broker) AddQueue(ctx context.Context, q broker.QueueSpec) error {
	if q.Name == "" {
		return errors.New("redis: add queue: empty queue name")
	}
	if q.RoutingKey == "" && q.Exchange != "" {
		q.RoutingKey = q.Name
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.ops.Done()
	qs := b.currentSet()
	if qs == nil {
		return fmt.Errorf("redis: add queue %q: not consuming", q.Name)
	}
	qs.opMu.Lock()
	defer qs.opMu.Unlock()
	qs.mu.Lock()
	has := slices.Contains(qs.queues, q.Name)
	qs.mu.Unlock()
	if has {
		return nil
	}
	if q.Exchange != "" {
		if err := b.client.SAdd(ctx, b.keys.binding(q.Exchange), bindingMember(q.RoutingKey, "", q.Name)).Err(); err != nil {
			return fmt.Errorf("redis: add queue %q: declare binding on %q: %w", q.Name, q.Exchange, err)
		}
	}
	qs.mu.Lock()
	qs.queues = append(qs.queues, q.Name)
	qs.stops[q.Name] = make(chan struct{})
	qs.signalLocked()
	qs.mu.Unlock()
	b.log.Info("redis: consuming queue", "queue", q.Name, "exchange", q.Exchange, "routing_key", q.RoutingKey)
	return nil
}

// CancelQueue removes queue from the fetch loop of the latest Consume. A message of it
// fetched meanwhile is restored to its queue instead of being handed out; when it
// returns no delivery of queue will be handed out any more.
func (b *Broker) CancelQueue(ctx context.Context, queue string) error {
	qs := b.currentSet()
	if qs == nil {
		return nil
	}
	qs.opMu.Lock()
	defer qs.opMu.Unlock()
	qs.mu.Lock()
	i := slices.Index(qs.queues, queue)
	if i < 0 {
		qs.mu.Unlock()
		return nil
	}
	qs.queues = slices.Delete(qs.queues, i, i+1)
	close(qs.stops[queue])
	delete(qs.stops, queue)
	qs.signalLocked()
	qs.mu.Unlock()

	// A hand-over in progress ends promptly: it delivers (to a reading consumer) or,
	// for this queue, gives the messages back.
	done := make(chan struct{})
	go func() {
		qs.handMu.Lock()
		close(done)
		qs.handMu.Unlock()
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("redis: cancel queue %q: waiting for the fetch loop: %w", queue, ctx.Err())
	}
	b.log.Info("redis: stopped consuming queue", "queue", queue)
	return nil
}
