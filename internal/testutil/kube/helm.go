package kube

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Helm runs the cached helm binary with args against the test's namespace (KUBECONFIG is the
// namespace's kubeconfig and --namespace is appended), with helm's home directories inside
// the cluster's state dir, and returns its combined output.
func (e *Env) Helm(ctx context.Context, args ...string) (string, error) {
	home := filepath.Join(e.Dir, "helm-home")
	args = append(args, "--namespace", e.Namespace)
	return RunHelm(ctx, e.Cluster.Helm(), home, []string{"KUBECONFIG=" + e.Kubeconfig}, args...)
}

// RunHelm runs helm at path with HOME and the HELM_*_HOME directories under home (created if
// needed), so that tests never read or write the user's helm configuration. env is added to
// the environment. The combined output is returned; a non-zero exit is an error that
// includes it.
func RunHelm(ctx context.Context, path, home string, env []string, args ...string) (string, error) {
	for _, d := range []string{"cache", "config", "data"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o755); err != nil {
			return "", fmt.Errorf("helm home: %w", err)
		}
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(),
		"HOME="+home,
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}
