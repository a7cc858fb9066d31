package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"time"
)

type podState int

const (
	podStarting podState = iota
	podReady
	podTerminating
	podGone
)

// task is one message; it keeps its first publish time across redeliveries.
type task struct {
	published time.Duration
	work      time.Duration
	started   time.Duration
	pod       *pod
	gen       int // bumped on every start, so a stale completion is ignored
	began     bool
}

// pod is one worker pod: starting, then ready (consuming), then terminating (finishing its
// running tasks within the grace period), then gone.
type pod struct {
	id       int
	name     string
	canary   bool
	state    podState
	created  time.Duration
	readyAt  time.Duration
	running  []*task
	reserved []*task // delivered, waiting for a slot (only with a prefetch multiplier > 1)
	cost     int     // controller.kubernetes.io/pod-deletion-cost

	// CPU accounting, in request-seconds.
	cpuCum    float64
	cpuAt     time.Duration
	scrapeCum float64
	scrapeAt  time.Duration
	cpu       float64 // metrics-server sample
	cpuAtS    time.Duration
	hasCPU    bool

	// Last heartbeat.
	hbActive int
	hbOldest time.Duration
	hbAt     time.Duration
	hasHB    bool
}

// sample is what the broker's management API returns: a snapshot taken every
// Params.SampleEvery, with the publish rate over the last period.
type sample struct {
	at          time.Duration
	ok          bool // false while the API is unreachable
	ready       int
	unacked     int
	publishRate float64
}

// scaleEvent is one write to spec.replicas that changed it.
type scaleEvent struct {
	at       time.Duration
	from, to int
	by       string
}

type svcSnap struct {
	at          time.Duration
	completions int64
	busySec     float64
}

// world is one simulated run: broker, pods, the Deployment (with a rollout controller for
// T3) and the measurements. Controllers read it the way they would read the real thing.
type world struct {
	clock
	p    Params
	tr   *Trace
	ld   *load
	pods *rand.Rand

	// Broker.
	ready       []*task
	head        int
	reservedN   int
	unacked     int
	published   int64
	completions int64
	lastPub     int64
	lastPubAt   time.Duration
	smp         sample
	snaps       []svcSnap
	durations   []float64 // recent run times (ring)
	durNext     int
	taskP99     time.Duration

	// Busy slot-seconds, for μ.
	busy    int
	busySec float64
	busyAt  time.Duration

	// Pods and the Deployment.
	live        []*pod // not gone, in creation order
	podSeq      int
	rr          int
	spec        int
	stopped     bool
	outage      bool
	rolloutDone bool

	tasks []task // one per arrival, allocated once per run

	rec recorder
}

// runUntil processes events in order until the next one is at or after end; the clock then
// reads end.
func (w *world) runUntil(end time.Duration) {
	for w.pending(end) {
		e := w.pop()
		w.now = e.at
		switch e.kind {
		case evFunc:
			e.fn()
		case evArrival:
			w.publish(e.i)
			if e.i+1 < len(w.ld.arrivals) {
				w.push(event{at: w.ld.arrivals[e.i+1].at, kind: evArrival, i: e.i + 1})
			}
		case evComplete:
			w.complete(e.t, e.p, e.gen)
		case evPodReady:
			w.podReady(e.p)
		case evGrace:
			w.graceOver(e.p)
		}
	}
	w.now = end
}

func newWorld(p Params, ld *load, seed uint64, initial int) *world {
	w := &world{p: p, tr: ld.tr, ld: ld, pods: rand.New(rand.NewPCG(seed, streamPods))}
	w.durations = make([]float64, 0, 1000)
	w.rec.init(ld.tr)
	w.spec = initial
	for i := 0; i < initial; i++ {
		pd := w.newPod(false)
		pd.state, pd.readyAt = podReady, 0
	}
	return w
}

// ---- broker ----

func (w *world) depth() int { return len(w.ready) - w.head + w.reservedN }

func (w *world) pushBack(t *task) {
	w.ready = append(w.ready, t)
}

func (w *world) pushFront(t *task) {
	if w.head > 0 {
		w.head--
		w.ready[w.head] = t
		return
	}
	w.ready = append([]*task{t}, w.ready...)
}

func (w *world) popFront() *task {
	t := w.ready[w.head]
	w.ready[w.head] = nil
	w.head++
	if w.head > 4096 && w.head*2 > len(w.ready) {
		w.ready = append([]*task(nil), w.ready[w.head:]...)
		w.head = 0
	}
	return t
}

func (w *world) publish(i int) {
	if w.tasks == nil {
		w.tasks = make([]task, len(w.ld.arrivals))
	}
	a := w.ld.arrivals[i]
	t := &w.tasks[i]
	t.published, t.work = a.at, a.work
	w.published++
	w.pushBack(t)
	w.rec.depth(w)
	w.dispatch()
}

// dispatch delivers ready messages round-robin to consuming pods with room in their
// prefetch window, as RabbitMQ does with basic.qos.
func (w *world) dispatch() {
	window := w.p.Concurrency * w.p.Prefetch
	for len(w.ready)-w.head > 0 {
		n := len(w.live)
		var target *pod
		for i := 0; i < n; i++ {
			pd := w.live[(w.rr+i)%n]
			if pd.state == podReady && len(pd.running)+len(pd.reserved) < window {
				target = pd
				w.rr = (w.rr + i + 1) % n
				break
			}
		}
		if target == nil {
			return
		}
		t := w.popFront()
		w.unacked++
		if len(target.running) < w.p.Concurrency {
			w.start(t, target)
		} else {
			target.reserved = append(target.reserved, t)
			w.reservedN++
		}
		w.rec.depth(w)
	}
}

func (w *world) start(t *task, pd *pod) {
	pd.integrateCPU(w)
	w.integrateBusy()
	t.pod = pd
	t.started = w.now
	t.gen++
	if !t.began {
		t.began = true
		w.rec.wait(w.now, w.now-t.published)
	}
	pd.running = append(pd.running, t)
	w.busy++
	run := t.work
	if pd.canary && w.tr.CanarySlowdown > 0 {
		run = time.Duration(float64(run) * w.tr.CanarySlowdown)
	}
	w.push(event{at: w.now + run, kind: evComplete, t: t, p: pd, gen: t.gen})
}

func (w *world) complete(t *task, pd *pod, gen int) {
	if t.gen != gen || t.pod != pd || pd.state == podGone {
		return // killed and redelivered meanwhile
	}
	pd.integrateCPU(w)
	w.integrateBusy()
	pd.removeRunning(t)
	w.busy--
	w.unacked--
	w.completions++
	w.recordDuration(w.now - t.started)
	t.pod = nil
	if len(pd.reserved) > 0 && pd.state == podReady {
		next := pd.reserved[0]
		pd.reserved = pd.reserved[1:]
		w.reservedN--
		w.start(next, pd)
		w.rec.depth(w)
	}
	if pd.state == podTerminating && len(pd.running) == 0 {
		w.gone(pd)
		return
	}
	w.dispatch()
}

func (pd *pod) removeRunning(t *task) {
	for i, r := range pd.running {
		if r == t {
			pd.running = append(pd.running[:i], pd.running[i+1:]...)
			return
		}
	}
}

func (w *world) recordDuration(d time.Duration) {
	if len(w.durations) < cap(w.durations) {
		w.durations = append(w.durations, d.Seconds())
		return
	}
	w.durations[w.durNext] = d.Seconds()
	w.durNext = (w.durNext + 1) % len(w.durations)
}

func (w *world) integrateBusy() {
	w.busySec += float64(w.busy) * (w.now - w.busyAt).Seconds()
	w.busyAt = w.now
}

// integrateCPU adds the CPU used since the last change of the pod's busy slots.
func (pd *pod) integrateCPU(w *world) {
	if pd.state == podReady || pd.state == podTerminating {
		c := float64(w.p.Concurrency)
		b := float64(len(pd.running))
		use := (b*w.p.CPUBusy + (c-b)*w.p.CPUIdle) / c
		pd.cpuCum += use * (w.now - pd.cpuAt).Seconds()
	}
	pd.cpuAt = w.now
}

// takeSample is the management API's periodic sample (it fails during an outage).
func (w *world) takeSample() {
	dt := (w.now - w.lastPubAt).Seconds()
	rate := 0.0
	if dt > 0 {
		rate = float64(w.published-w.lastPub) / dt
	}
	w.lastPub, w.lastPubAt = w.published, w.now
	w.integrateBusy()
	w.snaps = append(w.snaps, svcSnap{at: w.now, completions: w.completions, busySec: w.busySec})
	i := 0
	for i < len(w.snaps)-1 && w.now-w.snaps[i].at > w.p.ServiceWindow {
		i++
	}
	w.snaps = w.snaps[i:]
	if w.outage {
		w.smp.ok = false
		return
	}
	w.smp = sample{at: w.now, ok: true, ready: len(w.ready) - w.head, unacked: w.unacked, publishRate: rate}
}

// api is the management API as a client sees it now: the last sample, and whether the call
// succeeds (it fails at once when an outage starts).
func (w *world) api() (sample, bool) {
	return w.smp, w.smp.ok && !w.outage
}

// serviceRate is μ per busy slot over the service window (0 when too little work ran).
func (w *world) serviceRate() float64 {
	if len(w.snaps) < 2 {
		return 0
	}
	a, b := w.snaps[0], w.snaps[len(w.snaps)-1]
	busy := b.busySec - a.busySec
	if b.at-a.at < w.p.ServiceWindow/2 || busy < 10 || b.completions == a.completions {
		return 0
	}
	return float64(b.completions-a.completions) / busy
}

func (w *world) updateTaskP99() {
	if len(w.durations) == 0 {
		return
	}
	xs := append([]float64(nil), w.durations...)
	w.taskP99 = time.Duration(percentile(xs, 0.99) * float64(time.Second))
}

func (w *world) heartbeat() {
	for _, pd := range w.live {
		if pd.state != podReady && pd.state != podTerminating {
			continue
		}
		pd.hbActive, pd.hbAt, pd.hasHB = len(pd.running), w.now, true
		pd.hbOldest = 0
		for _, t := range pd.running {
			pd.hbOldest = max(pd.hbOldest, w.now-t.started)
		}
	}
}

// scrape is metrics-server: each ready pod's mean CPU over the last ScrapeEvery.
func (w *world) scrape() {
	for _, pd := range w.live {
		if pd.state != podReady {
			continue
		}
		pd.integrateCPU(w)
		span := (w.now - pd.scrapeAt).Seconds()
		if span >= 1 {
			pd.cpu = (pd.cpuCum - pd.scrapeCum) / span
			pd.cpuAtS, pd.hasCPU = w.now, true
			w.rec.cpu(w.now, pd.cpu)
		}
		pd.scrapeCum, pd.scrapeAt = pd.cpuCum, w.now
	}
}

// ---- pods and the Deployment ----

func (w *world) newPod(canary bool) *pod {
	w.podSeq++
	pd := &pod{id: w.podSeq, name: fmt.Sprintf("worker-%04d", w.podSeq), canary: canary, state: podStarting, created: w.now, cpuAt: w.now}
	if canary {
		pd.name = fmt.Sprintf("worker-canary-%04d", w.podSeq)
	}
	w.live = append(w.live, pd)
	return pd
}

func (w *world) createPod(canary bool) {
	pd := w.newPod(canary)
	span := w.p.PodStartMax - w.p.PodStartMin
	delay := w.p.PodStartMin + time.Duration(w.pods.Float64()*float64(span))
	w.push(event{at: w.now + delay, kind: evPodReady, p: pd})
}

func (w *world) podReady(pd *pod) {
	if pd.state != podStarting {
		return
	}
	pd.state, pd.readyAt = podReady, w.now
	pd.cpuAt, pd.scrapeAt, pd.scrapeCum = w.now, w.now, pd.cpuCum
	w.reconcile()
	w.dispatch()
}

// terminate deletes a pod: a starting pod goes at once; a ready one stops consuming, hands
// back its prefetched messages, finishes its running tasks and is killed after the grace
// period (its unfinished tasks are redelivered and counted as killed in flight).
func (w *world) terminate(pd *pod) {
	switch pd.state {
	case podStarting:
		w.gone(pd)
		return
	case podReady:
	default:
		return
	}
	pd.integrateCPU(w)
	pd.state = podTerminating
	for i := len(pd.reserved) - 1; i >= 0; i-- {
		w.pushFront(pd.reserved[i])
		w.unacked--
		w.reservedN--
		w.rec.killed++ // a redelivery caused by the scale-in
	}
	pd.reserved = nil
	w.rec.depth(w)
	if len(pd.running) == 0 {
		w.gone(pd)
		w.dispatch()
		return
	}
	w.push(event{at: w.now + w.p.Grace, kind: evGrace, p: pd})
	w.dispatch()
}

// graceOver kills what a terminating pod still runs when its grace period ends; the tasks
// are redelivered.
func (w *world) graceOver(pd *pod) {
	if pd.state != podTerminating {
		return
	}
	pd.integrateCPU(w)
	w.integrateBusy()
	for i := len(pd.running) - 1; i >= 0; i-- {
		t := pd.running[i]
		t.pod = nil
		w.busy--
		w.unacked--
		w.pushFront(t)
		w.rec.killed++
	}
	pd.running = nil
	w.rec.depth(w)
	w.gone(pd)
	w.dispatch()
}

func (w *world) gone(pd *pod) {
	pd.state = podGone
	w.rec.podSeconds += (w.now - pd.created).Seconds()
	for i, q := range w.live {
		if q == pd {
			w.live = append(w.live[:i], w.live[i+1:]...)
			if w.rr > i {
				w.rr--
			}
			break
		}
	}
	if len(w.live) > 0 {
		w.rr %= len(w.live)
	} else {
		w.rr = 0
	}
}

// setSpec is a write to the Deployment's /scale. by names the writer.
func (w *world) setSpec(n int, by string) {
	n = max(0, n)
	if n == w.spec {
		return
	}
	w.rec.events = append(w.rec.events, scaleEvent{at: w.now, from: w.spec, to: n, by: by})
	w.spec = n
	w.reconcile()
}

// canaryShare is the rollout's canary weight now.
func (w *world) canaryShare() float64 {
	if w.tr.Canary == nil {
		return 0
	}
	return w.tr.Canary(w.now)
}

// reconcile is the ReplicaSet (and, in T3, the rollout) controller: it creates and deletes
// pods until the stable and canary counts match spec and the canary weight. Scale-down
// victims are ranked as the ReplicaSet controller ranks them.
func (w *world) reconcile() {
	n := w.spec
	share := w.canaryShare()
	canaryWant := 0
	if share > 0 {
		canaryWant = min(n, int(math.Ceil(share*float64(n)-1e-9)))
	}
	stableWant := n - canaryWant
	var stable, canary []*pod
	readyActive := 0
	for _, pd := range w.live {
		if pd.state != podStarting && pd.state != podReady {
			continue
		}
		if pd.state == podReady {
			readyActive++
		}
		if pd.canary {
			canary = append(canary, pd)
		} else {
			stable = append(stable, pd)
		}
	}
	for i := len(canary); i < canaryWant; i++ {
		w.createPod(true)
	}
	if extra := len(canary) - canaryWant; extra > 0 {
		for _, pd := range rankForDeletion(canary)[:extra] {
			w.terminate(pd)
		}
	}
	for i := len(stable); i < stableWant; i++ {
		w.createPod(false)
	}
	if extra := len(stable) - stableWant; extra > 0 {
		if share > 0 {
			// A rollout step: keep the old pods until the new ones are ready
			// (maxUnavailable 0, maxSurge > 0).
			extra = min(extra, max(0, readyActive-n))
		}
		if extra > 0 {
			for _, pd := range rankForDeletion(stable)[:extra] {
				w.terminate(pd)
			}
		}
	}
}

// rankForDeletion orders pods the way the ReplicaSet controller picks scale-down victims:
// not ready before ready, lower pod-deletion-cost first, then the most recently ready, then
// the newest.
func rankForDeletion(pods []*pod) []*pod {
	out := append([]*pod(nil), pods...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		ar, br := a.state == podReady, b.state == podReady
		if ar != br {
			return !ar
		}
		if a.cost != b.cost {
			return a.cost < b.cost
		}
		if a.readyAt != b.readyAt {
			return a.readyAt > b.readyAt
		}
		return a.id > b.id
	})
	return out
}

// rollingOut is true from the first canary step until the rollback has settled (every
// canary pod gone and the stable pods all ready).
func (w *world) rollingOut() bool {
	if w.tr.Canary == nil || w.rolloutDone {
		return false
	}
	if w.canaryShare() > 0 {
		return true
	}
	if w.now < w.tr.Rollback {
		return false
	}
	readyStable := 0
	for _, pd := range w.live {
		if pd.canary {
			return true
		}
		if pd.state == podReady {
			readyStable++
		}
	}
	if readyStable >= w.spec {
		w.rolloutDone = true
		return false
	}
	return true
}

// readyCapacity is the messages per second the ready, consuming pods can serve.
func (w *world) readyCapacity() (total, stable float64) {
	s := w.p.MeanService.Seconds()
	if w.tr.LongShare > 0 {
		s = (1-w.tr.LongShare)*s + w.tr.LongShare*w.tr.LongTask.Seconds()
	}
	c := float64(w.p.Concurrency)
	for _, pd := range w.live {
		if pd.state != podReady {
			continue
		}
		if pd.canary {
			total += c / (s * w.tr.CanarySlowdown)
		} else {
			total += c / s
			stable += c / s
		}
	}
	return total, stable
}

// podCounts are the pod totals a Deployment's status shows.
func (w *world) podCounts() (all, ready int) {
	for _, pd := range w.live {
		if pd.state == podStarting || pd.state == podReady {
			all++
		}
		if pd.state == podReady {
			ready++
		}
	}
	return all, ready
}
