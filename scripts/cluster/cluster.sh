#!/usr/bin/env bash
# `npm run cluster -- <up|down|status>`: Tern in a real single-node Kubernetes
# on this machine (docs/local-cluster.md says what runs where and why).
#
#   up      installs and builds what is missing (Kubernetes, CoreDNS,
#           containerd, CNI plugins, helm, the images), starts the node,
#           NATS (a StatefulSet) and Postgres (on the host, reached by the
#           pods as an external database), installs Tern with
#           `helm install --wait` (namespace tern, release tern), routes mail
#           for `.test` to a demo sink and sends one message through.
#           Idempotent: on a running cluster it upgrades the release.
#   up --no-release
#           the same without Tern: the cluster, NATS, Postgres, the images
#           and the Secrets a user makes before `helm install` (what the
#           cluster tests start from). On a running cluster it uninstalls the
#           release and empties Postgres and NATS.
#   down    stops and removes everything `up` made, on and off the work dir;
#           the build caches (~/.cache/tern) stay.
#   status  what runs.
#
# Needs root (it manages network interfaces, iptables and mounts).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/cluster/common.sh
source "$HERE/common.sh"
# shellcheck source=scripts/cluster/host.sh
source "$HERE/host.sh"
# shellcheck source=scripts/cluster/images.sh
source "$HERE/images.sh"
# shellcheck source=scripts/cluster/control-plane.sh
source "$HERE/control-plane.sh"
# shellcheck source=scripts/cluster/tern.sh
source "$HERE/tern.sh"
cd "$TERN_ROOT"
export PATH="$TERN_ROOT/node_modules/.bin:$TERN_ROOT/.tern/bin:$K8S_BIN:$PATH"

step_started=$SECONDS
step() { tern_log cluster "$1 (+$((SECONDS - step_started)) s)"; }

need_root() {
  tern_is_root || tern_die cluster "run as root: the cluster manages network interfaces, iptables rules and mounts (sudo npm run cluster -- $1)"
}

host_packages() {
  local need=() p
  for p in containerd:containerd runc:runc etcd:etcd-server buildah:buildah debootstrap:debootstrap \
    iptables:iptables ip:iproute2 conntrack:conntrack openssl:openssl gcc:gcc; do
    tern_have "${p%%:*}" || need+=("${p#*:}")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap ]] || need+=(containernetworking-plugins)
  [[ -f /usr/include/stdio.h ]] || need+=(libc6-dev)
  if ((${#need[@]})); then tern_apt_install cluster "${need[@]}"; fi
}

wait_for() { # <timeout_s> <what> <command...>
  local t="$1" what="$2"; shift 2
  tern_wait_until "$t" "$@" >/dev/null 2>&1 || tern_die cluster "$what did not come up in $t s; see $CLUSTER_LOGS/"
}

node_ready() {
  [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

cluster_up() {
  local with_release=1
  case "${1:-}" in
    "") ;;
    --no-release) with_release=0 ;;
    *) tern_die cluster "up: unknown option \"$1\" (usage: npm run cluster -- up [--no-release])" ;;
  esac
  need_root up
  mkdir -p "$CLUSTER_RUN" "$CLUSTER_LOGS"
  if ! daemon_running kube-apiserver; then
    # Whatever an earlier run left (killed mid-way, or a session that ended)
    # goes first; then the guard, before anything of the cluster starts.
    teardown quiet
    mkdir -p "$CLUSTER_RUN" "$CLUSTER_LOGS"
  fi
  guard_up
  step "guard rules in place (no packet of $GUARD_RANGE leaves the machine)"
  host_packages
  bash scripts/ensure-deps.sh >/dev/null
  bash scripts/install-helm.sh >/dev/null
  bash "$HERE/build-k8s.sh" >/dev/null
  step "Kubernetes $K8S_VERSION and CoreDNS $COREDNS_VERSION binaries ready"
  images_build
  bash scripts/image.sh >"$CLUSTER_LOGS/image.log" 2>&1 || { tail -n 30 "$CLUSTER_LOGS/image.log" >&2; tern_die cluster "npm run image failed (log: $CLUSTER_LOGS/image.log)"; }
  step "images built"

  network_up
  pki_up
  kubeconfig_up
  containerd_up
  images_import
  tern_image_import
  step "containerd up, images imported"
  etcd_up
  apiserver_up
  wait_for 60 "kube-apiserver" kubectl_ get --raw /readyz
  controllers_up
  kubelet_up
  kube_proxy_up
  wait_for 90 "the node" node_ready
  step "node $NODE_NAME Ready"

  system_addons_up
  step "CoreDNS and NATS ready"
  cluster_postgres_up
  step "Postgres on the host at $BRIDGE_ADDR:$CLUSTER_PG_PORT"
  tern_secrets_up
  cluster_env_write
  if ((with_release)); then
    tern_release_up
    step "Tern installed (helm release tern, namespace tern)"
    demo_up
    step "done"
    cluster_summary
  else
    tern_state_reset
    step "done: no Tern release; Postgres and NATS are empty"
  fi
}

system_addons_up() {
  sed -e "s|\${COREDNS_IMAGE}|$COREDNS_IMAGE|g" -e "s|\${DNS_SERVICE_IP}|$DNS_SERVICE_IP|g" "$HERE/manifests/coredns.yaml" |
    kubectl_ apply -f - >/dev/null
  local vol="$CLUSTER_DIR/volumes/nats-0"
  mkdir -p "$vol"
  chown 65534:65534 "$vol"
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: tern-local}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: tern-local-nats-0}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: tern-local
  claimRef: {namespace: nats, name: data-nats-0}
  hostPath: {path: $vol, type: Directory}
EOF
  sed -e "s|\${NATS_IMAGE}|$NATS_IMAGE|g" "$HERE/manifests/nats.yaml" | kubectl_ apply -f - >/dev/null
  kubectl_ -n kube-system rollout status deploy/coredns --timeout 120s >/dev/null ||
    tern_die cluster "CoreDNS is not ready; kubectl --kubeconfig $KUBECONFIG_FILE -n kube-system describe pods"
  kubectl_ -n nats rollout status statefulset/nats --timeout 120s >/dev/null ||
    tern_die cluster "NATS is not ready; kubectl --kubeconfig $KUBECONFIG_FILE -n nats describe pods"
}

# teardown [quiet]: everything up made, in reverse, whatever state it is in.
teardown() {
  local quiet="${1:-}"
  [[ -n "$quiet" ]] || tern_log cluster "stopping"
  stop_daemon demo-sink 5
  control_plane_down
  cluster_postgres_down
  mounts_down
  cgroups_down
  iptables_cleanup
  network_down
  containerd_run_down
  rm -rf /run/tern-containerd /run/tern-buildah
  # What the cluster wrote on the work dir (the Go and image caches are elsewhere).
  if [[ -d "$CLUSTER_DIR" ]]; then
    mounts_down
    rm -rf "$CLUSTER_DIR" || tern_die cluster "could not remove $CLUSTER_DIR (a mount left?): grep $CLUSTER_DIR /proc/mounts"
  fi
  # Last: the guard stays until no pod can exist any more.
  guard_down
  [[ -n "$quiet" ]] || tern_log cluster "down: no process, mount, network namespace, iptables rule or bridge of the cluster is left"
}

cluster_down() {
  need_root down
  teardown
}

cluster_status() {
  local name state any=0
  for name in containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy postgres demo-sink; do
    if daemon_running "$name"; then state="running (pid $(daemon_pid "$name"))"; any=1; else state="not running"; fi
    printf '  %-24s %s\n' "$name" "$state"
  done
  if guard_present; then echo "  guard rules              in place"; else echo "  guard rules              absent"; fi
  if ((any)) && kubectl_ get --raw /readyz >/dev/null 2>&1; then
    echo
    kubectl_ get nodes -o wide 2>/dev/null || true
    echo
    kubectl_ get pods -A -o wide 2>/dev/null || true
    echo
    "$TERN_ROOT/.tern/bin/helm" --kubeconfig "$KUBECONFIG_FILE" -n tern list 2>/dev/null || true
    echo
    cluster_summary
  elif ((any)); then
    echo "cluster: some daemons run but the apiserver does not answer; \`npm run cluster -- down\` then \`up\`"
    return 1
  else
    echo "cluster: not running (\`npm run cluster -- up\` starts it)"
    return 3
  fi
}

case "${1:-}" in
  up) shift; cluster_up "$@" ;;
  down) cluster_down ;;
  status) cluster_status ;;
  *)
    echo "usage: npm run cluster -- <up [--no-release]|down|status>" >&2
    exit 64
    ;;
esac
