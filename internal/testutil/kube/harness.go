package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Harness starts one cluster per test package, on the first Env call, and stops it when
// Main returns. Keep one in a package-level variable of the test package.
type Harness struct {
	opts    Options
	once    sync.Once
	cluster *Cluster
	err     error
}

// NewHarness returns a harness whose cluster will be started with opts.
func NewHarness(opts Options) *Harness { return &Harness{opts: opts} }

// Main runs the tests and stops the cluster if one was started. Use it as
// os.Exit(harness.Main(m)) in TestMain.
func (h *Harness) Main(m *testing.M) int {
	code := m.Run()
	if h.cluster != nil {
		if err := h.cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Cluster returns the package's cluster, starting it on first use. The test is skipped under
// -short and fails if the cluster cannot start.
func (h *Harness) Cluster(t testing.TB) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("kube: needs a Kubernetes control plane; skipped with -short")
	}
	h.once.Do(func() { h.cluster, h.err = Start(context.Background(), h.opts) })
	if h.err != nil {
		t.Fatal(h.err)
	}
	return h.cluster
}

// Env returns a fresh namespace on the package's cluster, deleted when the test ends.
func (h *Harness) Env(t testing.TB) *Env {
	t.Helper()
	c := h.Cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env, err := c.NewEnv(ctx, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := env.Delete(ctx); err != nil {
			t.Errorf("kube: %v", err)
		}
	})
	return env
}

// Env is one test's namespace on a cluster.
type Env struct {
	*Cluster
	// Namespace is the test's own namespace.
	Namespace string
	// Kubeconfig is an admin kubeconfig whose current context defaults to Namespace (for helm,
	// kubectl and binaries under test).
	Kubeconfig string
}

var nonDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// NewEnv creates a namespace named after name (a test name) with a random suffix, waits for
// its default ServiceAccount and writes a kubeconfig for it.
func (c *Cluster) NewEnv(ctx context.Context, name string) (*Env, error) {
	base := strings.Trim(nonDNS.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if len(base) > 40 {
		base = strings.Trim(base[:40], "-")
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("kube: random suffix: %w", err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   base + "-" + hex.EncodeToString(suffix),
		Labels: map[string]string{"fleet.denis.io/e2e": "true"},
	}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("kube: create namespace %s: %w", ns.Name, err)
	}
	env := &Env{Cluster: c, Namespace: ns.Name}
	// Pods need the namespace's default ServiceAccount (made by the serviceaccount controller).
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return nil, fmt.Errorf("kube: default ServiceAccount in %s: %w", ns.Name, err)
	}
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kube: load %s: %w", c.Kubeconfig, err)
	}
	kc.Contexts[kc.CurrentContext].Namespace = ns.Name
	env.Kubeconfig = filepath.Join(c.Dir, "kubeconfig-"+ns.Name)
	if err := clientcmd.WriteToFile(*kc, env.Kubeconfig); err != nil {
		return nil, fmt.Errorf("kube: write %s: %w", env.Kubeconfig, err)
	}
	return env, nil
}

// Delete deletes the namespace (without waiting for its contents to go) and its kubeconfig.
func (e *Env) Delete(ctx context.Context) error {
	_ = os.Remove(e.Kubeconfig)
	err := e.Client.CoreV1().Namespaces().Delete(ctx, e.Namespace, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", e.Namespace, err)
	}
	return nil
}

// ServiceAccountConfig returns a rest.Config and a kubeconfig file that authenticate as the
// ServiceAccount sa of the test's namespace with a fresh token (TokenRequest, valid for an
// hour), so that a test can run code with exactly the rights its RBAC objects grant.
func (e *Env) ServiceAccountConfig(ctx context.Context, sa string) (*rest.Config, string, error) {
	exp := int64(3600)
	tr, err := e.Client.CoreV1().ServiceAccounts(e.Namespace).CreateToken(ctx, sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}},
		metav1.CreateOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("kube: token for %s/%s: %w", e.Namespace, sa, err)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = tr.Status.Token
	cfg.QPS, cfg.Burst = e.Config.QPS, e.Config.Burst

	kc := clientcmdapi.NewConfig()
	kc.Clusters["e2e"] = &clientcmdapi.Cluster{Server: e.Config.Host, CertificateAuthority: e.Config.CAFile}
	kc.AuthInfos[sa] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts[sa] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: sa, Namespace: e.Namespace}
	kc.CurrentContext = sa
	path := filepath.Join(e.Dir, "kubeconfig-"+e.Namespace+"-sa-"+sa)
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return nil, "", fmt.Errorf("kube: write %s: %w", path, err)
	}
	return cfg, path, nil
}

// ClientFor returns a clientset for cfg (e.g. from ServiceAccountConfig).
func ClientFor(cfg *rest.Config) (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	return cs, nil
}

// WaitPodsRunning waits until at least n pods matching selector in the namespace are Running
// and Ready (kwok makes them so), and returns them.
func (e *Env) WaitPodsRunning(ctx context.Context, selector string, n int) ([]corev1.Pod, error) {
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("kube: selector %q: %w", selector, err)
	}
	var running []corev1.Pod
	var last string
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		pods, err := e.Client.CoreV1().Pods(e.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return false, err
		}
		running = running[:0]
		phases := map[corev1.PodPhase]int{}
		for _, p := range pods.Items {
			phases[p.Status.Phase]++
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && PodReady(&p) {
				running = append(running, p)
			}
		}
		last = fmt.Sprintf("%d running+ready of %d wanted; phases %v", len(running), n, phases)
		return len(running) >= n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("kube: pods %q in %s: %w (%s)", selector, e.Namespace, err, last)
	}
	return running, nil
}

// PodReady reports whether the pod's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
