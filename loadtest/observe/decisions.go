package observe

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// Decision is one autoscaler decision as the autoscaler logs it (the JSON of
// internal/autoscale's Decision, one per line; other fields are ignored).
type Decision struct {
	Time     time.Time `json:"time"`
	Workload string    `json:"workload"`
	Current  int       `json:"current"`
	Desired  int       `json:"desired"`
	Rule     string    `json:"rule"`
	Reason   string    `json:"reason"`
}

// DecisionLog follows a JSON-lines file of autoscaler decisions as it grows: each Poll
// returns the complete lines added since the last one. Lines that are not decisions (other
// log records) are skipped.
type DecisionLog struct {
	path string
	off  int64
	part []byte
}

// NewDecisionLog follows path from its current end (decisions made before the run are
// not the run's).
func NewDecisionLog(path string) (*DecisionLog, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("observe: autoscaler decisions: %w", err)
	}
	return &DecisionLog{path: path, off: fi.Size()}, nil
}

// Poll returns the decisions written since the last call.
func (d *DecisionLog) Poll() ([]Decision, error) {
	f, err := os.Open(d.path)
	if err != nil {
		return nil, fmt.Errorf("observe: autoscaler decisions: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < d.off {
		d.off, d.part = 0, nil // truncated or rotated: start over
	}
	if _, err := f.Seek(d.off, io.SeekStart); err != nil {
		return nil, fmt.Errorf("observe: autoscaler decisions: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("observe: autoscaler decisions: %w", err)
	}
	d.off += int64(len(data))
	data = append(d.part, data...)
	last := bytes.LastIndexByte(data, '\n')
	if last < 0 {
		d.part = data
		return nil, nil
	}
	d.part = append([]byte(nil), data[last+1:]...)
	var out []Decision
	sc := bufio.NewScanner(bytes.NewReader(data[:last+1]))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var dec Decision
		if json.Unmarshal(sc.Bytes(), &dec) != nil || dec.Time.IsZero() || dec.Rule == "" {
			continue
		}
		out = append(out, dec)
	}
	return out, nil
}
