#!/usr/bin/env bash
# Makes sure a nats-server with JetStream is available as .tern/bin/nats-server
# (project-local, ignored by git) for provision.sh, the tests and the bench.
#
# - The pinned release (NATS_SERVER_VERSION) is built with the Go toolchain
#   through the Go module proxy (`go install`), as install-helm.sh does for
#   Helm: Debian's 2.9.10 spends about twice the CPU per 64 KiB message on
#   the jobs stream that 2.14 does (docs/performance.md, session 9).
# - Fast and idempotent: nothing happens when the pinned build is there.
# - Without Go, or when the build fails, a nats-server from TERN_NATS_SERVER_BIN,
#   PATH or Debian's package (apt-get) is linked instead, with a warning.
#
# Usage: bash scripts/install-nats.sh      (prints the path and version)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TERN_ROOT"
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-v2.14.10}"
BIN="$TERN_ROOT/.tern/bin"
STAMP="$BIN/.nats-server-version"
mkdir -p "$BIN"

if [[ -n "${TERN_NATS_SERVER_BIN:-}" ]]; then
  [[ -x "$TERN_NATS_SERVER_BIN" ]] || tern_die nats "TERN_NATS_SERVER_BIN=$TERN_NATS_SERVER_BIN is not an executable file"
  ln -sf "$TERN_NATS_SERVER_BIN" "$BIN/nats-server"
  rm -f "$STAMP"
  tern_log nats "using $TERN_NATS_SERVER_BIN (TERN_NATS_SERVER_BIN) via $BIN/nats-server"
  exit 0
fi

if [[ -x "$BIN/nats-server" && -f "$STAMP" && "$(cat "$STAMP")" == "$NATS_SERVER_VERSION" ]]; then
  exit 0
fi

GO="$(tern_go || true)"
if [[ -n "$GO" ]]; then
  tern_log nats "building nats-server $NATS_SERVER_VERSION with $("$GO" version | awk '{print $3}') (first run only, about a minute)"
  rm -f "$BIN/nats-server" "$STAMP"
  # GOFLAGS from the environment (e.g. -mod=vendor) must not leak into a module install.
  if GOFLAGS=-buildvcs=false GOBIN="$BIN" CGO_ENABLED=0 "$GO" install -ldflags "-s -w" \
      "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION" >"$BIN/.nats-server-build.log" 2>&1; then
    echo "$NATS_SERVER_VERSION" >"$STAMP"
    tern_log nats "$BIN/nats-server ($("$BIN/nats-server" --version))"
    exit 0
  fi
  tern_log nats "warning: building nats-server $NATS_SERVER_VERSION failed (log: $BIN/.nats-server-build.log); falling back to the system's nats-server"
else
  tern_log nats "warning: no Go toolchain to build nats-server $NATS_SERVER_VERSION; falling back to the system's nats-server"
fi

# Fallback: any nats-server on this machine (not our own link), else Debian's.
existing=""
for b in "$(PATH="${PATH//$BIN:/}" command -v nats-server 2>/dev/null || true)" /usr/sbin/nats-server /usr/local/bin/nats-server; do
  [[ -n "$b" && -x "$b" && "$b" != "$BIN/nats-server" ]] && { existing="$b"; break; }
done
if [[ -z "$existing" ]]; then
  tern_apt_install nats nats-server
  # Debian's unit runs without JetStream on 4222: we only want the binary.
  if [[ -d /run/systemd/system ]]; then systemctl disable --now nats-server >/dev/null 2>&1 || true; fi
  existing=/usr/sbin/nats-server
  [[ -x "$existing" ]] || tern_die nats "nats-server not found after installing it"
fi
ln -sf "$existing" "$BIN/nats-server"
rm -f "$STAMP"   # no stamp: a later run tries the pinned build again
tern_log nats "using $existing ($("$existing" --version)) via $BIN/nats-server"
