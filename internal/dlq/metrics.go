package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"denis.io/fleet/internal/broker"
)

// Metric names. Every one has a `queue` label: the work queue's name (Label), so that
// `crews.dlq` is reported as queue="crews". The fifth DLQ series,
// fleet_dead_lettered_total{queue,task,reason}, is counted where messages are
// dead-lettered: by the worker's metrics (internal/metrics), with the same label values.
const (
	MetricMessages     = "fleet_dlq_messages"                    // gauge: messages in the DLQ
	MetricOldestAge    = "fleet_dlq_oldest_message_age_seconds"  // gauge: age of the oldest dead letter
	MetricReplayed     = "fleet_dlq_replayed_total"              // counter
	MetricEvicted      = "fleet_dlq_evicted_total"               // counter: removed by retention
	MetricScrapeErrors = "fleet_dlq_scrape_errors_total"         // counter: broker reads that failed
	MetricLastScrape   = "fleet_dlq_last_read_timestamp_seconds" // gauge: when the broker was last read
)

// Source is what the collector reads the broker through (broker.Browser has it).
type Source interface {
	Depth(ctx context.Context, queue string) (int64, error)
	Heads(ctx context.Context, queue string) ([]*broker.Stored, error)
}

// CollectorOptions configure a Collector.
type CollectorOptions struct {
	// Queues are the queues whose DLQs are watched (work queue or DLQ names).
	Queues []string
	// Discover, if set, lists the broker's queues at each read; every DLQ among them is
	// watched as well (broker.QueueLister.Queues).
	Discover func(ctx context.Context) ([]string, error)
	// MinInterval is the least time between two reads of the broker: scrapes in between get
	// the last values, so that no number of scrapers makes a storm (default 10 s).
	MinInterval time.Duration
	// Timeout bounds one read of the broker (default 5 s).
	Timeout time.Duration
	Logger  *slog.Logger
	Now     func() time.Time
}

// Collector is a prometheus.Collector for the fleet_dlq_* metrics. The gauges are read from
// the broker (depth, and the time of the oldest dead letter) when scraped, at most once per
// MinInterval; the counters count what this process does (replays, evictions). Register
// one per process: every worker's registry, or `fleetctl dlq metrics` standalone.
type Collector struct {
	src  Source
	o    CollectorOptions
	log  *slog.Logger
	mu   sync.Mutex // serializes reads; guards last, readAt
	last []QueueStat
	at   time.Time

	messages     *prometheus.Desc
	oldest       *prometheus.Desc
	lastRead     *prometheus.Desc
	replayed     *prometheus.CounterVec
	evicted      *prometheus.CounterVec
	scrapeErrors prometheus.Counter
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector reading src.
func NewCollector(src Source, o CollectorOptions) *Collector {
	if o.MinInterval <= 0 {
		o.MinInterval = 10 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Collector{
		src: src,
		o:   o,
		log: logger(o.Logger),
		messages: prometheus.NewDesc(MetricMessages,
			"Messages in the dead-letter queue of queue (queue.dlq).", []string{"queue"}, nil),
		oldest: prometheus.NewDesc(MetricOldestAge,
			"Seconds since the oldest message in the dead-letter queue of queue was dead-lettered (0 when empty).", []string{"queue"}, nil),
		lastRead: prometheus.NewDesc(MetricLastScrape,
			"When the dead-letter queues were last read from the broker (Unix seconds).", nil, nil),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricReplayed,
			Help: "Dead letters of queue replayed (by this process, or received replayed by this worker)."}, []string{"queue"}),
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricEvicted,
			Help: "Dead letters of queue removed by the retention (max length, max age) run by this process."}, []string{"queue"}),
		scrapeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricScrapeErrors,
			Help: "Reads of a dead-letter queue that failed."}),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.messages
	ch <- c.oldest
	ch <- c.lastRead
	c.replayed.Describe(ch)
	c.evicted.Describe(ch)
	c.scrapeErrors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.Timeout)
	defer cancel()
	stats, at := c.read(ctx)
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(c.messages, prometheus.GaugeValue, float64(s.Messages), s.Label)
		if s.OldestKnown || s.Messages == 0 {
			ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, s.OldestAge.Seconds(), s.Label)
		}
	}
	if !at.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastRead, prometheus.GaugeValue, float64(at.UnixNano())/1e9)
	}
	c.replayed.Collect(ch)
	c.evicted.Collect(ch)
	c.scrapeErrors.Collect(ch)
}

// QueueStat is what the collector read about one DLQ.
type QueueStat struct {
	Queue    string // the DLQ
	Label    string // its metrics label (the work queue)
	Messages int64
	// OldestAge is how long ago the oldest message was dead-lettered; OldestKnown is false
	// when the queue holds messages whose time cannot be told.
	OldestAge   time.Duration
	OldestKnown bool
}

// read returns the last stats, reading the broker if they are older than MinInterval.
func (c *Collector) read(ctx context.Context) ([]QueueStat, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.o.Now()
	if !c.at.IsZero() && now.Sub(c.at) < c.o.MinInterval {
		return c.last, c.at
	}
	stats, err := c.Stats(ctx)
	if err != nil {
		c.log.Warn("dlq metrics: reading the broker failed", "err", err)
	}
	c.last, c.at = stats, now
	return stats, now
}

// Queues returns the DLQs the collector watches.
func (c *Collector) Queues(ctx context.Context) ([]string, error) {
	var out []string
	for _, q := range c.o.Queues {
		if d := QueueName(q); !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	if c.o.Discover != nil {
		all, err := c.o.Discover(ctx)
		if err != nil {
			return out, fmt.Errorf("dlq metrics: list queues: %w", err)
		}
		for _, q := range all {
			if IsDLQ(q) && !slices.Contains(out, q) {
				out = append(out, q)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Stats reads every watched DLQ from the broker now. Queues that cannot be read are left
// out (and counted in fleet_dlq_scrape_errors_total); the error joins their errors.
func (c *Collector) Stats(ctx context.Context) ([]QueueStat, error) {
	queues, qerr := c.Queues(ctx)
	var errs []error
	if qerr != nil {
		c.scrapeErrors.Inc()
		errs = append(errs, qerr)
	}
	now := c.o.Now()
	out := make([]QueueStat, 0, len(queues))
	for _, q := range queues {
		s, err := c.stat(ctx, q, now)
		if err != nil {
			c.scrapeErrors.Inc()
			errs = append(errs, err)
			continue
		}
		out = append(out, s)
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("%d reads failed, the first: %w", len(errs), errs[0])
	}
	return out, nil
}

func (c *Collector) stat(ctx context.Context, q string, now time.Time) (QueueStat, error) {
	s := QueueStat{Queue: q, Label: Label(q)}
	n, err := c.src.Depth(ctx, q)
	if errors.Is(err, broker.ErrQueueNotFound) {
		// Not declared yet (nothing was ever dead-lettered from the queue; RabbitMQ
		// answers 404 NOT_FOUND): empty, and nothing to warn about.
		c.log.Debug("dlq metrics: dead-letter queue not declared yet, counted as empty", "queue", q)
		s.OldestKnown = true
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("depth of %s: %w", q, err)
	}
	s.Messages = n
	if n == 0 {
		s.OldestKnown = true
		return s, nil
	}
	heads, err := c.src.Heads(ctx, q)
	if err != nil {
		return s, fmt.Errorf("oldest message of %s: %w", q, err)
	}
	var oldest time.Time
	for _, h := range heads {
		e := describe(h, "")
		if !e.Time.IsZero() && (oldest.IsZero() || e.Time.Before(oldest)) {
			oldest = e.Time
		}
	}
	if !oldest.IsZero() {
		s.OldestKnown = true
		s.OldestAge = max(now.Sub(oldest), 0)
	}
	return s, nil
}

// Replayed counts n dead letters of queue replayed.
func (c *Collector) Replayed(queue string, n int) {
	c.replayed.WithLabelValues(Label(queue)).Add(float64(n))
}

// Evicted counts n dead letters of queue removed by retention.
func (c *Collector) Evicted(queue string, n int) {
	c.evicted.WithLabelValues(Label(queue)).Add(float64(n))
}

// ObserveDelivery counts, on a worker, a replayed message received for the first time
// (HeaderReplayed set, not a redelivery): how a worker's /metrics shows replays made by
// `fleetctl dlq replay`, a separate process.
func (c *Collector) ObserveDelivery(d *broker.Delivery) {
	if d == nil || d.Message == nil || d.Redelivered {
		return
	}
	if n, ok := headerInt(d.Message.Headers[HeaderReplayed]); ok && n > 0 {
		c.Replayed(firstNonEmpty(d.Queue, d.RoutingKey), 1)
	}
}
