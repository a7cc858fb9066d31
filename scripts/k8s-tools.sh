#!/usr/bin/env bash
# k8s-tools.sh: build the Kubernetes test binaries from the Go module proxy into a cache outside the repo.
#
#   scripts/k8s-tools.sh          build if needed, print the bin dir on stdout (seconds when cached)
#   scripts/k8s-tools.sh dir      print the bin dir without building
#   scripts/k8s-tools.sh regen    regenerate hack/kube-bins and hack/helm-bin (only to bump versions)
#
# Binaries: kube-apiserver, kube-controller-manager, kube-scheduler, etcd (the 3.7 that k8s pins),
# kwok, helm; plus kwok-stages.yaml (kwok's "fast" stages, from its module). They are built from
# the committed tools modules hack/kube-bins (k8s.io/kubernetes with its staging replaces) and
# hack/helm-bin (helm.sh/helm/v3), so a build only downloads what their go.sum pins.
#
# Env: FLEET_TOOLS_DIR (default ~/.cache/fleet-tools), K8S_VERSION / KWOK_VERSION / HELM_VERSION
# (regen only). The cache dir is $FLEET_TOOLS_DIR/k8s-<k8s version>/ with a .stamp of the inputs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KMOD=$ROOT/hack/kube-bins
HMOD=$ROOT/hack/helm-bin
TOOLS=${FLEET_TOOLS_DIR:-$HOME/.cache/fleet-tools}
export GOFLAGS=-mod=mod GOWORK=off

log() { echo "k8s-tools: $*" >&2; }

k8s_version() { awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ {print substr($2, 2); exit}' "$KMOD/go.mod"; }

regen() {
	local k8s=${K8S_VERSION:-1.37.2} kwok=${KWOK_VERSION:-v0.8.0} helm=${HELM_VERSION:-v3.22.0}
	local staging=v0.${k8s#1.} gomod m
	log "regenerating $KMOD for k8s $k8s, kwok $kwok; $HMOD for helm $helm"
	mkdir -p "$KMOD" "$HMOD"
	(
		cd "$KMOD"
		rm -f go.mod go.sum
		printf 'module denis.io/fleet/hack/kube-bins\n\ngo 1.26.0\n' >go.mod
		gomod=$(go mod download -json "k8s.io/kubernetes@v$k8s" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
		for m in $(sed -n '/^replace (/,/^)/p' "$gomod" | awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' | grep -v '/sample-'); do
			go mod edit -replace "$m=$m@$staging"
		done
		go mod edit -require "k8s.io/kubernetes@v$k8s"
		go get "sigs.k8s.io/kwok@$kwok"
		go mod tidy
	)
	(
		cd "$HMOD"
		rm -f go.mod go.sum
		printf 'module denis.io/fleet/hack/helm-bin\n\ngo 1.26.0\n' >go.mod
		go get "helm.sh/helm/v3@$helm"
		go mod tidy
	)
}

bindir() { echo "$TOOLS/k8s-$(k8s_version)"; }

stamp() {
	{
		go env GOVERSION
		cat "$KMOD/go.mod" "$KMOD/go.sum" "$KMOD/tools.go" "$HMOD/go.mod" "$HMOD/go.sum" "$HMOD/tools.go"
		sed -n '/^# stamp-inputs/,/^# end-stamp-inputs/p' "${BASH_SOURCE[0]}"
	} | sha256sum | cut -d' ' -f1
}

# stamp-inputs: anything between these markers changes the stamp (build flags, binary list).
KUBE_PKGS="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler go.etcd.io/etcd/server/v3 sigs.k8s.io/kwok/cmd/kwok"
KWOK_STAGES="node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete"
# helm's own Makefile stamps its version and the Kubernetes version it assumes for `helm template`
# and `helm lint` (otherwise 1.20) from its client-go: 1.<minor of k8s.io/client-go>.
HELM_X=helm.sh/helm/v3
# end-stamp-inputs

build() {
	local out ver minor v want tmp s first
	ver=$(k8s_version)
	[ -n "$ver" ] || { log "no k8s.io/kubernetes version in $KMOD/go.mod"; exit 1; }
	out=$(bindir)
	want=$(stamp)
	mkdir -p "$out"
	# Several test packages may ask at once: one builds, the others wait.
	exec 9>"$out/.lock"
	flock 9
	if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$want" ]; then
		echo "$out"
		return
	fi
	log "building k8s $ver binaries and helm into $out (cold: ~10 min on 2 cores; cached afterwards)"
	minor=${ver#1.}
	minor=${minor%%.*}
	v=k8s.io/component-base/version
	tmp=$(mktemp -d "$out/.build.XXXXXX")
	(
		cd "$KMOD"
		# shellcheck disable=SC2086 # word splitting of the package list is intended
		go build -trimpath -ldflags "-s -w -X $v.gitVersion=v$ver -X $v.gitMajor=1 -X $v.gitMinor=$minor" -o "$tmp/" $KUBE_PKGS
		mv "$tmp/v3" "$tmp/etcd" 2>/dev/null || mv "$tmp/server" "$tmp/etcd"
		kdir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
		first=1
		for s in $KWOK_STAGES; do
			[ $first = 1 ] || echo '---'
			first=0
			cat "$kdir/kustomize/stage/$s.yaml"
		done >"$tmp/kwok-stages.yaml"
	)
	(
		cd "$HMOD"
		hv=$(awk '$1 == "helm.sh/helm/v3" {print $2; exit}' go.mod)
		km=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
		go build -trimpath -ldflags "-s -w -X $HELM_X/internal/version.version=$hv \
			-X $HELM_X/pkg/chartutil.k8sVersionMajor=1 -X $HELM_X/pkg/chartutil.k8sVersionMinor=$km \
			-X $HELM_X/pkg/lint/rules.k8sVersionMajor=1 -X $HELM_X/pkg/lint/rules.k8sVersionMinor=$km" \
			-o "$tmp/helm" helm.sh/helm/v3/cmd/helm
	)
	for b in kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm kwok-stages.yaml; do
		[ -s "$tmp/$b" ] || { log "missing $b after build"; exit 1; }
		mv -f "$tmp/$b" "$out/$b"
	done
	rm -rf "$tmp"
	echo "$want" >"$out/.stamp"
	log "done: $(cd "$out" && ls | tr '\n' ' ')"
	echo "$out"
}

case "${1:-build}" in
build) build ;;
dir) bindir ;;
regen) regen ;;
*)
	echo "usage: $0 [build|dir|regen]" >&2
	exit 2
	;;
esac
