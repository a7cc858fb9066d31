package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"denis.io/fleet/internal/dlq"
)

const dlqUsage = `Usage: fleetctl dlq COMMAND [options] ...

Every message the fleet could not complete is in QUEUE.dlq next to its queue QUEUE, with
its reason; RabbitMQ's own dead letters (x-death) reach the same queues once 'dlq setup'
has run. Wherever a command takes QUEUE, the work queue's name (crews) and its DLQ's
(crews.dlq) are both accepted. IDs are the ones 'dlq ls' prints; a task id works too.

Commands:
  ls [QUEUE...]                 list the DLQs with their counts, or the messages of some
  show QUEUE ID                 one message: headers, reason, error, traceback, arguments
  replay QUEUE (ID...|--all)    put messages back into their queue (or --to another)
  purge QUEUE (ID...|--all)     delete messages (asks first on a terminal, unless --yes)
  export QUEUE > FILE.jsonl     write messages as JSON lines (the DLQ is unchanged)
  import QUEUE FILE.jsonl       put exported messages into a DLQ (skips those already there)
  setup QUEUE...                make RabbitMQ dead-letter rejected and expired messages into QUEUE.dlq
  trim QUEUE...                 apply a retention (--max-length, --max-age) once
  metrics --addr ADDR           serve the fleet_dlq_* metrics for Prometheus

Selecting messages (ls, replay, purge, export, trim): --reason R, --task NAME (both
repeatable), --since DURATION (dead-lettered within that time). Reasons: ` + "%s" + `.

Interrupting replay, purge or import (Ctrl-C) stops after the message in hand; nothing is
lost or duplicated, what was done is reported, and running the command again continues.
`

func runDLQ(ctx context.Context, g *globals, args []string, std IO) error {
	usage := func() { fmt.Fprintf(std.Out, dlqUsage, strings.Join(dlq.Reasons(), ", ")) }
	if len(args) == 0 {
		usage()
		return usagef("dlq: no command")
	}
	cmds := map[string]func(context.Context, *globals, []string, IO) error{
		"ls": cmdLs, "list": cmdLs, "show": cmdShow, "replay": cmdReplay, "purge": cmdPurge,
		"export": cmdExport, "import": cmdImport, "setup": cmdSetup, "trim": cmdTrim, "metrics": cmdMetrics,
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage()
		return pflag.ErrHelp
	}
	fn, ok := cmds[args[0]]
	if !ok {
		return usagef("dlq: unknown command %q (try 'fleetctl dlq --help')", args[0])
	}
	return fn(ctx, g, args[1:], std)
}

// flags is one command's flag set, with the global options.
type flags struct {
	*pflag.FlagSet
	name, usage string
	g           *globals
	std         IO
}

func newFlags(name, usage string, g *globals, std IO) *flags {
	fs := pflag.NewFlagSet("fleetctl dlq "+name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	return &flags{FlagSet: fs, name: name, usage: usage, g: g, std: std}
}

// parse parses args (global options included) and checks the argument count.
func (f *flags) parse(args []string, minArgs, maxArgs int) error {
	f.g.addTo(f.FlagSet)
	if err := f.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(f.std.Out, "Usage: fleetctl dlq %s\n\n%s\nOptions:\n%s", f.name, f.usage, f.FlagUsages())
			return err
		}
		return usagef("dlq %s: %v", f.name, err)
	}
	if n := f.NArg(); n < minArgs || (maxArgs >= 0 && n > maxArgs) {
		return usagef("dlq %s: wrong number of arguments (see 'fleetctl dlq %s --help')", f.name, f.name)
	}
	if err := f.g.validate(); err != nil {
		return usageError{err.Error()}
	}
	return nil
}

// filterFlags are the message selection options.
type filterFlags struct {
	reasons, tasks []string
	since          time.Duration
}

func (ff *filterFlags) add(fs *flags) {
	fs.StringSliceVar(&ff.reasons, "reason", nil, "only messages dead-lettered for this reason (repeatable)")
	fs.StringSliceVar(&ff.tasks, "task", nil, "only messages of this task name (repeatable)")
	fs.DurationVar(&ff.since, "since", 0, "only messages dead-lettered within this long (e.g. 30m, 24h)")
}

func (ff *filterFlags) filter(ids []string) (dlq.Filter, error) {
	f := dlq.Filter{IDs: ids, Reasons: ff.reasons, Tasks: ff.tasks, Since: ff.since, Now: time.Now()}
	if err := f.Validate(); err != nil {
		return f, usageError{err.Error()}
	}
	return f, nil
}

// entryOut is an entry in JSON output.
type entryOut struct {
	ID         string     `json:"id"`
	Queue      string     `json:"queue"`
	Origin     string     `json:"origin"`
	TaskID     string     `json:"task_id"`
	Task       string     `json:"task"`
	Reason     string     `json:"reason"`
	Error      string     `json:"error"`
	Worker     string     `json:"worker,omitempty"`
	Time       *time.Time `json:"time"`
	AgeSeconds float64    `json:"age_seconds"`
	Attempts   int        `json:"attempts"`
	Replayed   int        `json:"replayed"`
	Source     string     `json:"source"`
	// Status is what the command did with it (replay, purge, trim).
	Status string `json:"status,omitempty"`
	To     string `json:"to,omitempty"`
	Why    string `json:"why,omitempty"`
}

func toOut(e *dlq.Entry, now time.Time) entryOut {
	o := entryOut{ID: e.ID, Queue: e.Queue, Origin: e.Origin, TaskID: e.TaskID, Task: e.Task, Reason: e.Reason,
		Error: e.Error, Worker: e.Worker, AgeSeconds: e.Age(now).Seconds(), Attempts: e.Attempts, Replayed: e.Replayed,
		Source: e.Source}
	if !e.Time.IsZero() {
		t := e.Time
		o.Time = &t
	}
	return o
}

// ---- ls

func cmdLs(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("ls [QUEUE...] [options]", "Without QUEUE: every DLQ on the broker with its message count and the age of its\noldest message. With QUEUE: its messages (id, task, reason, age, attempts, error).", g, std)
	var ff filterFlags
	ff.add(f)
	limit := f.Int("limit", 50, "messages per page (0: all)")
	page := f.Int("page", 1, "page to show, from 1")
	if err := f.parse(args, 0, -1); err != nil {
		return err
	}
	if *limit < 0 || *page < 1 {
		return usagef("dlq ls: --limit must be >= 0 and --page >= 1")
	}
	filter, err := ff.filter(nil)
	if err != nil {
		return err
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	if f.NArg() == 0 {
		return lsQueues(ctx, s, filter)
	}
	now := time.Now()
	var out []entryOut
	var rows [][]string
	var notes []string
	multi := f.NArg() > 1
	for _, q := range f.Args() {
		name := dlq.QueueName(q)
		entries, total, err := dlq.List(ctx, s.br, name, filter, (*page-1)**limit, *limit)
		if err != nil {
			return err
		}
		for i := range entries {
			e := &entries[i]
			out = append(out, toOut(e, now))
			row := []string{e.ID, e.Task, e.Reason, fmtAge(e.Age(now)), strconv.Itoa(e.Attempts), e.ErrorHead(60)}
			if multi {
				row = append([]string{name}, row...)
			}
			rows = append(rows, row)
		}
		first := (*page-1)**limit + 1
		switch {
		case total == 0:
			notes = append(notes, fmt.Sprintf("%s: no messages%s", name, selected(filter)))
		case len(entries) == 0:
			notes = append(notes, fmt.Sprintf("%s: page %d is empty (%d messages%s)", name, *page, total, selected(filter)))
		case len(entries) < total:
			more := ""
			if first+len(entries)-1 < total {
				more = fmt.Sprintf("; --page %d for more", *page+1)
			}
			notes = append(notes, fmt.Sprintf("%s: %d-%d of %d messages%s%s", name, first, first+len(entries)-1, total, selected(filter), more))
		default:
			notes = append(notes, fmt.Sprintf("%s: %d messages%s", name, total, selected(filter)))
		}
	}
	if g.output == "json" {
		return writeJSON(std.Out, out)
	}
	if len(rows) > 0 {
		header := []string{"ID", "TASK", "REASON", "AGE", "ATTEMPTS", "ERROR"}
		if multi {
			header = append([]string{"QUEUE"}, header...)
		}
		if err := writeTable(std.Out, header, rows); err != nil {
			return err
		}
	}
	for _, n := range notes {
		fmt.Fprintln(std.Out, n)
	}
	return nil
}

func selected(f dlq.Filter) string {
	if f.Empty() {
		return ""
	}
	return " selected"
}

// queueOut is a DLQ in JSON output.
type queueOut struct {
	Queue            string   `json:"queue"`
	Origin           string   `json:"origin"`
	Messages         int64    `json:"messages"`
	OldestAgeSeconds *float64 `json:"oldest_age_seconds"`
}

// dlqs lists the DLQs on the broker.
func (s *session) dlqs(ctx context.Context) ([]string, error) {
	if s.lister == nil {
		return nil, errors.New("this broker cannot list its queues: name them")
	}
	all, err := s.lister.Queues(ctx)
	if err != nil {
		if s.isAMQP {
			return nil, fmt.Errorf("listing RabbitMQ's queues needs its management API (rabbitmq-plugins enable rabbitmq_management; or --management-url), or name the queues: %w", err)
		}
		return nil, err
	}
	var out []string
	for _, q := range all {
		if dlq.IsDLQ(q) {
			out = append(out, q)
		}
	}
	return out, nil
}

func lsQueues(ctx context.Context, s *session, filter dlq.Filter) error {
	names, err := s.dlqs(ctx)
	if err != nil {
		return err
	}
	var out []queueOut
	if filter.Empty() {
		c := dlq.NewCollector(s.br, dlq.CollectorOptions{Queues: names, Logger: s.log})
		stats, err := c.Stats(ctx)
		if err != nil {
			return err
		}
		for _, st := range stats {
			q := queueOut{Queue: st.Queue, Origin: st.Label, Messages: st.Messages}
			if st.OldestKnown && st.Messages > 0 {
				age := st.OldestAge.Seconds()
				q.OldestAgeSeconds = &age
			}
			out = append(out, q)
		}
	} else {
		now := time.Now()
		for _, n := range names {
			var count int64
			var oldest time.Time
			if err := dlq.Scan(ctx, s.br, n, func(e *dlq.Entry) error {
				if filter.Match(e) {
					count++
					if !e.Time.IsZero() && (oldest.IsZero() || e.Time.Before(oldest)) {
						oldest = e.Time
					}
				}
				return nil
			}); err != nil {
				return err
			}
			q := queueOut{Queue: n, Origin: dlq.Label(n), Messages: count}
			if !oldest.IsZero() {
				age := now.Sub(oldest).Seconds()
				q.OldestAgeSeconds = &age
			}
			out = append(out, q)
		}
	}
	if s.g.output == "json" {
		return writeJSON(s.std.Out, out)
	}
	if len(out) == 0 {
		fmt.Fprintln(s.std.Out, "no dead-letter queues")
		return nil
	}
	rows := make([][]string, 0, len(out))
	for _, q := range out {
		age := "-"
		if q.OldestAgeSeconds != nil {
			age = fmtAge(time.Duration(*q.OldestAgeSeconds * float64(time.Second)))
		}
		rows = append(rows, []string{q.Queue, strconv.FormatInt(q.Messages, 10), age})
	}
	return writeTable(s.std.Out, []string{"QUEUE", "MESSAGES", "OLDEST"}, rows)
}

// ---- replay

func cmdReplay(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("replay QUEUE (ID...|--all) [options]", "Republishes dead letters to the queue they came from (or --to): a new delivery of the same\ntask (a new id with --new-id), retries reset to 0 unless --keep-retries. Each message is\nconfirmed by the broker in the same step as its DLQ copy is removed.", g, std)
	var ff filterFlags
	ff.add(f)
	all := f.Bool("all", false, "every message (that the filters select)")
	to := f.String("to", "", "republish to this queue instead of each message's own")
	rate := f.String("rate", "", "at most N messages per second (N or N/s)")
	dryRun := f.Bool("dry-run", false, "show what would be replayed; change nothing")
	newID := f.Bool("new-id", false, "give each replayed task a new id")
	keepRetries := f.Bool("keep-retries", false, "keep the retries count instead of resetting it to 0")
	if err := f.parse(args, 1, -1); err != nil {
		return err
	}
	ids := f.Args()[1:]
	if err := needSelection("replay", ids, *all); err != nil {
		return err
	}
	perSec, err := parseRate(*rate)
	if err != nil {
		return err
	}
	filter, err := ff.filter(ids)
	if err != nil {
		return err
	}
	if *to != "" && dlq.IsDLQ(*to) {
		return usagef("dlq replay: --to %s is a dead-letter queue", *to)
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	name := dlq.QueueName(f.Arg(0))
	prog := newProgress(std, "replaying", s.selectionSize(ctx, name, filter))
	rep, err := dlq.Replay(ctx, s.br, name, dlq.ReplayOptions{Filter: filter, To: *to, NewID: *newID, KeepRetries: *keepRetries,
		DryRun: *dryRun, Rate: perSec, Progress: prog.update, Logger: s.log})
	prog.done()
	return report(s, "replay", rep, err, *dryRun, func(e *dlq.Entry) string { return firstOf(*to, e.Origin) })
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// selectionSize is the progress total: the queue depth when nothing narrows it, else
// unknown (0).
func (s *session) selectionSize(ctx context.Context, q string, f dlq.Filter) int {
	if !s.std.ErrTerminal || !f.Empty() {
		return 0
	}
	n, err := s.br.Depth(ctx, q)
	if err != nil {
		return 0
	}
	return int(n)
}

func needSelection(cmd string, ids []string, all bool) error {
	switch {
	case len(ids) == 0 && !all:
		return usagef("dlq %s: name the messages (IDs from 'fleetctl dlq ls') or use --all", cmd)
	case len(ids) > 0 && all:
		return usagef("dlq %s: IDs and --all exclude each other", cmd)
	}
	return nil
}

// parseRate reads "N" or "N/s".
func parseRate(s string) (float64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "/s"), 64)
	if err != nil || v <= 0 {
		return 0, usagef("--rate %q: want a positive number of messages per second, e.g. 50/s", s)
	}
	return v, nil
}

// report prints what a replay or purge did and turns the leftovers into the exit status.
func report(s *session, verb string, rep *dlq.Report, err error, dryRun bool, dest func(*dlq.Entry) string) error {
	now := time.Now()
	if rep == nil {
		return err
	}
	done, status := pastTense(verb), pastTense(verb)
	if dryRun {
		done, status = "would "+verb, "would "+verb
	}
	if s.g.output == "json" {
		out := []entryOut{}
		for i := range rep.Applied {
			o := toOut(&rep.Applied[i], now)
			o.Status = status
			if dest != nil {
				o.To = dest(&rep.Applied[i])
			}
			out = append(out, o)
		}
		for i := range rep.Skipped {
			o := toOut(&rep.Skipped[i].Entry, now)
			o.Status, o.Why = "skipped", rep.Skipped[i].Why
			out = append(out, o)
		}
		if werr := writeJSON(s.std.Out, out); werr != nil && err == nil {
			err = werr
		}
	} else {
		if dryRun && len(rep.Applied) > 0 {
			rows := make([][]string, 0, len(rep.Applied))
			for i := range rep.Applied {
				e := &rep.Applied[i]
				row := []string{e.ID, e.Task, e.Reason, fmtAge(e.Age(now))}
				if dest != nil {
					row = append(row, dest(e))
				}
				rows = append(rows, row)
			}
			header := []string{"ID", "TASK", "REASON", "AGE"}
			if dest != nil {
				header = append(header, "TO")
			}
			_ = writeTable(s.std.Out, header, rows)
		}
		fmt.Fprintf(s.std.Out, "%s %d of %d selected messages in %s\n", done, rep.Count, max(rep.Matched, rep.Count), rep.Queue)
		for _, sk := range rep.Skipped {
			fmt.Fprintf(s.std.Out, "skipped %s (%s): %s\n", sk.Entry.ID, sk.Entry.Task, sk.Why)
		}
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("interrupted after %d messages (%s); run it again to continue: %w", rep.Count, done, err)
		}
		return err
	}
	switch {
	case len(rep.Missing) > 0:
		return partialError{fmt.Sprintf("no message %s in %s", strings.Join(rep.Missing, ", "), rep.Queue)}
	case len(rep.Skipped) > 0:
		return partialError{fmt.Sprintf("%d selected messages were skipped and are still in %s", len(rep.Skipped), rep.Queue)}
	}
	return nil
}

func pastTense(verb string) string {
	switch verb {
	case "replay":
		return "replayed"
	case "purge":
		return "purged"
	case "evict":
		return "evicted"
	}
	return verb + "ed"
}

// ---- purge

func cmdPurge(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("purge QUEUE (ID...|--all) [options]", "Deletes dead letters. On a terminal it asks first, unless --yes; in a pipe it needs --yes.", g, std)
	var ff filterFlags
	ff.add(f)
	all := f.Bool("all", false, "every message (that the filters select)")
	dryRun := f.Bool("dry-run", false, "show what would be deleted; change nothing")
	yes := f.BoolP("yes", "y", false, "do not ask")
	if err := f.parse(args, 1, -1); err != nil {
		return err
	}
	ids := f.Args()[1:]
	if err := needSelection("purge", ids, *all); err != nil {
		return err
	}
	filter, err := ff.filter(ids)
	if err != nil {
		return err
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	name := dlq.QueueName(f.Arg(0))
	if !*dryRun && !*yes {
		count, err := dlq.Purge(ctx, s.br, name, dlq.PurgeOptions{Filter: filter, DryRun: true, Logger: s.log})
		if err != nil {
			return err
		}
		if count.Count == 0 {
			return report(s, "purge", count, nil, false, nil)
		}
		what := fmt.Sprintf("%d messages", count.Count)
		if filter.Empty() {
			what = fmt.Sprintf("all %d messages", count.Count)
		}
		ok, err := confirm(std, fmt.Sprintf("Delete %s from %s?", what, name))
		if err != nil {
			return err
		}
		if !ok {
			return partialError{"not confirmed: nothing deleted"}
		}
	}
	prog := newProgress(std, "purging", s.selectionSize(ctx, name, filter))
	rep, err := dlq.Purge(ctx, s.br, name, dlq.PurgeOptions{Filter: filter, DryRun: *dryRun, Progress: prog.update, Logger: s.log})
	prog.done()
	if err == nil && rep != nil && filter.Empty() && !*dryRun && s.g.output == "json" {
		return writeJSON(std.Out, []map[string]any{{"queue": name, "status": "purged", "count": rep.Count}})
	}
	return report(s, "purge", rep, err, *dryRun, nil)
}

// ---- show

func cmdShow(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("show QUEUE ID", "Shows one dead letter (or every one of a task id): why it is there, the error and the\ntraceback (from the x-fleet-dlq-traceback header, or the result backend with\n--result-backend redis://...), the decoded arguments, every header and property.", g, std)
	backend := f.String("result-backend", "", "read the traceback from this Celery result backend (redis://; env CELERY_RESULT_BACKEND)")
	if err := f.parse(args, 2, 2); err != nil {
		return err
	}
	if *backend == "" {
		*backend = firstOf(g.env(std)["FLEET_RESULT_BACKEND"], g.env(std)["CELERY_RESULT_BACKEND"])
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	name, id := dlq.QueueName(f.Arg(0)), f.Arg(1)
	entries, _, err := dlq.List(ctx, s.br, name, dlq.Filter{IDs: []string{id}}, 0, 0)
	if err != nil {
		return err
	}
	if len(entries) == 0 {
		return fmt.Errorf("no message %s in %s ('fleetctl dlq ls %s' lists them)", id, name, f.Arg(0))
	}
	tb := newTracebacks(ctx, *backend, s)
	defer tb.close()
	details := make([]detail, 0, len(entries))
	for i := range entries {
		details = append(details, describeDetail(ctx, &entries[i], tb))
	}
	if g.output == "json" {
		return writeJSON(std.Out, details)
	}
	for i, d := range details {
		if i > 0 {
			fmt.Fprintln(std.Out)
		}
		d.print(std.Out)
	}
	return nil
}

// ---- export / import

func cmdExport(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("export QUEUE [options] > FILE.jsonl", "Writes the selected messages as JSON lines (message and summary), leaving the DLQ as it is.", g, std)
	var ff filterFlags
	ff.add(f)
	file := f.StringP("file", "f", "", "write to this file instead of standard output")
	if err := f.parse(args, 1, 1); err != nil {
		return err
	}
	filter, err := ff.filter(nil)
	if err != nil {
		return err
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	name := dlq.QueueName(f.Arg(0))
	var w io.Writer = std.Out
	if *file != "" {
		fh, err := os.Create(*file)
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		defer fh.Close()
		w = fh
	}
	prog := newProgress(std, "exporting", s.selectionSize(ctx, name, filter))
	lw := &lineCounter{w: w, each: prog.update}
	n, err := dlq.Export(ctx, s.br, name, filter, lw)
	prog.done()
	if err != nil {
		return err
	}
	if *file != "" || std.ErrTerminal {
		fmt.Fprintf(std.Err, "exported %d messages from %s\n", n, name)
	}
	return nil
}

// lineCounter passes writes through and reports the number of lines written.
type lineCounter struct {
	w    io.Writer
	n    int
	each func(int)
}

func (l *lineCounter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if c := strings.Count(string(p[:n]), "\n"); c > 0 {
		l.n += c
		l.each(l.n)
	}
	return n, err
}

func cmdImport(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("import QUEUE FILE.jsonl", "Publishes the messages of an export file into QUEUE's DLQ, skipping those it already\nholds, so that an interrupted import can simply be run again. FILE '-' is standard input.", g, std)
	dryRun := f.Bool("dry-run", false, "count what would be imported; change nothing")
	if err := f.parse(args, 2, 2); err != nil {
		return err
	}
	var r io.Reader = std.In
	if path := f.Arg(1); path != "-" {
		fh, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("import: %w", err)
		}
		defer fh.Close()
		r = fh
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	name := dlq.QueueName(f.Arg(0))
	prog := newProgress(std, "importing", 0)
	rep, err := dlq.Import(ctx, s.br, name, r, dlq.ImportOptions{DryRun: *dryRun, Progress: prog.update, Logger: s.log})
	prog.done()
	verb := "imported"
	if *dryRun {
		verb = "would import"
	}
	if rep != nil {
		if g.output == "json" {
			_ = writeJSON(std.Out, []map[string]any{{"queue": name, "status": verb, "imported": rep.Imported, "skipped": rep.Skipped}})
		} else {
			fmt.Fprintf(std.Out, "%s %d messages into %s; skipped %d already there\n", verb, rep.Imported, name, rep.Skipped)
		}
	}
	if err != nil && errors.Is(err, context.Canceled) {
		return fmt.Errorf("interrupted; run it again to continue: %w", err)
	}
	return err
}

// ---- trim

func cmdTrim(ctx context.Context, g *globals, args []string, std IO) error {
	f := newFlags("trim QUEUE... --max-length N | --max-age DURATION", "Applies a retention once: evicts the oldest messages beyond --max-length and those\ndead-lettered longer ago than --max-age. Every eviction is logged with its id.\n'fleetctl dlq metrics --retention' applies one continuously.", g, std)
	maxLen := f.Int64("max-length", 0, "keep at most this many messages (the newest)")
	maxAge := f.Duration("max-age", 0, "evict messages dead-lettered longer ago than this")
	dryRun := f.Bool("dry-run", false, "show what would be evicted; change nothing")
	if err := f.parse(args, 1, -1); err != nil {
		return err
	}
	r := dlq.Retention{MaxLength: *maxLen, MaxAge: *maxAge}
	if !r.Enabled() || *maxLen < 0 || *maxAge < 0 {
		return usagef("dlq trim: give --max-length N and/or --max-age DURATION (positive)")
	}
	s, err := open(ctx, g, std)
	if err != nil {
		return err
	}
	defer s.close()
	var out []entryOut
	now := time.Now()
	status := "evicted"
	if *dryRun {
		status = "would evict"
	}
	var rows [][]string
	for _, q := range f.Args() {
		name := dlq.QueueName(q)
		rep, err := dlq.Trim(ctx, s.br, name, r, dlq.TrimOptions{DryRun: *dryRun, Logger: s.log})
		if rep != nil {
			for i := range rep.Applied {
				o := toOut(&rep.Applied[i], now)
				o.Status = status
				out = append(out, o)
			}
			rows = append(rows, []string{name, strconv.Itoa(rep.Count)})
		}
		if err != nil {
			return err
		}
	}
	if g.output == "json" {
		return writeJSON(std.Out, out)
	}
	header := []string{"QUEUE", strings.ToUpper(status)}
	return writeTable(std.Out, header, rows)
}
