package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"denis.io/fleet/internal/connect"
	"denis.io/fleet/internal/events"
	fflags "denis.io/fleet/internal/flags"
)

const flagsUsage = `Usage: fleetctl flags COMMAND [options] ...

The fleet's feature flags in the Redis hash fleet:flags, which beats the environment and the
ConfigMap on every worker and applies within a second (set and unset notify the workers on
fleet:flags:changed). Denis's Python code reads and writes the same hash.

Commands:
  ls [--workers]            every flag: its Redis value (or none), default and meaning;
                            --workers adds each live worker's effective value and source
  get NAME [--workers]      one flag
  set NAME VALUE [--wait D] store a value (validated); --wait: until every live worker has it
  unset NAME [--wait D]     remove the Redis value (the ConfigMap, env or default applies again)

Options (every command): --redis URL (the flags hash; env FLEET_FLAGS_REDIS, FLEET_STATE_REDIS,
else the broker or CELERY_RESULT_BACKEND when Redis), --state-redis URL (the workers' heartbeat
keys; default the same), --output table|json.
`

const rollbackUsage = `Usage: fleetctl rollback materializers [options]

F1 rollback ("Rollback Inmediato (60s)"): sets DENIS_MATERIALIZERS_ENABLED=false in the Redis
hash fleet:flags, waits until every live worker reports it in a heartbeat taken after the
change (materializer jobs then run in stub mode), and prints the confirmation and the
equivalent commands for a cluster whose flags come from the ConfigMap only.

Options:
`

// flagsCmd holds the options of the flags and rollback commands.
type flagsCmd struct {
	g          *globals
	std        IO
	fs         *pflag.FlagSet
	name       string
	redisURL   string
	stateURL   string
	workers    bool
	wait       time.Duration
	namespace  string
	release    string
	flagsRedis *goredis.Client
	stateRedis *goredis.Client
}

func newFlagsCmd(name string, g *globals, std IO) *flagsCmd {
	c := &flagsCmd{g: g, std: std, name: name}
	env := g.env(std)
	c.redisURL = firstRedisURL(env["FLEET_FLAGS_REDIS"], env["FLEET_STATE_REDIS"], g.broker, env["CELERY_RESULT_BACKEND"])
	c.stateURL = firstRedisURL(env["FLEET_STATE_REDIS"])
	c.fs = pflag.NewFlagSet("fleetctl "+name, pflag.ContinueOnError)
	c.fs.SetOutput(io.Discard)
	c.fs.SortFlags = false
	c.fs.StringVar(&c.redisURL, "redis", c.redisURL, "Redis URL of the flags hash (env FLEET_FLAGS_REDIS, FLEET_STATE_REDIS; default the broker or result backend when Redis)")
	c.fs.StringVar(&c.stateURL, "state-redis", c.stateURL, "Redis URL of the workers' heartbeat keys (env FLEET_STATE_REDIS; default --redis)")
	return c
}

func firstRedisURL(urls ...string) string {
	for _, u := range urls {
		if isRedisURL(u) {
			return u
		}
	}
	return ""
}

func isRedisURL(u string) bool {
	return strings.HasPrefix(u, "redis://") || strings.HasPrefix(u, "rediss://")
}

// parse parses args (global options included), checks the argument count and connects.
func (c *flagsCmd) parse(ctx context.Context, args []string, usage string, minArgs, maxArgs int) error {
	c.g.addTo(c.fs)
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(c.std.Out, "%s\nOptions:\n%s", usage, c.fs.FlagUsages())
			return err
		}
		return usagef("%s: %v", c.name, err)
	}
	if n := c.fs.NArg(); n < minArgs || (maxArgs >= 0 && n > maxArgs) {
		return usagef("%s: wrong number of arguments (see 'fleetctl %s --help')", c.name, c.name)
	}
	if c.g.output != "table" && c.g.output != "json" {
		return usagef("--output must be table or json, not %q", c.g.output)
	}
	if c.redisURL == "" {
		return usagef("%s: no Redis: give --redis redis://HOST:6379/DB or set FLEET_FLAGS_REDIS", c.name)
	}
	if c.stateURL == "" {
		c.stateURL = c.redisURL
	}
	var err error
	if c.flagsRedis, err = dialRedis(ctx, c.redisURL); err != nil {
		return err
	}
	if c.stateURL == c.redisURL {
		c.stateRedis = c.flagsRedis
		return nil
	}
	if c.stateRedis, err = dialRedis(ctx, c.stateURL); err != nil {
		_ = c.flagsRedis.Close()
		return err
	}
	return nil
}

func dialRedis(ctx context.Context, u string) (*goredis.Client, error) {
	if !isRedisURL(u) {
		return nil, usagef("not a redis:// or rediss:// URL: %s", connect.Redact(u))
	}
	opts, err := goredis.ParseURL(u)
	if err != nil {
		return nil, usagef("Redis URL %s: %v", connect.Redact(u), err)
	}
	rdb := goredis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, unavailableError{fmt.Errorf("redis %s: %w", connect.Redact(u), err)}
	}
	return rdb, nil
}

func (c *flagsCmd) close() {
	if c.stateRedis != nil && c.stateRedis != c.flagsRedis {
		_ = c.stateRedis.Close()
	}
	if c.flagsRedis != nil {
		_ = c.flagsRedis.Close()
	}
}

// info prints a progress line: on stdout in table output, on stderr in JSON output (so
// stdout stays one JSON array).
func (c *flagsCmd) info(format string, args ...any) {
	w := c.std.Out
	if c.g.output == "json" {
		w = c.std.Err
	}
	fmt.Fprintf(w, format, args...)
}

func (c *flagsCmd) store() *fflags.Store { return fflags.NewStore(c.flagsRedis, "", "") }

func runFlags(ctx context.Context, g *globals, args []string, std IO) error {
	if len(args) == 0 {
		fmt.Fprint(std.Out, flagsUsage)
		return usagef("flags: no command")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(std.Out, flagsUsage)
		return pflag.ErrHelp
	}
	sub := args[0]
	c := newFlagsCmd("flags "+sub, g, std)
	switch sub {
	case "ls", "list":
		c.fs.BoolVar(&c.workers, "workers", false, "add each live worker's effective value and its source")
		if err := c.parse(ctx, args[1:], flagsUsage, 0, 0); err != nil {
			return err
		}
		defer c.close()
		return c.list(ctx, nil)
	case "get":
		c.fs.BoolVar(&c.workers, "workers", false, "add each live worker's effective value and its source")
		if err := c.parse(ctx, args[1:], flagsUsage, 1, 1); err != nil {
			return err
		}
		defer c.close()
		name := c.fs.Arg(0)
		if _, ok := fflags.Lookup(name); !ok {
			return usagef("flags get: %v", fmt.Errorf("%w: %q (known: %s)", fflags.ErrUnknownFlag, name, knownFlags()))
		}
		return c.list(ctx, []string{name})
	case "set", "unset":
		c.fs.DurationVar(&c.wait, "wait", 0, "wait this long at most for every live worker to report the new effective value")
		n := 2
		if sub == "unset" {
			n = 1
		}
		if err := c.parse(ctx, args[1:], flagsUsage, n, n); err != nil {
			return err
		}
		defer c.close()
		return c.set(ctx, sub == "unset")
	default:
		return usagef("flags: unknown command %q (try 'fleetctl flags --help')", sub)
	}
}

func knownFlags() string {
	var names []string
	for _, d := range fflags.Defs() {
		names = append(names, d.Name)
	}
	return strings.Join(names, ", ")
}

// flagRow is one flag in `flags ls` output.
type flagRow struct {
	Name    string          `json:"name"`
	Redis   *string         `json:"redis"` // null when the hash has no value
	Default string          `json:"default"`
	Kind    string          `json:"kind"`
	Help    string          `json:"help"`
	Workers []workerFlagRow `json:"workers,omitempty"`
}

// workerFlagRow is a flag as one live worker reports it.
type workerFlagRow struct {
	Worker string  `json:"worker"`
	Value  string  `json:"value"` // "" when the worker reports no flags (an older version)
	Source string  `json:"source"`
	Seen   float64 `json:"seen"` // epoch seconds of the heartbeat
}

func (c *flagsCmd) list(ctx context.Context, only []string) error {
	stored, err := c.store().List(ctx)
	if err != nil {
		return fmt.Errorf("flags: %w", err)
	}
	var ws []events.WorkerStatus
	if c.workers {
		if ws, err = events.ListWorkers(ctx, c.stateRedis, ""); err != nil {
			return fmt.Errorf("flags: workers: %w", err)
		}
	}
	var rows []flagRow
	for _, d := range fflags.Defs() {
		if only != nil && !slices.Contains(only, d.Name) {
			continue
		}
		r := flagRow{Name: d.Name, Default: d.Default, Kind: d.Kind.String(), Help: d.Help}
		if v, ok := stored[d.Name]; ok {
			r.Redis = &v
		}
		for _, w := range ws {
			fv := w.Flags[d.Name]
			r.Workers = append(r.Workers, workerFlagRow{Worker: w.Hostname, Value: fv.Value, Source: fv.Source, Seen: w.Timestamp})
		}
		rows = append(rows, r)
	}
	if only == nil {
		// Names this version does not know (typos, or flags of a newer fleet): shown so
		// they can be unset.
		for _, name := range slices.Sorted(maps.Keys(stored)) {
			if _, ok := fflags.Lookup(name); !ok {
				v := stored[name]
				rows = append(rows, flagRow{Name: name, Redis: &v, Kind: "unknown", Help: "not a flag of this fleet version; ignored by workers"})
			}
		}
	}
	if c.g.output == "json" {
		return writeJSON(c.std.Out, rows)
	}
	var table [][]string
	for _, r := range rows {
		redis := "-"
		if r.Redis != nil {
			redis = *r.Redis
		}
		if !c.workers {
			table = append(table, []string{r.Name, redis, r.Default, r.Help})
			continue
		}
		if len(r.Workers) == 0 {
			table = append(table, []string{r.Name, redis, r.Default, "(no live worker)", "", ""})
		}
		for _, w := range r.Workers {
			v, src := w.Value, w.Source
			if v == "" {
				v, src = "?", "(not reported)"
			}
			table = append(table, []string{r.Name, redis, r.Default, w.Worker, v, src})
		}
	}
	if !c.workers {
		return writeTable(c.std.Out, []string{"FLAG", "REDIS", "DEFAULT", "MEANING"}, table)
	}
	return writeTable(c.std.Out, []string{"FLAG", "REDIS", "DEFAULT", "WORKER", "EFFECTIVE", "SOURCE"}, table)
}

func (c *flagsCmd) set(ctx context.Context, unset bool) error {
	name := c.fs.Arg(0)
	def, ok := fflags.Lookup(name)
	st := c.store()
	var want string
	switch {
	case unset:
		if err := st.Unset(ctx, name); err != nil {
			return err
		}
		c.info("%s unset in Redis; the ConfigMap, env or default value applies again\n", name)
		if !ok || c.wait <= 0 {
			return nil
		}
		want = "" // any value, as long as its source is no longer redis
	default:
		if !ok {
			return usagef("flags set: %v", fmt.Errorf("%w: %q (known: %s)", fflags.ErrUnknownFlag, name, knownFlags()))
		}
		v, err := st.Set(ctx, name, c.fs.Arg(1))
		if err != nil {
			if errors.Is(err, fflags.ErrInvalidValue) {
				return usageError{err.Error()}
			}
			return err
		}
		c.info("%s=%s set in Redis\n", name, v)
		if c.wait <= 0 {
			return nil
		}
		want = v
	}
	res, err := waitWorkers(ctx, c.stateRedis, def.Name, want, c.wait)
	if err != nil {
		return err
	}
	return c.reportWait(res, def.Name)
}

// waitResult is the outcome of waiting for the live workers to report a flag value.
type waitResult struct {
	Confirmed []string      `json:"confirmed"` // workers that reported it after the change
	Pending   []string      `json:"pending"`   // live workers that did not (yet)
	Gone      []string      `json:"gone"`      // workers that stopped heartbeating meanwhile
	Took      time.Duration `json:"-"`
}

// waitWorkers polls the heartbeat records until every live worker has reported flag with
// value want (want "": any value not from Redis) in a heartbeat newer than the one it had
// when the wait began, or until timeout. Comparing a worker's heartbeat timestamps only with
// each other keeps clock skew between hosts out of it.
func waitWorkers(ctx context.Context, rdb goredis.UniversalClient, flag, want string, timeout time.Duration) (waitResult, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	baseline := map[string]float64{}
	ws, err := events.ListWorkers(ctx, rdb, "")
	if err != nil {
		return waitResult{}, fmt.Errorf("list workers: %w", err)
	}
	for _, w := range ws {
		baseline[w.Hostname] = w.Timestamp
	}
	confirmed := map[string]bool{}
	everSeen := map[string]bool{}
	for {
		live := map[string]bool{}
		for _, w := range ws {
			live[w.Hostname] = true
			everSeen[w.Hostname] = true
			if confirmed[w.Hostname] || w.Timestamp <= baseline[w.Hostname] {
				continue
			}
			fv, ok := w.Flags[flag]
			if ok && ((want != "" && fv.Value == want) || (want == "" && fv.Source != string(fflags.SourceRedis))) {
				confirmed[w.Hostname] = true
			}
		}
		var res waitResult
		for _, h := range slices.Sorted(maps.Keys(everSeen)) {
			switch {
			case confirmed[h]:
				res.Confirmed = append(res.Confirmed, h)
			case live[h]:
				res.Pending = append(res.Pending, h)
			default:
				res.Gone = append(res.Gone, h)
			}
		}
		res.Took = time.Since(start)
		if len(res.Pending) == 0 || !time.Now().Before(deadline) {
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("waiting for the workers: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
		if ws, err = events.ListWorkers(ctx, rdb, ""); err != nil {
			return res, fmt.Errorf("list workers: %w", err)
		}
	}
}

func (c *flagsCmd) reportWait(res waitResult, flag string) error {
	if c.g.output == "json" {
		if err := writeJSON(c.std.Out, []waitResult{res}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(c.std.Out, "%d/%d live workers report it (%.1fs)", len(res.Confirmed), len(res.Confirmed)+len(res.Pending), res.Took.Seconds())
		if len(res.Gone) > 0 {
			fmt.Fprintf(c.std.Out, "; stopped meanwhile: %s", strings.Join(res.Gone, ", "))
		}
		fmt.Fprintln(c.std.Out)
	}
	if len(res.Pending) > 0 {
		return partialError{fmt.Sprintf("%s: not reported by %s within %v (are they reading the Redis flags? see 'fleetctl flags get %s --workers')",
			flag, strings.Join(res.Pending, ", "), c.wait, flag)}
	}
	return nil
}

func runRollback(ctx context.Context, g *globals, args []string, std IO) error {
	c := newFlagsCmd("rollback materializers", g, std)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(std.Out, "Usage: fleetctl rollback materializers [options]\n\nRollbacks: materializers (F1: DENIS_MATERIALIZERS_ENABLED=false).\n")
		if len(args) == 0 {
			return usagef("rollback: what? (try 'fleetctl rollback materializers')")
		}
		return pflag.ErrHelp
	}
	if args[0] != "materializers" {
		return usagef("rollback: unknown rollback %q (known: materializers)", args[0])
	}
	c.fs.DurationVar(&c.wait, "timeout", 60*time.Second, "how long to wait for every live worker to report the change")
	c.fs.StringVar(&c.namespace, "namespace", "fleet", "Kubernetes namespace, for the printed kubectl commands")
	c.fs.StringVar(&c.release, "release", "fleet", "Helm release name, for the printed kubectl commands")
	if err := c.parse(ctx, args[1:], rollbackUsage, 0, 0); err != nil {
		return err
	}
	defer c.close()

	const flag, value = fflags.MaterializersEnabled, "false"
	if _, err := c.store().Set(ctx, flag, value); err != nil {
		return err
	}
	c.info("%s=%s set in Redis; waiting up to %v for every live worker...\n", flag, value, c.wait)
	res, err := waitWorkers(ctx, c.stateRedis, flag, value, c.wait)
	if err != nil {
		return err
	}
	total := len(res.Confirmed) + len(res.Pending)
	if c.g.output == "json" {
		if err := writeJSON(c.std.Out, []waitResult{res}); err != nil {
			return err
		}
	} else {
		switch {
		case total == 0:
			fmt.Fprintln(c.std.Out, "No live worker: the flag is in Redis, and every worker that starts reads it.")
		case len(res.Pending) == 0:
			fmt.Fprintf(c.std.Out, "Rollback Inmediato (60s): confirmed by %d/%d live workers in %.1fs (%s): materializer jobs now run in stub mode.\n",
				len(res.Confirmed), total, res.Took.Seconds(), strings.Join(res.Confirmed, ", "))
		default:
			fmt.Fprintf(c.std.Out, "Rollback NOT confirmed: %d/%d live workers report %s=%s after %.1fs; still pending: %s\n",
				len(res.Confirmed), total, flag, value, res.Took.Seconds(), strings.Join(res.Pending, ", "))
		}
		if len(res.Gone) > 0 {
			fmt.Fprintf(c.std.Out, "Stopped meanwhile: %s\n", strings.Join(res.Gone, ", "))
		}
		full := c.release
		if !strings.Contains(full, "fleet") {
			full += "-fleet"
		}
		fmt.Fprintf(c.std.Out, `
Where the flags come from the ConfigMap only (no Redis), the equivalent is:
  kubectl -n %[1]s patch configmap %[2]s-flags --type merge -p '{"data":{"%[4]s":"%[5]s"}}'
  kubectl -n %[1]s set env deployment -l app.kubernetes.io/instance=%[3]s,app.kubernetes.io/component=worker %[4]s=%[5]s
(the ConfigMap file beats the environment and applies without a restart; set env restarts the workers.)
`, c.namespace, full, c.release, flag, value)
	}
	if len(res.Pending) > 0 {
		return partialError{fmt.Sprintf("rollback materializers: not confirmed by %s within %v", strings.Join(res.Pending, ", "), c.wait)}
	}
	return nil
}
