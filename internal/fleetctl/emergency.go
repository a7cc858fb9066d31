package fleetctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"denis.io/fleet/internal/autoscale"
)

// Annotations the emergency stop writes next to autoscale.AnnotationPaused and
// autoscale.AnnotationPausedReason, and resume removes with them.
const (
	// AnnotationPausedReplicas is the replica count the Deployment had before the first stop
	// (what `fleetctl resume --restore` scales back to).
	AnnotationPausedReplicas = "fleet.denis.io/paused-replicas"
	// AnnotationPausedAt is when the stop was set (RFC 3339).
	AnnotationPausedAt = "fleet.denis.io/paused-at"
	// AnnotationPausedBy is who set it (user@host of the fleetctl that did).
	AnnotationPausedBy = "fleet.denis.io/paused-by"
)

// Labels of the chart's worker Deployments.
const (
	labelComponent = "app.kubernetes.io/component"
	labelInstance  = "app.kubernetes.io/instance"
	labelPool      = "fleet.denis.io/pool"
)

const emergencyUsage = `Usage: fleetctl emergency-stop POOL... | --all [options]

Stops worker pools now and keeps them stopped. For each pool's Deployment:
  1. annotates it fleet.denis.io/paused: "true" (with the reason, the time, who, and the
     replica count it had): the fleet autoscaler holds it at 0 while the annotation is there,
     and helm upgrade leaves the annotation alone;
  2. scales it to 0 through the /scale subresource;
then, when $PAGERDUTY_WEBHOOK is set, POSTs a PagerDuty Events v2 "trigger" event there
(routing_key from $PAGERDUTY_ROUTING_KEY when set; dedup key per namespace, which
'fleetctl resume' resolves once no pool of the namespace is stopped).

Workers that stop hand their unfinished messages back to the broker: nothing is lost, the
queues grow until 'fleetctl resume'.

POOL is a pool name (the chart's fleet.denis.io/pool label; give --release when several
releases share the namespace) or a Deployment name; --all stops every worker Deployment of
the namespace (of --release only, when given).

Needs: deployments get/list/patch and deployments/scale get/update in the namespace (pods
list with --wait).

Exit status: 0 stopped (and notified); 1 a pool could not be stopped, or the notification
failed (the stop itself stands); 64 bad command line; 69 the API server is unreachable.
`

const resumeUsage = `Usage: fleetctl resume POOL... | --all [options]

Ends an emergency stop: removes the fleet.denis.io/paused annotations from the pools'
Deployments. The fleet autoscaler then ramps each pool back gradually from the live backlog.
Without the fleet autoscaler (autoscaling.mode none, hpa or keda), --restore scales each
Deployment back to the replica count it had before the stop.

When $PAGERDUTY_WEBHOOK is set and no worker Deployment of the namespace is stopped any
more, the emergency-stop event is resolved.
`

// kubeOptions are the options of the commands that talk to Kubernetes.
type kubeOptions struct {
	kubeconfig string
	context    string
	namespace  string
	release    string
	all        bool
}

func (k *kubeOptions) addTo(fs *pflag.FlagSet) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster config)")
	fs.StringVar(&k.context, "context", "", "kubeconfig context (default: the current one)")
	fs.StringVarP(&k.namespace, "namespace", "n", "", "namespace of the pools (default: the context's, else \"default\")")
	fs.StringVar(&k.release, "release", "", "only the Deployments of this Helm release (label app.kubernetes.io/instance)")
	fs.BoolVar(&k.all, "all", false, "every worker Deployment of the namespace (or of --release)")
}

// kubeSession is a client for one command.
type kubeSession struct {
	client    kubernetes.Interface
	namespace string
	server    string // the API server's host, to name the cluster in notifications
}

func (k *kubeOptions) connect(env map[string]string) (*kubeSession, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if v := env["KUBECONFIG"]; v != "" {
		rules.Precedence = filepath.SplitList(v)
	} else {
		rules.Precedence = nil
		if home := env["HOME"]; home != "" {
			rules.Precedence = []string{filepath.Join(home, ".kube", "config")}
		}
	}
	rules.ExplicitPath = k.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, usagef("kubernetes config: %v", err)
	}
	ns := k.namespace
	if ns == "" {
		if n, _, err := cc.Namespace(); err == nil && n != "" {
			ns = n
		} else {
			ns = "default"
		}
	}
	cfg.UserAgent = "fleetctl/" + Version
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, usagef("kubernetes client: %v", err)
	}
	server := cfg.Host
	if u, err := url.Parse(cfg.Host); err == nil && u.Host != "" {
		server = u.Host
	}
	return &kubeSession{client: cs, namespace: ns, server: server}, nil
}

// kubeErr classifies an API error: an unreachable server is exit 69.
func kubeErr(err error) error {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return unavailableError{err}
}

// workerSelector selects the chart's worker Deployments (of release, when given).
func workerSelector(release string, pool string) string {
	sel := labels.Set{labelComponent: "worker"}
	if release != "" {
		sel[labelInstance] = release
	}
	if pool != "" {
		sel[labelPool] = pool
	}
	s := sel.String()
	if pool == "" {
		s += "," + labelPool // only Deployments that are pools
	}
	return s
}

// targets resolves the command's arguments to Deployments.
func (s *kubeSession) targets(ctx context.Context, k *kubeOptions, names []string) ([]appsv1.Deployment, error) {
	deps := s.client.AppsV1().Deployments(s.namespace)
	if k.all {
		l, err := deps.List(ctx, metav1.ListOptions{LabelSelector: workerSelector(k.release, "")})
		if err != nil {
			return nil, kubeErr(fmt.Errorf("list worker Deployments in %s: %w", s.namespace, err))
		}
		if len(l.Items) == 0 {
			return nil, fmt.Errorf("no worker Deployment (label %s) in namespace %s", workerSelector(k.release, ""), s.namespace)
		}
		return l.Items, nil
	}
	var out []appsv1.Deployment
	seen := map[string]bool{}
	for _, name := range names {
		l, err := deps.List(ctx, metav1.ListOptions{LabelSelector: workerSelector(k.release, name)})
		if err != nil {
			return nil, kubeErr(fmt.Errorf("list the Deployments of pool %s in %s: %w", name, s.namespace, err))
		}
		found := l.Items
		if len(found) == 0 {
			d, err := deps.Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				return nil, fmt.Errorf("no pool or Deployment %q in namespace %s", name, s.namespace)
			case err != nil:
				return nil, kubeErr(fmt.Errorf("get Deployment %s/%s: %w", s.namespace, name, err))
			}
			found = []appsv1.Deployment{*d}
		}
		if len(found) > 1 {
			var ns []string
			for _, d := range found {
				ns = append(ns, d.Name)
			}
			return nil, usagef("pool %q is in several releases (%s): give --release or a Deployment name", name, strings.Join(ns, ", "))
		}
		if !seen[found[0].Name] {
			seen[found[0].Name] = true
			out = append(out, found[0])
		}
	}
	return out, nil
}

// poolRow is one Deployment in the output of emergency-stop and resume.
type poolRow struct {
	Deployment string `json:"deployment"`
	Pool       string `json:"pool,omitempty"`
	Before     int32  `json:"replicas_before"`
	Replicas   int32  `json:"replicas"`
	Paused     bool   `json:"paused"`
	Note       string `json:"note,omitempty"`
	Error      string `json:"error,omitempty"`
}

// emergencyCmd is `fleetctl emergency-stop` and `fleetctl resume`.
type emergencyCmd struct {
	g       *globals
	std     IO
	env     map[string]string
	k       kubeOptions
	reason  string
	wait    time.Duration
	restore bool
	now     func() time.Time
	http    *http.Client
}

func runEmergencyStop(ctx context.Context, g *globals, args []string, std IO) error {
	c := &emergencyCmd{g: g, std: std, env: g.env(std), now: time.Now, http: &http.Client{Timeout: 10 * time.Second}}
	fs := c.flagSet("fleetctl emergency-stop")
	fs.StringVar(&c.reason, "reason", "", "why: stored in the fleet.denis.io/paused-reason annotation and sent to PagerDuty")
	fs.DurationVar(&c.wait, "wait", 0, "also wait this long at most until the pools have no pod left")
	sess, names, err := c.parse(ctx, fs, args, emergencyUsage)
	if err != nil {
		return err
	}
	return c.stop(ctx, sess, names)
}

func runResume(ctx context.Context, g *globals, args []string, std IO) error {
	c := &emergencyCmd{g: g, std: std, env: g.env(std), now: time.Now, http: &http.Client{Timeout: 10 * time.Second}}
	fs := c.flagSet("fleetctl resume")
	fs.BoolVar(&c.restore, "restore", false, "also scale each Deployment back to the replica count it had before the stop (pools without the fleet autoscaler)")
	sess, names, err := c.parse(ctx, fs, args, resumeUsage)
	if err != nil {
		return err
	}
	return c.resume(ctx, sess, names)
}

func (c *emergencyCmd) flagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	c.k.addTo(fs)
	return fs
}

func (c *emergencyCmd) parse(ctx context.Context, fs *pflag.FlagSet, args []string, usage string) (*kubeSession, []string, error) {
	c.g.addTo(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(c.std.Out, "%s\nOptions:\n%s", usage, fs.FlagUsages())
			return nil, nil, err
		}
		return nil, nil, usagef("%s: %v", fs.Name(), err)
	}
	switch {
	case c.k.all && fs.NArg() > 0:
		return nil, nil, usagef("%s: give pools or --all, not both", fs.Name())
	case !c.k.all && fs.NArg() == 0:
		return nil, nil, usagef("%s: which pools? give their names or --all", fs.Name())
	case c.g.output != "table" && c.g.output != "json":
		return nil, nil, usagef("--output must be table or json, not %q", c.g.output)
	case c.wait < 0:
		return nil, nil, usagef("%s: --wait must not be negative", fs.Name())
	}
	if hook := c.env["PAGERDUTY_WEBHOOK"]; hook != "" {
		if u, err := url.Parse(hook); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, nil, usagef("$PAGERDUTY_WEBHOOK must be an http(s) URL")
		}
	}
	sess, err := c.k.connect(c.env)
	if err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return sess, fs.Args(), nil
}

// who names the operator: user@host.
func (c *emergencyCmd) who() string {
	user := c.env["USER"]
	if user == "" {
		user = strconv.Itoa(os.Getuid())
	}
	host, _ := os.Hostname()
	return user + "@" + host
}

func (c *emergencyCmd) stop(ctx context.Context, s *kubeSession, names []string) error {
	targets, err := s.targets(ctx, &c.k, names)
	if err != nil {
		return err
	}
	reason := c.reason
	if reason == "" {
		reason = "fleetctl emergency-stop"
	}
	var rows []poolRow
	failed := 0
	for _, d := range targets {
		row, err := c.stopOne(ctx, s, d, reason)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			row.Error = err.Error()
			failed++
		}
		rows = append(rows, row)
	}
	if c.wait > 0 && failed < len(rows) {
		c.waitGone(ctx, s, targets, rows)
	}
	var notifyErr error
	if hook := c.env["PAGERDUTY_WEBHOOK"]; hook != "" && failed < len(rows) {
		notifyErr = c.notify(ctx, hook, c.triggerEvent(s, rows, reason))
	}
	if err := c.print(rows); err != nil {
		return err
	}
	if notifyErr == nil && c.env["PAGERDUTY_WEBHOOK"] != "" && failed < len(rows) && c.g.output == "table" {
		fmt.Fprintln(c.std.Out, "PagerDuty notified.")
	}
	switch {
	case failed > 0:
		return partialError{fmt.Sprintf("emergency-stop: %d of %d Deployments not stopped (see the error column)", failed, len(rows))}
	case notifyErr != nil:
		return partialError{fmt.Sprintf("emergency-stop: the pools are stopped, but the PagerDuty notification failed: %v", notifyErr)}
	}
	return nil
}

// stopOne annotates d as paused, then scales it to 0.
func (c *emergencyCmd) stopOne(ctx context.Context, s *kubeSession, d appsv1.Deployment, reason string) (poolRow, error) {
	deps := s.client.AppsV1().Deployments(s.namespace)
	row := poolRow{Deployment: d.Name, Pool: d.Labels[labelPool]}
	sc, err := deps.GetScale(ctx, d.Name, metav1.GetOptions{})
	if err != nil {
		return row, fmt.Errorf("get scale: %w", err)
	}
	row.Before = sc.Spec.Replicas
	ann := map[string]any{
		autoscale.AnnotationPaused:       "true",
		autoscale.AnnotationPausedReason: reason,
		AnnotationPausedAt:               c.now().UTC().Format(time.RFC3339),
		AnnotationPausedBy:               c.who(),
	}
	// A second stop keeps the count from before the first.
	if _, ok := d.Annotations[AnnotationPausedReplicas]; !ok {
		ann[AnnotationPausedReplicas] = strconv.Itoa(int(sc.Spec.Replicas))
	} else if n, err := strconv.Atoi(d.Annotations[AnnotationPausedReplicas]); err == nil {
		row.Before = int32(n)
	}
	if err := patchAnnotations(ctx, s, d.Name, ann); err != nil {
		return row, err
	}
	row.Paused = true
	if err := scaleTo(ctx, s, d.Name, 0); err != nil {
		row.Replicas = sc.Spec.Replicas
		return row, err
	}
	row.Replicas = 0
	return row, nil
}

func patchAnnotations(ctx context.Context, s *kubeSession, name string, ann map[string]any) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return fmt.Errorf("annotate: %w", err)
	}
	if _, err := s.client.AppsV1().Deployments(s.namespace).Patch(ctx, name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: "fleetctl"}); err != nil {
		return fmt.Errorf("annotate: %w", err)
	}
	return nil
}

// scaleTo writes the replica count through /scale, retrying on conflicts (the Deployment
// controller and an autoscaler write the same object).
func scaleTo(ctx context.Context, s *kubeSession, name string, n int32) error {
	deps := s.client.AppsV1().Deployments(s.namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sc, err := deps.GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if sc.Spec.Replicas == n {
			return nil
		}
		sc.Spec.Replicas = n
		_, err = deps.UpdateScale(ctx, name, sc, metav1.UpdateOptions{FieldManager: "fleetctl"})
		return err
	})
	if err != nil {
		return fmt.Errorf("scale to %d: %w", n, err)
	}
	return nil
}

// waitGone waits up to c.wait until the stopped Deployments have no pod left, and notes in
// rows how many are still there.
func (c *emergencyCmd) waitGone(ctx context.Context, s *kubeSession, targets []appsv1.Deployment, rows []poolRow) {
	deadline := time.Now().Add(c.wait)
	for {
		left := 0
		for i, d := range targets {
			if rows[i].Error != "" {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil {
				rows[i].Note = "selector: " + err.Error()
				continue
			}
			pods, err := s.client.CoreV1().Pods(s.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
			if err != nil {
				rows[i].Note = "pods: " + err.Error()
				continue
			}
			rows[i].Note = "no pod left"
			if n := len(pods.Items); n > 0 {
				rows[i].Note = fmt.Sprintf("%d pods still terminating", n)
				left += n
			}
		}
		if left == 0 || !time.Now().Before(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *emergencyCmd) resume(ctx context.Context, s *kubeSession, names []string) error {
	targets, err := s.targets(ctx, &c.k, names)
	if err != nil {
		return err
	}
	var rows []poolRow
	failed := 0
	for _, d := range targets {
		row, err := c.resumeOne(ctx, s, d)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			row.Error = err.Error()
			failed++
		}
		rows = append(rows, row)
	}
	var notifyErr error
	resolved := false
	if hook := c.env["PAGERDUTY_WEBHOOK"]; hook != "" && failed == 0 {
		stopped, err := s.stoppedPools(ctx)
		switch {
		case err != nil:
			notifyErr = err
		case len(stopped) == 0:
			notifyErr = c.notify(ctx, hook, c.resolveEvent(s))
			resolved = notifyErr == nil
		}
	}
	if err := c.print(rows); err != nil {
		return err
	}
	if c.g.output == "table" {
		if resolved {
			fmt.Fprintln(c.std.Out, "PagerDuty event resolved.")
		}
		if !c.restore && failed < len(rows) {
			fmt.Fprintln(c.std.Out, "The fleet autoscaler ramps the pools back from the backlog; without it, run again with --restore.")
		}
	}
	switch {
	case failed > 0:
		return partialError{fmt.Sprintf("resume: %d of %d Deployments not resumed (see the error column)", failed, len(rows))}
	case notifyErr != nil:
		return partialError{fmt.Sprintf("resume: the pools are resumed, but resolving the PagerDuty event failed: %v", notifyErr)}
	}
	return nil
}

// resumeOne removes the paused annotations from d and, with --restore, scales it back.
func (c *emergencyCmd) resumeOne(ctx context.Context, s *kubeSession, d appsv1.Deployment) (poolRow, error) {
	row := poolRow{Deployment: d.Name, Pool: d.Labels[labelPool]}
	if d.Spec.Replicas != nil {
		row.Before, row.Replicas = *d.Spec.Replicas, *d.Spec.Replicas
	}
	prev, hasPrev := d.Annotations[AnnotationPausedReplicas]
	if !strings.EqualFold(strings.TrimSpace(d.Annotations[autoscale.AnnotationPaused]), "true") {
		row.Note = "was not paused"
	}
	ann := map[string]any{}
	for _, k := range []string{autoscale.AnnotationPaused, autoscale.AnnotationPausedReason, AnnotationPausedReplicas, AnnotationPausedAt, AnnotationPausedBy} {
		if _, ok := d.Annotations[k]; ok {
			ann[k] = nil // a JSON merge patch null removes the key
		}
	}
	if len(ann) > 0 {
		if err := patchAnnotations(ctx, s, d.Name, ann); err != nil {
			row.Paused = true
			return row, err
		}
	}
	if !c.restore {
		return row, nil
	}
	n, err := strconv.Atoi(prev)
	if !hasPrev || err != nil || n <= 0 {
		row.Note = "not restored: no replica count recorded before the stop"
		return row, nil
	}
	if err := scaleTo(ctx, s, d.Name, int32(n)); err != nil {
		return row, err
	}
	row.Replicas = int32(n)
	row.Note = "restored"
	return row, nil
}

// stoppedPools lists the worker Deployments of the namespace that are still paused.
func (s *kubeSession) stoppedPools(ctx context.Context) ([]string, error) {
	l, err := s.client.AppsV1().Deployments(s.namespace).List(ctx, metav1.ListOptions{LabelSelector: workerSelector("", "")})
	if err != nil {
		return nil, fmt.Errorf("list worker Deployments: %w", err)
	}
	var out []string
	for _, d := range l.Items {
		if strings.EqualFold(strings.TrimSpace(d.Annotations[autoscale.AnnotationPaused]), "true") {
			out = append(out, d.Name)
		}
	}
	return out, nil
}

func (c *emergencyCmd) print(rows []poolRow) error {
	if c.g.output == "json" {
		return writeJSON(c.std.Out, rows)
	}
	var table [][]string
	for _, r := range rows {
		state := "running"
		if r.Paused {
			state = "paused"
		}
		note := r.Note
		if r.Error != "" {
			note = "ERROR: " + r.Error
		}
		table = append(table, []string{r.Deployment, r.Pool, strconv.Itoa(int(r.Before)), strconv.Itoa(int(r.Replicas)), state, note})
	}
	return writeTable(c.std.Out, []string{"DEPLOYMENT", "POOL", "BEFORE", "REPLICAS", "STATE", "NOTE"}, table)
}

// pdEvent is a PagerDuty Events API v2 event.
type pdEvent struct {
	RoutingKey  string     `json:"routing_key,omitempty"`
	EventAction string     `json:"event_action"`
	DedupKey    string     `json:"dedup_key,omitempty"`
	Payload     *pdPayload `json:"payload,omitempty"`
	Client      string     `json:"client,omitempty"`
}

type pdPayload struct {
	Summary       string         `json:"summary"`
	Source        string         `json:"source"`
	Severity      string         `json:"severity"`
	Timestamp     string         `json:"timestamp,omitempty"`
	Component     string         `json:"component,omitempty"`
	Group         string         `json:"group,omitempty"`
	Class         string         `json:"class,omitempty"`
	CustomDetails map[string]any `json:"custom_details,omitempty"`
}

// dedupKey is one per cluster and namespace: every stop in the namespace is one alert, and
// resume resolves it once the last pool is running again.
func (s *kubeSession) dedupKey() string {
	return "fleet-emergency-stop/" + s.server + "/" + s.namespace
}

func (c *emergencyCmd) triggerEvent(s *kubeSession, rows []poolRow, reason string) pdEvent {
	var stopped []string
	before := map[string]int32{}
	for _, r := range rows {
		if r.Error == "" {
			stopped = append(stopped, r.Deployment)
			before[r.Deployment] = r.Before
		}
	}
	summary := fmt.Sprintf("fleet emergency stop in %s: %s scaled to 0 (%s)", s.namespace, strings.Join(stopped, ", "), reason)
	if len(summary) > 1024 { // the Events API's limit
		summary = summary[:1021] + "..."
	}
	return pdEvent{
		RoutingKey:  c.env["PAGERDUTY_ROUTING_KEY"],
		EventAction: "trigger",
		DedupKey:    s.dedupKey(),
		Client:      "fleetctl",
		Payload: &pdPayload{
			Summary:   summary,
			Source:    s.server + "/" + s.namespace,
			Severity:  "critical",
			Timestamp: c.now().UTC().Format(time.RFC3339),
			Component: "fleet",
			Group:     s.namespace,
			Class:     "emergency-stop",
			CustomDetails: map[string]any{
				"deployments":     stopped,
				"replicas_before": before,
				"reason":          reason,
				"by":              c.who(),
				"resume":          "fleetctl resume -n " + s.namespace + " " + strings.Join(poolNames(rows), " "),
			},
		},
	}
}

func poolNames(rows []poolRow) []string {
	var out []string
	for _, r := range rows {
		if r.Error != "" {
			continue
		}
		if r.Pool != "" {
			out = append(out, r.Pool)
		} else {
			out = append(out, r.Deployment)
		}
	}
	return out
}

func (c *emergencyCmd) resolveEvent(s *kubeSession) pdEvent {
	return pdEvent{RoutingKey: c.env["PAGERDUTY_ROUTING_KEY"], EventAction: "resolve", DedupKey: s.dedupKey(), Client: "fleetctl"}
}

// notify POSTs ev to hook, retrying network errors, 429 and 5xx (the Events API asks
// senders to retry those) up to three attempts.
func (c *emergencyCmd) notify(ctx context.Context, hook string, ev pdEvent) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode the event: %w", err)
	}
	var last error
	backoff := time.Second
	for attempt := 1; attempt <= 3; attempt++ {
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("$PAGERDUTY_WEBHOOK: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(req)
		if err != nil {
			last = fmt.Errorf("POST %s: %w", redactURL(hook), err)
			continue
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return nil
		}
		last = fmt.Errorf("POST %s: %s: %s", redactURL(hook), resp.Status, strings.TrimSpace(string(msg)))
		if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
			return last
		}
	}
	return last
}

// redactURL keeps a webhook's secrets (user info, query) out of messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(webhook)"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}
