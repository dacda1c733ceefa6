#!/usr/bin/env bash
# Builds the pinned Kubernetes server binaries and kubectl, and CoreDNS, from
# the Go module proxy into the machine-wide cache (they survive a fresh clone
# and `cluster down`; the Go build cache makes a rebuild quick too).
#
#   bash scripts/cluster/build-k8s.sh     prints the bin directory on its last line
#
# Kubernetes' module zip leaves out staging/ (nested modules), so its
# `k8s.io/X => ./staging/src/k8s.io/X` replaces are rewritten to the published
# k8s.io/X v0.<minor>.<patch> of the same release before building.
set -euo pipefail
# shellcheck source=scripts/cluster/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GO="$(tern_go)" || tern_die cluster "Go is needed to build Kubernetes $K8S_VERSION and CoreDNS; install Go (https://go.dev/dl) and run this again"
export GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0 GOTOOLCHAIN=local

k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
have_k8s() {
  local b
  for b in "${k8s_bins[@]}"; do [[ -x "$K8S_BIN/$b" ]] || return 1; done
  [[ "$(cat "$K8S_BIN/.version" 2>/dev/null)" == "$K8S_VERSION" ]]
}

if ! have_k8s; then
  started=$SECONDS
  tern_log cluster "building Kubernetes $K8S_VERSION (first run on this machine: ~7-10 min)"
  dir="$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || tern_die cluster "go mod download k8s.io/kubernetes@$K8S_VERSION gave no source directory"
  src="$TERN_CLUSTER_CACHE/src/kubernetes-$K8S_VERSION"
  if [[ ! -f "$src/.ready" ]]; then
    rm -rf "$src"
    mkdir -p "$src"
    cp -a "$dir/." "$src/"
    chmod -R u+w "$src"
    rm -rf "$src/go.work" "$src/go.work.sum" "$src/vendor"
    staging_version="v0.${K8S_VERSION#v1.}"   # v1.34.4 -> v0.34.4
    sed -i -E "s#^([[:space:]]*k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+#\1 => \1 $staging_version#" "$src/go.mod"
    ( cd "$src" && "$GO" mod download >/dev/null )
    touch "$src/.ready"
  fi
  IFS=. read -r _ minor _ <<<"${K8S_VERSION#v}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$K8S_BIN.tmp"
  ( cd "$src" && "$GO" build -trimpath -ldflags "$ldflags" -o "$K8S_BIN.tmp/" \
      ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubelet ./cmd/kube-proxy ./cmd/kubectl )
  rm -rf "$K8S_BIN"
  mv "$K8S_BIN.tmp" "$K8S_BIN"
  echo "$K8S_VERSION" >"$K8S_BIN/.version"
  tern_log cluster "Kubernetes $K8S_VERSION built in $((SECONDS - started)) s"
fi

if [[ ! -x "$K8S_BIN/coredns" || "$(cat "$K8S_BIN/.coredns-version" 2>/dev/null)" != "$COREDNS_VERSION" ]]; then
  started=$SECONDS
  tern_log cluster "building CoreDNS $COREDNS_VERSION (first run on this machine: ~3 min)"
  GOBIN="$K8S_BIN" "$GO" install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  echo "$COREDNS_VERSION" >"$K8S_BIN/.coredns-version"
  tern_log cluster "CoreDNS $COREDNS_VERSION built in $((SECONDS - started)) s"
fi
echo "$K8S_BIN"
