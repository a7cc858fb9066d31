package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chartConfig is templates/autoscaler-config.yaml as `helm template rel deploy/helm/fleet`
// renders it with the default values.
const chartConfig = `target: kubernetes
namespace: ns1
intervalSeconds: 5
dryRun: false
leaderElection:
  enabled: true
  leaseName: rel-fleet-autoscaler
  leaseDurationSeconds: 15
  renewDeadlineSeconds: 10
  retryPeriodSeconds: 2
pools:
  - name: crews
    deployment: rel-fleet-crews
    queues: ["crews"]
    concurrency: 8
    minReplicas: 1
    maxReplicas: 20
    targetDepth: 100
    cpuTarget: 0.7
    scaleDownWindowSeconds: 120
    drainTimeSeconds: 60
  - name: materializers
    deployment: rel-fleet-materializers
    queues: ["materializers"]
    concurrency: 4
    minReplicas: 0
    maxReplicas: 20
    targetDepth: 100
    cpuTarget: 0.7
    scaleDownWindowSeconds: 120
    drainTimeSeconds: 60
`

func TestParseRun(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "autoscaler.yaml")
	if err := os.WriteFile(cfgPath, []byte(chartConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("pools:\n  - name: x\n    deployment: d\n    queues: [q]\n    colour: red\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		args    []string
		env     []string
		wantErr string
		check   func(t *testing.T, o runOptions)
	}{
		{"the chart's config and environment", []string{"--target=kubernetes", "--config=" + cfgPath},
			[]string{"FLEET_BROKER=amqp://u:p@rabbit:5672/", "FLEET_RESULT_BACKEND=redis://redis:6379/1", "POD_NAME=as-0", "POD_NAMESPACE=other", "FLEET_METRICS_ADDR=:9809"}, "",
			func(t *testing.T, o runOptions) {
				if len(o.pools) != 2 || o.pools[0].deployment != "rel-fleet-crews" || o.pools[1].queues[0] != "materializers" {
					t.Fatalf("pools %+v", o.pools)
				}
				c := o.pools[1].cfg
				if c.MinReplicas != 0 || c.MaxReplicas != 20 || c.Concurrency != 4 || c.ScaleDownWindow != 2*time.Minute || c.Interval != 5*time.Second {
					t.Fatalf("materializers config %+v", c)
				}
				if o.namespace != "ns1" || !o.leaderElect || o.leaseName != "rel-fleet-autoscaler" || o.identity != "as-0" || o.dryRun {
					t.Fatalf("options %+v", o)
				}
				if o.stateRedis != "redis://redis:6379/1" {
					t.Fatalf("state Redis %q: want the result backend when the broker is RabbitMQ", o.stateRedis)
				}
			}},
		{"command-line flags beat the file", []string{"--config", cfgPath, "--max", "7", "--dry-run", "--interval", "2s"}, nil, "",
			func(t *testing.T, o runOptions) {
				for _, p := range o.pools {
					if p.cfg.MaxReplicas != 7 || p.cfg.Interval != 2*time.Second {
						t.Fatalf("%s: %+v", p.name, p.cfg)
					}
				}
				if !o.dryRun || o.leaderElect {
					t.Fatal("a dry run must not take part in leader election")
				}
			}},
		{"one deployment from flags", []string{"--deployment", "w", "-Q", "a,b", "-b", "redis://r:6379/2", "--min", "0", "--task-seconds", "3s"}, nil, "",
			func(t *testing.T, o runOptions) {
				p := o.pools[0]
				if p.name != "w" || len(p.queues) != 2 || p.cfg.MinReplicas != 0 || p.serviceTime != 3*time.Second || o.stateRedis != "redis://r:6379/2" {
					t.Fatalf("%+v %q", p, o.stateRedis)
				}
			}},
		{"local target", []string{"--target", "local", "--worker-cmd", "bin/worker -c 4", "-b", "redis://r/0", "-Q", "q", "--min", "1", "--max", "4"}, nil, "",
			func(t *testing.T, o runOptions) {
				if len(o.workerCmd) != 3 || o.leaderElect || o.pools[0].name != "worker" || o.pools[0].cfg.MaxReplicas != 4 {
					t.Fatalf("%+v", o)
				}
			}},
		{"env dry run", []string{"--deployment", "w"}, []string{"FLEET_AUTOSCALER_DRY_RUN=true"}, "", func(t *testing.T, o runOptions) {
			if !o.dryRun || o.leaderElect {
				t.Fatalf("%+v", o)
			}
		}},
		{"kubernetes needs a deployment", nil, nil, "--deployment", nil},
		{"local needs a worker command", []string{"--target", "local"}, nil, "--worker-cmd", nil},
		{"unknown target", []string{"--target", "nomad", "--deployment", "w"}, nil, "--target", nil},
		{"unknown config key", []string{"--config", bad}, nil, "colour", nil},
		{"missing config", []string{"--config", filepath.Join(dir, "none.yaml")}, nil, "--config", nil},
		{"invalid knob", []string{"--deployment", "w", "--min", "5", "--max", "2"}, nil, "MaxReplicas", nil},
		{"bad broker", []string{"--deployment", "w", "-b", "http://x"}, nil, "scheme", nil},
		{"lease timings", []string{"--deployment", "w", "--lease-duration", "1s"}, nil, "--lease-duration", nil},
		{"bad env value", []string{"--deployment", "w"}, []string{"FLEET_AUTOSCALER_DRY_RUN=maybe"}, "FLEET_AUTOSCALER_DRY_RUN", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseRun(tc.args, tc.env, &bytes.Buffer{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

func TestRunUsage(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"run help", []string{"run", "--help"}, ExitOK, "--worker-cmd"},
		{"the chart's form is run", []string{"--target=nomad"}, ExitUsage, "--target must be"},
		{"run usage error", []string{"run", "--bogus"}, ExitUsage, "unknown flag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(tc.args, &out, &errOut)
			if code != tc.code || !strings.Contains(out.String()+errOut.String(), tc.want) {
				t.Fatalf("exit %d, out %q, err %q", code, out.String(), errOut.String())
			}
		})
	}
}
