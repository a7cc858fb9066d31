package autoscale

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Signals is where observations come from: the broker (RabbitMQ management API or Redis),
// the workers' heartbeats, metrics.k8s.io, the flags store and the workload itself — or the
// simulator. A signal that cannot be read is reported inside the Observation (so the policy
// fails static); an error means there is no observation at all (e.g. the workload itself
// could not be read) and the cycle is skipped.
type Signals interface {
	Observe(ctx context.Context) (Observation, error)
}

// Actuator is where decisions go: the Deployment's /scale subresource and its pods'
// controller.kubernetes.io/pod-deletion-cost annotations, a local process supervisor, or the
// simulator.
type Actuator interface {
	// MarkForDeletion makes pods, best victim first, the cheapest to delete and clears any
	// earlier marks on other pods. It is called before a scale-in lowers the count.
	MarkForDeletion(ctx context.Context, pods []string) error
	// Scale writes the replica count.
	Scale(ctx context.Context, replicas int) error
}

// Recorder receives every decision after it was acted on (or not): status conditions,
// Kubernetes Events, metrics and decision traces hang off it.
type Recorder interface {
	Record(ctx context.Context, d Decision, applied bool, err error)
}

// Loop runs observe → decide → act. Policy, Signals and Actuator are required; Recorder and
// Log are optional. With DryRun it decides and explains but writes nothing.
type Loop struct {
	Policy   *Policy
	Signals  Signals
	Actuator Actuator
	Recorder Recorder
	Log      *slog.Logger
	DryRun   bool
}

// Step runs one reconcile. It returns the decision, and an error if the observation or the
// write failed (a failed write is retried by the next reconcile, which sees the real count).
func (l *Loop) Step(ctx context.Context) (Decision, error) {
	if l.Policy == nil || l.Signals == nil || (l.Actuator == nil && !l.DryRun) {
		return Decision{}, errors.New("autoscale: loop needs a policy, signals and an actuator")
	}
	log := l.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	obs, err := l.Signals.Observe(ctx)
	if err != nil {
		log.Warn("autoscale: no observation; skipping this reconcile", "err", err)
		return Decision{}, fmt.Errorf("autoscale: observe: %w", err)
	}
	d := l.Policy.Decide(obs)
	applied := false
	if d.Changed() && !l.DryRun {
		err = l.apply(ctx, d)
		applied = err == nil
	}
	level := slog.LevelDebug
	if d.Changed() || d.Refused {
		level = slog.LevelInfo
	}
	if err != nil {
		log.Error("autoscale: write failed", "decision", d, "err", err)
	} else {
		log.Log(ctx, level, "autoscale: decision", "decision", d, "applied", applied, "dry_run", l.DryRun)
	}
	if l.Recorder != nil {
		l.Recorder.Record(ctx, d, applied, err)
	}
	return d, err
}

func (l *Loop) apply(ctx context.Context, d Decision) error {
	if d.Desired < d.Current && len(d.Victims) > 0 {
		if err := l.Actuator.MarkForDeletion(ctx, d.Victims); err != nil {
			// Without the marks the ReplicaSet might pick a busy pod: do not scale in.
			return fmt.Errorf("autoscale: mark %d pod(s) for deletion: %w", len(d.Victims), err)
		}
	}
	if err := l.Actuator.Scale(ctx, d.Desired); err != nil {
		return fmt.Errorf("autoscale: scale %s %d → %d: %w", d.Workload, d.Current, d.Desired, err)
	}
	return nil
}

// Run reconciles every Policy.Config().Interval until ctx ends. Errors of single
// reconciles are logged and recorded, not returned.
func (l *Loop) Run(ctx context.Context) error {
	if l.Policy == nil {
		return errors.New("autoscale: loop needs a policy")
	}
	t := time.NewTicker(l.Policy.Config().Interval)
	defer t.Stop()
	for {
		_, _ = l.Step(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
