// Package fleetctl is the `fleetctl` command, the operator's tool for a fleet on either
// broker: `fleetctl dlq` (list, show, replay, purge, export and import dead letters, set up
// RabbitMQ's own dead-lettering into the same queues, trim them to a retention, serve their
// Prometheus metrics), `flags` and `rollback` (feature flags in Redis), `decisions` (the
// autoscaler's traces), `ping` (a diag task round trip, the chart's helm test),
// `emergency-stop` / `resume` (pause worker Deployments on Kubernetes and page) and `drain`
// (the worker's preStop). Output is a table or (--output json) a JSON array; progress is
// shown on a terminal only; errors are one line on stderr with a non-zero exit status.
package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"denis.io/fleet/internal/broker"
	"denis.io/fleet/internal/broker/amqp"
	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/logging"
)

// Version is set at build time (-ldflags "-X denis.io/fleet/internal/fleetctl.Version=…").
var Version = "dev"

// Exit codes (sysexits.h where one fits).
const (
	ExitOK          = 0
	ExitFailure     = 1   // the operation failed, or did only part of what was asked
	ExitUsage       = 64  // bad command line
	ExitUnavailable = 69  // broker unreachable
	ExitInterrupted = 130 // stopped by SIGINT/SIGTERM (what was done is reported)
)

// IO is the command's environment: its streams, whether they are terminals, and the
// process environment (KEY=VALUE).
type IO struct {
	In          io.Reader
	Out, Err    io.Writer
	InTerminal  bool // confirmation prompts are shown only on a terminal
	ErrTerminal bool // progress is shown only on a terminal
	Env         []string
}

// globals are the options every command takes.
type globals struct {
	broker        string
	output        string
	managementURL string
	logLevel      string
}

func (g *globals) env(std IO) map[string]string {
	m := map[string]string{}
	for _, kv := range std.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// defaults fills g from the environment.
func (g *globals) defaults(std IO) {
	env := g.env(std)
	first := func(def string, names ...string) string {
		for _, n := range names {
			if v := env[n]; v != "" {
				return v
			}
		}
		return def
	}
	g.broker = first(connect.DefaultBrokerURL, "FLEET_BROKER", "CELERY_BROKER_URL")
	g.output = first("table", "FLEET_OUTPUT")
	g.managementURL = first("", "FLEET_RABBITMQ_MANAGEMENT_URL")
	g.logLevel = first("warning", "FLEET_LOG_LEVEL")
}

// addTo declares the global flags on fs, their defaults being their current values.
func (g *globals) addTo(fs *pflag.FlagSet) {
	fs.StringVarP(&g.broker, "broker", "b", g.broker, "broker URL: amqp://, amqps://, redis://, rediss:// (env CELERY_BROKER_URL, FLEET_BROKER)")
	fs.StringVarP(&g.output, "output", "o", g.output, "output format: table or json (env FLEET_OUTPUT)")
	fs.StringVar(&g.managementURL, "management-url", g.managementURL, "RabbitMQ management API, default http://<broker host>:15672 with the broker's credentials (env FLEET_RABBITMQ_MANAGEMENT_URL)")
	fs.StringVar(&g.logLevel, "log-level", g.logLevel, "log level of the lines on stderr: debug, info, warning, error (info lists every message moved or removed)")
}

func (g *globals) validate() error {
	switch g.output {
	case "table", "json":
	default:
		return fmt.Errorf("--output must be table or json, not %q", g.output)
	}
	return connect.CheckBrokerURL(g.broker)
}

// usageError marks a command-line mistake (exit 64).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// unavailableError marks a broker that cannot be reached (exit 69).
type unavailableError struct{ err error }

func (e unavailableError) Error() string { return e.err.Error() }
func (e unavailableError) Unwrap() error { return e.err }

// partialError marks an operation that did only part of what was asked (exit 1, after
// its output).
type partialError struct{ msg string }

func (e partialError) Error() string { return e.msg }

const mainUsage = `Usage: fleetctl [global options] COMMAND ...

The fleet's operator tool, for RabbitMQ and Redis brokers alike.

Commands:
  dlq             dead-letter queues: ls, show, replay, purge, export, import, setup, trim, metrics
  flags           feature flags in Redis: ls, get, set, unset (--workers: per worker)
  rollback        rollback materializers: DENIS_MATERIALIZERS_ENABLED=false, confirmed by every worker
  decisions       the autoscaler's decision traces: tail [-n N] [--follow] [--pool P]
  ping            send a diag task to a queue and wait for a worker's result (the helm test)
  emergency-stop  POOL...|--all: annotate paused, scale to 0, POST to $PAGERDUTY_WEBHOOK
  resume          POOL...|--all: end an emergency stop (--restore scales back)
  drain           tell a local worker to start draining (the chart's preStop hook)

Run 'fleetctl COMMAND --help' for a command ('fleetctl dlq COMMAND --help' for one of dlq).

Global options (also accepted after the command):
`

// Main runs fleetctl with args and returns the exit status. ctx ends the command early
// (SIGINT/SIGTERM in cmd/fleetctl): long operations stop cleanly, report what they did,
// and return ExitInterrupted.
func Main(ctx context.Context, args []string, std IO) int {
	err := run(ctx, args, std)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, pflag.ErrHelp):
		return ExitOK
	}
	fmt.Fprintf(std.Err, "fleetctl: %s\n", oneLine(err.Error()))
	var ue usageError
	var ua unavailableError
	switch {
	case errors.As(err, &ue):
		return ExitUsage
	case errors.As(err, &ua):
		return ExitUnavailable
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return ExitInterrupted
	}
	return ExitFailure
}

func oneLine(s string) string {
	s = strings.ReplaceAll(strings.TrimSpace(s), "\r", " ")
	return strings.ReplaceAll(s, "\n", " | ")
}

func run(ctx context.Context, args []string, std IO) error {
	g := &globals{}
	g.defaults(std)
	fs := pflag.NewFlagSet("fleetctl", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.SetInterspersed(false)
	g.addTo(fs)
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() { fmt.Fprint(std.Out, mainUsage+fs.FlagUsages()) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err // pflag has printed the usage
		}
		return usagef("%v", err)
	}
	if *version {
		fmt.Fprintf(std.Out, "fleetctl %s\n", Version)
		return nil
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return usagef("no command (try 'fleetctl dlq --help')")
	}
	switch cmd := fs.Arg(0); cmd {
	case "dlq":
		return runDLQ(ctx, g, fs.Args()[1:], std)
	case "flags":
		return runFlags(ctx, g, fs.Args()[1:], std)
	case "rollback":
		return runRollback(ctx, g, fs.Args()[1:], std)
	case "decisions":
		return runDecisions(ctx, g, fs.Args()[1:], std)
	case "ping":
		return runPing(ctx, g, fs.Args()[1:], std)
	case "emergency-stop":
		return runEmergencyStop(ctx, g, fs.Args()[1:], std)
	case "resume":
		return runResume(ctx, g, fs.Args()[1:], std)
	case "drain":
		return runDrain(ctx, g, fs.Args()[1:], std)
	case "version":
		fmt.Fprintf(std.Out, "fleetctl %s\n", Version)
		return nil
	case "help":
		fs.Usage()
		return nil
	default:
		return usagef("unknown command %q (try 'fleetctl --help')", cmd)
	}
}

// session is an open broker for one command.
type session struct {
	g      *globals
	std    IO
	log    *slog.Logger
	b      broker.Broker
	br     broker.Browser
	lister broker.QueueLister // nil when the broker cannot list its queues
	mgmt   *amqp.Management   // RabbitMQ only
	isAMQP bool
}

// open connects to the broker named by the global options.
func open(ctx context.Context, g *globals, std IO) (*session, error) {
	log, err := logging.New(std.Err, g.logLevel, "text")
	if err != nil {
		return nil, usageError{err.Error()}
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	b, err := connect.Broker(cctx, g.broker, connect.BrokerOptions{Logger: quietTransport(log)})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailableError{err}
	}
	br, ok := b.(broker.Browser)
	if !ok {
		_ = b.Close()
		return nil, fmt.Errorf("the %T transport cannot browse queues", b)
	}
	s := &session{g: g, std: std, log: log, b: b, br: br}
	if l, ok := b.(broker.QueueLister); ok {
		s.lister = l
	}
	if _, ok := b.(*amqp.Broker); ok {
		s.isAMQP = true
		m, err := amqp.NewManagement(g.broker, g.managementURL)
		if err != nil {
			_ = b.Close()
			return nil, usageError{err.Error()}
		}
		s.mgmt = m
		s.lister = m
	}
	return s, nil
}

func (s *session) close() {
	if err := s.b.Close(); err != nil {
		s.log.Warn("closing the broker connection", "err", err)
	}
}

// quietTransport keeps the transports' connect/close chatter out of a CLI's stderr unless
// debugging.
func quietTransport(log *slog.Logger) *slog.Logger {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return log
	}
	return slog.New(levelFloor{log.Handler(), slog.LevelWarn})
}

// levelFloor drops records below min.
type levelFloor struct {
	slog.Handler
	min slog.Level
}

func (h levelFloor) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelFloor) WithAttrs(as []slog.Attr) slog.Handler {
	return levelFloor{h.Handler.WithAttrs(as), h.min}
}

func (h levelFloor) WithGroup(name string) slog.Handler {
	return levelFloor{h.Handler.WithGroup(name), h.min}
}
