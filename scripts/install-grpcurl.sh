#!/usr/bin/env bash
# Makes sure grpcurl is available as .tern/bin/grpcurl (project-local, ignored
# by git), for the reflection test (tests/e2e/reflection.test.ts) and for
# operators trying the gRPC APIs by hand (docs/operating.md).
#
# - Fast and idempotent: when .tern/bin/grpcurl is the pinned version, it
#   does nothing.
# - Built from source with the Go toolchain through the Go module proxy
#   (`go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION`):
#   no release tarball is downloaded, so this works where only package
#   registries are reachable.
# - The Go toolchain is `go` on PATH, else /usr/local/go/bin/go; TERN_GO names
#   another (empty: none).
#
# Usage: bash scripts/install-grpcurl.sh      (prints the grpcurl path and version)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
GRPCURL_VERSION="${GRPCURL_VERSION:-v1.9.3}"
BIN="$PWD/.tern/bin"
STAMP="$BIN/.grpcurl-version"
mkdir -p "$BIN"

if [[ -x "$BIN/grpcurl" && -f "$STAMP" && "$(cat "$STAMP")" == "$GRPCURL_VERSION" ]] && "$BIN/grpcurl" -version >/dev/null 2>&1; then
  echo "install-grpcurl: $BIN/grpcurl ($GRPCURL_VERSION, already installed)"
  exit 0
fi

GO="$(tern_go || true)"
if [[ -z "$GO" ]]; then
  echo "install-grpcurl: grpcurl is missing and there is no Go toolchain to build it; install Go (https://go.dev/dl) or put grpcurl at $BIN/grpcurl, then run this again" >&2
  exit 1
fi

echo "install-grpcurl: building grpcurl $GRPCURL_VERSION with $("$GO" version | awk '{print $3}') (first run only; a minute or two)"
rm -f "$BIN/grpcurl" "$STAMP"
# GOFLAGS from the environment (e.g. -mod=vendor) must not leak into a module
# install; -X main.version is what grpcurl's own release build stamps.
GOFLAGS=-buildvcs=false GOBIN="$BIN" CGO_ENABLED=0 "$GO" install \
  -ldflags "-s -w -X main.version=$GRPCURL_VERSION" \
  "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
echo "$GRPCURL_VERSION" >"$STAMP"
echo "install-grpcurl: $BIN/grpcurl ($("$BIN/grpcurl" -version 2>&1))"
