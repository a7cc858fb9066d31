//go:build tools

// Package tools pins the helm CLI built by scripts/k8s-tools.sh. It is a
// separate module so that helm's dependencies never move the main module's or
// the Kubernetes tools module's versions; regenerate it with
// `scripts/k8s-tools.sh regen`.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
