#!/usr/bin/env bash
# Installs the Debian tools the test suite and the benchmark drive as real
# peers (swaks and Python's smtplib as SMTP clients, openssl for test
# certificates, Postfix's smtp-source/smtp-sink for the benchmark, knot and
# unbound for the DANE tests: a signed zone behind a validating resolver; Debian's
# prometheus for promtool and a real Prometheus in tests/observability, through
# scripts/install-prometheus.sh, its daemon never left running); rspamd as a
# real milter (tests/e2e/milter-rspamd.test.ts runs its own instance; the
# package's daemon is stopped right after install). Idempotent
# and quick when everything is present. Postgres and NATS are provision.sh's.
set -euo pipefail
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [[ "${TERN_WITH_POSTFIX:-1}" == 1 ]] && ! command -v smtp-source >/dev/null 2>&1 && [[ ! -x /usr/sbin/smtp-source ]]; then
  need+=(postfix)
fi
if [[ "${TERN_WITH_DNSSEC:-1}" == 1 ]]; then
  [[ -x /usr/sbin/knotd && -x /usr/sbin/keymgr ]] || need+=(knot)
  [[ -x /usr/sbin/unbound ]] || need+=(unbound)
fi
if [[ "${TERN_WITH_RSPAMD:-1}" == 1 ]]; then
  [[ -x /usr/bin/rspamd ]] || need+=(rspamd)
fi
if (( ${#need[@]} )); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "system-deps: missing ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "system-deps: installing ${need[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix must not start a system MTA on port 25 as a side effect.
  if [[ " ${need[*]} " == *" postfix "* ]]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  fi
  apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
  # Debian starts services on install; ours are started by the tests themselves.
  if [[ " ${need[*]} " == *" postfix "* ]]; then
    (postfix stop >/dev/null 2>&1 || true)
  fi
  for svc in knot unbound rspamd; do
    if [[ " ${need[*]} " == *" $svc "* ]]; then (service "$svc" stop >/dev/null 2>&1 || true); fi
  done
fi
if [[ "${TERN_WITH_PROMETHEUS:-1}" == 1 ]]; then
  bash "$(dirname "${BASH_SOURCE[0]}")/install-prometheus.sh" >/dev/null
fi
echo "system-deps: ok"
