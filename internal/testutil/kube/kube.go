// Package kube is the Kubernetes end-to-end test harness: a real control plane on loopback
// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with a fake node, so
// pods become Running without a kubelet), started once per test package, a namespace and a
// kubeconfig per test, service-account credentials for RBAC tests, and a fake metrics.k8s.io
// aggregated API whose pod CPU the tests set exactly.
//
// The binaries are built from the Go module proxy by scripts/k8s-tools.sh into a cache outside
// the repo (~10 min once per machine, seconds afterwards); scripts/start-kube.sh starts and
// stops the processes. Use it from a test package like this:
//
//	var harness = kube.NewHarness(kube.Options{})
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		env := harness.Env(t) // starts the cluster on first use; own namespace, removed afterwards
//		_, err := env.Client.AppsV1().Deployments(env.Namespace).Create(...)
//	}
//
// Tests that need the cluster are skipped under -short.
package kube

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Options configure a cluster.
type Options struct {
	// Dir is the state directory (PID files, logs, certificates, etcd data, kubeconfigs).
	// Empty: a new temporary directory, removed by Stop.
	Dir string
	// Nodes is the number of kwok fake nodes (default 1).
	Nodes int
	// StartTimeout bounds Start, including the node becoming Ready (default 3 min).
	StartTimeout time.Duration
	// Logger receives progress lines (default slog.Default()).
	Logger *slog.Logger
}

// Cluster is a running control plane.
type Cluster struct {
	// Dir holds the logs (etcd.log, apiserver.log, kcm.log, sched.log, kwok.log).
	Dir string
	// BinDir holds the binaries, helm included.
	BinDir string
	// Kubeconfig is the admin kubeconfig (context "e2e", user system:masters).
	Kubeconfig string
	// Config is the admin rest.Config; copy it before changing it (rest.CopyConfig).
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface

	root    string
	ownDir  bool
	log     *slog.Logger
	mu      sync.Mutex
	metrics *FakeMetrics
	stopped bool
}

// RepoRoot returns the root of the denis.io/fleet module, found from the working directory
// (a test's working directory is its package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("kube: working directory: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module denis.io/fleet\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("kube: module denis.io/fleet not found above the working directory")
		}
		dir = parent
	}
}

// Tools makes sure the Kubernetes binaries and helm are built (scripts/k8s-tools.sh: a cold
// build takes about 10 minutes on 2 cores, a cached one seconds) and returns their directory.
func Tools(ctx context.Context) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return tools(ctx, root)
}

func tools(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "k8s-tools.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kube: scripts/k8s-tools.sh: %w: %s", err, tail(stderr.String(), 20))
	}
	dir := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		return "", fmt.Errorf("kube: binaries missing after scripts/k8s-tools.sh: %w", err)
	}
	return dir, nil
}

// Start builds the binaries if needed, starts the control plane and waits until the API
// server answers and every kwok node is Ready and schedulable. The processes are also stopped
// when this process exits without calling Stop (a watchdog in start-kube.sh).
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes <= 0 {
		opts.Nodes = 1
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 3 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	bin, err := tools(ctx, root)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: opts.Dir, BinDir: bin, root: root, log: opts.Logger}
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "fleet-kube-"); err != nil {
			return nil, fmt.Errorf("kube: state dir: %w", err)
		}
		c.ownDir = true
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	t0 := time.Now()
	// start-kube.sh picks free ports at random; another cluster starting at the same moment
	// (test packages run in parallel) may take one first. Such a start is retried.
	var out []byte
	for attempt := 1; ; attempt++ {
		cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "start-kube.sh"), "start")
		cmd.Env = append(os.Environ(),
			"D="+c.Dir, "BIN="+bin, fmt.Sprintf("WATCH_PID=%d", os.Getpid()), fmt.Sprintf("KWOK_NODES=%d", opts.Nodes))
		if c.ownDir {
			cmd.Env = append(cmd.Env, "REMOVE_ON_EXIT=1")
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err = cmd.Output()
		if err == nil {
			break
		}
		c.stopProcesses()
		if attempt < 4 && ctx.Err() == nil && strings.Contains(stderr.String(), "address already in use") {
			c.log.Warn("kube: a port was taken while starting; starting again on new ports", "attempt", attempt)
			if c.ownDir {
				_ = os.RemoveAll(c.Dir)
			}
			if err := os.MkdirAll(c.Dir, 0o700); err != nil {
				return nil, fmt.Errorf("kube: state dir: %w", err)
			}
			continue
		}
		return nil, fmt.Errorf("kube: start-kube.sh: %w: %s", err, tail(stderr.String(), 20))
	}
	c.Kubeconfig = kubeconfigFrom(string(out))
	if c.Kubeconfig == "" {
		c.stopProcesses()
		return nil, fmt.Errorf("kube: start-kube.sh printed no KUBECONFIG: %q", out)
	}
	if err := c.connect(); err != nil {
		c.stopProcesses()
		return nil, err
	}
	if err := c.waitNodes(ctx, opts.Nodes); err != nil {
		c.stopProcesses()
		return nil, fmt.Errorf("%w (kwok log: %s)", err, c.LogTail("kwok", 5))
	}
	c.log.Info("kube: cluster ready", "dir", c.Dir, "elapsed", time.Since(t0).Round(time.Millisecond))
	return c, nil
}

func kubeconfigFrom(out string) string {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "KUBECONFIG="); ok {
			return v
		}
	}
	return ""
}

func (c *Cluster) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kube: load %s: %w", c.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	c.Config = cfg
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return fmt.Errorf("kube: client: %w", err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return fmt.Errorf("kube: dynamic client: %w", err)
	}
	return nil
}

// waitNodes waits for n kwok nodes that are Ready and carry no NoSchedule taint (the
// node-lifecycle controller removes the not-ready taint once kwok reports Ready).
func (c *Cluster) waitNodes(ctx context.Context, n int) error {
	var last string
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "type=kwok"})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		ready := 0
		for _, node := range nodes.Items {
			if nodeSchedulable(&node) {
				ready++
			}
		}
		last = fmt.Sprintf("%d of %d nodes ready", ready, n)
		return ready >= n, nil
	})
	if err != nil {
		return fmt.Errorf("kube: waiting for kwok nodes: %w (%s)", err, last)
	}
	return nil
}

func nodeSchedulable(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return false
		}
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Helm returns the path of the helm binary built with the cluster's tools.
func (c *Cluster) Helm() string { return filepath.Join(c.BinDir, "helm") }

// LogTail returns the last n lines of a component's log (etcd, apiserver, kcm, sched, kwok).
func (c *Cluster) LogTail(component string, n int) string {
	data, err := os.ReadFile(filepath.Join(c.Dir, component+".log"))
	if err != nil {
		return err.Error()
	}
	return tail(string(data), n)
}

// Stop stops the fake metrics server and every process, and removes the state directory if
// Start created it. It is safe to call more than once.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	m := c.metrics
	c.mu.Unlock()
	if m != nil {
		m.close()
	}
	return c.stopProcesses()
}

func (c *Cluster) stopProcesses() error {
	cmd := exec.Command(filepath.Join(c.root, "scripts", "start-kube.sh"), "stop")
	keep := "1"
	if c.ownDir {
		keep = "0"
	}
	cmd.Env = append(os.Environ(), "D="+c.Dir, "KEEP="+keep)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kube: start-kube.sh stop: %w: %s", err, out)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
