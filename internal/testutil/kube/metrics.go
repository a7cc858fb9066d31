package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// The fake serves metrics.k8s.io/v1beta1 the way metrics-server does, behind the real
// apiserver's aggregator: an ExternalName Service kube-system/fleet-fake-metrics pointing at
// localhost:<port> and an APIService v1beta1.metrics.k8s.io with insecureSkipTLSVerify (see
// ../shared/docs/k8s-e2e.md §3).
const (
	metricsGroupVersion = "metrics.k8s.io/v1beta1"
	metricsServiceName  = "fleet-fake-metrics"
	metricsAPIService   = "v1beta1.metrics.k8s.io"
	fakeMemoryUsage     = "32Mi"
)

var apiServiceGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// FakeMetrics is an in-test metrics.k8s.io server. A pod's CPU usage is what SetPodCPU set,
// else what SetNamespaceCPU set for its namespace; a pod with neither has no metrics (as a
// pod metrics-server has not scraped yet). Only Running pods are reported. The whole usage
// is reported on the pod's first container; every container reports 32Mi of memory.
type FakeMetrics struct {
	client kubernetes.Interface
	dyn    dynamic.Interface
	srv    *httptest.Server

	mu    sync.Mutex
	pods  map[string]resource.Quantity // "ns/name" → CPU
	nsCPU map[string]resource.Quantity
}

// Metrics returns the cluster's fake metrics.k8s.io API, registering it on first use (one
// per cluster: the APIService is cluster-scoped). It is ready when Metrics returns: a List
// through the apiserver answers.
func (c *Cluster) Metrics(ctx context.Context) (*FakeMetrics, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.metrics != nil {
		return c.metrics, nil
	}
	m, err := startFakeMetrics(ctx, c)
	if err != nil {
		return nil, err
	}
	c.metrics = m
	return m, nil
}

// SetPodCPU sets the CPU usage reported for one pod.
func (m *FakeMetrics) SetPodCPU(namespace, pod string, cpu resource.Quantity) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pods[namespace+"/"+pod] = cpu
}

// SetNamespaceCPU sets the CPU usage reported for every Running pod of the namespace that has
// no value of its own.
func (m *FakeMetrics) SetNamespaceCPU(namespace string, cpu resource.Quantity) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nsCPU[namespace] = cpu
}

func (m *FakeMetrics) cpuOf(p *corev1.Pod) (resource.Quantity, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q, ok := m.pods[p.Namespace+"/"+p.Name]; ok {
		return q, true
	}
	q, ok := m.nsCPU[p.Namespace]
	return q, ok
}

func startFakeMetrics(ctx context.Context, c *Cluster) (*FakeMetrics, error) {
	m := &FakeMetrics{
		client: c.Client,
		dyn:    c.Dynamic,
		pods:   map[string]resource.Quantity{},
		nsCPU:  map[string]resource.Quantity{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /apis/metrics.k8s.io/v1beta1", m.discovery)
	mux.HandleFunc("GET /apis/metrics.k8s.io/v1beta1/pods", m.listPods)
	mux.HandleFunc("GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", m.listPods)
	mux.HandleFunc("GET /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}", m.getPod)
	mux.HandleFunc("GET /apis/metrics.k8s.io/v1beta1/nodes", m.listNodes)
	m.srv = httptest.NewUnstartedServer(mux)
	m.srv.Config.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError) // the aggregator's probes
	m.srv.StartTLS()
	_, portStr, err := net.SplitHostPort(m.srv.Listener.Addr().String())
	if err != nil {
		m.srv.Close()
		return nil, fmt.Errorf("kube: fake metrics address: %w", err)
	}
	port, _ := strconv.Atoi(portStr)
	if err := m.register(ctx, c, int32(port)); err != nil {
		m.srv.Close()
		return nil, err
	}
	return m, nil
}

func (m *FakeMetrics) register(ctx context.Context, c *Cluster, port int32) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: metricsServiceName, Namespace: "kube-system"},
		Spec: corev1.ServiceSpec{
			Type:         corev1.ServiceTypeExternalName,
			ExternalName: "localhost",
			Ports:        []corev1.ServicePort{{Name: "https", Port: port}},
		},
	}
	if _, err := c.Client.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kube: fake metrics Service: %w", err)
	}
	apiSvc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": metricsAPIService},
		"spec": map[string]any{
			"group":                 "metrics.k8s.io",
			"version":               "v1beta1",
			"insecureSkipTLSVerify": true,
			"groupPriorityMinimum":  int64(100),
			"versionPriority":       int64(100),
			"service":               map[string]any{"namespace": "kube-system", "name": metricsServiceName, "port": int64(port)},
		},
	}}
	if _, err := c.Dynamic.Resource(apiServiceGVR).Create(ctx, apiSvc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("kube: fake metrics APIService: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last error
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		last = c.Client.CoreV1().RESTClient().Get().AbsPath("/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods").Do(ctx).Error()
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("kube: fake metrics API not reachable through the aggregator: %w (last: %v)", err, last)
	}
	return nil
}

// close unregisters the APIService (so namespace deletion does not trip on an unavailable
// group) and stops the server.
func (m *FakeMetrics) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.dyn.Resource(apiServiceGVR).Delete(ctx, metricsAPIService, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		slog.Warn("kube: delete fake metrics APIService", "err", err)
	}
	m.srv.Close()
}

// Wire types of metrics.k8s.io/v1beta1 (k8s.io/metrics), kept local to avoid the dependency.
type podMetrics struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Timestamp         metav1.Time        `json:"timestamp"`
	Window            metav1.Duration    `json:"window"`
	Containers        []containerMetrics `json:"containers"`
}

type containerMetrics struct {
	Name  string              `json:"name"`
	Usage corev1.ResourceList `json:"usage"`
}

type podMetricsList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []podMetrics `json:"items"`
}

type nodeMetrics struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Timestamp         metav1.Time         `json:"timestamp"`
	Window            metav1.Duration     `json:"window"`
	Usage             corev1.ResourceList `json:"usage"`
}

type nodeMetricsList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []nodeMetrics `json:"items"`
}

func (m *FakeMetrics) discovery(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, metav1.APIResourceList{
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: metricsGroupVersion,
		APIResources: []metav1.APIResource{
			{Name: "nodes", Kind: "NodeMetrics", Namespaced: false, Verbs: metav1.Verbs{"get", "list"}},
			{Name: "pods", Kind: "PodMetrics", Namespaced: true, Verbs: metav1.Verbs{"get", "list"}},
		},
	})
}

func (m *FakeMetrics) podMetrics(p *corev1.Pod, now metav1.Time) (podMetrics, bool) {
	cpu, ok := m.cpuOf(p)
	if !ok || p.Status.Phase != corev1.PodRunning || len(p.Spec.Containers) == 0 {
		return podMetrics{}, false
	}
	pm := podMetrics{
		TypeMeta:   metav1.TypeMeta{Kind: "PodMetrics", APIVersion: metricsGroupVersion},
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, CreationTimestamp: now},
		Timestamp:  now,
		Window:     metav1.Duration{Duration: 15 * time.Second},
	}
	for i, c := range p.Spec.Containers {
		use := resource.MustParse("0")
		if i == 0 {
			use = cpu
		}
		pm.Containers = append(pm.Containers, containerMetrics{Name: c.Name, Usage: corev1.ResourceList{
			corev1.ResourceCPU:    use,
			corev1.ResourceMemory: resource.MustParse(fakeMemoryUsage),
		}})
	}
	return pm, true
}

func (m *FakeMetrics) listPods(w http.ResponseWriter, r *http.Request) {
	pods, err := m.client.CoreV1().Pods(r.PathValue("ns")).List(r.Context(),
		metav1.ListOptions{LabelSelector: r.URL.Query().Get("labelSelector")})
	if err != nil {
		writeStatus(w, err)
		return
	}
	now := metav1.Now()
	out := podMetricsList{TypeMeta: metav1.TypeMeta{Kind: "PodMetricsList", APIVersion: metricsGroupVersion}, Items: []podMetrics{}}
	for i := range pods.Items {
		if pm, ok := m.podMetrics(&pods.Items[i], now); ok {
			out.Items = append(out.Items, pm)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (m *FakeMetrics) getPod(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	notFound := apierrors.NewNotFound(schema.GroupResource{Group: "metrics.k8s.io", Resource: "pods"}, name)
	p, err := m.client.CoreV1().Pods(ns).Get(r.Context(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		writeStatus(w, notFound)
		return
	}
	if err != nil {
		writeStatus(w, err)
		return
	}
	pm, ok := m.podMetrics(p, metav1.Now())
	if !ok {
		writeStatus(w, notFound)
		return
	}
	writeJSON(w, http.StatusOK, pm)
}

func (m *FakeMetrics) listNodes(w http.ResponseWriter, r *http.Request) {
	nodes, err := m.client.CoreV1().Nodes().List(r.Context(), metav1.ListOptions{LabelSelector: r.URL.Query().Get("labelSelector")})
	if err != nil {
		writeStatus(w, err)
		return
	}
	now := metav1.Now()
	out := nodeMetricsList{TypeMeta: metav1.TypeMeta{Kind: "NodeMetricsList", APIVersion: metricsGroupVersion}, Items: []nodeMetrics{}}
	for _, n := range nodes.Items {
		out.Items = append(out.Items, nodeMetrics{
			TypeMeta:   metav1.TypeMeta{Kind: "NodeMetrics", APIVersion: metricsGroupVersion},
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.Labels, CreationTimestamp: now},
			Timestamp:  now,
			Window:     metav1.Duration{Duration: 15 * time.Second},
			Usage:      corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("0"), corev1.ResourceMemory: resource.MustParse("0")},
		})
	}
	writeJSON(w, http.StatusOK, out)
}

func writeStatus(w http.ResponseWriter, err error) {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		st = apierrors.NewInternalError(err)
	}
	status := st.Status()
	status.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	writeJSON(w, int(status.Code), status)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		slog.Debug("kube: fake metrics: write response", "err", err)
	}
}
