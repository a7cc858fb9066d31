package helm

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"denis.io/fleet/internal/fleetctl"
	"denis.io/fleet/internal/testutil/kube"
)

var harness = kube.NewHarness(kube.Options{})

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

var (
	crdGVR            = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	serviceMonitorGVR = schema.GroupVersionResource{Group: "monitoring.coreos.com", Version: "v1", Resource: "servicemonitors"}
	promRuleGVR       = schema.GroupVersionResource{Group: "monitoring.coreos.com", Version: "v1", Resource: "prometheusrules"}
)

// installMonitoringCRDs registers minimal ServiceMonitor and PrometheusRule CRDs (the
// kube-prometheus group and kinds, schema left open) so that the chart's monitoring objects
// are installed too.
func installMonitoringCRDs(ctx context.Context, t *testing.T, env *kube.Env) {
	t.Helper()
	for _, k := range []struct{ kind, plural string }{{"ServiceMonitor", "servicemonitors"}, {"PrometheusRule", "prometheusrules"}} {
		crd := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1",
			"kind":       "CustomResourceDefinition",
			"metadata":   map[string]any{"name": k.plural + ".monitoring.coreos.com"},
			"spec": map[string]any{
				"group": "monitoring.coreos.com",
				"scope": "Namespaced",
				"names": map[string]any{"kind": k.kind, "plural": k.plural, "listKind": k.kind + "List", "singular": k.plural[:len(k.plural)-1]},
				"versions": []any{map[string]any{
					"name": "v1", "served": true, "storage": true,
					"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
				}},
			},
		}}
		_, err := env.Dynamic.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		rl, err := env.Client.Discovery().ServerResourcesForGroupVersion("monitoring.coreos.com/v1")
		if err != nil {
			return false, nil
		}
		return len(rl.APIResources) >= 2, nil
	})
	if err != nil {
		t.Fatalf("monitoring CRDs not served: %v", err)
	}
}

// TestInstallUpgradeUninstall installs the chart into a real API server (kwok runs the pods),
// checks the pods and the autoscaler's RBAC, upgrades a flag, and uninstalls.
func TestInstallUpgradeUninstall(t *testing.T) {
	env := harness.Env(t)
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	installMonitoringCRDs(ctx, t, env)
	chart, err := filepath.Abs(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	values := valuesFile(t, map[string]any{
		"image":          map[string]any{"repository": "fleet", "tag": "e2e"},
		"serviceMonitor": map[string]any{"enabled": true},
		"prometheusRule": map[string]any{"enabled": true},
		"networkPolicy":  map[string]any{"enabled": true},
	})
	ns := env.Namespace
	if out, err := env.Helm(ctx, "install", release, chart, "-f", values, "--wait", "--timeout", "3m"); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	workerSel := "app.kubernetes.io/instance=" + release + ",app.kubernetes.io/component=worker"
	if _, err := env.WaitPodsRunning(ctx, workerSel, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitPodsRunning(ctx, "app.kubernetes.io/instance="+release+",app.kubernetes.io/component=autoscaler", 2); err != nil {
		t.Fatal(err)
	}
	for _, gvr := range []schema.GroupVersionResource{serviceMonitorGVR, promRuleGVR} {
		if _, err := env.Dynamic.Resource(gvr).Namespace(ns).Get(ctx, fullname, metav1.GetOptions{}); err != nil {
			t.Errorf("%s: %v", gvr.Resource, err)
		}
	}

	t.Run("autoscaler RBAC", func(t *testing.T) { checkAutoscalerRBAC(ctx, t, env) })

	deps := env.Client.AppsV1().Deployments(ns)
	crews := fullname + "-crews"
	// What the autoscaler and an operator do between releases must survive helm upgrade: the
	// replica count (the chart leaves it to the autoscaler) and the paused annotation.
	setReplicas(ctx, t, env.Client, ns, crews, 3)
	patch := []byte(`{"metadata":{"annotations":{"fleet.denis.io/paused":"true"}}}`)
	if _, err := deps.Patch(ctx, fullname+"-materializers", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	before := map[string]int64{}
	list, err := deps.List(ctx, metav1.ListOptions{LabelSelector: workerSel})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range list.Items {
		before[d.Name] = d.Generation
	}

	if out, err := env.Helm(ctx, "upgrade", release, chart, "--reuse-values", "--set", "flags.values.ASYNC_ENABLED=true", "--wait", "--timeout", "3m"); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, fullname+"-flags", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["ASYNC_ENABLED"] != "true" || cm.Data["DENIS_MATERIALIZERS_ENABLED"] != "false" {
		t.Errorf("flags after upgrade = %v, want ASYNC_ENABLED=true and the rest unchanged", cm.Data)
	}
	list, err = deps.List(ctx, metav1.ListOptions{LabelSelector: workerSel})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range list.Items {
		if d.Generation != before[d.Name] {
			t.Errorf("%s: generation %d → %d: a flag change must not roll the pods", d.Name, before[d.Name], d.Generation)
		}
		switch d.Name {
		case crews:
			if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
				t.Errorf("%s: replicas = %v after upgrade, want the autoscaler's 3", d.Name, d.Spec.Replicas)
			}
		default:
			if d.Annotations["fleet.denis.io/paused"] != "true" {
				t.Errorf("%s: the paused annotation did not survive helm upgrade", d.Name)
			}
		}
	}
	if _, err := env.WaitPodsRunning(ctx, "app.kubernetes.io/instance="+release+",fleet.denis.io/pool=crews", 3); err != nil {
		t.Fatal(err)
	}

	t.Run("runbook", func(t *testing.T) { checkRunbook(ctx, t, env, workerSel) })

	if out, err := env.Helm(ctx, "uninstall", release, "--wait", "--timeout", "3m"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	checkNothingLeft(ctx, t, env)
}

// checkRunbook runs the commands of docs/helm.md's runbook: a release rollback undoes a flag
// change, and the kubectl form of the emergency stop (annotate paused, scale to 0) stops every
// pool, and removing the annotation resumes.
func checkRunbook(ctx context.Context, t *testing.T, env *kube.Env, workerSel string) {
	ns := env.Namespace
	if out, err := env.Helm(ctx, "rollback", release, "1", "--wait", "--timeout", "3m"); err != nil {
		t.Fatalf("helm rollback: %v\n%s", err, out)
	}
	cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, fullname+"-flags", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["ASYNC_ENABLED"] != "false" {
		t.Errorf("after helm rollback ASYNC_ENABLED = %q, want false", cm.Data["ASYNC_ENABLED"])
	}
	checkFleetctlStop(ctx, t, env, workerSel)
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skipf("kubectl not installed: %v", err)
	}
	run := func(args ...string) {
		t.Helper()
		args = append([]string{"--kubeconfig", env.Kubeconfig, "-n", ns}, args...)
		if out, err := exec.CommandContext(ctx, kubectl, args...).CombinedOutput(); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}
	// Emergency stop, as docs/helm.md writes it.
	run("annotate", "deploy", "-l", workerSel, "fleet.denis.io/paused=true", "--overwrite")
	run("scale", "deploy", "-l", workerSel, "--replicas=0")
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: workerSel})
		return err == nil && len(pods.Items) == 0, err
	})
	if err != nil {
		t.Fatalf("workers still running after the emergency stop: %v", err)
	}
	deps, err := env.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: workerSel})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deps.Items {
		if *d.Spec.Replicas != 0 || d.Annotations["fleet.denis.io/paused"] != "true" {
			t.Errorf("%s: replicas %d, paused %q after the stop", d.Name, *d.Spec.Replicas, d.Annotations["fleet.denis.io/paused"])
		}
	}
	// Resume: the autoscaler ramps back once the annotation is gone.
	run("annotate", "deploy", "-l", workerSel, "fleet.denis.io/paused-")
	deps, err = env.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: workerSel})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deps.Items {
		if _, ok := d.Annotations["fleet.denis.io/paused"]; ok {
			t.Errorf("%s: still paused after resume", d.Name)
		}
	}
}

// checkFleetctlStop runs the runbook's `fleetctl emergency-stop --all` and `fleetctl resume
// --all --restore` on the chart's Deployments, with $PAGERDUTY_WEBHOOK at a local server.
func checkFleetctlStop(ctx context.Context, t *testing.T, env *kube.Env, workerSel string) {
	t.Helper()
	ns := env.Namespace
	var mu sync.Mutex
	var events []map[string]any
	pd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev map[string]any
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer pd.Close()
	before := map[string]int32{}
	deps, err := env.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: workerSel})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deps.Items {
		before[d.Name] = *d.Spec.Replicas
	}
	fctl := func(args ...string) {
		t.Helper()
		var out, errb bytes.Buffer
		code := fleetctl.Main(ctx, append(args, "-n", ns), fleetctl.IO{Out: &out, Err: &errb,
			Env: []string{"KUBECONFIG=" + env.Kubeconfig, "PAGERDUTY_WEBHOOK=" + pd.URL, "USER=runbook"}})
		if code != 0 {
			t.Fatalf("fleetctl %v: exit %d\nstdout: %s\nstderr: %s", args, code, out.String(), errb.String())
		}
	}
	fctl("emergency-stop", "--all", "--release", release, "--reason", "runbook test", "--wait", "1m")
	deps, err = env.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: workerSel})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deps.Items {
		if *d.Spec.Replicas != 0 || d.Annotations["fleet.denis.io/paused"] != "true" || d.Annotations["fleet.denis.io/paused-reason"] != "runbook test" {
			t.Errorf("%s after fleetctl emergency-stop: replicas %d, annotations %v", d.Name, *d.Spec.Replicas, d.Annotations)
		}
	}
	if pods, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: workerSel}); err != nil || len(pods.Items) != 0 {
		t.Errorf("worker pods left after the stop: %v, %d", err, len(pods.Items))
	}
	fctl("resume", "--all", "--release", release, "--restore")
	deps, err = env.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: workerSel})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deps.Items {
		if _, ok := d.Annotations["fleet.denis.io/paused"]; ok || *d.Spec.Replicas != before[d.Name] {
			t.Errorf("%s after fleetctl resume --restore: replicas %d (before the stop %d), annotations %v", d.Name, *d.Spec.Replicas, before[d.Name], d.Annotations)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 2 || events[0]["event_action"] != "trigger" || events[1]["event_action"] != "resolve" || events[0]["dedup_key"] != events[1]["dedup_key"] {
		t.Errorf("PagerDuty events = %v, want a trigger and its resolve", events)
	}
}

func setReplicas(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string, n int32) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sc, err := cs.AppsV1().Deployments(ns).GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		sc.Spec.Replicas = n
		_, err = cs.AppsV1().Deployments(ns).UpdateScale(ctx, name, sc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("scale %s to %d: %v", name, n, err)
	}
}

// checkAutoscalerRBAC: with a token of the chart's autoscaler ServiceAccount (bound to the
// chart's Role only), what the autoscaler does is allowed and nothing else. Issue 7's e2e runs
// the autoscaler itself with this token (env.ServiceAccountConfig).
func checkAutoscalerRBAC(ctx context.Context, t *testing.T, env *kube.Env) {
	ns := env.Namespace
	cfg, _, err := env.ServiceAccountConfig(ctx, fullname+"-autoscaler")
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kube.ClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fm, err := env.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fm.SetNamespaceCPU(ns, resource.MustParse("250m"))
	crews := fullname + "-crews"
	pods, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "fleet.denis.io/pool=crews"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("crews pods: %v (%d)", err, len(pods.Items))
	}
	pod := pods.Items[0].Name
	tests := []struct {
		name  string
		call  func() error
		allow bool
	}{
		{"watch deployments", func() error {
			w, err := cs.AppsV1().Deployments(ns).Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}, true},
		{"get scale", func() error {
			_, err := cs.AppsV1().Deployments(ns).GetScale(ctx, crews, metav1.GetOptions{})
			return err
		}, true},
		{"update scale", func() error {
			return retry.RetryOnConflict(retry.DefaultRetry, func() error {
				sc, err := cs.AppsV1().Deployments(ns).GetScale(ctx, crews, metav1.GetOptions{})
				if err != nil {
					return err
				}
				_, err = cs.AppsV1().Deployments(ns).UpdateScale(ctx, crews, sc, metav1.UpdateOptions{})
				return err
			})
		}, true},
		{"patch scale", func() error {
			_, err := cs.AppsV1().Deployments(ns).Patch(ctx, crews, types.MergePatchType, []byte(`{"spec":{"replicas":1}}`), metav1.PatchOptions{}, "scale")
			return err
		}, true},
		{"mark pod deletion cost", func() error {
			_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType,
				[]byte(`{"metadata":{"annotations":{"controller.kubernetes.io/pod-deletion-cost":"-100"}}}`), metav1.PatchOptions{})
			return err
		}, true},
		{"pod CPU from metrics.k8s.io", func() error {
			return cs.CoreV1().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/namespaces", ns, "pods").Do(ctx).Error()
		}, true},
		{"leader lease", func() error {
			l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "rbac-probe"}}
			l, err := cs.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if _, err := cs.CoordinationV1().Leases(ns).Get(ctx, l.Name, metav1.GetOptions{}); err != nil {
				return err
			}
			_, err = cs.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
			return err
		}, true},
		{"event on the deployment", func() error {
			ev := &corev1.Event{
				ObjectMeta:     metav1.ObjectMeta{GenerateName: crews + "-"},
				InvolvedObject: corev1.ObjectReference{Kind: "Deployment", APIVersion: "apps/v1", Namespace: ns, Name: crews},
				Reason:         "RBACProbe", Message: "probe", Type: corev1.EventTypeNormal,
			}
			_, err := cs.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{})
			return err
		}, true},
		{"update deployment", func() error {
			d, err := env.Client.AppsV1().Deployments(ns).Get(ctx, crews, metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{})
			return err
		}, false},
		{"delete pod", func() error { return cs.CoreV1().Pods(ns).Delete(ctx, pod, metav1.DeleteOptions{}) }, false},
		{"get pod", func() error { _, err := cs.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{}); return err }, false},
		{"read secrets", func() error { _, err := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); return err }, false},
		{"delete lease", func() error {
			return cs.CoordinationV1().Leases(ns).Delete(ctx, "rbac-probe", metav1.DeleteOptions{})
		}, false},
		{"other namespaces", func() error {
			_, err := cs.AppsV1().Deployments("default").List(ctx, metav1.ListOptions{})
			return err
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.allow && err != nil {
				t.Fatalf("denied: %v", err)
			}
			if !tc.allow && !apierrors.IsForbidden(err) {
				t.Fatalf("err = %v, want Forbidden", err)
			}
		})
	}
}

// checkNothingLeft: after helm uninstall, the namespace holds only what Kubernetes itself
// puts there (the default ServiceAccount and the root CA ConfigMap); dependents (ReplicaSets,
// pods) are garbage-collected.
func checkNothingLeft(ctx context.Context, t *testing.T, env *kube.Env) {
	t.Helper()
	ns := env.Namespace
	var left []string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		left = left[:0]
		add := func(kind string, names ...string) {
			for _, n := range names {
				left = append(left, kind+"/"+n)
			}
		}
		c := env.Client
		if l, err := c.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("Deployment", o.Name)
			}
		}
		if l, err := c.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("ReplicaSet", o.Name)
			}
		}
		if l, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("Pod", o.Name)
			}
		}
		if l, err := c.CoreV1().Services(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("Service", o.Name)
			}
		}
		if l, err := c.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				if o.Name != "kube-root-ca.crt" {
					add("ConfigMap", o.Name)
				}
			}
		}
		if l, err := c.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("Secret", o.Name)
			}
		}
		if l, err := c.CoreV1().ServiceAccounts(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				if o.Name != "default" {
					add("ServiceAccount", o.Name)
				}
			}
		}
		if l, err := c.RbacV1().Roles(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("Role", o.Name)
			}
		}
		if l, err := c.RbacV1().RoleBindings(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("RoleBinding", o.Name)
			}
		}
		if l, err := c.PolicyV1().PodDisruptionBudgets(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("PodDisruptionBudget", o.Name)
			}
		}
		if l, err := c.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, o := range l.Items {
				add("NetworkPolicy", o.Name)
			}
		}
		for _, gvr := range []schema.GroupVersionResource{serviceMonitorGVR, promRuleGVR} {
			if l, err := env.Dynamic.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{}); err == nil {
				for _, o := range l.Items {
					add(gvr.Resource, o.GetName())
				}
			}
		}
		return len(left) == 0, nil
	})
	if err != nil {
		t.Fatalf("left behind after helm uninstall: %v", left)
	}
}
