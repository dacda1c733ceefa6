# The single node's Kubernetes: certificates, configuration files and the
# daemons (containerd, etcd, apiserver, controller-manager, scheduler,
# kubelet, kube-proxy). Sourced by scripts/cluster/cluster.sh.

# ---- certificates --------------------------------------------------------------

# One CA signs the apiserver's serving certificate and one client certificate
# (O=system:masters) that every component and the operator's kubeconfig use:
# a local single-user cluster, not a model for a shared one.
pki_up() {
  mkdir -p "$CLUSTER_PKI"
  local p="$CLUSTER_PKI"
  [[ -f "$p/ca.crt" && -f "$p/apiserver.crt" && -f "$p/admin.crt" && -f "$p/sa.key" ]] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tern-local-cluster-ca" \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  sign_cert apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
  sign_cert admin "/O=system:masters/CN=tern-admin" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  chmod 600 "$p"/*.key
}

sign_cert() { # <name> <subject> <extensions>
  local p="$CLUSTER_PKI"
  openssl req -new -newkey rsa:2048 -nodes -subj "$2" -keyout "$p/$1.key" -out "$p/$1.csr" 2>/dev/null
  openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 3650 \
    -extfile <(printf '%s\n' "$3") -out "$p/$1.crt" 2>/dev/null
  rm -f "$p/$1.csr"
}

kubeconfig_up() {
  cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tern-local
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $CLUSTER_PKI/ca.crt
users:
- name: tern-admin
  user:
    client-certificate: $CLUSTER_PKI/admin.crt
    client-key: $CLUSTER_PKI/admin.key
contexts:
- name: tern-local
  context: {cluster: tern-local, user: tern-admin}
current-context: tern-local
EOF
  chmod 600 "$KUBECONFIG_FILE"
}

# ---- containerd ----------------------------------------------------------------

containerd_up() {
  daemon_running containerd && return 0
  mkdir -p "$CLUSTER_DIR/containerd/root" /run/tern-containerd "$CLUSTER_DIR/cni/net.d"
  cat >"$CLUSTER_DIR/containerd/config.toml" <<EOF
version = 2
root = "$CLUSTER_DIR/containerd/root"
state = "/run/tern-containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj would fail every sandbox.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
EOF
  cat >"$CLUSTER_DIR/cni/net.d/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "198.18.1.1", "rangeEnd": "198.18.255.254", "gateway": "$BRIDGE_ADDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  start_daemon containerd containerd --config "$CLUSTER_DIR/containerd/config.toml"
  tern_wait_until 30 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 ||
    tern_die cluster "containerd did not start in 30 s; see $CLUSTER_LOGS/containerd.log"
}

# ---- control plane -------------------------------------------------------------

etcd_up() {
  daemon_running etcd && return 0
  start_daemon etcd etcd --name tern --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "tern=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --quota-backend-bytes 2147483648 --snapshot-count 10000 --log-level warn
}

apiserver_up() {
  daemon_running kube-apiserver && return 0
  local p="$CLUSTER_PKI"
  start_daemon kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$p/ca.crt" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --kubelet-client-certificate "$p/admin.crt" --kubelet-client-key "$p/admin.key" \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --kubelet-preferred-address-types InternalIP \
    --profiling=false --v=1
}

controllers_up() {
  local p="$CLUSTER_PKI"
  daemon_running kube-controller-manager || start_daemon kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range "$SERVICE_CIDR" \
    --profiling=false --v=1
  daemon_running kube-scheduler || start_daemon kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$KUBECONFIG_FILE" --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1
}

kubelet_up() {
  daemon_running kubelet && return 0
  local d="$CLUSTER_DIR/kubelet"
  mkdir -p "$d/root" "$CLUSTER_DIR/pod-logs"
  # Pods resolve through CoreDNS only; this file is what a pod with
  # dnsPolicy Default (CoreDNS itself) gets: no upstream at all.
  printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$d/resolv.conf"
  cat >"$d/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $CLUSTER_PKI/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
failSwapOn: false
resolvConf: $d/resolv.conf
clusterDomain: cluster.local
clusterDNS: [$DNS_SERVICE_IP]
podLogsDir: $CLUSTER_DIR/pod-logs
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
evictionPressureTransitionPeriod: 10s
maxPods: 110
shutdownGracePeriod: 0s
EOF
  start_daemon kubelet "$K8S_BIN/kubelet" --config "$d/config.yaml" --kubeconfig "$KUBECONFIG_FILE" \
    --root-dir "$d/root" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v=1
}

kube_proxy_up() {
  daemon_running kube-proxy && return 0
  cat >"$CLUSTER_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0}
EOF
  start_daemon kube-proxy "$K8S_BIN/kube-proxy" --config "$CLUSTER_DIR/kube-proxy.yaml" --v=1
}

control_plane_down() {
  stop_daemon kube-proxy 5
  stop_daemon kubelet 10
  containers_down
  stop_daemon kube-scheduler 5
  stop_daemon kube-controller-manager 5
  stop_daemon kube-apiserver 10
  stop_daemon etcd 10
  stop_daemon containerd 10
  # kube-proxy's own cleanup of its rules (iptables_cleanup catches the rest).
  if [[ -x "$K8S_BIN/kube-proxy" ]]; then "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
}
