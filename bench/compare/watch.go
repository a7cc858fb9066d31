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
	rdb   *goredis.Client
	keys  []string
	n     int64
	first chan struct{}
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

// rabbitWatcher runs a loop inside the RabbitMQ node through `rabbitmqctl eval`: every
// 2 ms it reads the queue's messages_ready and messages_unacknowledged (the call behind
// `rabbitmqctl list_queues`) and prints when the first message left the ready list and
// when both counts reached zero, with the node's own timestamps.
type rabbitWatcher struct {
	cmd    *exec.Cmd
	lines  chan string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stderr *tailBuffer
}

// rabbitWatchExpr is the Erlang evaluated in the node. Arguments: vhost, queue, n,
// poll ms, deadline ms. It arms once the queue holds n ready messages and nothing unacked
// (so it can start while the queue is being filled), then reports the first consumption
// and the drain.
const rabbitWatchExpr = `
QN = rabbit_misc:r(<<"%s">>, queue, <<"%s">>), N = %d, Poll = %d,
Deadline = erlang:monotonic_time(millisecond) + %d,
Info = fun() ->
  case rabbit_amqqueue:lookup(QN) of
    {ok, Q} ->
      try rabbit_amqqueue:info(Q, [messages_ready, messages_unacknowledged]) of
        [{messages_ready, R}, {messages_unacknowledged, U}] -> {R, U};
        _ -> gone
      catch _:_ -> gone end;
    _ -> gone
  end
end,
Now = fun() -> erlang:system_time(nanosecond) end,
Loop = fun L(Phase) ->
  T = Now(),
  case {erlang:monotonic_time(millisecond) > Deadline, Phase, Info()} of
    {true, _, _} -> io:format("timeout~n"), timeout;
    {_, fill, {N, 0}} -> io:format("armed ~b~n", [T]), L(wait);
    {_, fill, _} -> timer:sleep(Poll), L(fill);
    {_, _, gone} -> io:format("gone~n"), gone;
    {_, wait, {R, U}} when R < N; U > 0 -> io:format("first ~b ~b ~b~n", [T, R, U]), timer:sleep(Poll), L(drain);
    {_, drain, {0, 0}} -> io:format("done ~b~n", [T]), done;
    _ -> timer:sleep(Poll), L(Phase)
  end
end,
Loop(fill).
`

// newRabbitWatcher starts the in-node watcher; it may run before the queue is filled
// (or even declared). Call Armed before starting the contender.
func newRabbitWatcher(vhost, queue string, n int, timeout time.Duration) (*rabbitWatcher, error) {
	if strings.ContainsAny(vhost+queue, `"\`) {
		return nil, fmt.Errorf("rabbit watcher: unsupported vhost/queue name %q/%q", vhost, queue)
	}
	expr := fmt.Sprintf(rabbitWatchExpr, vhost, queue, n, pollEvery.Milliseconds(), timeout.Milliseconds())
	wctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(wctx, "rabbitmqctl", "eval", expr)
	w := &rabbitWatcher{cmd: cmd, lines: make(chan string, 16), cancel: cancel, stderr: newTailBuffer(4096)}
	cmd.Stderr = w.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("rabbit watcher: %w", err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("rabbit watcher: start rabbitmqctl: %w", err)
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer close(w.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.lines <- strings.TrimSpace(sc.Text())
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	return w, nil
}

// Armed waits until the watcher has seen the filled queue.
func (w *rabbitWatcher) Armed(ctx context.Context) error {
	select {
	case line, ok := <-w.lines:
		if ok && strings.HasPrefix(line, "armed ") {
			return nil
		}
		return fmt.Errorf("rabbit watcher: not armed: got %q; rabbitmqctl: %s", line, w.stderr.String())
	case <-time.After(60 * time.Second):
		return errors.New("rabbit watcher: not armed within 60s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *rabbitWatcher) Wait(ctx context.Context) (drain, error) {
	d := drain{Criterion: "amqp: messages_ready=0 and messages_unacknowledged=0 read inside the node every 2ms"}
	for {
		select {
		case <-ctx.Done():
			return d, ctx.Err()
		case line, ok := <-w.lines:
			if !ok {
				return d, fmt.Errorf("rabbit watcher: rabbitmqctl ended early: %s", w.stderr.String())
			}
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			switch f[0] {
			case "first", "done":
				if len(f) < 2 {
					return d, fmt.Errorf("rabbit watcher: bad line %q", line)
				}
				ns, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					return d, fmt.Errorf("rabbit watcher: bad line %q: %w", line, err)
				}
				if f[0] == "first" {
					d.First = time.Unix(0, ns)
					continue
				}
				d.Done = time.Unix(0, ns)
				return d, nil
			case "timeout", "gone":
				return d, fmt.Errorf("rabbit watcher: %s", line)
			}
		}
	}
}

func (w *rabbitWatcher) Close() {
	w.cancel()
	w.wg.Wait()
	_ = w.cmd.Wait()
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
			k, err := w.results.DBSize(ctx).Result()
			if err != nil {
				return d, fmt.Errorf("amqp watcher: results: %w", err)
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
