// Package coalesce turns concurrent calls to a remote server into batches: every caller
// hands in its item and waits for its own outcome, while one goroutine sends whatever has
// accumulated as a single round trip (a Redis pipeline, for example). Nothing waits for a
// batch to fill: a lone call goes out at once, and the calls that arrive while a round trip
// is in flight make up the next one. Semantics stay those of one call per item: Do returns
// only once its item's own outcome is known.
package coalesce

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Do after Close.
var ErrClosed = errors.New("coalesce: closed")

// Flush sends a batch in one round trip and returns the outcome of each item, in order
// (a nil slice means every item succeeded; a slice of another length is a bug reported as
// an error for each item). ctx carries the batch's deadline.
type Flush[T any] func(ctx context.Context, items []T) []error

// Coalescer batches the items handed to Do. Create it with New; it is safe for
// concurrent use.
type Coalescer[T any] struct {
	flush   Flush[T]
	max     int
	timeout time.Duration
	linger  time.Duration

	mu     sync.Mutex
	queue  []*call[T]
	closed bool

	wake chan struct{} // capacity 1: something was queued
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the loop has returned
}

// call states.
const (
	pending   int32 = iota
	taken           // in a batch: its outcome will come
	abandoned       // its caller gave up before it was taken
)

type call[T any] struct {
	item  T
	state atomic.Int32
	res   chan error // capacity 1
}

// New starts a coalescer that flushes at most limit items per round trip, one round trip
// at a time, each under a context with the given timeout.
func New[T any](flush Flush[T], limit int, timeout time.Duration) *Coalescer[T] {
	return NewParallel(flush, limit, 1, timeout)
}

// NewLingering is New for round trips so cheap that calls rarely overlap one (writing a
// frame to a socket, say): a batch waits up to linger after its first item for others to
// join it (less when it fills up), so that each call may take up to linger longer.
func NewLingering[T any](flush Flush[T], limit int, linger, timeout time.Duration) *Coalescer[T] {
	c := newCoalescer(flush, limit, timeout)
	c.linger = linger
	c.start(1)
	return c
}

// NewParallel is New with up to parallel round trips in flight at once (each taking the
// items queued when it starts): while one waits for the server, the next is sent. Items
// of different round trips may then be applied in any order.
func NewParallel[T any](flush Flush[T], limit, parallel int, timeout time.Duration) *Coalescer[T] {
	c := newCoalescer(flush, limit, timeout)
	c.start(parallel)
	return c
}

func newCoalescer[T any](flush Flush[T], limit int, timeout time.Duration) *Coalescer[T] {
	return &Coalescer[T]{
		flush:   flush,
		max:     max(limit, 1),
		timeout: timeout,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// start runs parallel flush loops.
func (c *Coalescer[T]) start(parallel int) {
	var wg sync.WaitGroup
	for range max(parallel, 1) {
		wg.Go(c.loop)
	}
	go func() {
		wg.Wait()
		close(c.done)
	}()
}

// Do queues item and waits for its outcome. If ctx ends before item was sent, item is
// dropped and ctx's error returned; once sent, Do waits for the outcome (the round trip is
// bounded by the coalescer's timeout).
func (c *Coalescer[T]) Do(ctx context.Context, item T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cl := &call[T]{item: item, res: make(chan error, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.queue = append(c.queue, cl)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	select {
	case err := <-cl.res:
		return err
	case <-ctx.Done():
		if cl.state.CompareAndSwap(pending, abandoned) {
			return ctx.Err()
		}
		return <-cl.res
	}
}

// Close flushes what is queued, stops the loop and makes later calls fail with ErrClosed.
// Calls in progress get their outcome.
func (c *Coalescer[T]) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	<-c.done
}

func (c *Coalescer[T]) loop() {
	batch := make([]*call[T], 0, c.max)
	items := make([]T, 0, c.max)
	var linger *time.Timer
	if c.linger > 0 {
		linger = time.NewTimer(time.Hour)
		linger.Stop()
		defer linger.Stop()
	}
	for {
		select {
		case <-c.wake:
		case <-c.stop:
			c.drain(batch, items)
			return
		}
		if linger != nil {
			linger.Reset(c.linger)
		wait:
			for !c.full() {
				select {
				case <-linger.C:
					break wait
				case <-c.wake: // another item: full yet?
				case <-c.stop:
					break wait
				}
			}
			linger.Stop()
		}
		if len(c.wake) == 0 {
			c.mu.Lock()
			more := len(c.queue) > c.max
			c.mu.Unlock()
			if more { // wake another loop for the rest
				select {
				case c.wake <- struct{}{}:
				default:
				}
			}
		}
		c.drain(batch, items)
	}
}

// full reports whether a whole batch is waiting.
func (c *Coalescer[T]) full() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) >= c.max
}

// drain flushes batches until the queue is empty.
func (c *Coalescer[T]) drain(batch []*call[T], items []T) {
	for {
		batch, items = batch[:0], items[:0]
		c.mu.Lock()
		n := 0
		for _, cl := range c.queue {
			if len(batch) == c.max {
				break
			}
			n++
			if cl.state.CompareAndSwap(pending, taken) {
				batch = append(batch, cl)
				items = append(items, cl.item)
			}
		}
		rest := copy(c.queue, c.queue[n:])
		clear(c.queue[rest:])
		c.queue = c.queue[:rest]
		c.mu.Unlock()
		if n == 0 {
			return
		}
		if len(batch) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		errs := c.flush(ctx, items)
		cancel()
		for i, cl := range batch {
			var err error
			switch {
			case errs == nil:
			case len(errs) != len(batch):
				err = errors.New("coalesce: flush returned a wrong number of outcomes")
			default:
				err = errs[i]
			}
			cl.res <- err
			batch[i] = nil
		}
		clear(items)
	}
}
