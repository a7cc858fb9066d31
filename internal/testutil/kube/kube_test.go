package kube_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"denis.io/fleet/internal/testutil/kube"
)

var harness = kube.NewHarness(kube.Options{})

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func deployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:      "worker",
					Image:     "fleet:e2e",
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")}},
				}}},
			},
		},
	}
}

// TestScaleOnKwok: a Deployment's pods become Running on the kwok node, and /scale GET +
// UPDATE (with RetryOnConflict: the deployment controller writes status in between) moves
// spec.replicas and the Running pods follow.
func TestScaleOnKwok(t *testing.T) {
	env := harness.Env(t)
	ctx := ctxFor(t, 2*time.Minute)
	deps := env.Client.AppsV1().Deployments(env.Namespace)
	if _, err := deps.Create(ctx, deployment("web", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitPodsRunning(ctx, "app=web", 2); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want int32
	}{{"up", 4}, {"down", 1}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				sc, err := deps.GetScale(ctx, "web", metav1.GetOptions{})
				if err != nil {
					return err
				}
				sc.Spec.Replicas = tc.want
				_, err = deps.UpdateScale(ctx, "web", sc, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				t.Fatalf("scale to %d: %v", tc.want, err)
			}
			err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
				sc, err := deps.GetScale(ctx, "web", metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				d, err := deps.Get(ctx, "web", metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				return sc.Status.Replicas == tc.want && d.Status.ReadyReplicas == tc.want, nil
			})
			if err != nil {
				t.Fatalf("status.replicas never reached %d: %v", tc.want, err)
			}
		})
	}
}

// TestFakeMetricsThroughAggregator: pod CPU set in the test is what metrics.k8s.io returns
// through the real apiserver, and a change shows on the next list.
func TestFakeMetricsThroughAggregator(t *testing.T) {
	env := harness.Env(t)
	ctx := ctxFor(t, 2*time.Minute)
	if _, err := env.Client.AppsV1().Deployments(env.Namespace).Create(ctx, deployment("cpu", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods, err := env.WaitPodsRunning(ctx, "app=cpu", 2)
	if err != nil {
		t.Fatal(err)
	}
	fm, err := env.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fm.SetNamespaceCPU(env.Namespace, resource.MustParse("350m"))
	fm.SetPodCPU(env.Namespace, pods[0].Name, resource.MustParse("900m"))

	type podMetricsList struct {
		Items []struct {
			Metadata   metav1.ObjectMeta `json:"metadata"`
			Containers []struct {
				Name  string              `json:"name"`
				Usage corev1.ResourceList `json:"usage"`
			} `json:"containers"`
		} `json:"items"`
	}
	list := func() map[string]int64 {
		t.Helper()
		raw, err := env.Client.CoreV1().RESTClient().Get().
			AbsPath("/apis/metrics.k8s.io/v1beta1/namespaces", env.Namespace, "pods").
			Param("labelSelector", "app=cpu").DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var l podMetricsList
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatal(err)
		}
		got := map[string]int64{}
		for _, it := range l.Items {
			for _, c := range it.Containers {
				q := c.Usage[corev1.ResourceCPU]
				got[it.Metadata.Name] += q.MilliValue()
			}
		}
		return got
	}
	tests := []struct {
		name   string
		set    func()
		first  int64
		second int64
	}{
		{"pod value beats namespace value", func() {}, 900, 350},
		{"change shows on next list", func() { fm.SetNamespaceCPU(env.Namespace, resource.MustParse("1200m")) }, 900, 1200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.set()
			got := list()
			if got[pods[0].Name] != tc.first || got[pods[1].Name] != tc.second || len(got) != 2 {
				t.Fatalf("CPU = %v, want %s=%dm %s=%dm", got, pods[0].Name, tc.first, pods[1].Name, tc.second)
			}
		})
	}
}

// TestServiceAccountConfig: a token for a ServiceAccount has exactly the rights of its Role.
func TestServiceAccountConfig(t *testing.T) {
	env := harness.Env(t)
	ctx := ctxFor(t, time.Minute)
	ns := env.Namespace
	if _, err := env.Client.AppsV1().Deployments(ns).Create(ctx, deployment("rbac", 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "scaler"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "scaler"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"apps"}, Resources: []string{"deployments/scale"}, Verbs: []string{"get"}},
	}}
	if _, err := env.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "scaler"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "scaler"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "scaler", Namespace: ns}},
	}
	if _, err := env.Client.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, kubeconfig, err := env.ServiceAccountConfig(ctx, "scaler")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kubeconfig); err != nil {
		t.Fatal(err)
	}
	cs, err := kube.ClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		call      func() error
		forbidden bool
	}{
		{"get scale allowed", func() error {
			_, err := cs.AppsV1().Deployments(ns).GetScale(ctx, "rbac", metav1.GetOptions{})
			return err
		}, false},
		{"get deployment forbidden", func() error {
			_, err := cs.AppsV1().Deployments(ns).Get(ctx, "rbac", metav1.GetOptions{})
			return err
		}, true},
		{"list pods forbidden", func() error {
			_, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.forbidden != apierrors.IsForbidden(err) || (!tc.forbidden && err != nil) {
				t.Fatalf("err = %v, want forbidden=%v", err, tc.forbidden)
			}
		})
	}
}
