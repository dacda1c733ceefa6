#!/usr/bin/env bash
# Checks the Helm chart (charts/tern), offline apart from package registries:
#
#  1. values.schema.json and the README values table are up to date with their
#     generators (tests/chart/tools/values-schema.mjs, values-doc.mjs);
#  2. `helm lint --strict` with the default values and with each
#     charts/tern/ci/*-values.yaml (production-like, and the other branches),
#  3. and `helm template` of each, for every Kubernetes version in
#     TERN_KUBE_VERSIONS (default: the newest release and the oldest the
#     chart supports, from tests/chart/kube-versions.json), always passed as
#     --kube-version: the version built into the helm binary decides nothing;
#  4. every rendered object validated by kubeconform against strict JSON
#     Schemas of that Kubernetes release: unknown fields, wrong types, missing
#     required fields and kinds the release does not serve all fail.
#
# Where the schemas come from (no web access needed): kubeconform's usual
# schema sites are not reachable here, so the schemas are generated from
# specifications distributed as Go modules through the Go module proxy:
#  - k8s.io/kubernetes@v<version>: api/openapi-spec/v3/*.json, the OpenAPI
#    documents the API server of that release publishes;
#  - the CRDs of the optional objects, from their projects' modules:
#    ServiceMonitor (prometheus-operator), ScaledObject (KEDA), Certificate
#    (cert-manager).
# tests/chart/tools/kube-schemas.mjs turns them into standalone strict schemas
# (refs inlined, additionalProperties: false) for the kinds the chart renders,
# cached under .tern/kube-schemas/. kubeconform itself is built from the
# module proxy (`go install`) into .tern/bin. The Go module cache keeps the
# downloads, so later runs are quick.
#
# Needs helm (bash scripts/install-helm.sh), Go, and the npm dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BIN="$ROOT/.tern/bin"
CHART="charts/tern"
KUBECONFORM_VERSION=v0.8.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.21.0
CERT_MANAGER_VERSION=v1.21.2

NODE="$ROOT/node_modules/.bin/node"
[[ -x "$NODE" ]] || NODE="$(command -v node)"
KUBE_VERSIONS="${TERN_KUBE_VERSIONS:-$("$NODE" -p 'const v = require("./tests/chart/kube-versions.json"); `${v.newest} ${v.oldest}`')}"
HELM="$BIN/helm"
if [[ ! -x "$HELM" ]]; then
  echo "chart-check: $HELM is missing; run: bash scripts/install-helm.sh" >&2
  exit 1
fi
GO="$(command -v go || true)"
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
if [[ -z "$GO" ]]; then
  echo "chart-check: Go is needed to build kubeconform and fetch the Kubernetes OpenAPI documents (Go module proxy)" >&2
  exit 1
fi
# Module downloads must not pick up a caller's GOFLAGS (e.g. -mod=vendor) or a go.mod.
export GOFLAGS=-buildvcs=false
GOWORK_DIR="$(mktemp -d)"
OUT="$(mktemp -d)"
trap 'rm -rf "$GOWORK_DIR" "$OUT"' EXIT

module_dir() { # module@version -> its directory in the module cache
  (cd "$GOWORK_DIR" && "$GO" mod download -json "$1") | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

echo "chart-check: generated files"
"$NODE" tests/chart/tools/values-schema.mjs --check
"$NODE" tests/chart/tools/values-doc.mjs --check

if [[ ! -x "$BIN/kubeconform" || "$(cat "$BIN/.kubeconform-version" 2>/dev/null)" != "$KUBECONFORM_VERSION" ]]; then
  echo "chart-check: building kubeconform $KUBECONFORM_VERSION (first run only)"
  GOBIN="$BIN" CGO_ENABLED=0 "$GO" install -ldflags "-s -w" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  echo "$KUBECONFORM_VERSION" >"$BIN/.kubeconform-version"
fi

value_sets=("")
for f in "$CHART"/ci/*-values.yaml; do value_sets+=("$f"); done

echo "chart-check: helm lint --strict"
for kv in $KUBE_VERSIONS; do
  for f in "${value_sets[@]}"; do
    "$HELM" lint --strict "$CHART" --kube-version "$kv" ${f:+-f "$f"} --quiet >"$OUT/lint.log" 2>&1 || { cat "$OUT/lint.log" >&2; echo "chart-check: helm lint failed for Kubernetes $kv with ${f:-default values}" >&2; exit 1; }
    echo "  ok: Kubernetes $kv, ${f:-default values}"
  done
done

echo "chart-check: CRD specifications"
prom="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
keda="$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")"
certmanager="$(module_dir "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION")"
crds=(
  "$prom/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
  "$keda/config/crd/bases/keda.sh_scaledobjects.yaml"
  "$certmanager/deploy/crds/cert-manager.io_certificates.yaml"
)
crd_args=()
for c in "${crds[@]}"; do
  [[ -f "$c" ]] || { echo "chart-check: CRD file missing: $c" >&2; exit 1; }
  crd_args+=(--crd "$c")
done

for kv in $KUBE_VERSIONS; do
  echo "chart-check: Kubernetes $kv"
  k8s="$(module_dir "k8s.io/kubernetes@v$kv")"
  spec="$k8s/api/openapi-spec/v3"
  [[ -d "$spec" ]] || { echo "chart-check: no OpenAPI v3 documents in k8s.io/kubernetes@v$kv" >&2; exit 1; }
  manifests=()
  i=0
  for f in "${value_sets[@]}"; do
    i=$((i + 1))
    m="$OUT/k$kv-$i.yaml"
    "$HELM" template tern "$CHART" --namespace mail --kube-version "$kv" ${f:+-f "$f"} >"$m"
    manifests+=("$m")
  done
  schemas="$ROOT/.tern/kube-schemas/$kv"
  rm -rf "$schemas"
  "$NODE" tests/chart/tools/kube-schemas.mjs --openapi "$spec" "${crd_args[@]}" --out "$schemas" "${manifests[@]}"
  "$BIN/kubeconform" -strict -summary -output text \
    -schema-location "$schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
    "${manifests[@]}"
done
echo "chart-check: ok"
