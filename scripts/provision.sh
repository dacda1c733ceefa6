#!/usr/bin/env bash
# Makes sure the two dependencies Tern's tests and demo need are running on
# loopback, and prints where they are (one line each). Idempotent; fast
# (well under a second) when both are already up. Exports nothing.
#
# PostgreSQL (admin URL: TERN_TEST_PG_URL, default
#   postgres://tern:tern@127.0.0.1:${TERN_PG_PORT:-5432}/postgres):
#   1. a server that accepts that URL is reused (e.g. a system cluster where
#      role tern/tern exists); database `tern` is created there if missing;
#   2. otherwise a project-local cluster is started: data in .tern/pg/data,
#      unix socket and log in .tern/pg, listening on 127.0.0.1:<port>, run as
#      the `postgres` user when we are root (Postgres refuses root). Debian's
#      `postgresql` is installed with apt-get when no server binaries exist
#      (its default cluster is not started, and set to manual start so it
#      never takes the port). Role tern (password tern, SUPERUSER so tests
#      can create databases) and database tern are created.
#   A port that is taken by a server refusing the URL is an error with the
#   ways out (create the role there, or pick another TERN_PG_PORT).
#
# NATS (TERN_NATS_URL, default nats://127.0.0.1:4222):
#   1. a server at that URL with JetStream enabled is reused;
#   2. otherwise `nats-server -js -sd .tern/nats` is started in the
#      background (pid in .tern/nats.pid, log in .tern/nats.log; for a port
#      other than 4222: .tern/nats-<port>, .pid, .log); the binary is
#      .tern/bin/nats-server from scripts/install-nats.sh (the pinned
#      release built with Go; TERN_NATS_SERVER_BIN, the system's or Debian's
#      nats-server when that cannot be done).
#   A server at that URL without JetStream is an error.
#
# Exit status is non-zero, with a message naming the cause, on any failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$TERN_ROOT"
mkdir -p .tern

# ---------------------------------------------------------------- Postgres --

PG_PORT="${TERN_PG_PORT:-5432}"
PG_URL="${TERN_TEST_PG_URL:-postgres://tern:tern@127.0.0.1:$PG_PORT/postgres}"
PG_HOST="$(tern_url_host "$PG_URL")"
PG_PORT="$(tern_url_port "$PG_URL" 5432)"
PG_DB_URL="${PG_URL%/*}/tern"
PG_ROOT="$TERN_ROOT/.tern/pg"      # may be a symlink (see pg_prepare_dirs)
PG_ERR=""                          # last connection error, for messages
PG_PROBE=""                        # last successful probe

# Sets PG_PROBE to "<version>|<superuser or createdb>|<database tern exists>"
# when the admin URL works, else PG_ERR and fails.
pg_probe() {
  local out
  if out="$(PGCONNECT_TIMEOUT=3 psql "$PG_URL" -XAtq -v ON_ERROR_STOP=1 -c \
    "select split_part(current_setting('server_version'), ' ', 1), (select rolsuper or rolcreatedb from pg_roles where rolname = current_user), exists(select 1 from pg_database where datname = 'tern')" 2>&1)"; then
    PG_PROBE="$out"
  else
    PG_ERR="$(printf '%s' "$out" | head -n 3)"
    return 1
  fi
}

# The project-local cluster's postmaster, if it runs: prints its port.
pg_local_port() {
  local pidfile="$PG_ROOT/data/postmaster.pid" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(sed -n 1p "$pidfile")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  sed -n 4p "$pidfile"
}

pg_reuse() { # <probe output> <what>
  local version super has_db
  IFS='|' read -r version super has_db <<<"$1"
  if [[ "$has_db" != t ]]; then
    psql "$PG_URL" -XAtq -v ON_ERROR_STOP=1 -c 'create database tern' >/dev/null 2>&1 ||
      tern_die postgres "$PG_URL works but database tern is missing and could not be created"
  fi
  local note=""
  [[ "$super" == t ]] || note=" (warning: the role can neither create databases nor is superuser; tests need that)"
  tern_log postgres "$2 PostgreSQL $version at $PG_DB_URL (admin $PG_URL)$note"
}

PG_RUN=()     # prefix to run Postgres programs as their owner
PG_SUPER=""   # bootstrap superuser of the local cluster (peer auth on the socket)
pg_prepare_user() {
  if tern_is_root; then
    if ! id -u postgres >/dev/null 2>&1; then
      useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --user-group postgres ||
        tern_die postgres "cannot create the postgres user"
    fi
    PG_RUN=(runuser -u postgres --)
    PG_SUPER=postgres
  else
    PG_RUN=()
    PG_SUPER="$(id -un)"
  fi
}

# .tern/pg must be reachable by the postgres user (tern_pg_dirs).
pg_prepare_dirs() {
  tern_pg_dirs "$PG_ROOT" pg
  PG_REAL="$TERN_PG_REAL"
  PG_SOCK="$TERN_PG_SOCK"
}

pg_local_psql() {
  "${PG_RUN[@]}" "$PG_BIN/psql" -h "$PG_SOCK" -p "$PG_PORT" -U "$PG_SUPER" -d postgres -XAtq -v ON_ERROR_STOP=1 "$@"
}

pg_start_local() {
  local did="started"
  PG_BIN="$(tern_pg_bindir)" || { tern_pg_install postgres; PG_BIN="$(tern_pg_bindir)" || tern_die postgres "no Postgres binaries in /usr/lib/postgresql/*/bin after installing postgresql"; }
  pg_prepare_user
  pg_prepare_dirs
  local data="$PG_REAL/data" log="$PG_REAL/postgres.log"
  cd "$PG_REAL"   # a directory the postgres user may enter
  if [[ ! -f "$data/PG_VERSION" ]]; then
    rm -rf "$data"
    if ! "${PG_RUN[@]}" "$PG_BIN/initdb" -D "$data" -U "$PG_SUPER" --auth-local=peer --auth-host=scram-sha-256 \
      --no-locale -E UTF8 --no-instructions >"$PG_REAL/initdb.log" 2>&1; then
      tail -n 20 "$PG_REAL/initdb.log" >&2
      tern_die postgres "initdb failed (log: $PG_REAL/initdb.log)"
    fi
    # A development server: many test databases and connections; fsync off is
    # safe against process crashes (the tests' kind), only an OS crash loses.
    cat >>"$data/postgresql.conf" <<'EOF'

# tern (scripts/provision.sh)
max_connections = 300
shared_buffers = 128MB
fsync = off
full_page_writes = off
log_min_messages = warning
EOF
    did="initialised and started"
  fi
  local running
  if running="$(pg_local_port)"; then
    if [[ "$running" == "$PG_PORT" ]]; then
      did="found running"
    else
      "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
      running=""
    fi
  fi
  if [[ -z "$running" || "$running" != "$PG_PORT" ]]; then
    if tern_tcp_open "$PG_HOST" "$PG_PORT"; then
      pg_port_taken
    fi
    if ! "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_SOCK" start >/dev/null 2>&1; then
      tail -n 20 "$log" >&2 || true
      tern_die postgres "could not start the project-local server in $PG_ROOT (log: $log)"
    fi
  fi
  pg_local_psql -c "do \$\$ begin
      if not exists (select from pg_roles where rolname = 'tern') then
        create role tern login superuser password 'tern';
      end if;
    end \$\$" >/dev/null || tern_die postgres "could not create role tern in the project-local server"
  if [[ "$(pg_local_psql -c "select 1 from pg_database where datname = 'tern'")" != 1 ]]; then
    pg_local_psql -c 'create database tern owner tern' >/dev/null || tern_die postgres "could not create database tern"
  fi
  pg_probe || tern_die postgres "the project-local server runs but $PG_URL fails: $PG_ERR"
  cd "$TERN_ROOT"
  tern_log postgres "$did project-local PostgreSQL ${PG_PROBE%%|*} in .tern/pg at $PG_DB_URL (admin $PG_URL)"
}

pg_port_taken() {
  tern_die postgres "$PG_HOST:$PG_PORT is taken by a server that refuses $PG_URL ($PG_ERR).
  Either create the role there, e.g. for a Debian cluster:
    runuser -u postgres -- psql -p $PG_PORT -c \"create role tern login superuser password 'tern'\"
  or start the project-local server on another port: TERN_PG_PORT=5433 (and TERN_TEST_PG_URL/TERN_DATABASE_URL to match)."
}

provision_postgres() {
  if ! tern_have psql; then
    if tern_tcp_open "$PG_HOST" "$PG_PORT"; then
      # A server is there (e.g. a CI service container): a client will do.
      tern_apt_install postgres postgresql-client
    elif tern_is_loopback "$PG_HOST" && ! tern_pg_bindir >/dev/null; then
      tern_pg_install postgres
    fi
    tern_have psql || PATH="$PATH:$(tern_pg_bindir 2>/dev/null || echo /nonexistent)"
    tern_have psql || tern_die postgres "psql is missing; install postgresql-client"
  fi
  if pg_probe; then
    local what="reusing"
    [[ "$(pg_local_port 2>/dev/null || true)" == "$PG_PORT" ]] && what="reusing project-local (.tern/pg)"
    pg_reuse "$PG_PROBE" "$what"
    return
  fi
  if ! tern_is_loopback "$PG_HOST"; then
    tern_die postgres "cannot connect to $PG_URL: $PG_ERR"
  fi
  # Ours but missing its role (an interrupted first run) is repaired below;
  # anyone else's server on the port is an error.
  if tern_tcp_open "$PG_HOST" "$PG_PORT" && [[ "$(pg_local_port 2>/dev/null || true)" != "$PG_PORT" ]]; then
    pg_port_taken
  fi
  pg_start_local
}

# -------------------------------------------------------------------- NATS --

NATS_URL="${TERN_NATS_URL:-nats://127.0.0.1:4222}"
NATS_HOST="$(tern_url_host "$NATS_URL")"
NATS_PORT="$(tern_url_port "$NATS_URL" 4222)"
# One server per port: the default one in .tern/nats, others in .tern/nats-<port>.
NATS_NAME=".tern/nats"
[[ "$NATS_PORT" == 4222 ]] || NATS_NAME=".tern/nats-$NATS_PORT"
NATS_STORE="$TERN_ROOT/$NATS_NAME"
NATS_PIDFILE="$TERN_ROOT/$NATS_NAME.pid"
NATS_LOG="$TERN_ROOT/$NATS_NAME.log"

# The INFO line a NATS server sends on connect.
nats_info() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1; IFS= read -r -t 2 line <&3 && printf "%s\n" "$line"' \
    "$NATS_HOST" "$NATS_PORT" 2>/dev/null
}
nats_has_js() { local i; i="$(nats_info)" && [[ "$i" == INFO* && "$i" == *'"jetstream":true'* ]]; }
nats_version() { nats_info | sed -n 's/.*"version":"\([^"]*\)".*/\1/p'; }

provision_nats() {
  local info
  # The binary is installed even when a server already runs: the tests and
  # the bench start private ones from .tern/bin/nats-server.
  bash "$TERN_ROOT/scripts/install-nats.sh" >&2
  if info="$(nats_info)" && [[ "$info" == INFO* ]]; then
    if [[ "$info" == *'"jetstream":true'* ]]; then
      local what="reusing"
      [[ -f "$NATS_PIDFILE" ]] && kill -0 "$(cat "$NATS_PIDFILE")" 2>/dev/null && what="reusing project-local ($NATS_NAME)"
      tern_log nats "$what nats-server $(nats_version) with JetStream at $NATS_URL"
      return
    fi
    tern_die nats "the NATS server at $NATS_URL runs without JetStream; stop it (e.g. systemctl stop nats-server) or point TERN_NATS_URL at one started with -js"
  fi
  if tern_tcp_open "$NATS_HOST" "$NATS_PORT"; then
    tern_die nats "$NATS_HOST:$NATS_PORT is taken by something that is not a NATS server; free it or set TERN_NATS_URL"
  fi
  tern_is_loopback "$NATS_HOST" || tern_die nats "cannot connect to $NATS_URL"
  local bin="$TERN_ROOT/.tern/bin/nats-server"
  # Our own server from an earlier run that no longer answers: stop it.
  if [[ -f "$NATS_PIDFILE" ]]; then
    local old
    old="$(cat "$NATS_PIDFILE")"
    if [[ -n "$old" ]] && kill -0 "$old" 2>/dev/null && grep -q nats-server "/proc/$old/cmdline" 2>/dev/null; then
      kill "$old" 2>/dev/null || true
      tern_wait_until 10 bash -c '! kill -0 "$0" 2>/dev/null' "$old" || kill -9 "$old" 2>/dev/null || true
    fi
    rm -f "$NATS_PIDFILE"
  fi
  mkdir -p "$NATS_STORE"
  # setsid + redirections: the server outlives this script and holds none of
  # its output pipes (npm would otherwise wait for it).
  setsid "$bin" -js -sd "$NATS_STORE" -a "$NATS_HOST" -p "$NATS_PORT" -P "$NATS_PIDFILE" \
    </dev/null >>"$NATS_LOG" 2>&1 &
  local pid=$!
  if ! tern_wait_until 15 nats_has_js; then
    kill "$pid" 2>/dev/null || true
    tail -n 20 "$NATS_LOG" >&2 || true
    tern_die nats "nats-server did not come up with JetStream at $NATS_URL (log: $NATS_LOG)"
  fi
  tern_log nats "started nats-server $(nats_version) with JetStream at $NATS_URL (store $NATS_NAME, log $NATS_NAME.log, pid $pid)"
}

provision_postgres
provision_nats
