package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"

	"denis.io/fleet/internal/autoscale"
	"denis.io/fleet/internal/events"
	"denis.io/fleet/internal/flags"
	"denis.io/fleet/internal/testutil/kube"
)

// cluster is one test's namespace with the chart's autoscaler RBAC and a worker Deployment.
type cluster struct {
	env        *kube.Env
	kubeconfig string // authenticates as the chart's autoscaler ServiceAccount only
	deployment string
}

// newCluster renders the chart's autoscaler ServiceAccount, Role and RoleBinding (helm
// template, default values), creates them in the test's namespace, writes a kubeconfig with
// a token of that ServiceAccount, and creates a worker Deployment of kwok pods.
func newCluster(t *testing.T, ctx context.Context, replicas int32) *cluster {
	t.Helper()
	env := harness.Env(t)
	root, err := kube.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := env.Helm(ctx, "template", "rel", filepath.Join(root, "deploy", "helm", "fleet"),
		"--show-only", "templates/autoscaler-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sa := ""
	var roles []string
	for _, doc := range strings.Split(out, "\n---") {
		if strings.TrimSpace(stripYAMLComments(doc)) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("chart RBAC: %v\n%s", err, doc)
		}
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			o.Namespace, sa = env.Namespace, o.Name
			_, err = env.Client.CoreV1().ServiceAccounts(env.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			o.Namespace = env.Namespace
			roles = append(roles, o.Name)
			_, err = env.Client.RbacV1().Roles(env.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			o.Namespace = env.Namespace
			for i := range o.Subjects {
				o.Subjects[i].Namespace = env.Namespace
			}
			_, err = env.Client.RbacV1().RoleBindings(env.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("unexpected %T in the chart's autoscaler RBAC", obj)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if sa == "" || len(roles) != 1 {
		t.Fatalf("chart RBAC: ServiceAccount %q, Roles %v", sa, roles)
	}
	_, kc, err := env.ServiceAccountConfig(ctx, sa)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "worker"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "worker"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To(int64(30)),
					Containers: []corev1.Container{{Name: "worker", Image: "fleet:e2e",
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")}}}},
				},
			},
		},
	}
	if _, err := env.Client.AppsV1().Deployments(env.Namespace).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if replicas > 0 {
		if _, err := env.WaitPodsRunning(ctx, "app=worker", int(replicas)); err != nil {
			t.Fatal(err)
		}
	}
	return &cluster{env: env, kubeconfig: kc, deployment: "worker"}
}

func stripYAMLComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func (c *cluster) specReplicas(t *testing.T, ctx context.Context) int32 {
	t.Helper()
	sc, err := c.env.Client.AppsV1().Deployments(c.env.Namespace).GetScale(ctx, c.deployment, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sc.Spec.Replicas
}

func (c *cluster) annotate(t *testing.T, ctx context.Context, ann map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := c.env.Client.AppsV1().Deployments(c.env.Namespace).Patch(ctx, c.deployment, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// autoscaler starts the autoscaler binary against the cluster with the ServiceAccount's
// kubeconfig, and returns the process and its decisions file.
func (c *cluster) autoscaler(t *testing.T, name, queue, lease string, env []string, extra ...string) (*proc, string) {
	t.Helper()
	bin, _ := binaries(t)
	decisions := filepath.Join(t.TempDir(), name+"-decisions.jsonl")
	args := []string{"run", "--kubeconfig", c.kubeconfig, "--namespace", c.env.Namespace, "--deployment", c.deployment,
		"-b", redisURL, "-Q", queue, "-c", "4", "--min", "1", "--max", "10", "--interval", "1s", "--task-seconds", "2s",
		"--lease-name", lease, "--identity", name, "--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms",
		"--metrics-addr", "", "--decisions-file", decisions}
	return startAutoscaler(t, bin, name, env, append(args, extra...)...), decisions
}

// noForbidden fails the test when the autoscaler logged an error the API server's RBAC
// caused: the chart's Role must be enough for everything it does.
func noForbidden(t *testing.T, p *proc) {
	t.Helper()
	for _, rec := range logLines(t, p.log) {
		line, _ := json.Marshal(rec)
		if strings.Contains(strings.ToLower(string(line)), "forbidden") {
			t.Errorf("RBAC: %s", line)
		}
	}
}

// TestKubeScaleStopFailover is the Kubernetes end-to-end test against a real API
// server, with the autoscaler authenticated as the chart's ServiceAccount (its Role only):
// a backlog pushed into a real queue raises /scale; the paused annotation drives it to 0
// and holds it there while the backlog grows; a second replica stays passive until the
// leader dies, then takes over (and obeys FLEET_EMERGENCY_STOP from the flag store); the
// leader's decision traces (DECISION_TRACE_ENABLED) carry the observation.
func TestKubeScaleStopFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := newCluster(t, ctx, 1)
	ns := c.env.Namespace
	fm, err := c.env.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fm.SetNamespaceCPU(ns, resource.MustParse("200m")) // 0.4 of the request
	queue, lease, stream := unique("as-kube"), unique("as-lease"), unique("as-decisions")
	b := queueBroker(t, queue)
	rdb := redisClient(t)
	store := flags.NewStore(rdb, "", "")
	t.Cleanup(func() {
		_ = store.Unset(context.Background(), flags.EmergencyStop)
		rdb.Del(context.Background(), stream)
	})
	// Both replicas read the flag store in Redis; a also writes decision traces.
	common := []string{"--flags-redis", redisURL, "--trace-stream", stream}
	a, aDecisions := c.autoscaler(t, "a", queue, lease, []string{"DECISION_TRACE_ENABLED=true"}, common...)
	eventually(t, 2*time.Minute, "replica a to lead", func() (bool, string) {
		l, err := c.env.Client.CoordinationV1().Leases(ns).Get(ctx, lease, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return ptr.Deref(l.Spec.HolderIdentity, "") == "a", ptr.Deref(l.Spec.HolderIdentity, "")
	})
	bProc, bDecisions := c.autoscaler(t, "b", queue, lease, nil, common...)

	t.Run("a backlog raises /scale", func(t *testing.T) {
		if _, err := publishSleeps(ctx, b, queue, 600, 2); err != nil {
			t.Fatal(err)
		}
		// 600 ready ÷ (μ 0.5/s × 4 slots × 60 s drain time) = 5 pods, plus the queueing need.
		eventually(t, 2*time.Minute, "spec.replicas ≥ 4", func() (bool, string) {
			n := c.specReplicas(t, ctx)
			return n >= 4, fmt.Sprint(n)
		})
		if _, err := c.env.WaitPodsRunning(ctx, "app=worker", 4); err != nil {
			t.Fatal(err)
		}
		// The decisions saw the pods' CPU through metrics.k8s.io.
		eventually(t, time.Minute, "a decision with pod CPU", func() (bool, string) {
			for _, d := range readDecisions(t, aDecisions) {
				if d.Inputs.CPU > 0.39 && d.Inputs.CPU < 0.41 {
					return true, ""
				}
			}
			return false, ""
		})
	})

	t.Run("the paused annotation drives /scale to 0 and holds it", func(t *testing.T) {
		c.annotate(t, ctx, map[string]any{autoscale.AnnotationPaused: "true", autoscale.AnnotationPausedReason: "e2e incident drill"})
		eventually(t, time.Minute, "spec.replicas = 0", func() (bool, string) {
			n := c.specReplicas(t, ctx)
			return n == 0, fmt.Sprint(n)
		})
		if _, err := publishSleeps(ctx, b, queue, 600, 2); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
			if n := c.specReplicas(t, ctx); n != 0 {
				t.Fatalf("scaled to %d while paused", n)
			}
		}
		evs, err := c.env.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=worker,involvedObject.kind=Deployment"})
		if err != nil {
			t.Fatal(err)
		}
		var reasons []string
		stop := false
		for _, e := range evs.Items {
			reasons = append(reasons, e.Reason)
			stop = stop || (e.Reason == "EmergencyStop" && strings.Contains(e.Message, "e2e incident drill") && e.ReportingInstance == "a")
		}
		if !stop {
			t.Fatalf("no EmergencyStop Event from a naming the reason; reasons %v", reasons)
		}
		c.annotate(t, ctx, map[string]any{autoscale.AnnotationPaused: nil, autoscale.AnnotationPausedReason: nil})
		eventually(t, time.Minute, "the resume", func() (bool, string) {
			n := c.specReplicas(t, ctx)
			return n > 0, fmt.Sprint(n)
		})
	})

	t.Run("the standby stays passive until the leader dies", func(t *testing.T) {
		if ds := readDecisions(t, bDecisions); len(ds) != 0 {
			t.Fatalf("the standby decided %d times while a led", len(ds))
		}
		a.stop(t, syscall.SIGKILL, 30*time.Second) // no Lease release: b waits for it to expire
		eventually(t, 2*time.Minute, "replica b to lead", func() (bool, string) {
			l, err := c.env.Client.CoordinationV1().Leases(ns).Get(ctx, lease, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			return ptr.Deref(l.Spec.HolderIdentity, "") == "b", ptr.Deref(l.Spec.HolderIdentity, "")
		})
		// The new leader acts: the emergency-stop flag in the fleet's flag store stops it.
		if _, err := store.Set(ctx, flags.EmergencyStop, "true"); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "b to stop the fleet on FLEET_EMERGENCY_STOP", func() (bool, string) {
			n := c.specReplicas(t, ctx)
			return n == 0, fmt.Sprint(n)
		})
		eventually(t, 30*time.Second, "b's emergency-stop decision naming the flag", func() (bool, string) {
			for _, d := range readDecisions(t, bDecisions) {
				if d.Rule == autoscale.RuleEmergencyStop && strings.Contains(d.Reason, "FLEET_EMERGENCY_STOP") {
					return true, ""
				}
			}
			return false, ""
		})
		if err := store.Unset(ctx, flags.EmergencyStop); err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "b to resume", func() (bool, string) {
			n := c.specReplicas(t, ctx)
			return n > 0, fmt.Sprint(n)
		})
	})

	t.Run("decision traces carry the inputs", func(t *testing.T) {
		entries, err := rdb.XRange(ctx, stream, "-", "+").Result()
		if err != nil || len(entries) == 0 {
			t.Fatalf("%d trace entries: %v", len(entries), err)
		}
		scaleUp := false
		for _, e := range entries {
			var tr autoscale.DecisionTrace
			if err := json.Unmarshal([]byte(e.Values["trace"].(string)), &tr); err != nil {
				t.Fatal(err)
			}
			if e.Values["pool"] != "worker" || tr.Pool != "worker" || tr.Instance != "a" || len(tr.Observation.Queues) != 1 ||
				tr.Observation.Queues[0].Name != queue || tr.Observation.Workload.Name != "worker" || tr.Decision.Workload != "worker" {
				t.Fatalf("trace %+v", tr)
			}
			// The scale-up's trace holds the pods (with their CPU) and the backlog it sized from.
			if tr.Decision.Rule == autoscale.RuleBacklog && tr.Applied {
				scaleUp = len(tr.Observation.Pods) > 0 && tr.Observation.Pods[0].CPU > 0 && tr.Observation.Queues[0].Ready > 0
			}
		}
		if !scaleUp {
			t.Fatalf("no applied backlog scale-up with its pods and backlog among %d traces", len(entries))
		}
	})
	noForbidden(t, a)
	noForbidden(t, bProc)
	for name, path := range map[string]string{"a": aDecisions, "b": bDecisions} {
		for _, d := range readDecisions(t, path) {
			if d.Changed() {
				t.Logf("%s: %d → %d (%s): %s", name, d.Current, d.Desired, d.Rule, d.Reason)
			}
		}
	}
}

// TestKubeScaleInSparesBusyPods: with the workers' heartbeats showing three pods running two
// tasks each (6 busy slots of 16: 3 pods at ρ* = 0.7) and one idle pod, and no backlog, the
// autoscaler scales 4 → 3 and marks the idle pod cheapest to delete (pod-deletion-cost), so
// that the real ReplicaSet controller removes that pod and keeps the busy ones.
func TestKubeScaleInSparesBusyPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := newCluster(t, ctx, 4)
	pods, err := c.env.WaitPodsRunning(ctx, "app=worker", 4)
	if err != nil {
		t.Fatal(err)
	}
	queue := unique("as-kube-in")
	_ = queueBroker(t, queue)
	rdb := redisClient(t)
	prefix := unique("as-hb") + ":"
	t.Cleanup(func() {
		if ks, _ := rdb.Keys(context.Background(), prefix+"*").Result(); len(ks) > 0 {
			rdb.Del(context.Background(), ks...)
		}
	})
	idle := pods[2].Name
	busy := map[string]bool{}
	for _, p := range pods {
		if p.Name != idle {
			busy[p.Name] = true
		}
	}
	// Heartbeats as the workers would send them: 4 slots each, the busy pods running 2
	// tasks, completing one per second between them (6 s tasks).
	seen := events.NewSeen(rdb, prefix, 10*time.Second)
	beatCtx, stopBeats := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopBeats(); wg.Wait() }()
	wg.Go(func() {
		start := time.Now()
		for {
			now := time.Now()
			for _, p := range pods {
				st := events.WorkerStatus{Hostname: "fleet@" + p.Name, Timestamp: float64(now.UnixMicro()) / 1e6,
					Started: float64(start.Unix()), Concurrency: 4, Queues: []string{queue}}
				if busy[p.Name] {
					st.Active, st.Processed = 2, int64(now.Sub(start).Seconds()/3)
				}
				_ = seen.Beat(beatCtx, st)
			}
			select {
			case <-beatCtx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	})
	p, decisions := c.autoscaler(t, "a", queue, unique("as-lease"), nil, "--state-prefix", prefix,
		"--scale-down-window", "10s", "--scale-down-period", "5s", "--reversal-guard", "5s")
	eventually(t, 3*time.Minute, "spec.replicas = 3", func() (bool, string) {
		n := c.specReplicas(t, ctx)
		return n == 3, fmt.Sprint(n)
	})
	eventually(t, 2*time.Minute, "the idle pod to go and the busy ones to stay", func() (bool, string) {
		list, err := c.env.Client.CoreV1().Pods(c.env.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=worker"})
		if err != nil {
			return false, err.Error()
		}
		var names []string
		alive := map[string]bool{}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				alive[p.Name] = true
				names = append(names, p.Name)
			}
		}
		for b := range busy {
			if !alive[b] {
				t.Fatalf("busy pod %s was removed (alive: %v)", b, names)
			}
		}
		return !alive[idle] && len(alive) == 3, fmt.Sprint(names)
	})
	// The policy chose the idle pod; the actuator marked it before lowering the count.
	marked := false
	for _, d := range readDecisions(t, decisions) {
		if d.Changed() {
			t.Logf("%d → %d (%s) victims %v: %s", d.Current, d.Desired, d.Rule, d.Victims, d.Reason)
			marked = marked || (d.Desired == 3 && len(d.Victims) == 1 && d.Victims[0] == idle)
		}
	}
	if !marked {
		t.Fatalf("no scale-in decision naming the idle pod %s as its victim", idle)
	}
	noForbidden(t, p)
}
