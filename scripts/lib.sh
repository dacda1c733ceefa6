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
