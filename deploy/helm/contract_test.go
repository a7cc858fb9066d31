package helm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"denis.io/fleet/internal/fleetctl"
	"denis.io/fleet/internal/testutil/redisclean"
)

// TestChartContractWithRealBinaries runs what the rendered chart runs, with the environment
// the rendered objects give it (kwok runs no containers, so the install test cannot):
//   - a worker started with the crews Deployment's environment (URLs from the chart's Secret,
//     the flags ConfigMap as a directory) consumes and answers;
//   - the `helm test` pod's `fleetctl ping`, with the pod's arguments and environment, gets
//     its reply;
//   - the worker's preStop command (fleetctl drain) makes it drain: /readyz turns 503 and,
//     idle, it exits cleanly.
func TestChartContractWithRealBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real worker")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "worker")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../../cmd/worker").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/worker: %v\n%s", err, out)
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	queue := "helmct" + hex.EncodeToString(suffix)
	t.Cleanup(func() { cleanupRedis(queue) })
	_, portStr, err := net.SplitHostPort(freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	objs := render(t, map[string]any{
		"broker": map[string]any{"url": liveRedis, "resultBackendUrl": liveRedis},
		"worker": map[string]any{"metricsPort": port, "logFormat": "text"},
		"pools": []any{map[string]any{"name": "crews", "queues": []any{queue},
			"resources": map[string]any{"requests": map[string]any{"cpu": "100m"}}}},
	})

	var secret *corev1.Secret
	var flagsCM *corev1.ConfigMap
	var worker *appsv1.Deployment
	var ping *corev1.Pod
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Secret:
			secret = v
		case *corev1.ConfigMap:
			if v.Name == fullname+"-flags" {
				flagsCM = v
			}
		case *appsv1.Deployment:
			if v.Name == fullname+"-crews" {
				worker = v
			}
		case *corev1.Pod:
			ping = v
		}
	}
	if secret == nil || flagsCM == nil || worker == nil || ping == nil {
		t.Fatalf("rendered objects missing: secret %v, flags %v, worker %v, ping %v", secret != nil, flagsCM != nil, worker != nil, ping != nil)
	}

	// The flags volume as the kubelet lays it out: one file per key.
	flagsDir := t.TempDir()
	for k, v := range flagsCM.Data {
		if err := os.WriteFile(filepath.Join(flagsDir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mounts := map[string]string{"/etc/fleet/flags": flagsDir}

	wc := worker.Spec.Template.Spec.Containers[0]
	if len(wc.Command) != 1 || wc.Command[0] != "/usr/local/bin/worker" {
		t.Fatalf("worker command %v", wc.Command)
	}
	var logs bytes.Buffer
	w := exec.CommandContext(ctx, bin, wc.Args...)
	w.Env = append(containerEnv(t, wc, secret, mounts), "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
	w.Stdout, w.Stderr = &logs, &logs
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() {
		exitErr = w.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = w.Process.Signal(os.Interrupt)
		<-exited
		redisclean.ForgetNode(redisclean.ExpandHost("crews@%h"), liveRedis) // the chart's FLEET_HOSTNAME
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	readyz := "http://127.0.0.1:" + portStr + "/readyz"
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(readyz)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker with the chart's environment is not ready after 30s (%v)\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Run("helm test pod", func(t *testing.T) {
		c := ping.Spec.Containers[0]
		if len(c.Command) != 1 || c.Command[0] != "/usr/local/bin/fleetctl" {
			t.Fatalf("test pod command %v", c.Command)
		}
		var out, errb bytes.Buffer
		code := fleetctl.Main(ctx, c.Args, fleetctl.IO{Out: &out, Err: &errb, Env: containerEnv(t, c, secret, mounts)})
		if code != 0 || !strings.Contains(out.String(), "diag.echo from queue "+queue+": SUCCESS") {
			t.Fatalf("fleetctl %v: exit %d\nstdout: %s\nstderr: %s", c.Args, code, out.String(), errb.String())
		}
	})

	t.Run("preStop drains", func(t *testing.T) {
		cmd := wc.Lifecycle.PreStop.Exec.Command
		if cmd[0] != "/usr/local/bin/fleetctl" {
			t.Fatalf("preStop runs %v", cmd)
		}
		var out, errb bytes.Buffer
		if code := fleetctl.Main(ctx, cmd[1:], fleetctl.IO{Out: &out, Err: &errb, Env: containerEnv(t, wc, secret, mounts)}); code != 0 {
			t.Fatalf("preStop %v: exit %d: %s", cmd, code, errb.String())
		}
		// Draining: /readyz 503 while running tasks finish, then (idle here) a clean exit.
		deadline := time.Now().Add(30 * time.Second)
		for {
			select {
			case <-exited:
				if exitErr != nil {
					t.Fatalf("the worker exited with %v after the preStop", exitErr)
				}
				return
			default:
			}
			if resp, err := http.Get(readyz); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusServiceUnavailable {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("after the preStop the worker still reports ready and runs")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// containerEnv is the environment Kubernetes would give container c: plain values, Secret
// keys from secret (an optional missing key is left out), the downward API's pod name and
// namespace, and paths under a mounted volume mapped through mounts.
func containerEnv(t *testing.T, c corev1.Container, secret *corev1.Secret, mounts map[string]string) []string {
	t.Helper()
	var env []string
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom == nil:
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != secret.Name {
				t.Fatalf("%s: Secret %q, the chart created %q", e.Name, ref.Name, secret.Name)
			}
			s, ok := secret.StringData[ref.Key]
			if !ok {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				t.Fatalf("%s: key %q not in the Secret", e.Name, ref.Key)
			}
			v = s
		case e.ValueFrom.FieldRef != nil:
			v = "test-" + strings.ReplaceAll(e.ValueFrom.FieldRef.FieldPath, ".", "-")
		default:
			t.Fatalf("%s: unsupported valueFrom %+v", e.Name, e.ValueFrom)
		}
		for from, to := range mounts {
			if v == from || strings.HasPrefix(v, from+"/") {
				v = to + strings.TrimPrefix(v, from)
			}
		}
		env = append(env, e.Name+"="+v)
	}
	return env
}
