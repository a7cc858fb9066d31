package fleetctl

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// writeJSON prints v (a slice: the output is always a JSON array) indented.
func writeJSON(w io.Writer, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	if string(data) == "null" {
		data = []byte("[]")
	}
	_, err = fmt.Fprintf(w, "%s\n", data)
	return err
}

// writeTable prints rows under header, aligned.
func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// fmtAge prints a duration the way people read ages: 45s, 12m, 3h20m, 4d3h.
func fmtAge(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		h := int(d.Hours())
		if m := int(d.Minutes()) % 60; m != 0 && h < 10 {
			return fmt.Sprintf("%dh%dm", h, m)
		}
		return fmt.Sprintf("%dh", h)
	}
	days := int(d.Hours()) / 24
	if h := int(d.Hours()) % 24; h != 0 && days < 10 {
		return fmt.Sprintf("%dd%dh", days, h)
	}
	return fmt.Sprintf("%dd", days)
}

// progress shows "label n/total" on a terminal, rewritten in place at most ten times a
// second; it prints nothing when stderr is not a terminal.
type progress struct {
	w     io.Writer
	on    bool
	label string
	total int

	mu    sync.Mutex
	last  time.Time
	shown bool
}

func newProgress(std IO, label string, total int) *progress {
	return &progress{w: std.Err, on: std.ErrTerminal, label: label, total: total}
}

func (p *progress) update(n int) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond || n == p.total {
		p.last = now
		p.shown = true
		if p.total > 0 {
			fmt.Fprintf(p.w, "\r%s %d/%d", p.label, n, p.total)
		} else {
			fmt.Fprintf(p.w, "\r%s %d", p.label, n)
		}
	}
}

// done ends the progress line.
func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.on && p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// confirm asks question on the terminal and reports a yes. Without a terminal it refuses:
// a destructive command in a pipe must say --yes.
func confirm(std IO, question string) (bool, error) {
	if !std.InTerminal {
		return false, usagef("%s: not asking without a terminal; add --yes", strings.TrimSuffix(question, "?"))
	}
	fmt.Fprintf(std.Err, "%s [y/N] ", question)
	line, err := bufio.NewReader(std.In).ReadString('\n')
	if err != nil && line == "" {
		return false, nil
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}
