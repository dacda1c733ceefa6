#!/usr/bin/env bash
# Regenerates the TypeScript contracts from proto/ with buf + ts-proto, and
# the descriptor set used by gRPC reflection. With --check, fails when the
# checked-in output differs from a fresh generation (CI runs it that way).
set -euo pipefail
cd "$(dirname "$0")/.."
(cd proto && npx --no-install buf lint && npx --no-install buf generate && npx --no-install buf build -o ../libs/proto/src/descriptor.binpb)
if [[ "${1:-}" == "--check" ]]; then
  if ! git diff --exit-code --stat -- libs/proto/src/gen libs/proto/src/descriptor.binpb; then
    echo "generated contracts are stale: run 'npm run generate' and commit the result" >&2
    exit 1
  fi
  if [[ -n "$(git ls-files --others --exclude-standard -- libs/proto/src/gen)" ]]; then
    echo "generated contracts have untracked files: run 'npm run generate' and commit them" >&2
    exit 1
  fi
fi
