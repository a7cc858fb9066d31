// Package cli is the `autoscaler` command line: it parses the subcommands and their flags and
// runs them. `autoscaler run` is the autoscaler itself (run.go); `autoscaler simulate` drives the simulator in package sim (the baselines' grid
// search, every trace and seed, the report); the command's main package only calls Main.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"denis.io/fleet/internal/autoscale"
	"denis.io/fleet/internal/autoscale/sim"
)

// Version is set at build time (-ldflags "-X denis.io/fleet/internal/autoscale/cli.Version=…").
var Version = "dev"

// Exit codes, as sysexits.h.
const (
	ExitOK      = 0
	ExitFailure = 1 // a run failed, or --check found a goal that does not hold
	ExitUsage   = 64
)

const usage = `Usage: autoscaler <command> [options]

Sizes the fleet's worker Deployment from broker truth and worker load.

Commands:
  run        run the autoscaler: size worker Deployments through /scale (--target
             kubernetes, the default) or worker processes on this machine (--target local);
             with only options (autoscaler --config=…), run is implied
  simulate   run the deterministic simulator: the traces T0-T6 of autoscaling.md §6 against
             the HPA on CPU, KEDA queue length, KEDA queue length + message rate, this
             autoscaler's policy and the perfect-foresight oracle, and report §6.3's metrics
             and §6.5's goals

Run 'autoscaler <command> --help' for the command's options.
`

// Main runs the command line and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	switch args[0] {
	case "run":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runCmd(ctx, args[1:], os.Environ(), stdout, stderr)
	case "simulate":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return simulate(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	if strings.HasPrefix(args[0], "-") {
		// The chart's form: `autoscaler --target=kubernetes --config=…` runs the autoscaler.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return runCmd(ctx, args, os.Environ(), stdout, stderr)
	}
	fmt.Fprintf(stderr, "autoscaler: unknown command %q\n\n%s", args[0], usage)
	return ExitUsage
}

// simulateOptions is the parsed `simulate` command line.
type simulateOptions struct {
	traces      []*sim.Trace
	seeds       []uint64
	controllers []string
	format      string
	tune        bool
	workers     int
	decisions   bool
	check       bool
}

func parseSimulate(args []string, helpOut io.Writer) (simulateOptions, error) {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	trace := fs.String("trace", "all", "traces to run: all, or a comma-separated list of T0..T6")
	seeds := fs.Int("seeds", 20, "number of seeds per trace")
	first := fs.Uint64("first-seed", 1, "first seed (seeds are first, first+1, …)")
	ctls := fs.String("controllers", "all", "controllers: all, or a comma-separated list of "+strings.Join(sim.Controllers(), ", ")+" (the oracle always runs)")
	format := fs.String("format", "text", "output: text, markdown or json (one JSON array, one object per trace and controller, medians over seeds)")
	tune := fs.Bool("tune", true, "tune the baselines by the grid search on the training trace and seeds first; false uses the recorded settings")
	workers := fs.Int("workers", 0, "parallel runs (0: one per CPU)")
	decisions := fs.Bool("decisions", false, "log every decision of the fleet policy (JSON lines on stderr)")
	check := fs.Bool("check", false, "exit 1 when a goal of the goals table does not hold")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(helpOut, "Usage: autoscaler simulate [options]\n\nOptions:")
			fs.SetOutput(helpOut)
			fs.PrintDefaults()
		}
		return simulateOptions{}, err
	}
	if fs.NArg() > 0 {
		return simulateOptions{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := simulateOptions{format: *format, tune: *tune, workers: *workers, decisions: *decisions, check: *check}
	p := sim.DefaultParams()
	if *trace == "all" {
		o.traces = sim.Traces(p)
	} else {
		for _, n := range strings.Split(*trace, ",") {
			tr, ok := sim.TraceByName(p, strings.TrimSpace(strings.ToUpper(n)))
			if !ok {
				return o, fmt.Errorf("--trace: unknown trace %q (want all or T0..T6)", n)
			}
			o.traces = append(o.traces, tr)
		}
	}
	if *seeds < 1 {
		return o, fmt.Errorf("--seeds must be at least 1, got %d", *seeds)
	}
	o.seeds = sim.Seeds(*first, *seeds)
	if *ctls != "all" {
		for _, c := range strings.Split(*ctls, ",") {
			c = strings.TrimSpace(c)
			known := false
			for _, k := range sim.Controllers() {
				known = known || k == c
			}
			if !known {
				return o, fmt.Errorf("--controllers: unknown controller %q", c)
			}
			o.controllers = append(o.controllers, c)
		}
	}
	switch o.format {
	case "text", "markdown", "json":
	default:
		return o, fmt.Errorf("--format must be text, markdown or json, got %q", o.format)
	}
	return o, nil
}

func simulate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseSimulate(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "autoscaler simulate: %v\n", err)
		return ExitUsage
	}
	setup := sim.DefaultSetup()
	var tuning sim.Tuning
	if o.tune {
		fmt.Fprintf(stderr, "tuning the baselines on %s, seeds %v …\n", sim.TrainingTrace, sim.TrainingSeeds())
		tuning, err = sim.Tune(ctx, setup, sim.Grid(setup.Params), sim.TrainingSeeds(), o.workers)
		if err != nil {
			fmt.Fprintf(stderr, "autoscaler simulate: %v\n", err)
			return ExitFailure
		}
		setup = tuning.Best
	}
	opt := sim.Options{Controllers: o.controllers, Workers: o.workers}
	if o.decisions {
		log := slog.New(slog.NewJSONHandler(stderr, nil))
		opt.Decisions = func(trace string, seed uint64, d autoscale.Decision) {
			log.Info("decision", "trace", trace, "seed", seed, "decision", d)
		}
	}
	results, err := sim.Run(ctx, setup, o.traces, o.seeds, opt)
	if err != nil {
		fmt.Fprintf(stderr, "autoscaler simulate: %v\n", err)
		return ExitFailure
	}
	rows := sim.Summarize(results)
	goals := sim.CheckGoals(setup, rows)
	switch o.format {
	case "json":
		err = sim.WriteJSON(stdout, rows)
	default:
		err = writeText(stdout, o, setup, tuning, rows, goals)
	}
	if err != nil {
		fmt.Fprintf(stderr, "autoscaler simulate: %v\n", err)
		return ExitFailure
	}
	if o.check {
		for _, g := range goals {
			if !g.Pass {
				fmt.Fprintf(stderr, "autoscaler simulate: goal not met: %s %s (measured %s)\n", g.Trace, g.What, g.Got)
				err = errors.New("goal not met")
			}
		}
		if err != nil {
			return ExitFailure
		}
	}
	return ExitOK
}

func writeText(w io.Writer, o simulateOptions, s sim.Setup, t sim.Tuning, rows []sim.Row, goals []sim.Goal) error {
	md := o.format == "markdown"
	item := "  "
	if md {
		item = "- "
	}
	var b strings.Builder
	p := s.Params
	fmt.Fprintf(&b, "%sworkload: λ0 = %g/s, S = %v (exponential), c = %d, prefetch ×%d, pod start %v–%v, grace %v, max %d pods\n",
		item, p.Lambda0, p.MeanService, p.Concurrency, p.Prefetch, p.PodStartMin, p.PodStartMax, p.Grace, p.MaxReplicas)
	fmt.Fprintf(&b, "%sfleet: autoscale.DefaultConfig with c = %d, min %d, max %d (ρ* at λ0 = %.3f)\n",
		item, s.Fleet.Concurrency, s.Fleet.MinReplicas, s.Fleet.MaxReplicas, s.Fleet.TargetUtilizationFor(p.Lambda0, p.Lambda0))
	var cands []sim.Candidate
	seen := map[string]bool{}
	for _, c := range t.Candidates {
		if !seen[c.Controller] {
			seen[c.Controller] = true
			cands = append(cands, c)
		}
	}
	if len(cands) > 0 {
		fmt.Fprintf(&b, "%sbaselines tuned on %s, seeds %v (the best setting meeting Qmax < 100 at the fewest worker-minutes, else the least time above 100):\n",
			item, sim.TrainingTrace, sim.TrainingSeeds())
		for _, c := range cands {
			fmt.Fprintf(&b, "  %s%s (training: Qmax %.0f, %.0f s above 100, %.1f worker-min)\n", item, c, c.Qmax, c.Above100, c.WorkerMinutes)
		}
	} else {
		fmt.Fprintf(&b, "%sbaselines at the recorded tuned settings (--tune=false):\n", item)
		for _, c := range []sim.Candidate{{Controller: sim.HPACPU, HPA: s.HPA}, {Controller: sim.KEDAQL, KEDA: s.KEDAQL}, {Controller: sim.KEDAQLRate, KEDA: s.KEDARate}} {
			fmt.Fprintf(&b, "  %s%s\n", item, c)
		}
	}
	b.WriteString("\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := sim.WriteTable(w, o.traces, rows, goals, md); err != nil {
		return err
	}
	failed := 0
	for _, g := range goals {
		if !g.Pass {
			failed++
		}
	}
	_, err := fmt.Fprintf(w, "Goals: %d of %d hold for fleet on the median seed.\n", len(goals)-failed, len(goals))
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}
