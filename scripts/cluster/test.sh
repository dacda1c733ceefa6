#!/usr/bin/env bash
# `npm run test:cluster`: the cluster tests (tests/cluster) alone, on the
# local cluster started (or reset) without a release. Leaves the cluster up
# for the next run; `npm run cluster -- down` stops it. `npm test` runs the
# same after the rest of the suite, then stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/ensure-deps.sh >/dev/null
export PATH="$PWD/node_modules/.bin:$PATH"   # Node 24 from the node@24 devDependency
echo "== cluster: up without a release (a first run on this machine builds Kubernetes: ~12 min)"
bash scripts/cluster/cluster.sh up --no-release
echo "== cluster tests"
exec node --import tsx --test --test-concurrency=1 --test-timeout=1800000 tests/cluster/*.test.ts
