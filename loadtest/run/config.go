package run

import (
	"errors"
	"io"
	"log/slog"
	"time"

	"denis.io/fleet/loadtest/mix"
	"denis.io/fleet/loadtest/schedule"
)

// Config is one load test run.
type Config struct {
	// Broker, ResultBackend and Queues are the worker's -b, --result-backend and -Q. The
	// result backend must be Redis: outcomes are read from it.
	Broker        string
	ResultBackend string
	Queues        []string
	// VisibilityTimeout is the Redis broker's (passed to local workers too).
	VisibilityTimeout time.Duration

	Profile  schedule.Profile
	Level    schedule.Level
	Arrivals schedule.Arrivals
	Seed     uint64
	Mix      *mix.Mix
	// MixNote describes the mix in the report (e.g. that the default one models
	// materializer jobs and crew runs with diag tasks).
	MixNote string

	// Publishers is how many publishes may be in flight at once (default 16).
	Publishers int
	// Warmup is excluded from the queue-length criterion.
	Warmup time.Duration
	// Drain bounds the wait for outcomes after the last send.
	Drain time.Duration
	// SampleEvery is the sampling period of depths, workers and outcomes (default 1 s).
	SampleEvery time.Duration

	Thresholds Thresholds

	// Local workers (0: observe an existing fleet).
	LocalWorkers      int
	WorkerBin         string
	WorkerConcurrency int
	// WorkerArgs are extra flags for each local worker ("{i}" = its slot number).
	WorkerArgs []string
	// WorkerCPU is the CPU each worker is given, in cores: worker CPU % is measured
	// against it (as Kubernetes measures against the CPU request). Default 1.
	WorkerCPU float64
	// MetricsURLs are /metrics endpoints of workers to scrape ("{i}" expands to each local
	// worker's slot).
	MetricsURLs []string
	// DecisionsFile is the autoscaler's JSON-lines decision log to follow.
	DecisionsFile string

	// Chaos.
	KillEvery        time.Duration // SIGKILL a random local worker this often
	RestartKilled    bool          // start a replacement for a killed worker
	RestartDelay     time.Duration
	RestartBrokerAt  []time.Duration
	BrokerRestartCmd string
	CutAt            []time.Duration // cut local workers' broker connections (proxy)

	// OutDir receives result.json, report.html, the PNGs and the worker logs.
	OutDir string
	// Progress, when set, gets a live progress line every second (a terminal).
	Progress io.Writer
	Logger   *slog.Logger
}

func (c *Config) defaults() error {
	if c.Mix == nil {
		return errors.New("run: no mix")
	}
	if err := c.Profile.Validate(); err != nil {
		return err
	}
	if len(c.Queues) == 0 {
		c.Queues = []string{"celery"}
	}
	if c.Publishers <= 0 {
		c.Publishers = 16
	}
	if c.SampleEvery <= 0 {
		c.SampleEvery = time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 2 * time.Minute
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.WorkerCPU <= 0 {
		c.WorkerCPU = 1
	}
	if c.WorkerConcurrency <= 0 {
		c.WorkerConcurrency = 8
	}
	if c.VisibilityTimeout <= 0 {
		c.VisibilityTimeout = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if (len(c.CutAt) > 0 || c.KillEvery > 0) && c.LocalWorkers == 0 {
		return errors.New("run: --kill-worker-every and --cut-connections-at act on local workers (--local-workers N)")
	}
	if len(c.RestartBrokerAt) > 0 && c.BrokerRestartCmd == "" {
		return errors.New("run: --restart-broker-at needs --broker-restart-cmd: the load test never guesses how to restart a broker (a shared one would break everyone else's work)")
	}
	return nil
}

// DefaultWarmup is 10 % of the profile, at most a minute.
func DefaultWarmup(p schedule.Profile) time.Duration {
	return min(p.Duration()/10, time.Minute)
}
