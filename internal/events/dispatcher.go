// Package events makes a Go worker visible to Celery's monitoring exactly as a Python
// worker is (celery-protocol.md §8): it publishes worker-online, a worker-heartbeat every
// freq seconds and worker-offline, and the task-* events batched as task.multi messages,
// on the `celeryev` exchange (AMQP: durable topic; Redis: pub/sub), with Celery's fields
// (hostname, utcoffset as Celery computes it, pid, Lamport clock, timestamp, and the
// software and load fields Flower shows). `celery events`, `events.State`, Flower and
// celery-exporter read them unchanged.
//
// It also keeps the fleet's own liveness record, the "worker_seen" key per worker in
// Redis with a TTL (seen.go), which fleetctl and the autoscaler list without an events
// consumer.
package events

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/protocol"
)

// Exchange is the events exchange as Celery declares it on AMQP (§3.1); the Redis
// transport publishes it over pub/sub.
var Exchange = broker.Exchange{Name: "celeryev", Kind: broker.KindTopic, Durable: true}

// Defaults, as Celery's.
const (
	DefaultFreq        = 2 * time.Second // worker heartbeat interval (--heartbeat-interval)
	DefaultBufferLimit = 24              // buffered task events that make a flush due (Celery's buffer_limit)
	DefaultMaxBatch    = 500             // most task events in one task.multi message
	DefaultMaxBuffered = 10000           // task events kept while the broker is unreachable
	DefaultLinger      = 100 * time.Millisecond
	DefaultMinInterval = 10 * time.Millisecond
	publishTimeout     = 5 * time.Second
	// maxBatchBytes closes a task.multi body early when its events are large.
	maxBatchBytes = 256 << 10
)

// Stats are the live counters a heartbeat carries.
type Stats struct {
	Active    int64 // requests executing now
	Processed int64 // requests run to an outcome since start
}

// Software identifies the worker in worker events (Flower shows these).
type Software struct {
	Ident   string // sw_ident; default "fleet-go"
	Version string // sw_ver
	System  string // sw_sys; default platform.system() of Go's GOOS ("Linux")
}

// Config configures a Dispatcher. Zero values take Celery's defaults.
type Config struct {
	Hostname string // the node name, e.g. fleet@host
	// Freq is the heartbeat interval (default 2 s); it is sent as `freq`.
	Freq time.Duration
	// TaskEvents sends task-* events (Celery's -E); EnableTaskEvents changes it live.
	TaskEvents bool
	// WithoutHeartbeat sends no worker-online/heartbeat/offline events (Celery's
	// --without-heartbeat). The Beat callbacks still run every Freq.
	WithoutHeartbeat bool
	Software         Software
	// Clock is the node's Lamport clock, shared with remote control; nil: a new one.
	Clock *Clock
	// Stats reads active and processed for heartbeats; nil: zeros.
	Stats func() Stats
	// Beat callbacks run on every heartbeat tick (and once at Start) with the tick time:
	// the Redis worker_seen key, the last-heartbeat metric.
	Beat   []func(ctx context.Context, now time.Time)
	Logger *slog.Logger
	// BufferLimit is how many buffered task events make a flush due (default 24, Celery's
	// buffer_limit); fewer wait up to Linger for company.
	BufferLimit int
	// MaxBatch is the most task events in one task.multi message (default 500; a body
	// is also closed once it passes 256 KiB).
	MaxBatch int
	// MinInterval is the least time between two flushes made due by BufferLimit
	// (default 10 ms): a busy worker sends one task.multi of everything buffered per
	// interval instead of one per BufferLimit events, so that its publishing costs it
	// and the broker little. Events wait at most Linger or MinInterval, whichever is due
	// first.
	MinInterval time.Duration
	// MaxBuffered bounds the task events held while publishing lags or fails; the oldest
	// are dropped beyond it (default 10000).
	MaxBuffered int
	// Linger is how long a task event may wait for others to share its task.multi message
	// (default 100 ms).
	Linger time.Duration
}

// Dispatcher publishes the worker's events. Task event methods never block the caller:
// events are buffered and a background flusher publishes them in batches.
type Dispatcher struct {
	cfg    Config
	fan    broker.Fanout
	log    *slog.Logger
	clock  *Clock
	pid    int
	taskOn atomic.Bool
	prefix []byte // `{"hostname": …, "pid": …` of every task event (taskEventWith)

	// Task events are encoded straight into task.multi bodies: full holds complete
	// batches (closing bracket included) and fullN their event counts, cur the one being
	// filled; free keeps published bodies for reuse.
	mu      sync.Mutex
	full    [][]byte
	fullN   []int
	cur     []byte
	curN    int
	queued  int // events in full and cur
	dropped uint64
	free    [][]byte
	kick    chan struct{} // capacity 1: a flush is wanted

	failing atomic.Bool // publishing is failing; logged once per streak

	runMu   sync.Mutex
	stop    context.CancelFunc
	done    chan struct{}
	started bool
}

// New returns a dispatcher publishing through fan.
func New(fan broker.Fanout, cfg Config) *Dispatcher {
	if cfg.Freq <= 0 {
		cfg.Freq = DefaultFreq
	}
	if cfg.BufferLimit <= 0 {
		cfg.BufferLimit = DefaultBufferLimit
	}
	if cfg.MaxBuffered <= 0 {
		cfg.MaxBuffered = DefaultMaxBuffered
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	cfg.MaxBatch = max(min(cfg.MaxBatch, cfg.MaxBuffered), 1)
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Linger <= 0 {
		cfg.Linger = DefaultLinger
	}
	if cfg.Software.Ident == "" {
		cfg.Software.Ident = "fleet-go"
	}
	if cfg.Software.System == "" {
		cfg.Software.System = SystemName()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = &Clock{}
	}
	d := &Dispatcher{
		cfg:   cfg,
		fan:   fan,
		log:   cfg.Logger.With("component", "events"),
		clock: cfg.Clock,
		pid:   os.Getpid(),
		kick:  make(chan struct{}, 1),
	}
	d.taskOn.Store(cfg.TaskEvents)
	d.prefix = appendString([]byte(`{"hostname": `), cfg.Hostname)
	d.prefix = strconv.AppendInt(append(d.prefix, `, "pid": `...), int64(d.pid), 10)
	return d
}

// Clock is the node's Lamport clock.
func (d *Dispatcher) Clock() *Clock { return d.clock }

// Freq is the heartbeat interval.
func (d *Dispatcher) Freq() time.Duration { return d.cfg.Freq }

// TaskEventsEnabled reports whether task events are sent.
func (d *Dispatcher) TaskEventsEnabled() bool { return d.taskOn.Load() }

// EnableTaskEvents turns task events on or off (the enable_events and disable_events
// control commands).
func (d *Dispatcher) EnableTaskEvents(on bool) {
	if d.taskOn.Swap(on) != on {
		d.log.Info("task events switched", "enabled", on)
	}
}

// Start sends worker-online, runs the Beat callbacks once and starts the heartbeat and
// flush loops. Call Stop to end them.
func (d *Dispatcher) Start(ctx context.Context) {
	d.runMu.Lock()
	defer d.runMu.Unlock()
	if d.started {
		return
	}
	d.started = true
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.stop, d.done = cancel, make(chan struct{})
	now := time.Now()
	d.beat(ctx, now)
	if !d.cfg.WithoutHeartbeat {
		d.sendWorker(ctx, "worker-online", now, d.cfg.Freq)
	}
	go d.loop(lctx)
}

// Stop flushes the buffered task events, sends worker-offline and ends the loops. It
// returns when done or when ctx ends.
func (d *Dispatcher) Stop(ctx context.Context) {
	d.runMu.Lock()
	defer d.runMu.Unlock()
	if !d.started || d.stop == nil {
		return
	}
	d.stop()
	select {
	case <-d.done:
	case <-ctx.Done():
	}
	d.stop = nil
	d.flush(ctx)
	if !d.cfg.WithoutHeartbeat {
		d.sendWorker(ctx, "worker-offline", time.Now(), d.cfg.Freq)
	}
}

// SendHeartbeat sends one extra worker-heartbeat with the given freq (the `heartbeat`
// control command sends freq 5, as Celery does).
func (d *Dispatcher) SendHeartbeat(ctx context.Context, freq time.Duration) {
	if !d.cfg.WithoutHeartbeat {
		d.sendWorker(ctx, "worker-heartbeat", time.Now(), freq)
	}
}

// loop sends heartbeats and flushes task events. A flush is due Linger after the first
// buffered event, or as soon as BufferLimit events are buffered but no sooner than
// MinInterval after the previous flush began; it sends everything buffered. An idle
// worker's events thus go out within Linger, a busy worker's in one task.multi message
// per MinInterval.
func (d *Dispatcher) loop(ctx context.Context) {
	defer close(d.done)
	t := time.NewTicker(d.cfg.Freq)
	defer t.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var due, last time.Time // due: the armed flush (zero: none); last: the previous flush's start
	schedule := func(at time.Time) {
		if due.IsZero() || at.Before(due) {
			due = at
			timer.Reset(time.Until(at))
		}
	}
	flush := func() {
		timer.Stop()
		due, last = time.Time{}, time.Now()
		d.flush(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case now := <-t.C:
			d.beat(ctx, now)
			if !d.cfg.WithoutHeartbeat {
				d.sendWorker(ctx, "worker-heartbeat", now, d.cfg.Freq)
			}
		case <-d.kick:
			now := time.Now()
			switch n := d.buffered(); {
			case n >= d.cfg.BufferLimit:
				if at := last.Add(d.cfg.MinInterval); now.Before(at) {
					schedule(at)
				} else {
					flush()
				}
			case n > 0:
				schedule(now.Add(d.cfg.Linger))
			}
		case <-timer.C:
			flush()
		}
	}
}

func (d *Dispatcher) buffered() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queued
}

func (d *Dispatcher) beat(ctx context.Context, now time.Time) {
	for _, b := range d.cfg.Beat {
		b(ctx, now)
	}
}

// sendWorker publishes one worker-* event with the fields of §8.3.
func (d *Dispatcher) sendWorker(ctx context.Context, typ string, now time.Time, freq time.Duration) {
	var st Stats
	if d.cfg.Stats != nil {
		st = d.cfg.Stats()
	}
	ev := d.event(typ, now)
	ev["freq"] = freq.Seconds()
	ev["active"] = st.Active
	ev["processed"] = st.Processed
	ev["loadavg"] = LoadAverage()
	ev["sw_ident"] = d.cfg.Software.Ident
	ev["sw_ver"] = d.cfg.Software.Version
	ev["sw_sys"] = d.cfg.Software.System
	d.publish(ctx, strings.ReplaceAll(typ, "-", "."), ev)
}

// event returns the fields every event carries (Celery's EventDispatcher.publish).
func (d *Dispatcher) event(typ string, now time.Time) map[string]any {
	return map[string]any{
		"type":      typ,
		"hostname":  d.cfg.Hostname,
		"utcoffset": UTCOffset(now),
		"pid":       d.pid,
		"clock":     d.clock.Forward(),
		"timestamp": epoch(now),
	}
}

// Task buffers a task-* event (typ such as "task-succeeded") with its fields; it is sent
// in the next task.multi batch. It does nothing while task events are disabled.
func (d *Dispatcher) Task(typ string, fields map[string]any) {
	if !d.taskOn.Load() {
		return
	}
	fs := make([]field, 0, len(fields))
	for k, v := range fields {
		fs = append(fs, field{k, v})
	}
	d.taskEvent(typ, fs)
}

// field is one key of an event.
type field struct {
	k string
	v any
}

// taskEvent encodes a task event (the common fields added, keys sorted, a field of
// fields winning over a common one of the same name) straight into the task.multi batch
// being filled.
func (d *Dispatcher) taskEvent(typ string, fields []field) {
	now := time.Now()
	var arr [32]field
	fs := append(arr[:0],
		field{"type", typ}, field{"hostname", d.cfg.Hostname}, field{"utcoffset", UTCOffset(now)},
		field{"pid", d.pid}, field{"clock", d.clock.Forward()}, field{"timestamp", epoch(now)})
	common := len(fs)
next:
	for _, f := range fields {
		for i := range common {
			if fs[i].k == f.k {
				fs[i].v = f.v
				continue next
			}
		}
		fs = append(fs, f)
	}
	for i := 1; i < len(fs); i++ { // insertion sort: a few dozen keys at most
		for j := i; j > 0 && fs[j].k < fs[j-1].k; j-- {
			fs[j], fs[j-1] = fs[j-1], fs[j]
		}
	}

	d.mu.Lock()
	start := len(d.cur)
	b := append(d.openEventLocked(), '{')
	for i, f := range fs {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = appendString(b, f.k)
		b = append(b, ": "...)
		var err error
		if b, err = appendValue(b, f.v); err != nil {
			d.cur = d.cur[:start]
			d.mu.Unlock()
			d.log.Error("task event not serialisable", "type", typ, "field", f.k, "err", err)
			return
		}
	}
	d.cur = append(b, '}')
	d.queueLocked()
}

// taskEventWith is taskEvent for the observer's events, whose fields are known: the
// common fields are written from a prefix made once, then write appends the event's own
// fields (each preceded by ", "), straight into the batch being filled. Keys are not
// sorted (JSON readers do not care; Celery's own encoder does not sort either).
func (d *Dispatcher) taskEventWith(typ string, write func([]byte) []byte) {
	now := time.Now()
	clock := d.clock.Forward()
	d.mu.Lock()
	b := append(d.openEventLocked(), d.prefix...)
	b = strconv.AppendInt(append(b, `, "utcoffset": `...), int64(UTCOffset(now)), 10)
	b = strconv.AppendInt(append(b, `, "clock": `...), clock, 10)
	b = appendFloat(append(b, `, "timestamp": `...), epoch(now))
	b = appendString(append(b, `, "type": `...), typ)
	b = write(b)
	d.cur = append(b, '}')
	d.queueLocked()
}

// openEventLocked starts the next event in the batch being filled: the batch's opening
// bracket, or the separator after the previous event. It returns d.cur.
func (d *Dispatcher) openEventLocked() []byte {
	if d.curN == 0 {
		if d.cur == nil {
			if n := len(d.free); n > 0 {
				d.cur, d.free = d.free[n-1][:0], d.free[:n-1]
			} else {
				d.cur = make([]byte, 0, d.cfg.BufferLimit*448)
			}
		}
		d.cur = append(d.cur, '[')
	} else {
		d.cur = append(d.cur, ", "...)
	}
	return d.cur
}

// queueLocked counts the event just written into d.cur, closes a full batch and drops the
// oldest batches while publishing lags; it unlocks d.mu and wakes the flusher when a flush
// may have become due.
func (d *Dispatcher) queueLocked() {
	d.curN++
	d.queued++
	kick := d.queued == 1 || d.queued == d.cfg.BufferLimit
	if d.curN == d.cfg.MaxBatch || len(d.cur) >= maxBatchBytes {
		d.full = append(d.full, append(d.cur, ']'))
		d.fullN = append(d.fullN, d.curN)
		d.cur, d.curN = nil, 0
		kick = true
	}
	for d.queued > d.cfg.MaxBuffered && len(d.full) > 0 { // publishing lags: drop the oldest batch
		d.queued -= d.fullN[0]
		d.dropped += uint64(d.fullN[0])
		d.full[0] = nil
		d.full, d.fullN = d.full[1:], d.fullN[1:]
	}
	d.mu.Unlock()
	if kick { // arm the linger, or flush a full batch
		select {
		case d.kick <- struct{}{}:
		default:
		}
	}
}

// flush publishes every buffered task event, at most MaxBatch per task.multi message.
func (d *Dispatcher) flush(ctx context.Context) {
	d.mu.Lock()
	batches := d.full
	if d.curN > 0 {
		batches = append(batches, append(d.cur, ']'))
		d.cur = nil
	}
	d.full, d.fullN, d.curN, d.queued = nil, nil, 0, 0
	dropped := d.dropped
	d.dropped = 0
	d.mu.Unlock()
	if dropped > 0 {
		d.log.Warn("task events dropped: publishing could not keep up", "dropped", dropped)
	}
	if bb, ok := d.fan.(broker.BatchBroadcaster); ok && len(batches) > 1 {
		// A backlog (the broker was slower than the tasks for a moment): several
		// task.multi messages per round trip.
		for len(batches) > 0 {
			n := min(len(batches), maxBatchesPerCall)
			ms := make([]*protocol.Message, n)
			for i, batch := range batches[:n] {
				ms[i] = d.eventMessage(batch)
			}
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
			d.published("task.multi", bb.BroadcastBatch(pctx, Exchange, "task.multi", ms))
			cancel()
			d.recycle(batches[:n])
			batches = batches[n:]
		}
		return
	}
	for _, batch := range batches {
		d.publishEncoded(ctx, "task.multi", batch)
	}
	d.recycle(batches)
}

// recycle keeps up to two published bodies for the next batches (a publish returns only
// once the transport is done with the body).
func (d *Dispatcher) recycle(batches [][]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range batches {
		if len(d.free) == 2 {
			return
		}
		if cap(b) <= 2*maxBatchBytes {
			d.free = append(d.free, b[:0])
		}
	}
}

// maxBatchesPerCall bounds the task.multi messages sent in one BroadcastBatch call.
const maxBatchesPerCall = 32

// publish sends one event message: JSON body, content type application/json, delivery
// mode 1 (transient) and the `hostname` header, as Celery's dispatcher does.
func (d *Dispatcher) publish(ctx context.Context, routingKey string, body any) {
	data, err := encodeEvents(body)
	if err != nil {
		d.log.Error("event not serialisable", "routing_key", routingKey, "err", err)
		return
	}
	d.publishEncoded(ctx, routingKey, data)
}

// eventMessage is an event message whose JSON body is data: content type
// application/json, delivery mode 1 (transient) and the `hostname` header, as Celery's
// dispatcher sends it.
func (d *Dispatcher) eventMessage(data []byte) *protocol.Message {
	return &protocol.Message{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		Properties:      protocol.Properties{DeliveryMode: 1},
		Headers:         map[string]any{"hostname": d.cfg.Hostname},
		Body:            data,
	}
}

// publishEncoded sends one event message whose JSON body is data.
func (d *Dispatcher) publishEncoded(ctx context.Context, routingKey string, data []byte) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	d.published(routingKey, d.fan.Broadcast(pctx, Exchange, routingKey, d.eventMessage(data)))
}

// published logs the first failure of a run of failed publishes and the recovery.
func (d *Dispatcher) published(routingKey string, err error) {
	if err != nil {
		if !d.failing.Swap(true) {
			d.log.Warn("publishing events failed; events are dropped until the broker is back", "routing_key", routingKey, "err", err)
		}
		return
	}
	if d.failing.Swap(false) {
		d.log.Info("publishing events recovered")
	}
}

// UTCOffset is Celery's utcoffset(): time.timezone // 3600 (time.altzone during DST),
// i.e. hours west of UTC, floored. UTC gives 0, Asia/Tokyo -9, America/New_York 5 (4 in
// summer), Asia/Kolkata -6.
func UTCOffset(t time.Time) int {
	_, east := t.Zone()
	return int(math.Floor(float64(-east) / 3600))
}

// LoadAverage is Celery's load_average(): the 1, 5 and 15 minute load averages rounded up
// to two decimals, zeros when /proc/loadavg cannot be read.
func LoadAverage() []float64 {
	out := []float64{0, 0, 0}
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return out
	}
	for i, f := range strings.Fields(string(data)) {
		if i == 3 {
			break
		}
		if v, err := strconv.ParseFloat(f, 64); err == nil {
			out[i] = math.Ceil(v*100) / 100
		}
	}
	return out
}

// SystemName is Python's platform.system() for the running OS ("Linux", "Darwin").
func SystemName() string {
	switch runtime.GOOS {
	case "darwin":
		return "Darwin"
	case "windows":
		return "Windows"
	}
	if runtime.GOOS == "" {
		return ""
	}
	return strings.ToUpper(runtime.GOOS[:1]) + runtime.GOOS[1:]
}

func epoch(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }

// ExceptionRepr is the Python repr of an exception of type typ with args, as Celery puts
// it in task-failed and task-retried (`RuntimeError('boom')`).
func ExceptionRepr(typ string, args []any) string {
	parts := make([]string, len(args))
	for i, a := range args {
		parts[i] = protocol.Repr(a)
	}
	return fmt.Sprintf("%s(%s)", typ, strings.Join(parts, ", "))
}
