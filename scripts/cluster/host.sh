# The local cluster's footprint on the host, outside its processes: the guard
# rules, the bridge and node address, the daemons (each a plain background
# process with a pid file) and the cleanup of everything the kubelet, CNI and
# containerd leave behind. Sourced by scripts/cluster/cluster.sh.

# ---- guard: no packet of the cluster's range leaves the machine ----------------

# Two mangle chains, hooked first into PREROUTING (by input interface) and
# POSTROUTING (by output interface): traffic of 198.18.0.0/15 may cross only
# lo, the pods' bridge and its veth ports; on any other interface it is
# dropped. POSTROUTING's mangle runs before nat's, so a pod's packet is
# caught before any masquerade could hide its source.
GUARD_CHAINS=(PREROUTING:TERN-GUARD-IN:-i POSTROUTING:TERN-GUARD-OUT:-o)

guard_up() {
  local spec hook chain dir
  for spec in "${GUARD_CHAINS[@]}"; do
    IFS=: read -r hook chain dir <<<"$spec"
    iptables -w -t mangle -N "$chain" 2>/dev/null || iptables -w -t mangle -F "$chain"
    iptables -w -t mangle -A "$chain" "$dir" lo -j RETURN
    iptables -w -t mangle -A "$chain" "$dir" "$BRIDGE" -j RETURN
    iptables -w -t mangle -A "$chain" "$dir" veth+ -j RETURN
    iptables -w -t mangle -A "$chain" -s "$GUARD_RANGE" -j DROP
    iptables -w -t mangle -A "$chain" -d "$GUARD_RANGE" -j DROP
    iptables -w -t mangle -C "$hook" -j "$chain" 2>/dev/null || iptables -w -t mangle -I "$hook" 1 -j "$chain"
  done
}

guard_present() {
  local spec hook chain dir
  for spec in "${GUARD_CHAINS[@]}"; do
    IFS=: read -r hook chain dir <<<"$spec"
    iptables -w -t mangle -C "$hook" -j "$chain" 2>/dev/null || return 1
  done
}

guard_down() {
  local spec hook chain dir
  for spec in "${GUARD_CHAINS[@]}"; do
    IFS=: read -r hook chain dir <<<"$spec"
    while iptables -w -t mangle -D "$hook" -j "$chain" 2>/dev/null; do :; done
    iptables -w -t mangle -F "$chain" 2>/dev/null || true
    iptables -w -t mangle -X "$chain" 2>/dev/null || true
  done
}

# ---- network -------------------------------------------------------------------

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$BRIDGE_ADDR/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip addr replace "$NODE_IP/32" dev lo
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$BRIDGE_ADDR"
  # Bridged pod-to-pod traffic must pass iptables (Service NAT); the value
  # found is put back by network_down.
  local saved="$CLUSTER_RUN/bridge-nf-call-iptables"
  [[ -f "$saved" ]] || cat /proc/sys/net/bridge/bridge-nf-call-iptables >"$saved"
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  echo 1 >/proc/sys/net/ipv4/ip_forward
}

network_down() {
  echo 0 >/proc/sys/net/ipv4/ip_forward
  local saved="$CLUSTER_RUN/bridge-nf-call-iptables"
  if [[ -f "$saved" ]]; then cat "$saved" >/proc/sys/net/bridge/bridge-nf-call-iptables; fi
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  # veths whose pod end was never cleaned (a netns deleted under them) go with their netns.
  local ns
  for ns in /var/run/netns/cni-*; do
    [[ -e "$ns" ]] || continue
    ip netns delete "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
  done
  # libcni's cache of what it attached (containerd names its loopback
  # attachment cni-loopback).
  rm -rf /var/lib/cni/networks/"$CNI_NETWORK" /var/lib/cni/results/"$CNI_NETWORK"-* /var/lib/cni/results/cni-loopback-* 2>/dev/null || true
  rmdir /var/lib/cni/networks /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}

# Rules of kube-proxy, the kubelet and the CNI plugins (chains KUBE-*, CNI-*),
# removed whether or not those programs are still here to clean up after
# themselves: every line of iptables-save naming such a chain is dropped and
# the table is restored atomically.
iptables_cleanup() {
  local table saved
  for table in filter nat mangle raw; do
    saved="$(iptables-save -t "$table" 2>/dev/null)" || continue
    grep -qE '(KUBE-|CNI-)' <<<"$saved" || continue
    grep -vE '(KUBE-|CNI-)' <<<"$saved" | iptables-restore -w -T "$table"
  done
}

# ---- daemons -------------------------------------------------------------------

# start_daemon <name> <command...>: runs it in the background in a session of
# its own (so the caller's Ctrl-C or process group does not reach it), output
# to logs/<name>.log, pid in run/<name>.pid. The pid is the daemon's own:
# $! right after `&`, never inside a subshell.
start_daemon() {
  local name="$1"; shift
  setsid "$@" >>"$CLUSTER_LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$CLUSTER_RUN/$name.pid"
}

daemon_pid() {
  local f="$CLUSTER_RUN/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

daemon_running() { daemon_pid "$1" >/dev/null; }

# stop_daemon <name> [grace_s]: SIGTERM, then SIGKILL after the grace.
stop_daemon() {
  local name="$1" grace="${2:-10}" pid
  pid="$(daemon_pid "$name")" || { rm -f "$CLUSTER_RUN/$name.pid"; return 0; }
  kill "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$CLUSTER_RUN/$name.pid"
}

# Containers outlive containerd (their shims are separate processes): kill
# every task in the k8s.io namespace while containerd still answers, then any
# shim still bound to our socket.
containers_down() {
  if [[ -S "$CONTAINERD_SOCK" ]] && daemon_running containerd; then
    local ctr_=(ctr --address "$CONTAINERD_SOCK" -n k8s.io) id
    for id in $("${ctr_[@]}" task ls -q 2>/dev/null); do
      "${ctr_[@]}" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 1
    for id in $("${ctr_[@]}" task ls -q 2>/dev/null); do
      "${ctr_[@]}" task delete -f "$id" >/dev/null 2>&1 || true
    done
  fi
  local pids
  pids="$(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true)"
  if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
  fi
}

# containerd 1.6 keeps shim sockets and runc's state under /run/containerd
# whatever its configured state dir; the k8s.io namespace there is ours when
# no other containerd runs.
containerd_run_down() {
  pgrep -x containerd >/dev/null && return 0
  rm -rf /run/containerd/runc/k8s.io
  rm -f /run/containerd/s/* 2>/dev/null || true
  rmdir /run/containerd/runc /run/containerd/s /run/containerd 2>/dev/null || true
}

# Every mount under the cluster's directories (the kubelet's volumes, the
# snapshots' overlays, containerd's shm), deepest first.
mounts_down() {
  local m
  for _ in 1 2 3; do
    local left=0
    while read -r m; do
      left=1
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v a="$CLUSTER_DIR/" -v b="/run/tern-containerd/" '
      { p = $2; gsub(/\\040/, " ", p) }
      index(p, a) == 1 || index(p, b) == 1 { print p }' /proc/self/mounts | sort -r)
    ((left)) || break
  done
}

# The kubelet's pod cgroups (cgroupfs driver: kubepods/ under each v1
# controller); empty once every container is gone.
cgroups_down() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}
