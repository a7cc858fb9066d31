package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// JSONRow is one trace and controller in `simulate --format json`: the median over seeds,
// with exactly the keys of issue 7. Metrics that do not apply to a trace (TTR without a
// change point, stop latency without a stop) are null.
type JSONRow struct {
	Trace                 string   `json:"trace"`
	Controller            string   `json:"controller"`
	Qmax                  *float64 `json:"qmax"`
	SecondsAbove100       *float64 `json:"seconds_above_100"`
	WaitP99               *float64 `json:"wait_p99_s"`
	WorkerMinutes         *float64 `json:"worker_minutes"`
	WorkerMinutesVsOracle *float64 `json:"worker_minutes_vs_oracle"`
	ScaleEvents           *float64 `json:"scale_events"`
	Reversals             *float64 `json:"reversals"`
	TTR                   *float64 `json:"ttr_s"`
	CPUP95                *float64 `json:"cpu_p95"`
	KilledInFlight        *float64 `json:"killed_in_flight"`
	StopLatency           *float64 `json:"stop_latency_s"`
	StopViolations        *float64 `json:"stop_violations"`
}

func num(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	r := math.Round(v*1000) / 1000
	return &r
}

// JSONRows converts summary rows.
func JSONRows(rows []Row) []JSONRow {
	out := make([]JSONRow, 0, len(rows))
	for _, r := range rows {
		m := r.Median
		out = append(out, JSONRow{
			Trace: r.Trace, Controller: r.Controller,
			Qmax: num(m.Qmax), SecondsAbove100: num(m.SecondsAbove100), WaitP99: num(m.WaitP99),
			WorkerMinutes: num(m.WorkerMinutes), WorkerMinutesVsOracle: num(m.WorkerMinutesVsOr),
			ScaleEvents: num(m.ScaleEvents), Reversals: num(m.Reversals), TTR: num(m.TTR),
			CPUP95: num(m.CPUP95), KilledInFlight: num(m.KilledInFlight),
			StopLatency: num(m.StopLatency), StopViolations: num(m.StopViolations),
		})
	}
	return out
}

// WriteJSON writes one JSON array with an object per trace and controller.
func WriteJSON(w io.Writer, rows []Row) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(JSONRows(rows)); err != nil {
		return fmt.Errorf("sim: write json: %w", err)
	}
	return nil
}

func tableHead() []string {
	return []string{"controller", "Qmax", "Qmax p95", "s > 100", "wait p99 s", "worker-min", "× oracle",
		"scale events", "reversals", "TTR s", "CPU p95", "killed", "stop lat s", "stop viol"}
}

func tableCells(r Row) []string {
	m := r.Median
	return []string{r.Controller, fmtNum(m.Qmax), fmtNum(r.P95.Qmax), fmtNum(m.SecondsAbove100), fmtNum(m.WaitP99),
		fmtNum(m.WorkerMinutes), fmtNum(m.WorkerMinutesVsOr), fmtNum(m.ScaleEvents), fmtNum(m.Reversals),
		fmtNum(m.TTR), fmtNum(m.CPUP95), fmtNum(m.KilledInFlight), fmtNum(m.StopLatency), fmtNum(m.StopViolations)}
}

// WriteTable writes a table per trace (medians over seeds, Qmax also at p95) followed by
// the goal checks of that trace; markdown selects GitHub tables instead of aligned text.
func WriteTable(w io.Writer, traces []*Trace, rows []Row, goals []Goal, markdown bool) error {
	var b strings.Builder
	for _, tr := range traces {
		var trRows []Row
		for _, r := range rows {
			if r.Trace == tr.Name {
				trRows = append(trRows, r)
			}
		}
		if len(trRows) == 0 {
			continue
		}
		seeds := trRows[0].Seeds
		if markdown {
			fmt.Fprintf(&b, "### %s: %s\n\nMedian over %d seeds (Qmax also at p95).\n\n", tr.Name, tr.Title, seeds)
			b.WriteString("| " + strings.Join(tableHead(), " | ") + " |\n")
			b.WriteString("|" + strings.Repeat("---|", len(tableHead())) + "\n")
			for _, r := range trRows {
				b.WriteString("| " + strings.Join(tableCells(r), " | ") + " |\n")
			}
		} else {
			fmt.Fprintf(&b, "%s: %s (median of %d seeds; Qmax also p95)\n", tr.Name, tr.Title, seeds)
			tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, strings.Join(tableHead(), "\t")+"\t")
			for _, r := range trRows {
				fmt.Fprintln(tw, strings.Join(tableCells(r), "\t")+"\t")
			}
			if err := tw.Flush(); err != nil {
				return fmt.Errorf("sim: write table: %w", err)
			}
		}
		first := true
		for _, g := range goals {
			if g.Trace != tr.Name {
				continue
			}
			if first {
				if markdown {
					b.WriteString("\nGoals for fleet (§6.5, median):\n\n")
				} else {
					b.WriteString("  goals for fleet (§6.5, median):\n")
				}
				first = false
			}
			verdict := "PASS"
			if !g.Pass {
				verdict = "FAIL"
			}
			if markdown {
				fmt.Fprintf(&b, "- %s: %s (measured %s)\n", verdict, g.What, g.Got)
			} else {
				fmt.Fprintf(&b, "    %s  %s: %s\n", verdict, g.What, g.Got)
			}
		}
		b.WriteString("\n")
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("sim: write table: %w", err)
	}
	return nil
}
