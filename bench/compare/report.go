package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
)

// Goals from the issue: the worker at ≥ 80 % of the ceiling, ≤ 30 MiB peak RSS.
const (
	goalOfCeiling = 0.80
	goalRSSMiB    = 30.0
)

type reportMeta struct {
	Started   string `json:"started"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel,omitempty"`
	GoVersion string `json:"go"`
	Celery    string `json:"celery,omitempty"`
	Kombu     string `json:"kombu,omitempty"`
	Redis     string `json:"redis,omitempty"`
	RabbitMQ  string `json:"rabbitmq,omitempty"`
	AMQPWatch string `json:"amqp_watch,omitempty"`
	LoadStart string `json:"loadavg_start,omitempty"` // /proc/loadavg: other work on the machine skews every number
	LoadEnd   string `json:"loadavg_end,omitempty"`
	Quick     bool   `json:"quick"`
	Rounds    int    `json:"rounds"`
	Prefetch  int    `json:"prefetch"`
	BrokerDB  int    `json:"redis_broker_db"`
	ResultsDB int    `json:"redis_results_db"`
}

type contenderInfo struct {
	Name    string `json:"name"`
	Command string `json:"command"`
}

// runResult is one drain of one contender.
type runResult struct {
	Round        int     `json:"round"`
	Broker       string  `json:"broker"`
	Results      string  `json:"results"`
	Contender    string  `json:"contender"`
	N            int     `json:"n"`
	Queue        string  `json:"queue"`
	DrainSeconds float64 `json:"drain_s"`
	TasksPerSec  float64 `json:"tasks_per_s"`
	PeakRSSMiB   float64 `json:"peak_rss_mib"`
	PeakAnonMiB  float64 `json:"peak_anon_mib"` // of it anonymous (RssAnon's peak)
	// CPUMicrosPerTask is the contender's CPU time (user + system, process tree, from its
	// start to the end of the drain) per task; ServerCPUMicrosPerTask that of RabbitMQ and
	// Redis over the same span.
	CPUMicrosPerTask       float64            `json:"cpu_us_per_task"`
	ServerCPUMicrosPerTask float64            `json:"server_cpu_us_per_task"`
	Processes              int                `json:"processes"`
	Consumed               int                `json:"consumed"` // verified consumed and settled (= N on success)
	Criterion              string             `json:"criterion,omitempty"`
	RedisCallsPerTask      map[string]float64 `json:"redis_calls_per_task,omitempty"`
	SpansExported          int64              `json:"spans_exported,omitempty"` // obs-on: spans the sink received
	Error                  string             `json:"error,omitempty"`
}

// cell summarizes the runs of one contender in one broker × results cell.
type cell struct {
	Broker       string  `json:"broker"`
	Results      string  `json:"results"`
	Contender    string  `json:"contender"`
	Runs         int     `json:"runs"`
	Failed       int     `json:"failed"`
	N            []int   `json:"n"`
	MedianTPS    float64 `json:"median_tasks_per_s"`
	MinTPS       float64 `json:"min_tasks_per_s"`
	MaxTPS       float64 `json:"max_tasks_per_s"`
	MedianDrainS float64 `json:"median_drain_s"`
	MedianRSSMiB float64 `json:"median_peak_rss_mib"`
	MaxRSSMiB    float64 `json:"max_peak_rss_mib"`
	MaxAnonMiB   float64 `json:"max_peak_anon_mib"` // the anonymous part's highest peak
	MedianCPU    float64 `json:"median_cpu_us_per_task"`
	MedianServer float64 `json:"median_server_cpu_us_per_task"`
	ShortDrain   bool    `json:"short_drain"` // some run drained in less than --min-drain
}

// ratioRow holds the medians' ratios of one broker × results cell (0: not measured).
type ratioRow struct {
	Broker        string             `json:"broker"`
	Results       string             `json:"results"`
	WorkerCelery  float64            `json:"worker_per_celery"`
	WorkerCeiling float64            `json:"worker_per_ceiling"`
	WorkerRSSMiB  float64            `json:"worker_peak_rss_mib"`
	Variants      map[string]float64 `json:"variant_per_worker,omitempty"`
	GoalMet       *bool              `json:"goal_met,omitempty"`
	// ObsOnOff is obs-on / obs-off (issue 4's overhead), 0 when not measured.
	ObsOnOff        float64 `json:"obs_on_per_off,omitempty"`
	OverheadGoalMet *bool   `json:"overhead_goal_met,omitempty"`
}

type report struct {
	Meta       reportMeta      `json:"meta"`
	Contenders []contenderInfo `json:"contenders"`
	Method     []string        `json:"method"`
	Goal       string          `json:"goal"`
	Runs       []runResult     `json:"runs"`
	Cells      []cell          `json:"cells"`
	Ratios     []ratioRow      `json:"ratios"`

	cfg *config
}

func newReport(cfg *config, cs []contender, meta reportMeta) *report {
	r := &report{Meta: meta, cfg: cfg,
		Goal: fmt.Sprintf("worker ≥ %.0f%% of the ceiling (same ack discipline), results off and on, peak RSS ≤ %.0f MiB; "+
			"overhead: obs-on ≥ %.2f × obs-off", goalOfCeiling*100, goalRSSMiB, goalOverhead),
		Method: []string{
			"each run: a fresh queue pre-filled with N diag.echo(i) messages shaped exactly like Python's send_task, then one contender process started on it",
			"drain time: first message consumed → queue empty AND every delivery acked (Redis: LLEN of the priority sub-lists + HLEN unacked every 2 ms; RabbitMQ: messages_ready + messages_unacknowledged read inside the node every 2 ms); tasks/s = N / drain time",
			"checked after the contender exits: queue empty (nothing came back unacked), no lease left, with results exactly N result keys; the ceiling's own ack count = N",
			"peak RSS: VmHWM from /proc/<pid>/status, summed over the process and its children (Python prefork: main + pool), sampled every 100 ms; of it anon: the highest RssAnon sampled, summed likewise; Go binaries are built static (CGO_ENABLED=0) as make build and the image build them",
			"rounds interleave the contenders (order rotated each round); medians over rounds",
			"obs-off / obs-on (--overhead): the worker with events, heartbeat, remote control, metrics server and tracing all off, and all on with every span exported over OTLP/HTTP to a receiver inside the driver",
		},
	}
	for _, c := range cs {
		r.Contenders = append(r.Contenders, contenderInfo{Name: c.Name, Command: c.Describe})
	}
	return r
}

func (r *report) add(x runResult) { r.Runs = append(r.Runs, x) }

func (r *report) failures() int {
	n := 0
	for _, x := range r.Runs {
		if x.Error != "" {
			n++
		}
	}
	return n
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// summarize computes the cells and ratios from the runs.
func (r *report) summarize() {
	cfg := r.cfg
	r.Cells, r.Ratios = nil, nil
	byKey := map[string]*cell{}
	for _, broker := range cfg.Brokers {
		for _, results := range cfg.Results {
			for _, ci := range r.Contenders {
				c := &cell{Broker: broker, Results: results, Contender: ci.Name}
				var tps, rss, anon, drains, cpu, server []float64
				for _, x := range r.Runs {
					if x.Broker != broker || x.Results != results || x.Contender != ci.Name {
						continue
					}
					c.Runs++
					c.N = append(c.N, x.N)
					if x.Error != "" {
						c.Failed++
						continue
					}
					tps = append(tps, x.TasksPerSec)
					rss = append(rss, x.PeakRSSMiB)
					anon = append(anon, x.PeakAnonMiB)
					cpu = append(cpu, x.CPUMicrosPerTask)
					server = append(server, x.ServerCPUMicrosPerTask)
					drains = append(drains, x.DrainSeconds)
					if cfg.MinDrain > 0 && x.DrainSeconds < cfg.MinDrain.Seconds() {
						c.ShortDrain = true
					}
				}
				if len(tps) > 0 {
					c.MedianTPS, c.MinTPS, c.MaxTPS = median(tps), slices.Min(tps), slices.Max(tps)
					c.MedianDrainS = median(drains)
					c.MedianRSSMiB, c.MaxRSSMiB, c.MaxAnonMiB = median(rss), slices.Max(rss), slices.Max(anon)
					c.MedianCPU, c.MedianServer = median(cpu), median(server)
				}
				r.Cells = append(r.Cells, *c)
				byKey[cellKey(broker, results, ci.Name)] = &r.Cells[len(r.Cells)-1]
			}
		}
	}
	ratio := func(a, b *cell) float64 {
		if a == nil || b == nil || a.MedianTPS == 0 || b.MedianTPS == 0 {
			return 0
		}
		return a.MedianTPS / b.MedianTPS
	}
	for _, broker := range cfg.Brokers {
		for _, results := range cfg.Results {
			w := byKey[cellKey(broker, results, cWorker)]
			row := ratioRow{Broker: broker, Results: results,
				WorkerCelery:  ratio(w, byKey[cellKey(broker, results, cCelery)]),
				WorkerCeiling: ratio(w, byKey[cellKey(broker, results, cCeiling)])}
			if w != nil {
				row.WorkerRSSMiB = w.MaxRSSMiB
			}
			for _, v := range cfg.Variants {
				if x := ratio(byKey[cellKey(broker, results, v.Name)], w); x > 0 {
					if row.Variants == nil {
						row.Variants = map[string]float64{}
					}
					row.Variants[v.Name] = x
				}
			}
			if row.WorkerCeiling > 0 && row.WorkerRSSMiB > 0 {
				met := row.WorkerCeiling >= goalOfCeiling && row.WorkerRSSMiB <= goalRSSMiB
				row.GoalMet = &met
			}
			if x := ratio(byKey[cellKey(broker, results, cObsOn)], byKey[cellKey(broker, results, cObsOff)]); x > 0 {
				row.ObsOnOff = x
				met := x >= goalOverhead
				row.OverheadGoalMet = &met
			}
			r.Ratios = append(r.Ratios, row)
		}
	}
}

// print writes the human-readable report.
func (r *report) print(out io.Writer) {
	m := r.Meta
	fmt.Fprintf(out, "\nbench-compare  %s  %d CPUs  kernel %s  %s  load average %s → %s\n", m.Started, m.CPUs, m.Kernel, m.GoVersion,
		orDash(m.LoadStart), orDash(m.LoadEnd))
	fmt.Fprintf(out, "brokers: RabbitMQ %s (drain watch: %s), Redis %s (broker DB %d, results DB %d); Celery %s / kombu %s\n",
		orDash(m.RabbitMQ), orDash(m.AMQPWatch), orDash(m.Redis), m.BrokerDB, m.ResultsDB, orDash(m.Celery), orDash(m.Kombu))
	mode := fmt.Sprintf("%d round(s), interleaved, medians", m.Rounds)
	if m.Quick {
		mode = "QUICK smoke run: 1 round, tiny N, numbers carry no meaning"
	}
	fmt.Fprintf(out, "%s; prefetch %d for every contender\n\ncontenders (exact flags):\n", mode, m.Prefetch)
	for _, c := range r.Contenders {
		fmt.Fprintf(out, "  %-8s %s\n", c.Name, c.Command)
	}
	fmt.Fprintln(out)

	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "broker\tresults\tcontender\tN\ttasks/s\tmin–max\tdrain s\tpeak RSS MiB\tof it anon\tCPU µs/task\tservers µs/task\truns\t")
	for _, c := range r.Cells {
		if c.Runs == 0 {
			continue
		}
		ns := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(uniq(c.N))), ","), "[]")
		tps, rng, drain, rss, anon, cpu, server := "-", "-", "-", "-", "-", "-", "-"
		if c.MedianTPS > 0 {
			tps = thousands(c.MedianTPS)
			rng = thousands(c.MinTPS) + "–" + thousands(c.MaxTPS)
			drain = fmt.Sprintf("%.2f", c.MedianDrainS)
			if c.ShortDrain {
				drain += "*"
			}
			rss = fmt.Sprintf("%.1f", c.MaxRSSMiB)
			anon = fmt.Sprintf("%.1f", c.MaxAnonMiB)
			cpu, server = fmt.Sprintf("%.1f", c.MedianCPU), fmt.Sprintf("%.1f", c.MedianServer)
		}
		runs := fmt.Sprint(c.Runs - c.Failed)
		if c.Failed > 0 {
			runs += fmt.Sprintf(" (%d FAILED)", c.Failed)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", c.Broker, c.Results, c.Contender, ns, tps, rng, drain, rss, anon,
			cpu, server, runs)
	}
	_ = tw.Flush()
	fmt.Fprintln(out, "  tasks/s: median over rounds; peak RSS: the highest of the rounds; of it anon: the highest peak of its anonymous part\n"+
		"  (heap, stacks; the rest is file-backed, mostly the mapped program binary); * a drain shorter than --min-drain\n"+
		"  CPU µs/task: the contender's CPU time (user + system, with its child processes) from its start to the end of the\n"+
		"  drain, per task; servers µs/task: RabbitMQ's and Redis's over the same span (median over rounds). Both are far\n"+
		"  steadier than tasks/s on a busy machine: on 2 cores the contender and the servers share the CPU, so what one\n"+
		"  spends the other cannot")

	fmt.Fprintf(out, "\nratios of medians (goal: %s)\n", r.Goal)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	var vnames []string
	for _, v := range r.cfg.Variants {
		if slices.Contains(r.cfg.Contenders, v.Name) {
			vnames = append(vnames, v.Name)
		}
	}
	obs := slices.Contains(r.cfg.Contenders, cObsOn) && slices.Contains(r.cfg.Contenders, cObsOff)
	hdr := "broker\tresults\tworker/celery\tworker/ceiling\tworker RSS MiB\tgoal\t"
	for _, v := range vnames {
		hdr += v + "/worker\t"
	}
	if obs {
		hdr += "obs-on/obs-off\toverhead goal\t"
	}
	fmt.Fprintln(tw, hdr)
	for _, x := range r.Ratios {
		goal := "-"
		if x.GoalMet != nil {
			goal = "MISSED"
			if *x.GoalMet {
				goal = "met"
			}
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t", x.Broker, x.Results, times(x.WorkerCelery), pct(x.WorkerCeiling),
			fmt.Sprintf("%.1f", x.WorkerRSSMiB), goal)
		for _, v := range vnames {
			line += pct(x.Variants[v]) + "\t"
		}
		ogoal := "-"
		if x.OverheadGoalMet != nil {
			ogoal = "MISSED"
			if *x.OverheadGoalMet {
				ogoal = "met"
			}
		}
		ratio := "-"
		if x.ObsOnOff > 0 {
			ratio = fmt.Sprintf("%.2f", x.ObsOnOff)
		}
		if obs {
			line += ratio + "\t" + ogoal + "\t"
		}
		fmt.Fprintln(tw, line)
	}
	_ = tw.Flush()

	fmt.Fprintln(out, "\nmethod:")
	for _, s := range r.Method {
		fmt.Fprintf(out, "  - %s\n", s)
	}
	if n := r.failures(); n > 0 {
		fmt.Fprintf(out, "\n%d run(s) FAILED:\n", n)
		for _, x := range r.Runs {
			if x.Error != "" {
				fmt.Fprintf(out, "  round %d %s/%s %s: %s\n", x.Round, x.Broker, x.Results, x.Contender, firstLine(x.Error))
			}
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func uniq(xs []int) []int {
	var out []int
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func times(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", x)
}

func pct(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", x*100)
}

// thousands formats a rate as an integer with thousands separators.
func thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
