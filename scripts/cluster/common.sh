# Shared settings of the local cluster scripts (scripts/cluster/*.sh). Source it.
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

K8S_VERSION="${TERN_K8S_VERSION:-v1.34.4}"
COREDNS_VERSION="${TERN_COREDNS_VERSION:-v1.14.7}"
# Built tools live outside the work dir so a fresh clone (and CI on the same
# machine) reuses them; `cluster down` leaves this cache alone.
TERN_CLUSTER_CACHE="${TERN_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tern/cluster}"
K8S_BIN="$TERN_CLUSTER_CACHE/k8s-$K8S_VERSION"

# Everything a running cluster has on the work dir.
CLUSTER_DIR="$TERN_ROOT/.tern/cluster"
CLUSTER_RUN="$CLUSTER_DIR/run"        # pid files, sockets
CLUSTER_LOGS="$CLUSTER_DIR/logs"
CLUSTER_PKI="$CLUSTER_DIR/pki"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
CONTAINERD_SOCK="$CLUSTER_RUN/containerd.sock"

# The network: every address is in the benchmarking range 198.18.0.0/15, so
# nothing here can be confused with a real host, and the guard rules drop any
# packet of that range that would leave through an outside interface.
GUARD_RANGE=198.18.0.0/15
POD_CIDR=198.18.0.0/16
BRIDGE=tern0
BRIDGE_ADDR=198.18.0.1              # the host, as pods see it
SERVICE_CIDR=198.19.0.0/17
API_SERVICE_IP=198.19.0.1
DNS_SERVICE_IP=198.19.0.10
NODE_IP=198.19.255.1                # on lo (no dummy links here)
NODE_NAME=tern-node
ETCD_PORT=23790
CNI_NETWORK=tern-pods

# Host-side pieces the cluster's pods reach as outside services would be.
CLUSTER_PG_PORT="${TERN_CLUSTER_PG_PORT:-5433}"
DEMO_SINK_PORT="${TERN_CLUSTER_SINK_PORT:-2526}"

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
# The NATS release is pinned once, in scripts/install-nats.sh.
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-$(sed -n 's/^NATS_SERVER_VERSION="\${NATS_SERVER_VERSION:-\(v[0-9.]*\)}"$/\1/p' "$TERN_ROOT/scripts/install-nats.sh")}"
