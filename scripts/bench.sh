#!/usr/bin/env bash
# `npm run bench`: the benchmark of Tern against Postfix (docs/performance.md).
# Installs what is missing (npm deps; Postfix for smtp-source, smtp-sink and
# the Postfix relay it races; Postgres and NATS binaries), builds the
# services, then runs bench/run.ts with the arguments given, e.g.
#   npm run bench -- --quick
#   npm run bench -- --only postfix --scenario 4k-10
#   npm run bench -- --soak --only tern
# The bench starts its own private Postgres, nats-server, DNS server, sink and
# Postfix instance on loopback addresses and stops all of them when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-deps.sh

if [[ ! -x /usr/sbin/smtp-source || ! -x /usr/sbin/smtp-sink || ! -x /usr/sbin/postfix ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bench: Postfix is missing; install it with: sudo apt-get install -y postfix" >&2
    exit 1
  fi
  echo "bench: installing postfix (smtp-source, smtp-sink, the relay to race)"
  export DEBIAN_FRONTEND=noninteractive
  # No system MTA configuration: nothing listens on port 25 because of us.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get install -y -q postfix >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postfix >/dev/null; }
  # Debian may start the system instance on install; the bench runs its own.
  if [[ -f /etc/postfix/main.cf ]]; then postfix stop >/dev/null 2>&1 || true; fi
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "bench: must run as root (private Postfix and Postgres instances run as their own users)" >&2
  exit 1
fi

# Postgres and NATS: the bench runs private instances of both, so it only
# needs the binaries. provision.sh installs them on a fresh machine (and
# starts the project's shared instances, which the bench leaves alone).
bash scripts/install-nats.sh   # .tern/bin/nats-server, the pinned release (fast once built)
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if [[ -f scripts/provision.sh ]]; then
    bash scripts/provision.sh
  else
    echo "bench: Postgres is missing and scripts/provision.sh is not there yet" >&2
    exit 1
  fi
fi

if [[ "${TERN_BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  echo "bench: building the services"
  node_modules/.bin/turbo run build --continue --output-logs=errors-only || echo "bench: some builds failed; the bench runs what is built"
fi

exec node_modules/.bin/node --import tsx bench/run.ts "$@"
