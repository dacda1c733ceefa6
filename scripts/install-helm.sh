#!/usr/bin/env bash
# Makes sure Helm 3 is available as .tern/bin/helm (project-local, ignored by
# git), for scripts/chart-check.sh and the chart tests (tests/chart).
#
# - Fast and idempotent: when .tern/bin/helm already answers with the pinned
#   version, it does nothing.
# - A helm v3 already on PATH is reused (linked into .tern/bin) if it renders
#   charts/tern as it is (`helm template`, no --kube-version): a helm built
#   without its version flags assumes Kubernetes v1.20, which the chart's
#   kubeVersion refuses, and is passed over. TERN_HELM_BUILD=1 always asks for
#   the pinned build.
# - The Go toolchain is `go` on PATH, else /usr/local/go/bin/go; TERN_GO names
#   another (empty: none).
# - Otherwise Helm is built from source with the Go toolchain through the Go
#   module proxy (`go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION`): no
#   release tarball is downloaded, so this works where only package registries
#   are reachable.
#
# Usage: bash scripts/install-helm.sh      (prints the helm path and version)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Bumped when the way helm is built changes, so an older build is replaced.
BUILD_ID="$HELM_VERSION/2"
BIN="$PWD/.tern/bin"
STAMP="$BIN/.helm-version"
mkdir -p "$BIN"

have_pinned() {
  [[ -x "$BIN/helm" && -f "$STAMP" && "$(cat "$STAMP")" == "$BUILD_ID" ]] && "$BIN/helm" version --short >/dev/null 2>&1
}

if have_pinned; then
  echo "install-helm: $BIN/helm ($HELM_VERSION, already installed)"
  exit 0
fi

# Reuse a Helm 3 from PATH (not our own link) when the pinned build is not required.
if [[ "${TERN_HELM_BUILD:-0}" != 1 ]]; then
  existing="$(PATH="${PATH//$BIN:/}" command -v helm || true)"
  if [[ -n "$existing" && "$existing" != "$BIN/helm" ]] && "$existing" version --short 2>/dev/null | grep -q '^v3\.'; then
    if why="$("$existing" template tern charts/tern --namespace mail 2>&1 >/dev/null)"; then
      ln -sf "$existing" "$BIN/helm"
      echo "install-helm: using $existing ($("$existing" version --short)) via $BIN/helm"
      # No stamp: a later run checks PATH again (cheap) instead of trusting a stale link.
      exit 0
    fi
    echo "install-helm: not using $existing ($("$existing" version --short)): it cannot render charts/tern ($(echo "$why" | grep -m1 -i error || echo "$why" | head -n1)); building the pinned helm $HELM_VERSION instead"
  fi
fi
# A link to a helm from PATH made by an earlier run is replaced by the build.
[[ -L "$BIN/helm" ]] && rm -f "$BIN/helm"

GO="$(tern_go || true)"
if [[ -z "$GO" ]]; then
  echo "install-helm: helm is missing and there is no Go toolchain to build it; install Go (https://go.dev/dl) or put a Helm 3 binary on PATH, then run this again" >&2
  exit 1
fi

# Helm's release build stamps the Kubernetes version it was made against (the
# default .Capabilities.KubeVersion, also what `kubeVersion:` in Chart.yaml is
# checked against by `helm template`/`lint`); do the same, from the client-go
# version in Helm's go.mod, or template would claim Kubernetes v1.20.
gomod="$(GOFLAGS= "$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
client_go="$(awk '$1 == "k8s.io/client-go" { print $2 }' "$gomod")"   # e.g. v0.37.0
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
if ! [[ "$k8s_minor" =~ ^[0-9]+$ ]]; then
  echo "install-helm: cannot read the client-go version from $gomod" >&2
  exit 1
fi
echo "install-helm: building helm $HELM_VERSION with $("$GO" version | awk '{print $3}') (first run only; a few minutes)"
rm -f "$BIN/helm" "$STAMP"
# GOFLAGS from the environment (e.g. -mod=vendor) must not leak into a module install.
GOFLAGS=-buildvcs=false GOBIN="$BIN" CGO_ENABLED=0 "$GO" install \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
echo "$BUILD_ID" >"$STAMP"
echo "install-helm: $BIN/helm ($("$BIN/helm" version --short))"
