#!/usr/bin/env bash
# `npm start`: the whole platform on this machine, in the foreground until
# Ctrl-C. Installs what is missing, provisions Postgres and NATS, builds,
# migrates, then runs every service as its own process plus a demo DNS server
# and a demo SMTP sink (scripts/stack.ts), and sends one message through.
# OTEL_EXPORTER_OTLP_ENDPOINT (an OTLP/HTTP base URL, e.g. Jaeger all-in-one's
# http://127.0.0.1:4318) is passed to every service: traces go there.
set -euo pipefail
cd "$(dirname "$0")/.."
# Checked before minutes of provisioning and build, not after.
case "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" in
  "" | http://* | https://*) ;;
  *) echo "npm start: OTEL_EXPORTER_OTLP_ENDPOINT=\"$OTEL_EXPORTER_OTLP_ENDPOINT\" is not an http(s) URL; give the OTLP/HTTP base URL of a collector, e.g. http://127.0.0.1:4318 (Jaeger all-in-one), or unset it" >&2; exit 78 ;;
esac
bash scripts/ensure-deps.sh
export PATH="$PWD/node_modules/.bin:$PATH"   # Node 24 from the node@24 devDependency
TERN_WITH_POSTFIX=0 TERN_WITH_DNSSEC=0 TERN_WITH_PROMETHEUS=0 bash scripts/system-deps.sh
bash scripts/provision.sh
echo "build: bundling the services"
turbo run build --output-logs=errors-only >/dev/null
PG_PORT="${TERN_PG_PORT:-5432}"
export TERN_DATABASE_URL="${TERN_DATABASE_URL:-postgres://tern:tern@127.0.0.1:$PG_PORT/tern}"
export TERN_NATS_URL="${TERN_NATS_URL:-nats://127.0.0.1:4222}"
node libs/db/dist/migrate.js
exec node --import tsx scripts/stack.ts
