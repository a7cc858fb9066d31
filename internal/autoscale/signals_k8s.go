package autoscale

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// Annotations on the worker Deployment and its pods.
const (
	// AnnotationPaused "true" is the emergency stop: 0 replicas at once, held until removed.
	AnnotationPaused = "fleet.denis.io/paused"
	// AnnotationPausedReason says why (shown in the decision, its Event and conditions).
	AnnotationPausedReason = "fleet.denis.io/paused-reason"
	// AnnotationDeletionCost is Kubernetes' pod-deletion-cost: the ReplicaSet controller
	// removes the pods with the lowest cost first.
	AnnotationDeletionCost = "controller.kubernetes.io/pod-deletion-cost"
	// AnnotationMarked is set next to the cost on the pods this autoscaler marked, so that
	// it clears only its own marks.
	AnnotationMarked = "fleet.denis.io/scale-in-mark"
)

// KubeWorkload reads a worker Deployment, its pods, their CPU (metrics.k8s.io) and the
// other autoscalers that target it. It needs get on deployments, list on pods and, when
// CPU is on, list on pods.metrics.k8s.io; HPAs and KEDA ScaledObjects are listed only
// when Writers is on (the chart's optional readOtherScalers rule).
type KubeWorkload struct {
	Client    kubernetes.Interface
	Dynamic   dynamic.Interface // for KEDA ScaledObjects; nil: not checked
	Namespace string
	Name      string
	// CPU reads pod CPU from metrics.k8s.io.
	CPU bool
	// Writers lists HPAs and ScaledObjects every WritersEvery (default 30 s).
	Writers      bool
	WritersEvery time.Duration
	Log          *slog.Logger

	mu          sync.Mutex
	observed    observedDeployment
	writers     []string
	writersAt   time.Time
	writersNote map[string]string // per kind: why it could not be listed (logged once)
	cpuErr      string
}

// observedDeployment is what the last read saw, shared with the actuator.
type observedDeployment struct {
	ok       bool
	uid      types.UID
	replicas int32
	selector string
	pods     []corev1.Pod
}

var scaledObjectsGVR = schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}

func (k *KubeWorkload) log() *slog.Logger {
	if k.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return k.Log
}

// ReadWorkload implements WorkloadReader.
func (k *KubeWorkload) ReadWorkload(ctx context.Context) (WorkloadState, error) {
	d, err := k.Client.AppsV1().Deployments(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
	if err != nil {
		return WorkloadState{}, fmt.Errorf("get deployment %s/%s: %w", k.Namespace, k.Name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return WorkloadState{}, fmt.Errorf("deployment %s/%s: selector: %w", k.Namespace, k.Name, err)
	}
	pods, err := k.Client.CoreV1().Pods(k.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return WorkloadState{}, fmt.Errorf("list pods of %s/%s: %w", k.Namespace, k.Name, err)
	}
	spec := int32(1)
	if d.Spec.Replicas != nil {
		spec = *d.Spec.Replicas
	}
	w := Workload{
		Name:            k.Name,
		SpecReplicas:    int(spec),
		StatusReplicas:  int(d.Status.Replicas),
		ReadyReplicas:   int(d.Status.ReadyReplicas),
		UpdatedReplicas: int(d.Status.UpdatedReplicas),
		Paused:          strings.EqualFold(strings.TrimSpace(d.Annotations[AnnotationPaused]), "true"),
		PausedReason:    d.Annotations[AnnotationPausedReason],
		RollingOut:      RollingOut(d),
	}
	if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		w.GracePeriod = time.Duration(*g) * time.Second
	}
	var live []corev1.Pod
	var ps []PodSignal
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		live = append(live, p)
		ps = append(ps, PodSignal{
			Name:        p.Name,
			Revision:    p.Labels[appsv1.DefaultDeploymentUniqueLabelKey],
			Ready:       p.DeletionTimestamp == nil && podReady(&p),
			Terminating: p.DeletionTimestamp != nil,
		})
	}
	if k.CPU && len(ps) > 0 {
		k.readCPU(ctx, sel.String(), live, ps)
	}
	if k.Writers {
		w.OtherWriters = k.otherWriters(ctx)
	}
	k.mu.Lock()
	k.observed = observedDeployment{ok: true, uid: d.UID, replicas: spec, selector: sel.String(), pods: live}
	k.mu.Unlock()
	return WorkloadState{Workload: w, Pods: ps}, nil
}

// RollingOut reports whether the Deployment is between two revisions: its controller has
// not seen the newest spec yet, or pods of an older ReplicaSet are still running (old and
// new pods must not both count as capacity, and nothing scales in meanwhile).
func RollingOut(d *appsv1.Deployment) bool {
	if d.Spec.Paused {
		return false
	}
	if d.Status.ObservedGeneration < d.Generation {
		return true
	}
	return d.Status.UpdatedReplicas < d.Status.Replicas
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podMetricsList is metrics.k8s.io/v1beta1's PodMetricsList, the fields used.
type podMetricsList struct {
	Items []struct {
		Metadata   metav1.ObjectMeta `json:"metadata"`
		Timestamp  metav1.Time       `json:"timestamp"`
		Window     metav1.Duration   `json:"window"`
		Containers []struct {
			Name  string              `json:"name"`
			Usage corev1.ResourceList `json:"usage"`
		} `json:"containers"`
	} `json:"items"`
}

// readCPU fills CPU ÷ request per pod. Pods without a CPU request on every container get no
// value (as the HPA, which fails the metric then).
func (k *KubeWorkload) readCPU(ctx context.Context, selector string, pods []corev1.Pod, ps []PodSignal) {
	raw, err := k.Client.CoreV1().RESTClient().Get().
		AbsPath("/apis/metrics.k8s.io/v1beta1/namespaces", k.Namespace, "pods").
		Param("labelSelector", selector).DoRaw(ctx)
	var list podMetricsList
	if err == nil {
		err = json.Unmarshal(raw, &list)
	}
	k.mu.Lock()
	prev := k.cpuErr
	if err != nil {
		k.cpuErr = err.Error()
	} else {
		k.cpuErr = ""
	}
	k.mu.Unlock()
	if err != nil {
		if prev == "" {
			k.log().Warn("autoscale: pod CPU from metrics.k8s.io unavailable; the CPU need is left out", "err", err)
		}
		return
	}
	if prev != "" {
		k.log().Info("autoscale: pod CPU from metrics.k8s.io available again")
	}
	requests := map[string]float64{}
	for _, p := range pods {
		var sum int64
		ok := len(p.Spec.Containers) > 0
		for _, c := range p.Spec.Containers {
			q, has := c.Resources.Requests[corev1.ResourceCPU]
			if !has || q.IsZero() {
				ok = false
				break
			}
			sum += q.MilliValue()
		}
		if ok {
			requests[p.Name] = float64(sum)
		}
	}
	byName := map[string]int{}
	for i, p := range ps {
		byName[p.Name] = i
	}
	for _, it := range list.Items {
		i, ok := byName[it.Metadata.Name]
		req := requests[it.Metadata.Name]
		if !ok || req <= 0 {
			continue
		}
		var used int64
		for _, c := range it.Containers {
			q := c.Usage[corev1.ResourceCPU]
			used += q.MilliValue()
		}
		ps[i].CPU = float64(used) / req
		ps[i].CPUAt = it.Timestamp.Time
		if ps[i].CPUAt.IsZero() {
			ps[i].CPUAt = time.Now()
		}
	}
}

// otherWriters lists, at most every WritersEvery, the HPAs and KEDA ScaledObjects whose
// scale target is this Deployment. A kind the autoscaler may not list (RBAC) or that the
// cluster does not have (no KEDA CRD) is skipped, with one log line.
func (k *KubeWorkload) otherWriters(ctx context.Context) []string {
	every := k.WritersEvery
	if every <= 0 {
		every = 30 * time.Second
	}
	k.mu.Lock()
	if !k.writersAt.IsZero() && time.Since(k.writersAt) < every {
		out := k.writers
		k.mu.Unlock()
		return out
	}
	k.mu.Unlock()
	var out []string
	note := map[string]string{}
	hpas, err := k.Client.AutoscalingV2().HorizontalPodAutoscalers(k.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		note["HorizontalPodAutoscaler"] = err.Error()
	} else {
		for _, h := range hpas.Items {
			r := h.Spec.ScaleTargetRef
			if r.Kind == "Deployment" && r.Name == k.Name {
				out = append(out, "HorizontalPodAutoscaler/"+h.Name)
			}
		}
	}
	if k.Dynamic != nil {
		sos, err := k.Dynamic.Resource(scaledObjectsGVR).Namespace(k.Namespace).List(ctx, metav1.ListOptions{})
		switch {
		case err != nil && apierrors.IsNotFound(err):
			// No KEDA in this cluster.
		case err != nil:
			note["ScaledObject"] = err.Error()
		default:
			for _, so := range sos.Items {
				name, _, _ := unstructuredString(so.Object, "spec", "scaleTargetRef", "name")
				kind, _, _ := unstructuredString(so.Object, "spec", "scaleTargetRef", "kind")
				if name == k.Name && (kind == "" || kind == "Deployment") {
					out = append(out, "ScaledObject/"+so.GetName())
				}
			}
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for kind, msg := range note {
		if k.writersNote[kind] == "" {
			k.log().Warn("autoscale: cannot check for another autoscaler on the workload", "kind", kind, "err", msg)
		}
	}
	k.writersNote = note
	k.writers, k.writersAt = out, time.Now()
	return out
}

func unstructuredString(obj map[string]any, path ...string) (string, bool, error) {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur, ok = m[p]
		if !ok {
			return "", false, nil
		}
	}
	s, ok := cur.(string)
	return s, ok, nil
}

// observedState returns what the last ReadWorkload saw.
func (k *KubeWorkload) observedState() observedDeployment {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.observed
}
