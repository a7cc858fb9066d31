//go:build tools

// Package tools pins the Kubernetes test binaries built by scripts/k8s-tools.sh:
// kube-apiserver, kube-controller-manager, kube-scheduler, etcd (the version
// k8s.io/kubernetes pins) and kwok. It is a separate module so that the main
// module never depends on k8s.io/kubernetes; regenerate it with
// `scripts/k8s-tools.sh regen`.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
