# Shared shell helpers for scripts/*.sh. Source it (bash only):
#
#   source "$(dirname "$0")/lib.sh"
#
# Defines functions and a few variables; changes no shell options (the caller
# keeps its own `set -euo pipefail`) and exports nothing.
#
#   TERN_ROOT                    absolute path of the repository
#   tern_log <tag> <message>     "<tag>: <message>" on stdout
#   tern_die <tag> <message>     "<tag>: <message>" on stderr, exit 1
#   tern_is_root                 true when running as uid 0
#   tern_have <command>          true when <command> is on PATH
#   tern_tcp_open <host> <port> [timeout_s]
#                                true when a TCP connection succeeds
#   tern_wait_until <timeout_s> <command...>
#                                retries <command> every 0.1 s until it
#                                succeeds (true) or the time is up (false)
#   tern_apt_install <tag> <package...>
#                                apt-get install (as root) without starting
#                                the packages' services; runs `apt-get update`
#                                only when the first attempt fails
#   tern_url_host <url>, tern_url_port <url> <default>
#                                host and port of scheme://[user[:pw]@]host[:port][/...]
#   tern_is_loopback <host>      true for localhost, 127.0.0.0/8, ::1
#   tern_pg_bindir               the newest /usr/lib/postgresql/*/bin with the
#                                server programs; false when there is none
#   tern_pg_install <tag>        Debian's postgresql, for its binaries only (the
#                                package's own cluster stays stopped, start manual)
#   tern_pg_dirs <path> <name>   (root) makes <path> a directory the postgres
#                                user owns; where that user cannot reach it (a
#                                checkout under /root), <path> becomes a link to
#                                /var/lib/tern/<name>-<checksum of TERN_ROOT>.
#                                Sets TERN_PG_REAL (the real directory) and
#                                TERN_PG_SOCK (it, or a /tmp directory when a
#                                socket path under it would be too long)
#   tern_go                      path of the Go toolchain that builds our tools
#                                (TERN_GO, else go on PATH, else
#                                /usr/local/go/bin/go); false when there is none

TERN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tern_log() { printf '%s: %s\n' "$1" "$2"; }
tern_die() { printf '%s: %s\n' "$1" "$2" >&2; exit 1; }
tern_is_root() { [[ "$(id -u)" -eq 0 ]]; }
tern_have() { command -v "$1" >/dev/null 2>&1; }

tern_tcp_open() {
  local host="$1" port="$2" t="${3:-1}"
  timeout "$t" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

tern_wait_until() {
  local timeout_s="$1"; shift
  local deadline=$((SECONDS + timeout_s))
  while true; do
    "$@" && return 0
    ((SECONDS >= deadline)) && return 1
    sleep 0.1
  done
}

tern_apt_install() {
  local tag="$1"; shift
  if ! tern_is_root; then
    tern_die "$tag" "missing $*; install with: sudo apt-get install -y $* (or run this script as root)"
  fi
  tern_have apt-get || tern_die "$tag" "missing $* and apt-get is not available; install $* by hand"
  tern_log "$tag" "installing $* with apt-get"
  # Services shipped by these packages must not start (or grab our ports):
  # we only want the binaries. A policy-rc.d that says "no" is the Debian way;
  # only add one for the duration when the machine has none.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# added by tern scripts/lib.sh during apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  local rc=0 out
  out="$(mktemp)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$out" 2>&1; then
    apt-get update -q >"$out" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$out" 2>&1 || rc=$?
  fi
  ((added_policy)) && rm -f "$policy"
  if ((rc != 0)); then
    tail -n 20 "$out" >&2
    rm -f "$out"
    tern_die "$tag" "apt-get install $* failed (exit $rc)"
  fi
  rm -f "$out"
}

tern_url_host() {
  local rest="${1#*://}"
  rest="${rest%%/*}"
  rest="${rest##*@}"
  if [[ "$rest" == \[* ]]; then
    rest="${rest#[}"
    printf '%s\n' "${rest%%]*}"
  else
    printf '%s\n' "${rest%%:*}"
  fi
}

tern_url_port() {
  local rest="${1#*://}"
  rest="${rest%%/*}"
  rest="${rest##*@}"
  rest="${rest##*]}"
  if [[ "$rest" == *:* ]]; then printf '%s\n' "${rest##*:}"; else printf '%s\n' "$2"; fi
}

tern_is_loopback() {
  [[ "$1" == localhost || "$1" == 127.* || "$1" == ::1 ]]
}

tern_go() {
  local go
  if [[ -n "${TERN_GO+set}" ]]; then
    go="$TERN_GO"
  else
    go="$(command -v go || true)"
    [[ -z "$go" && -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go
  fi
  [[ -n "$go" ]] && printf '%s\n' "$go"
}

tern_pg_bindir() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/pg_ctl" && -x "$d/initdb" && -x "$d/postgres" ]] || continue
    if [[ -z "$best" ]] || (( ${d//[^0-9]/} > ${best//[^0-9]/} )); then best="$d"; fi
  done
  [[ -n "$best" ]] || return 1
  printf '%s\n' "$best"
}

tern_pg_install() {
  local before after c
  before="$(ls -d /etc/postgresql/*/* 2>/dev/null || true)"
  tern_apt_install "$1" postgresql
  after="$(ls -d /etc/postgresql/*/* 2>/dev/null || true)"
  for c in $after; do
    if ! grep -qxF "$c" <<<"$before" && [[ -f "$c/start.conf" ]]; then
      echo manual >"$c/start.conf"
    fi
  done
}

tern_pg_dirs() {
  local path="$1" name="$2" sum
  sum="$(printf '%s' "$TERN_ROOT" | cksum | cut -d' ' -f1)"
  if [[ ! -L "$path" ]]; then mkdir -p "$path"; fi
  if tern_is_root; then
    chown postgres: "$path/." 2>/dev/null || true
    chmod 700 "$path/."
    if ! runuser -u postgres -- test -w "$path/." 2>/dev/null; then
      local real="/var/lib/tern/$name-$sum"
      mkdir -p "$real"
      chown postgres: "$real"
      chmod 700 "$real"
      if [[ ! -L "$path" ]]; then rmdir "$path" 2>/dev/null || mv "$path" "$path.unreachable.$$"; fi
      ln -sfn "$real" "$path"
    fi
  fi
  TERN_PG_REAL="$(cd "$path" && pwd -P)"
  TERN_PG_SOCK="$TERN_PG_REAL"
  # A unix socket path is limited to 107 bytes.
  if (( ${#TERN_PG_SOCK} + 16 > 100 )); then
    TERN_PG_SOCK="/tmp/tern-$name-$sum"
    mkdir -p "$TERN_PG_SOCK"
    if tern_is_root; then chown postgres: "$TERN_PG_SOCK"; fi
  fi
}
