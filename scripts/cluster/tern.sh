# Tern in the local cluster: its Postgres (on the host, reached by the pods
# as an external database), its Secrets, the helm release, and the demo
# (a sink for `.test` on the host, one message through). Sourced by
# scripts/cluster/cluster.sh.

RELEASE=tern
NAMESPACE=tern
HELM="$TERN_ROOT/.tern/bin/helm"
helm_() { "$HELM" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

tern_image_env() {
  local env="$TERN_ROOT/.tern/image/image.env"
  [[ -f "$env" ]] || tern_die cluster "no $env: \`npm run image\` did not write it"
  # shellcheck disable=SC1090
  source "$env"
  [[ -n "${TERN_IMAGE_REPOSITORY:-}" && -n "${TERN_IMAGE_TAG:-}" && -f "${TERN_IMAGE_ARCHIVE:-}" ]] ||
    tern_die cluster "$env lacks TERN_IMAGE_REPOSITORY, TERN_IMAGE_TAG or an existing TERN_IMAGE_ARCHIVE"
}

tern_image_import() {
  tern_image_env
  image_import "$TERN_IMAGE_ARCHIVE" "$TERN_IMAGE_REPOSITORY:$TERN_IMAGE_TAG"
}

# ---- Postgres on the host --------------------------------------------------------

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

cluster_postgres_up() {
  local bin dir sock
  bin="$(tern_pg_bindir)" || { tern_pg_install cluster; bin="$(tern_pg_bindir)"; }
  id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash --user-group postgres
  tern_pg_dirs "$CLUSTER_DIR/postgres" cluster-pg
  dir="$TERN_PG_REAL"
  sock="$TERN_PG_SOCK"
  local pw_file="$CLUSTER_DIR/postgres-password"
  [[ -s "$pw_file" ]] || { openssl rand -hex 16 >"$pw_file"; chmod 600 "$pw_file"; }
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    (cd "$dir" && as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --no-locale >"$CLUSTER_LOGS/initdb.log" 2>&1) ||
      tern_die cluster "initdb failed; see $CLUSTER_LOGS/initdb.log"
    printf 'host all all %s scram-sha-256\n' "$POD_CIDR" >>"$dir/data/pg_hba.conf"
  fi
  if ! daemon_running postgres; then
    (cd "$dir" && start_daemon postgres setpriv --reuid=postgres --regid=postgres --init-groups \
      "$bin/postgres" -D "$dir/data" -p "$CLUSTER_PG_PORT" -c "listen_addresses=$BRIDGE_ADDR" \
      -c "unix_socket_directories=$sock" -c max_connections=200 -c shared_buffers=128MB)
  fi
  wait_for 30 "Postgres" as_postgres "$bin/pg_isready" -q -h "$sock" -p "$CLUSTER_PG_PORT"
  local pw
  pw="$(cat "$pw_file")"
  as_postgres "$bin/psql" -h "$sock" -p "$CLUSTER_PG_PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tern') THEN CREATE ROLE tern LOGIN; END IF;
END \$\$;
ALTER ROLE tern PASSWORD '$pw';
SELECT 'CREATE DATABASE tern OWNER tern' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tern')
\gexec
SQL
}

cluster_postgres_down() {
  stop_daemon postgres 20
  local link="$CLUSTER_DIR/postgres"
  if [[ -L "$link" ]]; then
    rm -rf "$(readlink "$link")"
    rm -f "$link"
  fi
  rm -rf "/tmp/tern-cluster-pg-$(printf '%s' "$TERN_ROOT" | cksum | cut -d' ' -f1)"   # tern_pg_dirs' socket directory, if it made one
}

cluster_pg_url() { printf 'postgres://tern:%s@%s:%s/tern?sslmode=disable' "$(cat "$CLUSTER_DIR/postgres-password")" "$BRIDGE_ADDR" "$CLUSTER_PG_PORT"; }

# ---- the release -----------------------------------------------------------------

admin_token() {
  local f="$CLUSTER_DIR/admin-token"
  [[ -s "$f" ]] || { openssl rand -base64 24 | tr -d '\n=' | tr '+/' '-_' >"$f"; echo >>"$f"; chmod 600 "$f"; }
  tr -d '\n' <"$f"
}

# The Secrets a user creates before `helm install` (the chart reads existing
# ones by default): Postgres and NATS URLs, the operators' tokens, and the
# SMTP certificate (self-signed here).
tern_secrets_up() {
  kubectl_ create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl_ apply -f - >/dev/null
  local tls="$CLUSTER_PKI/smtp"
  if [[ ! -f "$tls.crt" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=mx.tern.test" \
      -addext "subjectAltName=DNS:mx.tern.test" -keyout "$tls.key" -out "$tls.crt" 2>/dev/null
  fi
  {
    kubectl_ -n "$NAMESPACE" create secret generic tern-postgres --from-literal=url="$(cluster_pg_url)" --dry-run=client -o yaml
    echo ---
    kubectl_ -n "$NAMESPACE" create secret generic tern-nats --from-literal=url=nats://nats.nats.svc.cluster.local:4222 --dry-run=client -o yaml
    echo ---
    kubectl_ -n "$NAMESPACE" create secret generic tern-admin-tokens --from-literal=tokens="operator:$(admin_token)" --dry-run=client -o yaml
    echo ---
    kubectl_ -n "$NAMESPACE" create secret tls tern-tls --cert "$tls.crt" --key "$tls.key" --dry-run=client -o yaml
  } | kubectl_ apply -f - >/dev/null
}

# helm install (or upgrade, when the release is there) with the local
# values and the image just built; extra arguments go to helm.
tern_release_up() {
  tern_image_env
  local verb=install
  helm_ -n "$NAMESPACE" status "$RELEASE" >/dev/null 2>&1 && verb=upgrade
  helm_ "$verb" "$RELEASE" "$TERN_ROOT/charts/tern" -n "$NAMESPACE" --wait --timeout 5m \
    -f "$HERE/values-local.yaml" \
    --set "image.repository=$TERN_IMAGE_REPOSITORY" --set "image.tag=$TERN_IMAGE_TAG" \
    --set "delivery.networkPolicy.extraEgressPorts[0]=$DEMO_SINK_PORT" \
    "$@" >"$CLUSTER_LOGS/helm.log" 2>&1 || {
    tail -n 20 "$CLUSTER_LOGS/helm.log" >&2
    kubectl_ -n "$NAMESPACE" get pods -o wide >&2 || true
    tern_die cluster "helm $verb failed (log: $CLUSTER_LOGS/helm.log; kubectl --kubeconfig $KUBECONFIG_FILE -n $NAMESPACE describe pods)"
  }
}

# Without a release, Postgres and NATS as a first install finds them: the
# release uninstalled, its database and NATS's store emptied.
tern_state_reset() {
  stop_daemon demo-sink 5
  if helm_ -n "$NAMESPACE" status "$RELEASE" >/dev/null 2>&1; then
    helm_ -n "$NAMESPACE" uninstall "$RELEASE" --wait --timeout 5m >/dev/null
  fi
  kubectl_ -n "$NAMESPACE" delete jobs,pods,events --all --wait=true --timeout 120s >/dev/null 2>&1 || true
  local bin
  bin="$(tern_pg_bindir)"
  tern_pg_dirs "$CLUSTER_DIR/postgres" cluster-pg
  as_postgres "$bin/psql" -h "$TERN_PG_SOCK" -p "$CLUSTER_PG_PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 >/dev/null <<SQL
DROP DATABASE IF EXISTS tern WITH (FORCE);
CREATE DATABASE tern OWNER tern;
SQL
  if [[ -n "$(ls -A "$CLUSTER_DIR/volumes/nats-0" 2>/dev/null)" ]]; then
    kubectl_ -n nats scale statefulset nats --replicas 0 >/dev/null
    kubectl_ -n nats wait --for=delete pod/nats-0 --timeout 60s >/dev/null 2>&1 || true
    find "$CLUSTER_DIR/volumes/nats-0" -mindepth 1 -delete
    kubectl_ -n nats scale statefulset nats --replicas 1 >/dev/null
    kubectl_ -n nats rollout status statefulset/nats --timeout 120s >/dev/null
  fi
}

# What the cluster tests and other tools need to find the cluster (sourced
# by tests/cluster; one NAME=value a line).
cluster_env_write() {
  tern_image_env
  cat >"$CLUSTER_DIR/env" <<EOF
KUBECONFIG=$KUBECONFIG_FILE
KUBECTL=$K8S_BIN/kubectl
HELM=$HELM
CHART=$TERN_ROOT/charts/tern
VALUES=$HERE/values-local.yaml
NAMESPACE=$NAMESPACE
RELEASE=$RELEASE
IMAGE_REPOSITORY=$TERN_IMAGE_REPOSITORY
IMAGE_TAG=$TERN_IMAGE_TAG
ADMIN_TOKEN_FILE=$CLUSTER_DIR/admin-token
HOST_ADDR=$BRIDGE_ADDR
SINK_PORT=$DEMO_SINK_PORT
NODE_NAME=$NODE_NAME
EOF
}

service_ip() { kubectl_ -n "$NAMESPACE" get service "$1" -o jsonpath='{.spec.clusterIP}'; }

# A Ready pod of a component (the gRPC Services are headless: no ClusterIP).
pod_ip() {
  kubectl_ -n "$NAMESPACE" get pods -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=$1" \
    --field-selector status.phase=Running -o jsonpath='{.items[0].status.podIP}'
}

# The CLI against an admin pod (the host, being the node, reaches pod addresses directly).
tern_cli() {
  TERN_ADMIN_ADDR="$(pod_ip admin):7000" TERN_ADMIN_TOKEN_FILE="$CLUSTER_DIR/admin-token" \
    node --import tsx "$TERN_ROOT/cli/src/main.ts" "$@"
}

demo_up() {
  if ! daemon_running demo-sink; then
    start_daemon demo-sink node --import tsx "$HERE/demo-sink.ts" "$BRIDGE_ADDR" "$DEMO_SINK_PORT" "$CLUSTER_DIR/sink"
    wait_for 30 "the demo sink" tern_tcp_open "$BRIDGE_ADDR" "$DEMO_SINK_PORT"
  fi
  tern_cli route set .test --kind smarthost --target "$BRIDGE_ADDR:$DEMO_SINK_PORT" --tls-policy none >/dev/null
  node --import tsx "$HERE/demo-send.ts" "$(service_ip tern-smtp)" 25 "$CLUSTER_DIR/sink"
}

cluster_summary() {
  local smtp
  smtp="$(service_ip tern-smtp 2>/dev/null || true)"
  cat <<EOF

Tern runs in the local cluster (namespace $NAMESPACE, release $RELEASE):
  kubectl          export KUBECONFIG=$KUBECONFIG_FILE   (kubectl: $K8S_BIN/kubectl)
  SMTP (MX)        ${smtp:-?}:25   (Service tern-smtp; the host reaches ClusterIPs directly)
  admin API        kubectl -n $NAMESPACE port-forward svc/tern-admin 7000:7000   (token in $CLUSTER_DIR/admin-token)
  demo sink        $BRIDGE_ADDR:$DEMO_SINK_PORT   (every .test domain; messages in $CLUSTER_DIR/sink/)
  Postgres         $BRIDGE_ADDR:$CLUSTER_PG_PORT   (on the host; URL in Secret tern/tern-postgres)

Try it:
  swaks --server ${smtp:-?}:25 --from you@sender.test --to friend@example.test
  kubectl -n $NAMESPACE port-forward svc/tern-admin 7000:7000 &
  TERN_ADMIN_ADDR=127.0.0.1:7000 TERN_ADMIN_TOKEN_FILE=$CLUSTER_DIR/admin-token npx tern queue ls
  npm run cluster -- down
EOF
}
