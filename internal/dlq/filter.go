package dlq

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Filter selects dead letters. The zero Filter selects every one.
type Filter struct {
	// IDs are entry IDs or task ids; empty selects any.
	IDs []string
	// Reasons and Tasks select by reason and task name; empty selects any.
	Reasons []string
	Tasks   []string
	// Since selects entries dead-lettered within this long before Now (entries whose time
	// is unknown are left out); 0 selects any.
	Since time.Duration
	Now   time.Time
}

// Empty reports whether f selects every message.
func (f Filter) Empty() bool {
	return len(f.IDs) == 0 && len(f.Reasons) == 0 && len(f.Tasks) == 0 && f.Since <= 0
}

// Validate checks the reasons against the closed set.
func (f Filter) Validate() error {
	for _, r := range f.Reasons {
		if !ValidReason(r) {
			return fmt.Errorf("unknown reason %q (one of %s)", r, strings.Join(reasons[:], ", "))
		}
	}
	if f.Since < 0 {
		return fmt.Errorf("negative --since %s", f.Since)
	}
	return nil
}

// Match reports whether e is selected.
func (f Filter) Match(e *Entry) bool {
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, e.ID) && (e.TaskID == "" || !slices.Contains(f.IDs, e.TaskID)) {
		return false
	}
	if len(f.Reasons) > 0 && !slices.Contains(f.Reasons, e.Reason) {
		return false
	}
	if len(f.Tasks) > 0 && !slices.Contains(f.Tasks, e.Task) {
		return false
	}
	if f.Since > 0 {
		now := f.Now
		if now.IsZero() {
			now = time.Now()
		}
		if e.Time.IsZero() || e.Time.Before(now.Add(-f.Since)) {
			return false
		}
	}
	return true
}

// missing returns the IDs of f that matched none of the entries seen.
func (f Filter) missing(seen map[string]bool) []string {
	var out []string
	for _, id := range f.IDs {
		if !seen[id] {
			out = append(out, id)
		}
	}
	return out
}
