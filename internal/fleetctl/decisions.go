package fleetctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"denis.io/fleet/internal/autoscale"
)

const decisionsUsage = `Usage: fleetctl decisions tail [options]

The autoscaler's decision traces: one record per decision, with every input it was made from
(ready, in flight, λ, μ, CPU, pods, flags, stop and rollout state) and its outcome (the count,
the rule that decided or limited it, why), from the bounded Redis stream fleet:decisions. The
autoscaler writes them while the flag DECISION_TRACE_ENABLED is true
(fleetctl flags set DECISION_TRACE_ENABLED true).

  tail     the last -n decisions, oldest first; --follow keeps printing new ones

Output: a table, or with --output json the traces (a JSON array; one JSON object per line
with --follow).
`

type decisionsCmd struct {
	g        *globals
	std      IO
	fs       *pflag.FlagSet
	redisURL string
	stream   string
	pool     string
	n        int64
	follow   bool
	changes  bool
}

func runDecisions(ctx context.Context, g *globals, args []string, std IO) error {
	if len(args) == 0 {
		fmt.Fprint(std.Out, decisionsUsage)
		return usagef("decisions: no command")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(std.Out, decisionsUsage)
		return pflag.ErrHelp
	case "tail":
	default:
		return usagef("decisions: unknown command %q (try 'fleetctl decisions --help')", args[0])
	}
	env := g.env(std)
	c := &decisionsCmd{g: g, std: std}
	c.redisURL = firstRedisURL(env["FLEET_STATE_REDIS"], g.broker, env["FLEET_RESULT_BACKEND"], env["CELERY_RESULT_BACKEND"])
	c.fs = pflag.NewFlagSet("fleetctl decisions tail", pflag.ContinueOnError)
	c.fs.SetOutput(io.Discard)
	c.fs.SortFlags = false
	c.fs.StringVar(&c.redisURL, "redis", c.redisURL, "Redis URL of the decision stream (env FLEET_STATE_REDIS; default the broker or result backend when Redis)")
	c.fs.StringVar(&c.stream, "stream", autoscale.DefaultTraceStream, "the stream's key")
	c.fs.StringVar(&c.pool, "pool", "", "only this pool's (Deployment's) decisions")
	c.fs.Int64VarP(&c.n, "lines", "n", 20, "how many of the last decisions to print")
	c.fs.BoolVarP(&c.follow, "follow", "f", false, "keep printing new decisions until interrupted")
	c.fs.BoolVar(&c.changes, "changes", false, "only decisions that change the replica count")
	g.addTo(c.fs)
	if err := c.fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(std.Out, "%s\nOptions:\n%s", decisionsUsage, c.fs.FlagUsages())
			return err
		}
		return usagef("decisions tail: %v", err)
	}
	if c.fs.NArg() > 0 {
		return usagef("decisions tail: unexpected argument %q", c.fs.Arg(0))
	}
	if g.output != "table" && g.output != "json" {
		return usagef("--output must be table or json, not %q", g.output)
	}
	if c.n < 0 {
		return usagef("decisions tail: -n must not be negative")
	}
	if c.redisURL == "" {
		return usagef("decisions tail: no Redis: give --redis redis://HOST:6379/DB or set FLEET_STATE_REDIS")
	}
	rdb, err := dialRedis(ctx, c.redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	return c.tail(ctx, rdb)
}

// trace is one stream entry.
type trace struct {
	ID string
	autoscale.DecisionTrace
}

func (c *decisionsCmd) tail(ctx context.Context, rdb *goredis.Client) error {
	// The last n matching entries: read backwards in pages until n matched.
	var got []trace
	last := "+"
	for int64(len(got)) < c.n {
		page, err := rdb.XRevRangeN(ctx, c.stream, last, "-", 200).Result()
		if err != nil {
			return fmt.Errorf("read %s: %w", c.stream, err)
		}
		for _, e := range page {
			if e.ID == last {
				continue
			}
			if tr, ok := c.decode(e); ok && int64(len(got)) < c.n {
				got = append(got, tr)
			}
		}
		if len(page) < 200 {
			break
		}
		last = page[len(page)-1].ID
	}
	for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
		got[i], got[j] = got[j], got[i]
	}
	after := "$"
	if !c.follow {
		return c.print(got, true)
	}
	if err := c.print(got, len(got) == 0); err != nil {
		return err
	}
	if len(got) > 0 {
		after = got[len(got)-1].ID
	} else if ids, err := rdb.XRevRangeN(ctx, c.stream, "+", "-", 1).Result(); err == nil && len(ids) > 0 {
		after = ids[0].ID
	}
	for {
		res, err := rdb.XRead(ctx, &goredis.XReadArgs{Streams: []string{c.stream, after}, Block: 2 * time.Second, Count: 100}).Result()
		switch {
		case errors.Is(err, goredis.Nil):
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil // interrupted: following ends cleanly
			}
			return fmt.Errorf("read %s: %w", c.stream, err)
		}
		var batch []trace
		for _, s := range res {
			for _, e := range s.Messages {
				after = e.ID
				if tr, ok := c.decode(e); ok {
					batch = append(batch, tr)
				}
			}
		}
		if err := c.print(batch, false); err != nil {
			return err
		}
	}
}

func (c *decisionsCmd) decode(e goredis.XMessage) (trace, bool) {
	raw, _ := e.Values["trace"].(string)
	var tr trace
	if json.Unmarshal([]byte(raw), &tr.DecisionTrace) != nil {
		return tr, false
	}
	tr.ID = e.ID
	if c.pool != "" && tr.Pool != c.pool && tr.Decision.Workload != c.pool {
		return tr, false
	}
	if c.changes && !tr.Decision.Changed() {
		return tr, false
	}
	return tr, true
}

// print writes traces as a table (with the header when header is set) or JSON: an array
// without --follow, else one object per line.
func (c *decisionsCmd) print(ts []trace, header bool) error {
	if c.g.output == "json" {
		if !c.follow {
			out := make([]autoscale.DecisionTrace, len(ts))
			for i, t := range ts {
				out[i] = t.DecisionTrace
			}
			return writeJSON(c.std.Out, out)
		}
		for _, t := range ts {
			data, err := json.Marshal(t.DecisionTrace)
			if err != nil {
				return fmt.Errorf("encode output: %w", err)
			}
			if _, err := fmt.Fprintf(c.std.Out, "%s\n", data); err != nil {
				return err
			}
		}
		return nil
	}
	if len(ts) == 0 && !header {
		return nil
	}
	rows := make([][]string, 0, len(ts))
	for _, t := range ts {
		d := t.Decision
		applied := "-"
		switch {
		case t.Error != "":
			applied = "failed"
		case t.DryRun && d.Changed():
			applied = "dry-run"
		case t.Applied:
			applied = "yes"
		}
		state := []string{}
		if d.State.Stopped {
			state = append(state, "stopped")
		}
		if d.State.RollingOut {
			state = append(state, "rollout")
		}
		if d.State.MetricsUnavailable {
			state = append(state, "no-metrics")
		}
		if d.Refused {
			state = append(state, "refused")
		}
		in := d.Inputs
		rows = append(rows, []string{
			d.Time.Local().Format("15:04:05"), t.Pool, strconv.Itoa(d.Current) + "→" + strconv.Itoa(d.Desired), string(d.Rule), applied,
			strconv.Itoa(in.Ready), strconv.Itoa(in.InFlight), fmt.Sprintf("%.2f", in.Lambda), fmt.Sprintf("%.3f", in.Mu),
			fmt.Sprintf("%.0f%%", in.CPU*100), strings.Join(state, ","), d.Reason,
		})
	}
	hdr := []string{"TIME", "POOL", "REPLICAS", "RULE", "APPLIED", "READY", "IN_FLIGHT", "λ/s", "μ/s", "CPU", "STATE", "REASON"}
	if !header {
		hdr = nil
	}
	return writeRows(c.std.Out, hdr, rows)
}

// writeRows is writeTable without a header line when header is nil (following output).
func writeRows(w io.Writer, header []string, rows [][]string) error {
	if header != nil {
		return writeTable(w, header, rows)
	}
	for _, r := range rows {
		if _, err := fmt.Fprintln(w, strings.Join(r, "  ")); err != nil {
			return err
		}
	}
	return nil
}
