#!/usr/bin/env bash
# Installs npm dependencies when node_modules is missing or older than the
# lockfile. `node@24` is a devDependency, so afterwards node_modules/.bin/node
# is Node 24 whatever Node the machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x node_modules/.bin/node || ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "deps: npm ci"
  # npm 11 leaves other platforms' optional binaries (turbo, buf) out of the
  # lockfile and then refuses `npm ci`; fall back to an install from the same
  # lockfile that does not rewrite it.
  if ! npm ci --no-audit --no-fund; then
    echo "deps: npm ci refused the lockfile; npm install --no-save from it"
    npm install --no-save --no-audit --no-fund
  fi
fi
