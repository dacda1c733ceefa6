#!/usr/bin/env bash
# `npm test`: the whole suite, from a fresh clone on a fresh Debian machine.
# Installs what is missing, provisions Postgres and NATS, checks generated
# code, typechecks, lints, builds, validates the Helm chart, then runs every
# test file with node:test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
export PATH="$PWD/node_modules/.bin:$PATH"   # Node 24 from the node@24 devDependency
bash scripts/system-deps.sh
bash scripts/provision.sh
bash scripts/install-helm.sh
echo "== contracts: regenerate and compare"
bash scripts/generate-proto.sh --check
echo "== typecheck, lint, build"
turbo run typecheck lint build --output-logs=errors-only
echo "== Helm chart checks"
bash scripts/chart-check.sh
echo "== tests"
# One node:test run so its closing summary covers the whole suite.
exec node --import tsx --test --test-concurrency=2 --test-timeout=300000 \
  'libs/*/test/**/*.test.ts' 'services/*/test/**/*.test.ts' 'cli/test/**/*.test.ts' 'tests/**/*.test.ts'
