package autoscale

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// ErrConcurrentChange is returned by KubeActuator.Scale when spec.replicas moved between the
// observation and the write (an operator's `kubectl scale`, say): the write is dropped and
// the next reconcile decides from the new count, so that a manual stop is never overwritten.
var ErrConcurrentChange = errors.New("spec.replicas changed since it was observed")

// KubeActuator writes a Deployment's /scale subresource and marks scale-in victims with
// controller.kubernetes.io/pod-deletion-cost. It needs get and update on
// deployments/scale, and patch on pods.
type KubeActuator struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	// Workload is the same pool's reader: the actuator writes only if spec.replicas is
	// still what it observed, and marks among the pods it listed.
	Workload *KubeWorkload
	// PatchLimiter bounds the pod annotation writes (KEP-2255's API-load concern); nil:
	// 5 per second, bursts of 20. A mark that would wait past MarkTimeout fails the
	// scale-in (the next reconcile tries again).
	PatchLimiter *rate.Limiter
	MarkTimeout  time.Duration
	// MarkSettle is the pause between the marks and the scale write, so that the
	// ReplicaSet controller's cache has the marks when it picks victims (default 500 ms).
	MarkSettle time.Duration
	Log        *slog.Logger
}

// NewKubeActuator returns the actuator of the Deployment w reads.
func NewKubeActuator(w *KubeWorkload, log *slog.Logger) *KubeActuator {
	return &KubeActuator{Client: w.Client, Namespace: w.Namespace, Name: w.Name, Workload: w, Log: log}
}

// Scale implements Actuator: GET /scale, check that spec.replicas is still what the
// observation saw, PUT it with the new count; conflicts (the deployment controller writes
// status in between) are retried.
func (a *KubeActuator) Scale(ctx context.Context, replicas int) error {
	from := -1
	if a.Workload != nil {
		if obs := a.Workload.observedState(); obs.ok {
			from = int(obs.replicas)
		}
	}
	if err := a.scale(ctx, replicas); err != nil {
		return err
	}
	if from >= 0 && replicas > from {
		// Growing: no pod is to go, so no pod keeps a scale-in mark (a busy pod must not
		// carry a stale low cost into a later rollout or manual scale-down).
		if err := a.MarkForDeletion(ctx, nil); err != nil {
			a.logger().Warn("autoscale: clearing old pod-deletion-cost marks failed", "err", err)
		}
	}
	return nil
}

func (a *KubeActuator) logger() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Log
}

func (a *KubeActuator) scale(ctx context.Context, replicas int) error {
	deps := a.Client.AppsV1().Deployments(a.Namespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sc, err := deps.GetScale(ctx, a.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get %s/%s/scale: %w", a.Namespace, a.Name, err)
		}
		if a.Workload != nil {
			if obs := a.Workload.observedState(); obs.ok && sc.Spec.Replicas != obs.replicas {
				return fmt.Errorf("%w: observed %d, now %d", ErrConcurrentChange, obs.replicas, sc.Spec.Replicas)
			}
		}
		if sc.Spec.Replicas == int32(replicas) {
			return nil
		}
		sc.Spec.Replicas = int32(replicas)
		if _, err := deps.UpdateScale(ctx, a.Name, sc, metav1.UpdateOptions{FieldManager: "fleet-autoscaler"}); err != nil {
			if apierrors.IsConflict(err) {
				return err
			}
			return fmt.Errorf("update %s/%s/scale: %w", a.Namespace, a.Name, err)
		}
		return nil
	})
}

// MarkForDeletion implements Actuator: the victims get the lowest pod-deletion-cost, best
// first (−1000, −999, …), and the marks this autoscaler left on other pods are removed.
func (a *KubeActuator) MarkForDeletion(ctx context.Context, pods []string) error {
	lim := a.PatchLimiter
	if lim == nil {
		lim = rate.NewLimiter(5, 20)
		a.PatchLimiter = lim
	}
	timeout := a.MarkTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	want := map[string]string{}
	for i, p := range pods {
		want[p] = strconv.Itoa(i - 1000)
	}
	type patch struct {
		pod  string
		cost *string
	}
	var patches []patch
	if a.Workload != nil {
		for _, p := range a.Workload.observedState().pods {
			cost, wanted := want[p.Name]
			_, marked := p.Annotations[AnnotationMarked]
			switch {
			case wanted && (p.Annotations[AnnotationDeletionCost] != cost || !marked):
				patches = append(patches, patch{p.Name, &cost})
			case !wanted && marked:
				patches = append(patches, patch{p.Name, nil})
			}
			delete(want, p.Name)
		}
	}
	for p, cost := range want { // not in the last list: mark anyway
		patches = append(patches, patch{p, &cost})
	}
	// Clear old marks first: a pod must never carry a stale low cost while the count drops.
	for _, clearFirst := range []bool{true, false} {
		for _, p := range patches {
			if (p.cost == nil) != clearFirst {
				continue
			}
			if err := lim.Wait(ctx); err != nil {
				return fmt.Errorf("pod-deletion-cost writes rate-limited: %w", err)
			}
			if err := a.annotate(ctx, p.pod, p.cost); err != nil {
				if p.cost == nil && apierrors.IsNotFound(err) {
					continue // gone already
				}
				return err
			}
		}
	}
	settle := a.MarkSettle
	if settle == 0 {
		settle = 500 * time.Millisecond
	}
	if settle > 0 && len(pods) > 0 {
		t := time.NewTimer(settle)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return fmt.Errorf("mark pods: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// annotate sets (cost != nil) or removes the deletion cost and our mark with a merge patch.
func (a *KubeActuator) annotate(ctx context.Context, pod string, cost *string) error {
	ann := map[string]any{AnnotationDeletionCost: nil, AnnotationMarked: nil}
	if cost != nil {
		ann[AnnotationDeletionCost] = *cost
		ann[AnnotationMarked] = time.Now().UTC().Format(time.RFC3339)
	}
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return fmt.Errorf("pod patch: %w", err)
	}
	if _, err := a.Client.CoreV1().Pods(a.Namespace).Patch(ctx, pod, types.MergePatchType, body, metav1.PatchOptions{FieldManager: "fleet-autoscaler"}); err != nil {
		return fmt.Errorf("annotate pod %s/%s: %w", a.Namespace, pod, err)
	}
	return nil
}
