package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/coalesce"
	"denis.io/fleet/internal/protocol"
)

// Options configure a Broker. Zero values take kombu's defaults.
type Options struct {
	// URL is redis://[[user]:password@]host:port/db or rediss://… (TLS).
	URL string
	// KeyPrefix is kombu's global_keyprefix transport option: it prefixes every key.
	KeyPrefix string
	// VisibilityTimeout is how old a lease must be before a sweep restores it
	// (kombu visibility_timeout). Default 1h.
	VisibilityTimeout time.Duration
	// PrioritySteps are kombu's priority_steps, ascending. Default 0,3,6,9.
	PrioritySteps []int
	// PollInterval bounds the wait between two fetches while every consumed list is
	// empty (the wait starts at 1 ms and doubles). Default DefaultPollInterval. Fetching
	// never blocks in BRPOP: see the package documentation.
	PollInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// DefaultVisibilityTimeout is kombu's default visibility_timeout.
const DefaultVisibilityTimeout = time.Hour

// DefaultPollInterval is the longest wait between two fetches from empty queues: the
// worst-case pickup delay of a message sent to an idle worker.
const DefaultPollInterval = 50 * time.Millisecond

const (
	minPoll        = time.Millisecond
	kombuMutexTTL  = 5 * time.Minute // kombu's unacked_mutex_expire
	shutdownBudget = 30 * time.Second
	maxBackoff     = 5 * time.Second
)

// Broker is kombu's Redis transport behind broker.Broker. It is safe for concurrent use.
type Broker struct {
	client       *goredis.Client
	keys         keyspace
	vt           time.Duration
	poll         time.Duration
	refreshEvery time.Duration
	sweepEvery   time.Duration
	mutexTTL     time.Duration // how long our sweep holds unacked_mutex at most
	stale        heldMutex     // someone else's holding of unacked_mutex
	log          *slog.Logger

	life       context.Context // cancelled by Close
	cancelLife context.CancelFunc
	bg         sync.WaitGroup // fetch loops, sweepers, the lease refresher
	ops        sync.WaitGroup // public calls in progress
	refresher  sync.Once

	mu       sync.Mutex
	closed   bool
	limit    int           // prefetch; 0 means unlimited
	inflight int           // slots reserved by fetches in progress + unsettled deliveries
	wantFree int           // free slots the waiting fetch loop needs; 0: none waits
	changed  chan struct{} // closed and replaced when the limit changes or wantFree is met
	held     map[*lease]struct{}

	acks *coalesce.Coalescer[string] // lease removals (Ack), batched
	// consuming is the latest Consume's queue set, which AddQueue and CancelQueue change
	// (consumers.go).
	consuming *queueSet

	probe fetchProbe // ConsumerAlive
}

var (
	_ broker.Broker        = (*Broker)(nil)
	_ broker.ConsumerProbe = (*Broker)(nil)
)

// fetchProbe records the fetch loop's progress for ConsumerAlive.
type fetchProbe struct {
	running atomic.Int32 // fetch loops running
	waiting atomic.Int32 // fetch loops waiting for a free prefetch slot
	turned  atomic.Int64 // unix nanoseconds of the last turn of a fetch loop
}

func (p *fetchProbe) turn() { p.turned.Store(time.Now().UnixNano()) }

// ConsumerAlive implements broker.ConsumerProbe: now while a fetch loop waits for a free
// slot (the worker is busy), else the last time a fetch loop turned (each fetch that came
// back, empty polls included, is a turn; a loop failing against Redis or stuck does not
// turn); the zero time when no Consume runs.
func (b *Broker) ConsumerAlive() time.Time {
	switch {
	case b.probe.running.Load() == 0:
		return time.Time{}
	case b.probe.waiting.Load() > 0:
		return time.Now()
	}
	return time.Unix(0, b.probe.turned.Load())
}

// lease is a delivery this broker holds unsettled; it is the Delivery's Handle.
type lease struct {
	tag      string
	queue    string
	envelope []byte // the envelope as popped
	// record is the exact `unacked` value written for it; when it is nil, that value is
	// '[' envelope ',' recordTail ']' (see fetchScript), built only when it is needed.
	record     []byte
	recordTail []byte
	priority   int
	settling   bool // guarded by Broker.mu
}

// unackedRecord is the exact `unacked` value written for the lease.
func (l *lease) unackedRecord() []byte {
	if l.record != nil {
		return l.record
	}
	rec := make([]byte, 0, len(l.envelope)+len(l.recordTail)+3)
	rec = append(rec, '[')
	rec = append(rec, l.envelope...)
	rec = append(rec, ',')
	rec = append(rec, l.recordTail...)
	return append(rec, ']')
}

// New parses o.URL, connects and pings the server.
func New(ctx context.Context, o Options) (*Broker, error) {
	if o.URL == "" {
		return nil, errors.New("redis: empty broker URL")
	}
	ro, err := goredis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("redis: parse broker URL %s: %w", redact(o.URL), err)
	}
	steps := o.PrioritySteps
	if len(steps) == 0 {
		steps = []int{0, 3, 6, 9}
	}
	for i, s := range steps {
		if s < 0 || s > 9 || (i > 0 && s <= steps[i-1]) {
			return nil, fmt.Errorf("redis: priority steps %v must be strictly ascending within 0..9", steps)
		}
	}
	vt := o.VisibilityTimeout
	if vt < 0 {
		return nil, fmt.Errorf("redis: negative visibility timeout %s", vt)
	}
	if vt == 0 {
		vt = DefaultVisibilityTimeout
	}
	poll := o.PollInterval
	if poll < 0 {
		return nil, fmt.Errorf("redis: negative poll interval %s", poll)
	}
	if poll == 0 {
		poll = DefaultPollInterval
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	// go-redis gives each connection 32 KiB read and write buffers, and each connection of
	// its pipeline pool 128 KiB ones: several MiB for a busy worker. A fetch reply larger
	// than the buffer is read in more calls, which costs far less than the memory.
	ro.ReadBufferSize, ro.WriteBufferSize = 16<<10, 16<<10
	ro.PipelineReadBufferSize, ro.PipelineWriteBufferSize = 32<<10, 32<<10
	client := goredis.NewClient(ro)
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("redis: connect to %s (db %d): %w", ro.Addr, ro.DB, err)
	}
	life, cancel := context.WithCancel(context.Background())
	sweepEvery := bound(vt/2, 100*time.Millisecond, time.Minute)
	b := &Broker{
		client:       client,
		keys:         keyspace{prefix: o.KeyPrefix, steps: slices.Clone(steps)},
		vt:           vt,
		refreshEvery: bound(vt/4, 50*time.Millisecond, 30*time.Second),
		sweepEvery:   sweepEvery,
		mutexTTL:     bound(4*sweepEvery, 5*time.Second, kombuMutexTTL),
		poll:         max(poll, minPoll),
		log:          logger.With("broker", "redis", "addr", ro.Addr, "db", ro.DB),
		life:         life,
		cancelLife:   cancel,
		changed:      make(chan struct{}),
		held:         make(map[*lease]struct{}),
	}
	b.acks = coalesce.New(b.flushAcks, maxAckBatch, ackTimeout)
	return b, nil
}

func bound(d, lo, hi time.Duration) time.Duration {
	return min(max(d, lo), hi)
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// QueueKeys returns the Redis keys (global prefix included) of queue's priority
// sub-lists, highest priority first.
func (b *Broker) QueueKeys(queue string) []string { return b.keys.queueKeys(queue) }

// Depth returns the number of messages waiting in queue over all its priority sub-lists
// (delivered, unsettled messages are not counted).
func (b *Broker) Depth(ctx context.Context, queue string) (int64, error) {
	if err := b.enter(); err != nil {
		return 0, err
	}
	defer b.ops.Done()
	keys := b.keys.queueKeys(queue)
	cmds := make([]*goredis.IntCmd, len(keys))
	_, err := b.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.LLen(ctx, k)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redis: depth of %s: %w", queue, err)
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, nil
}

// enter registers a public call; it fails once Close has begun.
func (b *Broker) enter() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return broker.ErrClosed
	}
	b.ops.Add(1)
	return nil
}

// Consume declares queues as kombu does and delivers from them until ctx is done or the
// broker is closed. prefetch 0 means no limit.
func (b *Broker) Consume(ctx context.Context, queues []string, prefetch int) (<-chan *broker.Delivery, error) {
	if prefetch < 0 {
		return nil, fmt.Errorf("redis: consume: negative prefetch %d", prefetch)
	}
	var qs []string
	for _, q := range queues {
		if q == "" {
			return nil, errors.New("redis: consume: empty queue name")
		}
		if !slices.Contains(qs, q) {
			qs = append(qs, q)
		}
	}
	if len(qs) == 0 {
		return nil, errors.New("redis: consume: no queues")
	}
	if err := b.enter(); err != nil {
		return nil, err
	}
	defer b.ops.Done()

	_, err := b.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, q := range qs {
			p.SAdd(ctx, b.keys.binding(q), bindingMember(q, "", q))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("redis: declare queues %v: %w", qs, err)
	}
	b.setLimit(prefetch)

	b.refresher.Do(func() {
		b.bg.Add(1)
		go func() {
			defer b.bg.Done()
			b.refreshLoop()
		}()
	})

	cctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(b.life, cancel)
	out := make(chan *broker.Delivery)
	set := newQueueSet(qs)
	forgetSet := b.consumeSet(set)
	var loops sync.WaitGroup
	loops.Add(2)
	b.bg.Add(2)
	go func() {
		defer b.bg.Done()
		defer loops.Done()
		defer forgetSet()
		b.fetchLoop(cctx, set, out)
	}()
	go func() {
		defer b.bg.Done()
		defer loops.Done()
		b.sweepLoop(cctx)
	}()
	go func() {
		loops.Wait()
		stop()
		cancel()
	}()
	return out, nil
}

// SetPrefetch changes the limit of unsettled deliveries; 0 means no limit.
func (b *Broker) SetPrefetch(_ context.Context, prefetch int) error {
	if prefetch < 0 {
		return fmt.Errorf("redis: set prefetch: negative prefetch %d", prefetch)
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.ops.Done()
	b.setLimit(prefetch)
	return nil
}

func (b *Broker) setLimit(n int) {
	b.mu.Lock()
	b.limit = n
	b.signalLocked()
	b.mu.Unlock()
}

func (b *Broker) signalLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// maxFetch bounds the messages one fetch pops (and leases) at once; fetchLinger is how
// long a fetch may wait for more free slots (see acquire).
const (
	maxFetch    = 64
	fetchLinger = time.Millisecond
)

// acquire reserves slots for one fetch and returns how many (at most maxFetch). It waits
// while the prefetch limit is reached. When only a few slots are free (less than a
// quarter of the limit) it waits up to fetchLinger for more, so that under load one
// fetch takes several messages in one round trip rather than one per settled delivery;
// an idle slot waits no longer than that. linger is the fetch loop's reusable timer.
func (b *Broker) acquire(ctx context.Context, linger *time.Timer) (int, error) {
	lingered := false
	for {
		b.mu.Lock()
		if b.limit <= 0 {
			b.inflight += maxFetch
			b.mu.Unlock()
			return maxFetch, nil
		}
		free := b.limit - b.inflight
		need := min(max(b.limit/4, 1), maxFetch)
		if free >= need || (lingered && free > 0) {
			n := min(free, maxFetch)
			b.inflight += n
			b.mu.Unlock()
			return n, nil
		}
		wait := free > 0
		if wait {
			b.wantFree = need
		} else {
			b.wantFree = 1
		}
		ch := b.changed
		b.mu.Unlock()
		var fired <-chan time.Time
		if wait {
			linger.Reset(fetchLinger)
			fired = linger.C
		}
		b.probe.waiting.Add(1)
		select {
		case <-ch:
		case <-fired:
			lingered = true
		case <-ctx.Done():
			b.probe.waiting.Add(-1)
			return 0, ctx.Err()
		}
		b.probe.waiting.Add(-1)
		b.probe.turn()
		if wait && !lingered {
			linger.Stop()
		}
	}
}

// release gives back n reserved slots.
func (b *Broker) release(n int) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.inflight -= n
	b.freedLocked()
	b.mu.Unlock()
}

// freedLocked wakes the fetch loop once enough slots are free for it (acquire).
func (b *Broker) freedLocked() {
	if b.wantFree > 0 && b.limit-b.inflight >= b.wantFree {
		b.wantFree = 0
		b.signalLocked()
	}
}

func (b *Broker) fetchLoop(ctx context.Context, set *queueSet, out chan<- *broker.Delivery) {
	defer close(out)
	b.probe.turn()
	b.probe.running.Add(1)
	defer b.probe.running.Add(-1)
	rr := &roundRobin{}
	var bo backoff
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	idle := time.Duration(0) // the wait before the next poll while the queues are empty
	for {
		if ctx.Err() != nil || !set.refresh(ctx, rr) {
			return
		}
		n, err := b.acquire(ctx, linger)
		if err != nil {
			return
		}
		if !set.apply(rr) { // the last queue was cancelled while waiting for a slot
			b.release(n)
			continue
		}
		queues := rr.order
		ds, skipped, err := b.fetch(ctx, rr, n)
		b.release(n - len(ds)) // slots of elements not popped or left for a sweep
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if bo.fail() {
				b.log.Warn("redis: fetching failed; retrying with backoff", "queues", queues, "err", err)
			} else {
				b.log.Debug("redis: fetching still failing", "err", err)
			}
			if !sleep(ctx, bo.next()) {
				return
			}
			continue
		}
		b.probe.turn() // a fetch came back (a failing one does not count)
		if bo.recover() {
			b.log.Info("redis: fetching recovered", "queues", queues)
		}
		if len(ds) == 0 {
			if skipped > 0 {
				continue // elements that could not be leased stay in unacked for a sweep
			}
			idle = min(max(2*idle, minPoll), b.poll)
			if !sleep(ctx, idle) {
				return
			}
			continue
		}
		idle = 0
		// Hands the batch over; messages of a queue cancelled meanwhile, or all that are
		// left once ctx ends, are given back.
		if !set.handOver(ctx, b, out, ds) {
			return
		}
	}
}

// giveBackAll restores deliveries fetched but not handed out when the consumer stops.
func (b *Broker) giveBackAll(ds []*broker.Delivery) {
	gctx, cancel := context.WithTimeout(context.Background(), shutdownBudget)
	defer cancel()
	for _, d := range ds {
		l := d.Handle.(*lease)
		if err := b.giveBack(gctx, l); err != nil {
			b.log.Error("redis: could not restore an undelivered message at consumer stop; a sweep will restore it",
				"tag", l.tag, "queue", l.queue, "err", err)
		}
	}
}

// fetch pops and leases up to n messages in one atomic step (fetchScript) and returns
// them in the order popped; deliveries is empty when every list was empty. An element
// that was popped but could not be made a delivery (its lease stays in unacked for a
// sweep) is left out and counted in skipped. The Redis call runs without ctx's
// cancellation so that a popped message is never dropped on the floor by a cancelled
// read.
func (b *Broker) fetch(ctx context.Context, rr *roundRobin, n int) (deliveries []*broker.Delivery, skipped int, err error) {
	order := slices.Clone(rr.order)
	keys, _ := b.keys.fetchKeys(order)
	rctx := context.WithoutCancel(ctx)
	scriptKeys := make([]string, 0, len(keys)+2)
	scriptKeys = append(scriptKeys, b.keys.unacked(), b.keys.unackedIndex())
	scriptKeys = append(scriptKeys, keys...)
	args := make([]any, 0, len(order)+4)
	args = append(args, nowScore(), n, newTag(), len(order))
	for _, q := range order {
		args = append(args, q)
	}
	res, err := fetchScript.Run(rctx, b.client, scriptKeys, args...).Slice()
	if errors.Is(err, goredis.Nil) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("redis: fetch from %v: %w", order, err)
	}
	if len(res)%5 != 0 || len(res)/5 > n {
		return nil, 0, fmt.Errorf("redis: fetch script returned %d values for at most %d messages", len(res), n)
	}
	deliveries = make([]*broker.Delivery, 0, len(res)/5)
	for v := res; len(v) > 0; v = v[5:] {
		i, ok1 := v[0].(int64)
		item, ok2 := v[1].(string)
		tag, ok3 := v[2].(string)
		ret, ok4 := v[3].(string)
		raw, ok5 := v[4].(int64)
		if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || i < 1 || int(i) > len(order) {
			// Leased by the script but unreadable here: a sweep restores it.
			b.log.Error("redis: fetch script returned an unexpected element; its lease is left for a sweep", "values", v[:5])
			skipped++
			continue
		}
		queue := order[i-1]
		rr.rotate(queue)
		var d *broker.Delivery
		if raw == 0 {
			d = b.adopt(ctx, queue, []byte(item), tag, []byte(ret))
		} else {
			d = b.adoptRaw(ctx, queue, []byte(item), tag)
		}
		if d == nil {
			skipped++
			continue
		}
		deliveries = append(deliveries, d)
	}
	return deliveries, skipped, nil
}

// adopt turns an envelope whose lease the fetch script recorded into a Delivery; tail is
// the record's tail the script returned.
func (b *Broker) adopt(ctx context.Context, queue string, item []byte, tag string, tail []byte) *broker.Delivery {
	env, err := decodeEnvelope(item)
	if err != nil {
		return b.adoptInvalid(ctx, queue, item, tag, err)
	}
	return b.hold(&lease{tag: tag, queue: queue, envelope: item, recordTail: tail, priority: env.priority}, env)
}

// adoptRaw turns an element the fetch script could not read into a Delivery. The script
// leased it under tag with a placeholder record; here the envelope gets that tag as its
// delivery_tag and the lease kombu's record of it, so that any sweep (Go or Python)
// restores a readable envelope. Should the record not be replaced, the message stays
// leased under the placeholder, which this package's sweep restores as is.
func (b *Broker) adoptRaw(ctx context.Context, queue string, item []byte, tag string) *broker.Delivery {
	env, err := decodeEnvelope(item)
	if err != nil {
		return b.adoptInvalid(ctx, queue, item, tag, err)
	}
	tagged, err := setDeliveryTag(item, tag)
	if err != nil {
		return b.adoptInvalid(ctx, queue, item, tag, fmt.Errorf("no usable delivery_tag, and none can be set: %w", err))
	}
	env.tag = tag
	rec, err := makeRecord(tagged, env.exchange, env.routingKey)
	if err == nil {
		err = b.recordLease(ctx, tag, rec)
	}
	if err != nil {
		b.log.Error("redis: could not replace a placeholder lease; it stays in unacked for a sweep",
			"queue", queue, "tag", tag, "err", err)
		return nil
	}
	return b.hold(&lease{tag: tag, queue: queue, envelope: tagged, record: rec, priority: env.priority}, env)
}

// recordLease writes the lease (kombu QoS.append), retrying with backoff for a while.
func (b *Broker) recordLease(ctx context.Context, tag string, rec []byte) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownBudget)
	defer cancel()
	var bo backoff
	for {
		_, err := b.client.TxPipelined(rctx, func(p goredis.Pipeliner) error {
			p.ZAdd(rctx, b.keys.unackedIndex(), goredis.Z{Score: nowFloat(), Member: tag})
			p.HSet(rctx, b.keys.unacked(), tag, rec)
			return nil
		})
		if err == nil {
			return nil
		}
		bo.fail()
		if !sleep(rctx, bo.next()) {
			return fmt.Errorf("redis: record lease %s: %w", tag, err)
		}
	}
}

func (b *Broker) hold(l *lease, env *inEnvelope) *broker.Delivery {
	b.mu.Lock()
	b.held[l] = struct{}{}
	b.mu.Unlock()
	return &broker.Delivery{
		Queue:       l.queue,
		Exchange:    env.exchange,
		RoutingKey:  env.routingKey,
		Redelivered: env.redelivered,
		Message:     env.msg,
		Handle:      l,
	}
}

// claim marks d's lease as being settled. Public settlements fail once Close has begun:
// Close restores every lease it finds.
func (b *Broker) claim(d *broker.Delivery) (*lease, error) {
	if d == nil {
		return nil, errors.New("redis: nil delivery")
	}
	l, ok := d.Handle.(*lease)
	if !ok || l == nil {
		return nil, fmt.Errorf("redis: delivery handle %T is not from the redis broker", d.Handle)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, broker.ErrStaleDelivery
	}
	if _, ok := b.held[l]; !ok {
		return nil, fmt.Errorf("redis: delivery %s is not held by this broker (already settled?)", l.tag)
	}
	if l.settling {
		return nil, fmt.Errorf("redis: delivery %s is already being settled", l.tag)
	}
	l.settling = true
	b.ops.Add(1)
	return l, nil
}

// settled ends a settlement: on success the lease is forgotten and its prefetch slot
// freed; on failure the delivery stays held (and refreshed) so it can be settled again.
func (b *Broker) settled(l *lease, ok bool) {
	b.mu.Lock()
	if ok {
		delete(b.held, l)
		b.inflight--
		b.freedLocked()
	} else {
		l.settling = false
	}
	b.mu.Unlock()
}

// Ack removes the lease: MULTI ZREM unacked_index, HDEL unacked EXEC (kombu QoS.ack).
// Acks made while another is in flight are removed together in the next MULTI/EXEC
// (flushAcks); Ack returns once its own lease is removed.
func (b *Broker) Ack(ctx context.Context, d *broker.Delivery) error {
	l, err := b.claim(d)
	if err != nil {
		return err
	}
	defer b.ops.Done()
	err = b.acks.Do(ctx, l.tag)
	b.settled(l, err == nil)
	if err != nil {
		return fmt.Errorf("redis: ack %s: %w", l.tag, err)
	}
	return nil
}

// maxAckBatch bounds the leases one MULTI/EXEC removes; ackTimeout bounds its round trip.
const (
	maxAckBatch = 256
	ackTimeout  = 10 * time.Second
)

// flushAcks removes the leases of tags in one transaction: ZREM of every tag from
// unacked_index and an HDEL per tag from unacked (so that each tag's outcome is known).
func (b *Broker) flushAcks(ctx context.Context, tags []string) []error {
	members := make([]any, len(tags))
	for i, t := range tags {
		members[i] = t
	}
	hdels := make([]*goredis.IntCmd, len(tags))
	_, err := b.client.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.ZRem(ctx, b.keys.unackedIndex(), members...)
		for i, t := range tags {
			hdels[i] = p.HDel(ctx, b.keys.unacked(), t)
		}
		return nil
	})
	if err != nil {
		errs := make([]error, len(tags))
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for i, h := range hdels {
		if h.Val() == 0 {
			b.log.Warn("redis: lease was already gone when settled (restored by a sweep?); the message may run again", "tag", tags[i])
		}
	}
	return nil
}

// Requeue atomically removes the lease and pushes the message, marked redelivered, onto
// the consuming end of its queue's priority sub-list.
func (b *Broker) Requeue(ctx context.Context, d *broker.Delivery) error {
	l, err := b.claim(d)
	if err != nil {
		return err
	}
	defer b.ops.Done()
	err = b.restoreOwn(ctx, l)
	b.settled(l, err == nil)
	if err != nil {
		return fmt.Errorf("redis: requeue %s: %w", l.tag, err)
	}
	return nil
}

// giveBack restores a lease held by the broker itself (consumer stop, Close).
func (b *Broker) giveBack(ctx context.Context, l *lease) error {
	b.mu.Lock()
	if _, ok := b.held[l]; !ok || l.settling {
		b.mu.Unlock()
		return nil
	}
	l.settling = true
	b.mu.Unlock()
	err := b.restoreOwn(ctx, l)
	b.settled(l, err == nil)
	return err
}

func (b *Broker) restoreOwn(ctx context.Context, l *lease) error {
	env, err := markRedelivered(l.envelope)
	if err != nil {
		return fmt.Errorf("mark redelivered: %w", err)
	}
	keys := []string{b.keys.unacked(), b.keys.unackedIndex(), b.keys.listFor(l.queue, l.priority)}
	n, err := restoreScript.Run(ctx, b.client, keys, l.tag, l.unackedRecord(), env, "").Int()
	if err != nil {
		return err
	}
	if n != 1 {
		b.log.Warn("redis: lease was no longer ours when handed back (restored by a sweep?); not pushed again",
			"tag", l.tag, "queue", l.queue, "result", n)
	}
	return nil
}

// DeadLetter atomically pushes m (a new envelope: exchange "", routing key dlq, a new
// delivery tag) onto list dlq, declares dlq's kombu binding and removes the lease.
func (b *Broker) DeadLetter(ctx context.Context, d *broker.Delivery, dlq string, m *protocol.Message) error {
	if dlq == "" {
		return errors.New("redis: dead-letter: empty queue name")
	}
	l, err := b.claim(d)
	if err != nil {
		return err
	}
	defer b.ops.Done()
	err = b.deadLetter(ctx, l, dlq, m)
	b.settled(l, err == nil)
	if err != nil {
		return fmt.Errorf("redis: dead-letter %s to %s: %w", l.tag, dlq, err)
	}
	return nil
}

func (b *Broker) deadLetter(ctx context.Context, l *lease, dlq string, m *protocol.Message) error {
	env, err := encodeEnvelope(m, "", dlq, newTag())
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	keys := []string{b.keys.unacked(), b.keys.unackedIndex(),
		b.keys.listFor(dlq, int(m.Properties.Priority)), b.keys.binding(dlq)}
	n, err := deadLetterScript.Run(ctx, b.client, keys, l.tag, l.unackedRecord(), env, bindingMember(dlq, "", dlq)).Int()
	if err != nil {
		return err
	}
	if n != 1 {
		b.log.Warn("redis: lease was no longer ours when dead-lettered (restored by a sweep?); the message may run again",
			"tag", l.tag, "result", n)
	}
	return nil
}

// Publish LPUSHes the message: exchange "" routes to the queue named by the routing key,
// a named exchange to every queue its kombu bindings route the routing key to (direct).
// It returns once Redis has replied.
func (b *Broker) Publish(ctx context.Context, p broker.Publishing) error {
	if p.Message == nil {
		return errors.New("redis: publish: nil message")
	}
	if err := b.enter(); err != nil {
		return err
	}
	defer b.ops.Done()
	prio := int(p.Message.Properties.Priority)
	if p.Exchange == "" {
		if p.RoutingKey == "" {
			return errors.New("redis: publish: default exchange needs a routing key (the queue name)")
		}
		env, err := encodeEnvelope(p.Message, "", p.RoutingKey, newTag())
		if err != nil {
			return fmt.Errorf("redis: publish to %s: encode: %w", p.RoutingKey, err)
		}
		if err := b.client.LPush(ctx, b.keys.listFor(p.RoutingKey, prio), env).Err(); err != nil {
			return fmt.Errorf("redis: publish to %s: %w", p.RoutingKey, err)
		}
		return nil
	}
	members, err := b.client.SMembers(ctx, b.keys.binding(p.Exchange)).Result()
	if err != nil {
		return fmt.Errorf("redis: publish to exchange %s: bindings: %w", p.Exchange, err)
	}
	queues := directRoute(members, p.RoutingKey)
	if len(queues) == 0 {
		return fmt.Errorf("redis: publish to exchange %s: no queue bound with routing key %q", p.Exchange, p.RoutingKey)
	}
	envs := make([][]byte, len(queues))
	for i := range queues {
		if envs[i], err = encodeEnvelope(p.Message, p.Exchange, p.RoutingKey, newTag()); err != nil {
			return fmt.Errorf("redis: publish to exchange %s: encode: %w", p.Exchange, err)
		}
	}
	_, err = b.client.TxPipelined(ctx, func(pl goredis.Pipeliner) error {
		for i, q := range queues {
			pl.LPush(ctx, b.keys.listFor(q, prio), envs[i])
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("redis: publish to exchange %s (queues %v): %w", p.Exchange, queues, err)
	}
	return nil
}

// Close stops fetching, restores every delivery still unsettled (kombu
// restore_at_shutdown) and closes the connection pool. Settling after Close returns
// broker.ErrStaleDelivery.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.signalLocked()
	b.mu.Unlock()

	b.cancelLife() // stop fetching now
	b.ops.Wait()   // public calls already under way finish
	b.acks.Close()
	b.bg.Wait()

	b.mu.Lock()
	var pending []*lease
	for l := range b.held {
		if !l.settling {
			pending = append(pending, l)
		}
	}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), shutdownBudget)
	defer cancel()
	var errs []error
	for _, l := range pending {
		if err := b.giveBack(ctx, l); err != nil {
			errs = append(errs, fmt.Errorf("redis: restore %s at close: %w", l.tag, err))
		}
	}
	if len(pending) > 0 {
		b.log.Info("redis: restored unsettled deliveries at close", "count", len(pending)-len(errs))
	}
	if err := b.client.Close(); err != nil {
		errs = append(errs, fmt.Errorf("redis: close client: %w", err))
	}
	return errors.Join(errs...)
}

// backoff is exponential with jitter, capped at maxBackoff; fail and recover report
// state changes so that loops log once per change.
type backoff struct {
	n       int
	failing bool
}

func (bo *backoff) fail() (changed bool) {
	changed = !bo.failing
	bo.failing = true
	return changed
}

func (bo *backoff) recover() (changed bool) {
	changed = bo.failing
	bo.failing, bo.n = false, 0
	return changed
}

func (bo *backoff) next() time.Duration {
	d := min(100*time.Millisecond<<min(bo.n, 6), maxBackoff)
	bo.n++
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func nowFloat() float64 { return float64(time.Now().UnixMicro()) / 1e6 }

func nowScore() string { return formatScore(nowFloat()) }

func formatScore(f float64) string { return strconv.FormatFloat(f, 'f', 6, 64) }
