package autoscale

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

type fakeSignals struct {
	w   *world
	err error
}

func (f *fakeSignals) Observe(context.Context) (Observation, error) {
	if f.err != nil {
		return Observation{}, f.err
	}
	return f.w.obs(), nil
}

type fakeActuator struct {
	w        *world
	calls    []string
	markErr  error
	scaleErr error
}

func (f *fakeActuator) MarkForDeletion(_ context.Context, pods []string) error {
	f.calls = append(f.calls, "mark "+strings.Join(pods, ","))
	return f.markErr
}

func (f *fakeActuator) Scale(_ context.Context, n int) error {
	f.calls = append(f.calls, fmt.Sprintf("scale %d", n))
	if f.scaleErr == nil {
		f.w.spec = n
	}
	return f.scaleErr
}

type recorded struct {
	d       Decision
	applied bool
	err     error
}

type fakeRecorder struct{ got []recorded }

func (f *fakeRecorder) Record(_ context.Context, d Decision, applied bool, err error) {
	f.got = append(f.got, recorded{d, applied, err})
}

func TestLoop(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name      string
		dryRun    bool
		markErr   error
		scaleErr  error
		observe   error
		wantCalls func(calls []string) bool
		wantErr   bool
		wantSpec  int
	}{
		{"scale-in marks the victims before lowering replicas", false, nil, nil, nil, func(c []string) bool {
			return len(c) == 2 && strings.HasPrefix(c[0], "mark ") && c[1] == "scale 6"
		}, false, 6},
		{"dry run writes nothing", true, nil, nil, nil, func(c []string) bool { return len(c) == 0 }, false, 12},
		{"no scale-in without the marks", false, boom, nil, nil, func(c []string) bool {
			return len(c) == 1 && strings.HasPrefix(c[0], "mark ")
		}, true, 12},
		{"a failed write is reported", false, nil, boom, nil, func(c []string) bool { return len(c) == 2 }, true, 12},
		{"no observation, no decision", false, nil, nil, boom, func(c []string) bool { return len(c) == 0 }, true, 12},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(12, 4)
			p := newPolicy(t, testConfig())
			run(t, p, w, 30*time.Second) // warm the rate estimator (no scale-down this early)
			w.asyncOff = true            // then scale in on the loop's decision
			act := &fakeActuator{w: w, markErr: tc.markErr, scaleErr: tc.scaleErr}
			rec := &fakeRecorder{}
			var logs bytes.Buffer
			l := &Loop{Policy: p, Signals: &fakeSignals{w: w, err: tc.observe}, Actuator: act, Recorder: rec,
				Log: slog.New(slog.NewJSONHandler(&logs, nil)), DryRun: tc.dryRun}
			d, err := l.Step(context.Background())
			if (err != nil) != tc.wantErr || !tc.wantCalls(act.calls) || w.spec != tc.wantSpec {
				t.Fatalf("err %v, calls %v, spec %d, decision %s %s", err, act.calls, w.spec, d.Rule, d.Reason)
			}
			if tc.observe != nil {
				if len(rec.got) != 0 {
					t.Fatal("recorded a decision without an observation")
				}
				return
			}
			if len(rec.got) != 1 || rec.got[0].applied != (err == nil && !tc.dryRun) {
				t.Fatalf("recorded %+v", rec.got)
			}
			if !tc.dryRun && tc.markErr == nil && !slices.Equal(strings.Split(strings.TrimPrefix(act.calls[0], "mark "), ","), d.Victims) {
				t.Fatalf("marked %v, victims %v", act.calls[0], d.Victims)
			}
			if !strings.Contains(logs.String(), `"rule":"`) {
				t.Fatalf("decision not logged with its rule: %s", logs.String())
			}
		})
	}
	if _, err := (&Loop{}).Step(context.Background()); err == nil {
		t.Fatal("an empty loop stepped")
	}
}
