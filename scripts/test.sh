#!/usr/bin/env bash
# `npm test`: the whole suite, from a fresh clone on a fresh Debian machine.
# Installs what is missing, provisions Postgres and NATS, checks generated
# code, typechecks, lints, builds, validates the Helm chart, runs every
# test file with node:test, then the cluster tests on a local Kubernetes
# (scripts/cluster/test.sh). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
export PATH="$PWD/node_modules/.bin:$PATH"   # Node 24 from the node@24 devDependency
bash scripts/system-deps.sh
bash scripts/provision.sh
bash scripts/install-helm.sh
bash scripts/install-grpcurl.sh
echo "== contracts: regenerate and compare"
bash scripts/generate-proto.sh --check
echo "== typecheck, lint, build"
turbo run typecheck lint build --output-logs=errors-only
echo "== Helm chart checks"
bash scripts/chart-check.sh
echo "== tests"
# One node:test run so its closing summary covers the suite; the cluster
# tests (tests/cluster) follow on their own, since they load the machine.
mapfile -t files < <(find libs/*/test services/*/test cli/test tests -name '*.test.ts' -not -path 'tests/cluster/*' -not -path '*/node_modules/*' | sort)
rc=0
node --import tsx --test --test-concurrency=2 --test-timeout=300000 "${files[@]}" || rc=$?
# The cluster is stopped at the end whatever happened (TERN_KEEP_CLUSTER=1 keeps it).
if [[ "${TERN_KEEP_CLUSTER:-0}" != 1 ]]; then trap 'bash scripts/cluster/cluster.sh down || true' EXIT; fi
bash scripts/cluster/test.sh || rc=$?
exit "$rc"
