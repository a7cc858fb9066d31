package dlq

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The fleet's Prometheus alerts (deploy/prometheus) are checked and unit-tested with
// promtool, from Debian's prometheus package (installed by scripts/services.sh).

const alertsDir = "../../deploy/prometheus"

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTests struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// promtool finds promtool, running scripts/services.sh (which installs it) if needed.
func promtool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "../../scripts/services.sh")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("scripts/services.sh: %v\n%s", err, out)
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skipf("promtool cannot be installed here (Debian package prometheus): %v", err)
	}
	return p
}

func TestPrometheusAlertsPromtool(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", "alerts.yaml"},
		{"test", "rules", "alerts_test.yaml"},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Dir = alertsDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(alertsDir, "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(data, &rf); err != nil {
		t.Fatal(err)
	}
	return rf
}

// Every alert the issue asks for is there with its severity, summary, description and a
// runbook section; each has a unit test in which it fires and one in which it is quiet.
func TestPrometheusAlertsComplete(t *testing.T) {
	rf := loadRules(t)
	data, err := os.ReadFile(filepath.Join(alertsDir, "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rt ruleTests
	if err := yaml.Unmarshal(data, &rt); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	runbook, err := os.ReadFile("../../docs/dlq.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(runbook), "\n") {
		if h, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " "); ok && strings.HasPrefix(line, "#") {
			anchors[githubAnchor(h)] = true
		}
	}
	want := []string{"FleetDLQNotEmpty", "FleetDLQGrowingFast", "FleetQueueBacklog", "FleetWorkerHighCPU",
		"FleetWorkerHeartbeatMissing", "FleetTaskFailureRateHigh", "FleetMaterializerSuccessRateLow",
		"FleetTaskRuntimeRegression", "FleetJobWaitingTooLong"}
	var got []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			got = append(got, r.Alert)
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q", r.Alert, s)
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[k] == "" {
					t.Errorf("%s: no %s", r.Alert, k)
				}
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], "docs/dlq.md#")
			if !ok || !anchors[anchor] {
				t.Errorf("%s: runbook %q is not a section of docs/dlq.md", r.Alert, r.Annotations["runbook_url"])
			}
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: alerts_test.yaml lacks a case where it fires (%v) or stays quiet (%v)", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("alert %s missing", w)
		}
	}
}

// githubAnchor is the anchor GitHub gives a heading.
func githubAnchor(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	var b strings.Builder
	for _, r := range h {
		switch {
		case r == ' ' || r == '-':
			b.WriteRune('-')
		case r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// The alerts use only series the fleet exports: names written in the fleet's metric code
// (internal/metrics, internal/dlq) or the Go client's process and runtime collectors.
func TestPrometheusAlertsUseExportedMetrics(t *testing.T) {
	var src bytes.Buffer
	for _, dir := range []string{"../metrics", "."} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			src.Write(data)
		}
	}
	exported := func(name string) bool {
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && strings.Contains(src.String(), `"`+base+`"`) {
				return true
			}
		}
		return strings.Contains(src.String(), `"`+name+`"`)
	}
	clientCollectors := []string{"process_cpu_seconds_total", "go_sched_gomaxprocs_threads"}
	names := regexp.MustCompile(`\b((?:fleet|celery|process|go)_[a-z0-9_]+)\b`)
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			for _, m := range names.FindAllString(r.Expr, -1) {
				if !exported(m) && !slices.Contains(clientCollectors, m) {
					t.Errorf("%s uses %s, which the fleet does not export", r.Alert, m)
				}
			}
		}
	}
}
