# The cluster's own images, built here from scratch (no registry is ever
# asked): pause (the sandbox), CoreDNS and NATS, each one static binary; and
# the Tern image from `npm run image`. All imported into the node's
# containerd. Sourced by scripts/cluster/cluster.sh.

PAUSE_IMAGE=tern.local/pause:1
COREDNS_IMAGE="tern.local/coredns:${COREDNS_VERSION#v}"
NATS_IMAGE="tern.local/nats:${NATS_SERVER_VERSION#v}"
IMAGE_CACHE="$TERN_CLUSTER_CACHE/images"

# The sandbox process: sleeps until SIGINT/SIGTERM, reaps nothing (pods here
# do not share a PID namespace).
pause_binary() {
  local out="$TERN_CLUSTER_CACHE/pause"
  [[ -x "$out" ]] && { echo "$out"; return; }
  tern_have gcc || tern_apt_install cluster gcc libc6-dev
  local src
  src="$(mktemp --suffix .c)"
  cat >"$src" <<'C'
#include <signal.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  for (;;) pause();
}
C
  gcc -static -Os -o "$out" "$src"
  rm -f "$src"
  echo "$out"
}

# The pinned nats-server that scripts/install-nats.sh builds for the tests
# (Go, CGO_ENABLED=0: static, fit for a scratch image).
nats_binary() {
  local bin="$TERN_ROOT/.tern/bin/nats-server"
  bash "$TERN_ROOT/scripts/install-nats.sh" >&2
  [[ -f "$bin" && ! -L "$bin" ]] ||
    tern_die cluster "$bin is a link to another nats-server (TERN_NATS_SERVER_BIN, or no Go); the cluster's NATS image needs the pinned static build: unset TERN_NATS_SERVER_BIN and run again"
  echo "$bin"
}

buildah_() { buildah --storage-driver vfs --root "$IMAGE_CACHE/storage" --runroot /run/tern-buildah "$@"; }

# scratch_image <name:tag> <archive> <binary> <path in image> [entrypoint args...]
scratch_image() {
  local ref="$1" archive="$2" bin="$3" dest="$4"; shift 4
  [[ -f "$archive" && "$archive" -nt "$bin" ]] && return 0
  local ctr entry
  ctr="$(buildah_ from scratch)"
  buildah_ copy "$ctr" "$bin" "$dest" >/dev/null
  entry="$(printf '"%s",' "$dest" "$@")"
  buildah_ config --entrypoint "[${entry%,}]" --user 65534:65534 "$ctr"
  buildah_ commit --rm -q "$ctr" "$ref" >/dev/null
  rm -f "$archive"
  buildah_ push -q "$ref" "oci-archive:$archive:$ref" >/dev/null
  buildah_ rmi -f "$ref" >/dev/null 2>&1 || true
}

images_build() {
  mkdir -p "$IMAGE_CACHE"
  local pause nats
  pause="$(pause_binary)" || exit 1
  nats="$(nats_binary)" || exit 1
  scratch_image "$PAUSE_IMAGE" "$IMAGE_CACHE/pause.oci.tar" "$pause" /pause
  scratch_image "$COREDNS_IMAGE" "$IMAGE_CACHE/coredns-$COREDNS_VERSION.oci.tar" "$K8S_BIN/coredns" /coredns
  scratch_image "$NATS_IMAGE" "$IMAGE_CACHE/nats-$NATS_SERVER_VERSION.oci.tar" "$nats" /nats-server
}

# image_import <archive> <name:tag>: into the node's containerd, unless that
# exact image (same digest) is there already.
image_import() {
  local archive="$1" ref="$2" ctr_=(ctr --address "$CONTAINERD_SOCK" -n k8s.io) have
  local stamp
  stamp="$CLUSTER_RUN/imported-$(basename "$archive")"
  # (The list is read whole first: `grep -q` on a pipe would SIGPIPE ctr under pipefail.)
  have="$("${ctr_[@]}" image ls -q 2>/dev/null || true)"
  if grep -qxF "$ref" <<<"$have" && [[ "$archive" -ot "$stamp" ]]; then
    return 0
  fi
  "${ctr_[@]}" image import "$archive" >/dev/null
  have="$("${ctr_[@]}" image ls -q)"
  grep -qxF "$ref" <<<"$have" || tern_die cluster "$archive did not import as $ref"
  touch "$stamp"
}

images_import() {
  image_import "$IMAGE_CACHE/pause.oci.tar" "$PAUSE_IMAGE"
  image_import "$IMAGE_CACHE/coredns-$COREDNS_VERSION.oci.tar" "$COREDNS_IMAGE"
  image_import "$IMAGE_CACHE/nats-$NATS_SERVER_VERSION.oci.tar" "$NATS_IMAGE"
}
