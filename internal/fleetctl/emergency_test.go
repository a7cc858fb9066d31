package fleetctl

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"denis.io/fleet/internal/autoscale"
	"denis.io/fleet/internal/testutil/kube"
)

// kubeHarness is this package's Kubernetes control plane (kwok runs the pods), started by
// the first test that asks for it.
var kubeHarness = kube.NewHarness(kube.Options{})

// pdSink is a stand-in for PagerDuty's Events API: it records every event and answers with
// the status codes queued in codes (then 202).
type pdSink struct {
	mu     sync.Mutex
	events []pdEvent
	codes  []int
	srv    *httptest.Server
}

func newPDSink(t *testing.T) *pdSink {
	s := &pdSink{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev pdEvent
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || dec.Decode(&ev) != nil {
			http.Error(w, "bad event: "+string(body), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.events = append(s.events, ev)
		code := http.StatusAccepted
		if len(s.codes) > 0 {
			code, s.codes = s.codes[0], s.codes[1:]
		}
		s.mu.Unlock()
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"status":"success","message":"Event processed","dedup_key":"`+ev.DedupKey+`"}`)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *pdSink) take() []pdEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.events
	s.events = nil
	return out
}

func (s *pdSink) answer(codes ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes = codes
}

// workerDeployment is a Deployment labelled as the chart labels a pool's.
func workerDeployment(name, release, component, pool string, replicas int32) *appsv1.Deployment {
	sel := map[string]string{"app.kubernetes.io/instance": release, "app.kubernetes.io/component": component, "x-name": name}
	lbl := map[string]string{"app.kubernetes.io/instance": release, "app.kubernetes.io/component": component}
	if pool != "" {
		lbl[labelPool] = pool
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					Containers:                    []corev1.Container{{Name: "worker", Image: "fleet:e2e"}},
				},
			},
		},
	}
}

// kubeRun runs fleetctl with env (KEY=VALUE) as its whole environment.
func kubeRun(ctx context.Context, env []string, args ...string) runResult {
	var out, errb syncBuffer
	code := Main(ctx, args, IO{In: strings.NewReader(""), Out: &out, Err: &errb, Env: env})
	return runResult{code, out.String(), errb.String()}
}

// TestEmergencyStopAndResume runs emergency-stop and resume against a real API server, with
// the ServiceAccount rights the runbook documents and nothing more, and PagerDuty replaced
// by a local server.
func TestEmergencyStopAndResume(t *testing.T) {
	env := kubeHarness.Env(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	ns := env.Namespace
	deps := env.Client.AppsV1().Deployments(ns)
	for _, d := range []*appsv1.Deployment{
		workerDeployment("rel-fleet-crews", "rel", "worker", "crews", 2),
		workerDeployment("rel-fleet-materializers", "rel", "worker", "materializers", 1),
		workerDeployment("other-fleet-crews", "other", "worker", "crews", 1),
		workerDeployment("rel-fleet-autoscaler", "rel", "autoscaler", "", 1),
	} {
		if _, err := deps.Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := env.WaitPodsRunning(ctx, "app.kubernetes.io/component=worker", 4); err != nil {
		t.Fatal(err)
	}

	// The operator's rights, exactly as docs/helm.md lists them.
	_, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "oncall"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "fleet-emergency-stop"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "patch"}},
			{APIGroups: []string{"apps"}, Resources: []string{"deployments/scale"}, Verbs: []string{"get", "update"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		},
	}
	if _, err := env.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "oncall"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "oncall", Namespace: ns}},
	}
	if _, err := env.Client.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, kubeconfig, err := env.ServiceAccountConfig(ctx, "oncall")
	if err != nil {
		t.Fatal(err)
	}

	pd := newPDSink(t)
	penv := []string{"KUBECONFIG=" + kubeconfig, "PAGERDUTY_WEBHOOK=" + pd.srv.URL + "/v2/enqueue", "PAGERDUTY_ROUTING_KEY=R0UT1NG", "USER=oncall-human"}
	nsArgs := []string{"-n", ns}

	get := func(name string) *appsv1.Deployment {
		t.Helper()
		d, err := deps.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	untouched := func(names ...string) {
		t.Helper()
		for _, n := range names {
			d := get(n)
			if _, ok := d.Annotations[autoscale.AnnotationPaused]; ok || *d.Spec.Replicas != 1 {
				t.Errorf("%s was touched: replicas %d, annotations %v", n, *d.Spec.Replicas, d.Annotations)
			}
		}
	}

	t.Run("stop one pool of a release", func(t *testing.T) {
		r := kubeRun(ctx, penv, append([]string{"emergency-stop", "crews", "--release", "rel", "--reason", "bad deploy 1.4.2", "--wait", "1m"}, nsArgs...)...)
		if r.code != 0 {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
		}
		for _, want := range []string{"rel-fleet-crews", "paused", "no pod left", "PagerDuty notified."} {
			if !strings.Contains(r.out, want) {
				t.Errorf("output lacks %q:\n%s", want, r.out)
			}
		}
		d := get("rel-fleet-crews")
		a := d.Annotations
		if *d.Spec.Replicas != 0 || a[autoscale.AnnotationPaused] != "true" || a[autoscale.AnnotationPausedReason] != "bad deploy 1.4.2" ||
			a[AnnotationPausedReplicas] != "2" || !strings.HasPrefix(a[AnnotationPausedBy], "oncall-human@") || a[AnnotationPausedAt] == "" {
			t.Errorf("after the stop: replicas %d, annotations %v", *d.Spec.Replicas, a)
		}
		pods, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "x-name=rel-fleet-crews"})
		if err != nil || len(pods.Items) != 0 {
			t.Errorf("pods left after --wait: %v %d", err, len(pods.Items))
		}
		untouched("other-fleet-crews", "rel-fleet-materializers", "rel-fleet-autoscaler")
		evs := pd.take()
		if len(evs) != 1 {
			t.Fatalf("PagerDuty got %d events, want 1: %+v", len(evs), evs)
		}
		ev := evs[0]
		if ev.EventAction != "trigger" || ev.RoutingKey != "R0UT1NG" || ev.DedupKey == "" || ev.Payload == nil {
			t.Fatalf("event = %+v", ev)
		}
		p := ev.Payload
		if p.Severity != "critical" || !strings.HasSuffix(p.Source, "/"+ns) || p.Group != ns || p.Class != "emergency-stop" ||
			!strings.Contains(p.Summary, "rel-fleet-crews") || !strings.Contains(p.Summary, "bad deploy 1.4.2") {
			t.Errorf("payload = %+v", p)
		}
		if _, err := time.Parse(time.RFC3339, p.Timestamp); err != nil {
			t.Errorf("timestamp %q: %v", p.Timestamp, err)
		}
	})

	t.Run("pool in two releases is ambiguous", func(t *testing.T) {
		r := kubeRun(ctx, penv, append([]string{"emergency-stop", "crews"}, nsArgs...)...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, "several releases") {
			t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
		}
		if len(pd.take()) != 0 {
			t.Error("an event was sent although nothing was stopped")
		}
	})

	t.Run("stop all of a release, JSON", func(t *testing.T) {
		r := kubeRun(ctx, penv, append([]string{"emergency-stop", "--all", "--release", "rel", "-o", "json"}, nsArgs...)...)
		if r.code != 0 {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
		}
		rows := jsonOut[[]poolRow](t, r)
		want := map[string]int32{"rel-fleet-crews": 2, "rel-fleet-materializers": 1} // crews: its count before the first stop
		if len(rows) != len(want) {
			t.Fatalf("rows = %+v", rows)
		}
		for _, row := range rows {
			if b, ok := want[row.Deployment]; !ok || row.Before != b || row.Replicas != 0 || !row.Paused || row.Error != "" {
				t.Errorf("row = %+v", row)
			}
		}
		if a := get("rel-fleet-crews").Annotations; a[AnnotationPausedReplicas] != "2" {
			t.Errorf("a second stop overwrote the recorded count: %v", a)
		}
		untouched("other-fleet-crews", "rel-fleet-autoscaler")
		evs := pd.take()
		if len(evs) != 1 || !strings.Contains(evs[0].Payload.Summary, "rel-fleet-materializers") {
			t.Errorf("events = %+v", evs)
		}
	})

	t.Run("resume one: the event stays open while a pool is stopped", func(t *testing.T) {
		r := kubeRun(ctx, penv, append([]string{"resume", "crews", "--release", "rel"}, nsArgs...)...)
		if r.code != 0 || !strings.Contains(r.out, "autoscaler ramps the pools back") {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
		}
		d := get("rel-fleet-crews")
		for k := range d.Annotations {
			if strings.HasPrefix(k, "fleet.denis.io/paused") {
				t.Errorf("annotation %s left after resume", k)
			}
		}
		if *d.Spec.Replicas != 0 {
			t.Errorf("resume without --restore scaled to %d", *d.Spec.Replicas)
		}
		if evs := pd.take(); len(evs) != 0 {
			t.Errorf("resolved while materializers is still stopped: %+v", evs)
		}
	})

	t.Run("resume all with restore resolves the event", func(t *testing.T) {
		r := kubeRun(ctx, penv, append([]string{"resume", "--all", "--release", "rel", "--restore", "-o", "json"}, nsArgs...)...)
		if r.code != 0 {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
		}
		for _, row := range jsonOut[[]poolRow](t, r) {
			switch row.Deployment {
			case "rel-fleet-materializers":
				if row.Replicas != 1 || row.Note != "restored" {
					t.Errorf("row = %+v", row)
				}
			case "rel-fleet-crews":
				if !strings.HasPrefix(row.Note, "not restored") {
					t.Errorf("row = %+v", row)
				}
			default:
				t.Errorf("unexpected row %+v", row)
			}
		}
		if *get("rel-fleet-materializers").Spec.Replicas != 1 {
			t.Error("materializers not restored")
		}
		if _, err := env.WaitPodsRunning(ctx, "x-name=rel-fleet-materializers", 1); err != nil {
			t.Error(err)
		}
		evs := pd.take()
		if len(evs) != 1 || evs[0].EventAction != "resolve" || evs[0].RoutingKey != "R0UT1NG" || evs[0].Payload != nil {
			t.Fatalf("events = %+v", evs)
		}
	})

	t.Run("by Deployment name; a failing webhook is retried and reported", func(t *testing.T) {
		pd.answer(http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable)
		r := kubeRun(ctx, penv, append([]string{"emergency-stop", "other-fleet-crews"}, nsArgs...)...)
		if r.code != ExitFailure || !strings.Contains(r.stderr, "the pools are stopped, but the PagerDuty notification failed") || !strings.Contains(r.stderr, "503") {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
		}
		if n := len(pd.take()); n != 3 {
			t.Errorf("%d attempts, want 3", n)
		}
		if d := get("other-fleet-crews"); *d.Spec.Replicas != 0 || d.Annotations[autoscale.AnnotationPaused] != "true" {
			t.Errorf("not stopped: %d %v", *d.Spec.Replicas, d.Annotations)
		}
		pd.answer(http.StatusBadRequest)
		r = kubeRun(ctx, penv, append([]string{"resume", "other-fleet-crews", "--restore"}, nsArgs...)...)
		if r.code != ExitFailure || !strings.Contains(r.stderr, "resolving the PagerDuty event failed") {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.stderr)
		}
		if n := len(pd.take()); n != 1 {
			t.Errorf("a 400 was retried: %d attempts", n)
		}
		if *get("other-fleet-crews").Spec.Replicas != 1 {
			t.Error("other-fleet-crews not restored")
		}
	})

	noHook := []string{"KUBECONFIG=" + kubeconfig}
	bad := filepath.Join(t.TempDir(), "unreachable")
	if err := os.WriteFile(bad, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		env    []string
		args   []string
		code   int
		stderr string
	}{
		{"no pool", noHook, []string{"emergency-stop", "-n", ns}, ExitUsage, "which pools"},
		{"pools and --all", noHook, []string{"emergency-stop", "crews", "--all", "-n", ns}, ExitUsage, "not both"},
		{"unknown pool", noHook, []string{"emergency-stop", "nosuchpool", "-n", ns}, ExitFailure, `no pool or Deployment "nosuchpool"`},
		{"no worker Deployment", noHook, []string{"resume", "--all", "--release", "nosuchrelease", "-n", ns}, ExitFailure, "no worker Deployment"},
		{"bad webhook", []string{"KUBECONFIG=" + kubeconfig, "PAGERDUTY_WEBHOOK=ftp://x"}, []string{"emergency-stop", "crews", "-n", ns}, ExitUsage, "PAGERDUTY_WEBHOOK"},
		{"no kubeconfig", nil, []string{"emergency-stop", "crews"}, ExitUsage, "kubernetes config"},
		{"API server unreachable", nil, []string{"emergency-stop", "crews", "--kubeconfig", bad, "-n", ns}, ExitUnavailable, "127.0.0.1:1"},
		{"forbidden elsewhere", noHook, []string{"emergency-stop", "--all", "-n", "default"}, ExitFailure, "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := kubeRun(ctx, tt.env, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", r.code, tt.code, r.stderr, tt.stderr)
			}
		})
	}
	// Nothing of the above changed anything.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := deps.List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, d := range l.Items {
			if _, ok := d.Annotations[autoscale.AnnotationPaused]; ok {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("a Deployment is still paused: %v", err)
	}
}
