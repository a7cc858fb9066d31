package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"
)

// pollEvery is how often the drain watchers look at the broker.
const pollEvery = 2 * time.Millisecond

// drain is what a watcher saw: when the first message was consumed and when the queue
// was empty with every delivery settled.
type drain struct {
	First, Done time.Time
	Criterion   string // how Done was established
}

// watcher observes one pre-filled queue.
type watcher interface {
	// Wait blocks until the queue is drained (or ctx ends / the watcher fails).
	Wait(ctx context.Context) (drain, error)
	// Close releases the watcher's resources.
	Close()
}

// redisWatcher polls LLEN of the queue's priority sub-lists and HLEN of kombu's `unacked`
// hash. kombu and the ceiling pop with BRPOP before they write the lease, so a message can
// be in neither for a moment: done needs two zero polls in a row and is timed at the
// first.
type redisWatcher struct {
	rdb  *goredis.Client
	keys []string
	n    int64
}

func newRedisWatcher(ctx context.Context, rdb *goredis.Client, queue string, n int) (*redisWatcher, error) {
	w := &redisWatcher{rdb: rdb, n: int64(n),
		keys: []string{queue, queue + sep + "3", queue + sep + "6", queue + sep + "9"}}
	ready, unacked, _, err := w.poll(ctx)
	if err != nil {
		return nil, err
	}
	if ready != w.n || unacked != 0 {
		return nil, fmt.Errorf("redis watcher: queue %s holds %d ready and %d unacked, want %d and 0", queue, ready, unacked, n)
	}
	return w, nil
}

// poll returns the ready and unacked counts and the time of the observation (the middle
// of the round trip).
func (w *redisWatcher) poll(ctx context.Context) (ready, unacked int64, at time.Time, err error) {
	t0 := time.Now()
	p := w.rdb.Pipeline()
	lens := make([]*goredis.IntCmd, len(w.keys))
	for i, k := range w.keys {
		lens[i] = p.LLen(ctx, k)
	}
	hl := p.HLen(ctx, "unacked")
	if _, err := p.Exec(ctx); err != nil {
		return 0, 0, time.Time{}, fmt.Errorf("redis watcher: poll: %w", err)
	}
	t1 := time.Now()
	for _, l := range lens {
		ready += l.Val()
	}
	return ready, hl.Val(), t0.Add(t1.Sub(t0) / 2), nil
}

func (w *redisWatcher) Wait(ctx context.Context) (drain, error) {
	d := drain{Criterion: "redis: LLEN(queue sub-lists)=0 and HLEN(unacked)=0, polled every 2ms"}
	var zeroAt time.Time
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return d, ctx.Err()
		case <-tick.C:
		}
		ready, unacked, at, err := w.poll(ctx)
		if err != nil {
			return d, err
		}
		if d.First.IsZero() {
			if ready < w.n || unacked > 0 {
				d.First = at
			}
			continue
		}
		if ready == 0 && unacked == 0 {
			if !zeroAt.IsZero() {
				d.Done = zeroAt
				return d, nil
			}
			zeroAt = at
			continue
		}
		zeroAt = time.Time{}
	}
}

func (w *redisWatcher) Close() {}

// rabbitMonitor is one loop inside the RabbitMQ node, started with `rabbitmqctl eval` once
// per comparison, that watches every run's queue in turn. Queues are named
// <prefix><seq>_<n>_<contender>; for seq = 1, 2, … the loop waits for that queue (or a
// later one, if a run was skipped), then every 2 ms reads its messages_ready and
// messages_unacknowledged (the call behind `rabbitmqctl list_queues`) and prints, with the
// node's clock: "armed" once it holds n ready messages and nothing unacked, "first" when
// a message has left the ready list, "done" when both counts are zero; "gone" if the
// queue disappears first. The loop monitors the CLI and ends with it.
type rabbitMonitor struct {
	cmd    *exec.Cmd
	stderr *tailBuffer
	ended  chan struct{} // closed when rabbitmqctl has exited

	mu      sync.Mutex
	waiters map[int]chan rabbitEvent
	wg      sync.WaitGroup
}

type rabbitEvent struct {
	kind string // armed, first, done, gone
	at   time.Time
}

// rabbitMonitorExpr: arguments vhost, queue name prefix, poll ms, overall deadline ms.
const rabbitMonitorExpr = `
VHost = <<"%s">>, Prefix = <<"%s">>, Poll = %d,
Deadline = erlang:monotonic_time(millisecond) + %d,
PLen = byte_size(Prefix),
Ref = erlang:monitor(process, group_leader()),
Nap = fun(Ms) ->
  receive {'DOWN', Ref, _, _, _} -> exit(normal) after Ms -> ok end,
  case erlang:monotonic_time(millisecond) > Deadline of true -> exit(normal); false -> ok end
end,
Now = fun() -> erlang:system_time(nanosecond) end,
Info = fun(QN) ->
  case rabbit_amqqueue:lookup(QN) of
    {ok, Q} ->
      try rabbit_amqqueue:info(Q, [messages_ready, messages_unacknowledged]) of
        [{messages_ready, R}, {messages_unacknowledged, U}] -> {R, U};
        _ -> gone
      catch _:_ -> gone end;
    _ -> gone
  end
end,
Parse = fun(Name) ->
  try
    PLen = binary:longest_common_prefix([Name, Prefix]),
    [SB, NB | _] = binary:split(binary:part(Name, PLen, byte_size(Name) - PLen), <<"_">>, [global]),
    {binary_to_integer(SB), binary_to_integer(NB)}
  catch _:_ -> none end
end,
Find = fun(Seq) ->
  Cands = lists:sort([{S, N, QN} || Q <- rabbit_amqqueue:list(VHost),
                                    QN <- [amqqueue:get_name(Q)],
                                    {S, N} <- [Parse(element(4, QN))], S >= Seq]),
  case Cands of [] -> none; [C | _] -> C end
end,
Watch = fun W(S, N, QN, Phase) ->
  T = Now(),
  case {Phase, Info(QN)} of
    {_, gone} -> io:format("gone ~b 0~n", [S]);
    {fill, {N, 0}} -> io:format("armed ~b ~b~n", [S, T]), W(S, N, QN, wait);
    {wait, {R, U}} when R < N; U > 0 -> io:format("first ~b ~b~n", [S, T]), Nap(Poll), W(S, N, QN, drain);
    {drain, {0, 0}} -> io:format("done ~b ~b~n", [S, T]);
    _ -> Nap(Poll), W(S, N, QN, Phase)
  end
end,
Run = fun RL(Seq) ->
  case Find(Seq) of
    none -> Nap(5), RL(Seq);
    {S, N, QN} -> Watch(S, N, QN, fill), RL(S + 1)
  end
end,
io:format("ready~n"),
Run(1).
`

// startRabbitMonitor starts the in-node loop for queues named prefix<seq>_<n>_….
func startRabbitMonitor(ctx context.Context, vhost, prefix string, deadline time.Duration) (*rabbitMonitor, error) {
	if strings.ContainsAny(vhost+prefix, `"\`) {
		return nil, fmt.Errorf("rabbit monitor: unsupported vhost/prefix %q/%q", vhost, prefix)
	}
	expr := fmt.Sprintf(rabbitMonitorExpr, vhost, prefix, pollEvery.Milliseconds(), deadline.Milliseconds())
	cmd := exec.Command("rabbitmqctl", "eval", expr)
	m := &rabbitMonitor{cmd: cmd, stderr: newTailBuffer(4096), ended: make(chan struct{}), waiters: map[int]chan rabbitEvent{}}
	cmd.Stderr = m.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("rabbit monitor: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("rabbit monitor: start rabbitmqctl: %w", err)
	}
	ready := make(chan struct{})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(m.ended)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			m.dispatch(strings.TrimSpace(sc.Text()), ready)
		}
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
	}()
	select {
	case <-ready:
		return m, nil
	case <-m.ended:
		return nil, fmt.Errorf("rabbit monitor: rabbitmqctl eval ended: %s", m.stderr.String())
	case <-time.After(60 * time.Second):
		m.Close()
		return nil, errors.New("rabbit monitor: rabbitmqctl eval did not start within 60s")
	case <-ctx.Done():
		m.Close()
		return nil, ctx.Err()
	}
}

func (m *rabbitMonitor) dispatch(line string, ready chan struct{}) {
	f := strings.Fields(line)
	if len(f) == 1 && f[0] == "ready" {
		close(ready)
		return
	}
	if len(f) != 3 {
		return // rabbitmqctl's own output
	}
	seq, err1 := strconv.Atoi(f[1])
	ns, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return
	}
	m.mu.Lock()
	ch := m.waiters[seq]
	m.mu.Unlock()
	if ch != nil {
		select {
		case ch <- rabbitEvent{kind: f[0], at: time.Unix(0, ns)}:
		default:
		}
	}
}

// watch returns the watcher of run seq; register it before the queue is declared.
func (m *rabbitMonitor) watch(seq int) *rabbitRun {
	ch := make(chan rabbitEvent, 8)
	m.mu.Lock()
	m.waiters[seq] = ch
	m.mu.Unlock()
	return &rabbitRun{m: m, seq: seq, events: ch}
}

// Close ends rabbitmqctl and with it the loop in the node. rabbitmqctl runs the CLI's
// Erlang VM under `su` in a session of its own, so every process under ours is
// signalled, by pid.
func (m *rabbitMonitor) Close() {
	pids := processTree(m.cmd.Process.Pid)
	for i := len(pids) - 1; i >= 0; i-- {
		_ = syscall.Kill(pids[i], syscall.SIGTERM)
	}
	select {
	case <-m.ended:
	case <-time.After(10 * time.Second):
		for _, pid := range processTree(m.cmd.Process.Pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	m.wg.Wait()
}

// rabbitRun is one run's view of the monitor.
type rabbitRun struct {
	m      *rabbitMonitor
	seq    int
	events chan rabbitEvent
}

// next waits for the run's next event.
func (r *rabbitRun) next(ctx context.Context) (rabbitEvent, error) {
	select {
	case ev := <-r.events:
		if ev.kind == "gone" {
			return ev, fmt.Errorf("rabbit monitor: queue of run %d disappeared", r.seq)
		}
		return ev, nil
	case <-r.m.ended:
		return rabbitEvent{}, fmt.Errorf("rabbit monitor: rabbitmqctl ended: %s", r.m.stderr.String())
	case <-ctx.Done():
		return rabbitEvent{}, ctx.Err()
	}
}

// Armed waits until the monitor has seen the filled queue.
func (r *rabbitRun) Armed(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ev, err := r.next(ctx)
	if err != nil {
		return fmt.Errorf("waiting for the monitor to arm: %w", err)
	}
	if ev.kind != "armed" {
		return fmt.Errorf("rabbit monitor: %q before armed", ev.kind)
	}
	return nil
}

func (r *rabbitRun) Wait(ctx context.Context) (drain, error) {
	d := drain{Criterion: "amqp: messages_ready=0 and messages_unacknowledged=0, read inside the node every 2ms"}
	for {
		ev, err := r.next(ctx)
		if err != nil {
			return d, err
		}
		switch ev.kind {
		case "first":
			d.First = ev.at
		case "done":
			d.Done = ev.at
			return d, nil
		}
	}
}

func (r *rabbitRun) Close() {
	r.m.mu.Lock()
	delete(r.m.waiters, r.seq)
	r.m.mu.Unlock()
}

// amqpReadyWatcher is the fallback when rabbitmqctl is not usable: it polls the ready
// count with passive declares and cannot see unacked deliveries. With results on it also
// waits for n results, which acks_late contenders write just before acking; with results
// off the last prefetch window's acks are not timed.
type amqpReadyWatcher struct {
	ch      *amqp091.Channel
	queue   string
	n       int
	results *goredis.Client // nil: results off
}

func newAMQPReadyWatcher(conn *amqp091.Connection, queue string, n int, results *goredis.Client) (*amqpReadyWatcher, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp watcher: channel: %w", err)
	}
	return &amqpReadyWatcher{ch: ch, queue: queue, n: n, results: results}, nil
}

func (w *amqpReadyWatcher) Wait(ctx context.Context) (drain, error) {
	d := drain{Criterion: "amqp (fallback, no rabbitmqctl): messages_ready=0 by passive declare"}
	if w.results != nil {
		d.Criterion += " and n results stored"
	} else {
		d.Criterion += "; APPROXIMATE: the acks of the last prefetch window are not timed"
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return d, ctx.Err()
		case <-tick.C:
		}
		q, err := w.ch.QueueDeclarePassive(w.queue, true, false, false, false, nil)
		if err != nil {
			return d, fmt.Errorf("amqp watcher: %w", err)
		}
		now := time.Now()
		if d.First.IsZero() {
			if q.Messages < w.n {
				d.First = now
			}
			continue
		}
		if q.Messages != 0 {
			continue
		}
		if w.results != nil {
			k, err := countResults(ctx, w.results)
			if err != nil {
				return d, fmt.Errorf("amqp watcher: %w", err)
			}
			if k < int64(w.n) {
				continue
			}
		}
		d.Done = now
		return d, nil
	}
}

func (w *amqpReadyWatcher) Close() { _ = w.ch.Close() }

// tailBuffer keeps the last bytes written to it (a process's output for error reports).
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
