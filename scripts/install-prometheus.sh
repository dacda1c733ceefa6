#!/usr/bin/env bash
# Makes sure Debian's prometheus package is installed, for its two binaries:
# promtool (`promtool check rules` on the chart's PrometheusRule) and
# prometheus (tests/observability runs one, with its own configuration and
# port, against the local platform). The package's own daemon is not wanted:
# it is kept from starting while apt-get installs it (lib.sh tern_apt_install,
# a policy-rc.d that says no) and stopped should it be running anyway, so
# nothing listens on 9090 afterwards.
#
# Idempotent and quick when both binaries are present.
#
# Usage: bash scripts/install-prometheus.sh   (prints the paths and version)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TAG=install-prometheus

if ! { [[ -x /usr/bin/prometheus ]] && [[ -x /usr/bin/promtool ]]; }; then
  tern_apt_install "$TAG" prometheus
  # A machine without policy-rc.d support (systemd running) may still have
  # started it: the tests need the binaries only.
  if tern_have systemctl && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl stop prometheus >/dev/null 2>&1 || true
    systemctl disable prometheus >/dev/null 2>&1 || true
  fi
  (service prometheus stop >/dev/null 2>&1 || true)
fi
[[ -x /usr/bin/promtool ]] || tern_die "$TAG" "/usr/bin/promtool is missing after installing Debian's prometheus package"
tern_log "$TAG" "/usr/bin/prometheus, /usr/bin/promtool ($(/usr/bin/promtool --version 2>&1 | head -n1))"
