#!/usr/bin/env bash
# `npm run image`: builds the one Tern image (the Dockerfile's recipe) with the
# builder this machine has, and writes
#
#   .tern/image/tern.oci.tar   the image as an archive (OCI with buildah)
#   .tern/image/image.env      TERN_IMAGE_REPOSITORY, TERN_IMAGE_TAG,
#                              TERN_IMAGE_ARCHIVE, TERN_IMAGE_ARCHIVE_FORMAT
#
# With Docker (a `docker info` that succeeds) it is `docker build` of the
# Dockerfile plus `docker save`. Without Docker it is buildah (Debian's; apt-get
# installs it and debootstrap when missing, so root), and no registry is ever
# pulled from:
#
#   base   debootstrap --variant=minbase bookworm (+ ca-certificates) from the
#          machine's own apt mirror, the repo's pinned Node 24 binary
#          (node_modules/node) as /usr/local/bin/node, the user tern
#          (uid/gid 10001), docs/man/locales/apt lists trimmed. Cached under
#          ${XDG_CACHE_HOME:-~/.cache}/tern/image keyed by Node version and
#          BASE_RECIPE, so other clones on the machine reuse it. It holds
#          the bookworm release as the mirror has it (debootstrap takes no
#          bookworm-security/-updates) until the key changes or the cache
#          is deleted.
#   /app   what the Dockerfile's build stage puts in /out: `npm run build`,
#          the CLI bundle, production dependencies (`npm ci --omit=dev` in a
#          staging directory, never in the developer's node_modules), each
#          workspace's package.json, dist/ and migrations/.
#   image  the base and /app as two layers, scripts/image/tern-entry (the same
#          file the Dockerfile copies), user 10001:10001, the Dockerfile's ports.
#
# The tag is the chart's appVersion plus a content hash (buildah: of /app, the
# base and this recipe; Docker: of the image id), so a changed build gets a new
# tag and an unchanged one keeps its tag (the archive is then left as it is;
# TERN_IMAGE_FORCE=1 rebuilds it). TERN_IMAGE_REPOSITORY overrides the name
# (default tern.local/tern, which no registry serves).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$TERN_ROOT"

T=image
BASE_RECIPE=1 # bump when the base recipe below changes: a new cache key
REPOSITORY="${TERN_IMAGE_REPOSITORY:-tern.local/tern}"
OUT="$TERN_ROOT/.tern/image"
ARCHIVE="$OUT/tern.oci.tar"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/tern/image"
ENTRY="$TERN_ROOT/scripts/image/tern-entry"
# The image config the Dockerfile declares (ports read from its EXPOSE line).
PORTS="$(sed -n 's/^EXPOSE[[:space:]]\{1,\}//p' Dockerfile)"
[[ -n "$PORTS" ]] || tern_die "$T" "no EXPOSE line in the Dockerfile"
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
APP_VERSION="$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/tern/Chart.yaml)"
[[ -n "$APP_VERSION" ]] || tern_die "$T" "no appVersion in charts/tern/Chart.yaml"
LABELS=(
  "org.opencontainers.image.title=tern"
  "org.opencontainers.image.description=Tern mail transfer platform: every service, migrate and the tern CLI"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.version=$APP_VERSION"
)
started=$SECONDS
mkdir -p "$OUT" "$CACHE"
# One build at a time per machine (the tests and the cluster both run this;
# they share the staging tree, the buildah storage and the archive).
exec 9>"$CACHE/.lock"
flock 9

write_env() { # <tag> <format>
  local tmp="$OUT/image.env.tmp"
  {
    echo "TERN_IMAGE_REPOSITORY=$REPOSITORY"
    echo "TERN_IMAGE_TAG=$1"
    echo "TERN_IMAGE_ARCHIVE=$ARCHIVE"
    echo "TERN_IMAGE_ARCHIVE_FORMAT=$2"
  } >"$tmp"
  mv "$tmp" "$OUT/image.env"
  tern_log "$T" "done in $((SECONDS - started)) s; $OUT/image.env:"
  sed 's/^/  /' "$OUT/image.env"
}

# ---- Docker: the Dockerfile as it is ------------------------------------------
if tern_have docker && docker info >/dev/null 2>&1; then
  tern_log "$T" "docker build (Dockerfile)"
  label_args=()
  for l in "${LABELS[@]}"; do label_args+=(--label "$l"); done
  docker build "${label_args[@]}" -t "$REPOSITORY:build" .
  id="$(docker image inspect -f '{{.Id}}' "$REPOSITORY:build")"
  id="${id#sha256:}"
  tag="$APP_VERSION-${id:0:12}"
  docker tag "$REPOSITORY:build" "$REPOSITORY:$tag"
  docker rmi "$REPOSITORY:build" >/dev/null
  # docker save writes a docker-archive (Docker 25+ adds an OCI index.json).
  docker save -o "$ARCHIVE.tmp" "$REPOSITORY:$tag"
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  write_env "$tag" docker-archive
  exit 0
fi

# ---- buildah ----------------------------------------------------------------------
tern_is_root || tern_die "$T" "without Docker the image is built with debootstrap and buildah, which need root: run as root (or with sudo), or where Docker runs"
missing=()
tern_have buildah || missing+=(buildah)
tern_have debootstrap || missing+=(debootstrap)
((${#missing[@]} == 0)) || tern_apt_install "$T" "${missing[@]}"

bash scripts/ensure-deps.sh
export PATH="$TERN_ROOT/node_modules/.bin:$PATH" # Node 24 (node@24 devDependency)
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

# Nothing may be mounted under a directory we are about to delete (debootstrap
# mounts /proc and /sys in its target while it runs; a run cut short can leave
# them behind).
unmount_under() {
  local dir m
  dir="$(realpath -m "$1")"
  for _ in 1 2 3; do
    m="$(awk -v d="$dir/" 'index($5 "/", d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)"
    [[ -z "$m" ]] && return 0
    while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done <<<"$m"
  done
  tern_die "$T" "still mounted under $dir: $m"
}
safe_rm() { # rm -rf, after unmounting anything below
  local d
  for d in "$@"; do
    [[ -e "$d" ]] || continue
    unmount_under "$d"
    rm -rf --one-file-system "$d"
  done
}

# The bookworm mirror of this machine's apt sources (one-line .list files or
# deb822 .sources), else deb.debian.org.
apt_mirror() {
  local f uri
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    uri="$(awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                              if ($(i + 1) == "bookworm") { print $i; exit } }' "$f")"
    [[ -n "$uri" ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    uri="$(awk 'BEGIN { RS = ""; FS = "\n" }
      { types = uris = suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^#/) continue
          split($i, kv, ":"); k = tolower(kv[1]); v = substr($i, length(kv[1]) + 2); gsub(/^[ \t]+|[ \t]+$/, "", v)
          if (k == "types") types = v; else if (k == "uris") uris = v
          else if (k == "suites") suites = v; else if (k == "enabled") enabled = tolower(v)
        }
        if (enabled != "no" && (" " types " ") ~ / deb / && (" " suites " ") ~ / bookworm /) { split(uris, u, " "); print u[1]; exit }
      }' "$f")"
    [[ -n "$uri" ]] && { echo "$uri"; return; }
  done
  echo http://deb.debian.org/debian
}

# ---- the base rootfs (cached) -------------------------------------------------------
node_arch="$(node -p 'process.platform + "-" + process.arch')"
# The node@24 devDependency's binary: its platform package, or the same file
# hard-linked as node/bin/node (an `npm install` after `npm ci` can drop the
# platform package and leave the link; a shell stub there is not a binary).
NODE_BIN=""
for candidate in "$TERN_ROOT/node_modules/node/node_modules/node-$node_arch/bin/node" "$TERN_ROOT/node_modules/node/bin/node"; do
  if [[ -x "$candidate" && "$(head -c 4 "$candidate")" == $'\x7fELF' ]]; then NODE_BIN="$candidate"; break; fi
done
[[ -n "$NODE_BIN" ]] || tern_die "$T" "no Node binary in node_modules/node (the node@24 devDependency): run npm ci"
NODE_VERSION="$("$NODE_BIN" --version)"
[[ "$NODE_VERSION" == v24.* ]] || tern_die "$T" "$NODE_BIN is Node $NODE_VERSION, not 24"
pinned="v$(node -p 'require("./node_modules/node/package.json").version')"
[[ "$NODE_VERSION" == "$pinned" ]] || tern_die "$T" "$NODE_BIN is $NODE_VERSION but node_modules/node is $pinned"
BASE_KEY="bookworm-${node_arch}-node${NODE_VERSION#v}-r$BASE_RECIPE"
BASE_DIR="$CACHE/base/$BASE_KEY"

build_base() {
  local tmp="$BASE_DIR.tmp" mirror r
  safe_rm "$tmp"
  mkdir -p "$tmp"
  r="$tmp/rootfs"
  mirror="$(apt_mirror)"
  tern_log "$T" "base: debootstrap --variant=minbase bookworm from $mirror"
  if ! debootstrap --variant=minbase --include=ca-certificates bookworm "$r" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    unmount_under "$tmp"
    tail -n 20 "$tmp/debootstrap.log" >&2
    tern_die "$T" "debootstrap failed (log: $tmp/debootstrap.log)"
  fi
  unmount_under "$r"
  # The user the Dockerfile creates, with the same commands.
  chroot "$r" groupadd --system --gid 10001 tern
  chroot "$r" useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tern
  # Node 24 where the node images have it.
  install -m 0755 "$NODE_BIN" "$r/usr/local/bin/node"
  local v
  v="$(chroot "$r" /usr/local/bin/node --version)"
  [[ "$v" == "$NODE_VERSION" ]] || tern_die "$T" "node in the base says $v, expected $NODE_VERSION"
  tern_log "$T" "base: node $v"
  # Trim: apt lists and caches, docs (copyright files stay), man/info pages,
  # locales, logs; and keep later dpkg installs from bringing them back.
  mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
  cat >"$r/etc/dpkg/dpkg.cfg.d/tern-slim" <<'EOF'
# Added by tern scripts/image.sh: no docs, man pages or locales in the image.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian \
    "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old \
    "$r"/var/lib/dpkg/*-old "$r"/var/log/* "$r"/tmp/* "$r"/var/tmp/* \
    "$r"/dev/* "$r"/proc/* "$r"/sys/* "$r"/run/*
  mkdir -p "$r/var/lib/apt/lists/partial"
  mv "$tmp/debootstrap.log" "$tmp/debootstrap.log.done"
  mv "$tmp" "$BASE_DIR"
}

if [[ ! -d "$BASE_DIR/rootfs" ]]; then
  t0=$SECONDS
  build_base
  tern_log "$T" "base: built in $((SECONDS - t0)) s, $(du -sh "$BASE_DIR/rootfs" | cut -f1), cached at $BASE_DIR"
else
  tern_log "$T" "base: cached $BASE_DIR"
fi
# Older bases (another Node or recipe) are not needed any more.
for d in "$CACHE"/base/*; do
  [[ -e "$d" && "$d" != "$BASE_DIR" ]] && { tern_log "$T" "base: removing stale $d"; safe_rm "$d"; }
done

# ---- /app: what the Dockerfile's build stage puts in /out ---------------------------
tern_log "$T" "app: npm run build, CLI bundle"
npm run build --silent -- --output-logs=errors-only
(cd cli && node ../scripts/bundle.mjs src/main.ts tern.js)
for s in ingress policy queue delivery bounce webhooks admin; do
  [[ -f "services/$s/dist/main.js" ]] || tern_die "$T" "missing services/$s/dist/main.js"
done
[[ -f libs/db/dist/migrate.js && -f cli/dist/tern.js ]] || tern_die "$T" "missing libs/db/dist/migrate.js or cli/dist/tern.js"

# Production dependencies, installed in a staging directory from the manifests
# and the lockfile (cached by their hash; the npm cache makes it offline).
workspaces=()
for d in libs/* services/* cli tests; do [[ -f "$d/package.json" ]] && workspaces+=("$d"); done
# Keyed by the lockfile and the manifests' dependency fields (not their scripts).
deps_key="$({
  cat package-lock.json
  node -e 'for (const f of process.argv.slice(1)) { const p = require(require("path").resolve(f));
    console.log(f, JSON.stringify(["name", "version", "workspaces", "overrides", "dependencies", "devDependencies",
      "optionalDependencies", "peerDependencies", "bundleDependencies"].map((k) => p[k]))); }' \
    package.json "${workspaces[@]/%//package.json}"
} | sha256sum | cut -c1-16)"
DEPS="$CACHE/deps/$deps_key"
if [[ ! -d "$DEPS/node_modules" ]]; then
  tern_log "$T" "app: npm ci --omit=dev (staging $DEPS)"
  safe_rm "$DEPS.tmp"
  mkdir -p "$DEPS.tmp"
  cp package.json package-lock.json "$DEPS.tmp/"
  for d in "${workspaces[@]}"; do mkdir -p "$DEPS.tmp/$d"; cp "$d/package.json" "$DEPS.tmp/$d/"; done
  # As in the Dockerfile: npm 11 may refuse `npm ci` over other platforms'
  # optional binaries (npm/cli#4828); then install from the same lockfile.
  if ! (cd "$DEPS.tmp" && npm ci --omit=dev --prefer-offline >"$DEPS.tmp/npm.log" 2>&1); then
    (cd "$DEPS.tmp" && npm install --no-save --omit=dev --prefer-offline >>"$DEPS.tmp/npm.log" 2>&1) ||
      { tail -n 20 "$DEPS.tmp/npm.log" >&2; tern_die "$T" "npm ci --omit=dev failed in $DEPS.tmp"; }
  fi
  mv "$DEPS.tmp" "$DEPS"
fi
for d in "$CACHE"/deps/*; do [[ "$d" != "$DEPS" ]] && safe_rm "$d"; done

BUILD="$OUT/build"
APP="$BUILD/app"
safe_rm "$BUILD"
mkdir -p "$APP"
cp -a package.json "$DEPS/node_modules" "$APP/"
for d in libs/* services/* cli; do
  [[ -f "$d/package.json" ]] || continue
  mkdir -p "$APP/$d"
  cp "$d/package.json" "$APP/$d/"
  for sub in dist migrations; do [[ -e "$d/$sub" ]] && cp -a "$d/$sub" "$APP/$d/"; done
  [[ -e "$DEPS/$d/node_modules" ]] && cp -a "$DEPS/$d/node_modules" "$APP/$d/"
done
# The tests workspace is not in the image; its link would dangle.
rm -f "$APP/node_modules/@tern/tests"
app_real="$(realpath "$APP")"
for l in "$APP"/node_modules/@tern/*; do
  target="$(realpath -m "$l")"
  [[ "$target" == "$app_real/"* && -f "$target/package.json" ]] ||
    tern_die "$T" "$l -> $(readlink "$l") does not resolve inside /app"
done
chown -R 0:0 "$APP"

# The tag: appVersion plus a hash of everything that goes into the image.
content_hash="$({
  echo "$BASE_KEY"
  sha256sum "$ENTRY" scripts/image.sh | cut -d' ' -f1
  echo "$REPOSITORY"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$BUILD" -cf - app | sha256sum
} | sha256sum | cut -c1-12)"
TAG="$APP_VERSION-$content_hash"
IMAGE="$REPOSITORY:$TAG"

if [[ "${TERN_IMAGE_FORCE:-}" != 1 && -f "$ARCHIVE" && -f "$OUT/image.env" ]] &&
  grep -qx "TERN_IMAGE_TAG=$TAG" "$OUT/image.env" && grep -qx "TERN_IMAGE_REPOSITORY=$REPOSITORY" "$OUT/image.env"; then
  tern_log "$T" "$IMAGE is up to date ($ARCHIVE)"
  safe_rm "$BUILD"
  write_env "$TAG" oci-archive
  exit 0
fi

# ---- buildah: base layer (kept in the store), app layer, archive -----------------------
STORE="$CACHE/buildah"
B=(buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs)
# Containers left by a run cut short.
"${B[@]}" rm --all >/dev/null 2>&1 || true
BASE_IMAGE="tern.local/tern-base:$BASE_KEY"
if ! "${B[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  tern_log "$T" "buildah: base layer $BASE_IMAGE"
  ctr="$("${B[@]}" from --name tern-base-build scratch)"
  mnt="$("${B[@]}" mount "$ctr")"
  cp -a "$BASE_DIR/rootfs/." "$mnt/"
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" config --env "PATH=$IMAGE_PATH" --created-by "scripts/image.sh base: debootstrap minbase bookworm, ca-certificates, node $NODE_VERSION, user tern 10001" "$ctr"
  "${B[@]}" commit --quiet --rm --format oci "$ctr" "$BASE_IMAGE" >/dev/null
fi
tern_log "$T" "buildah: $IMAGE"
ctr="$("${B[@]}" from --pull=never --name tern-build "$BASE_IMAGE")"
mnt="$("${B[@]}" mount "$ctr")"
mkdir -p "$mnt/app"
cp -a "$APP/." "$mnt/app/"
install -o 0 -g 0 -m 0755 "$ENTRY" "$mnt/usr/local/bin/tern-entry"
"${B[@]}" umount "$ctr" >/dev/null
config=(--user 10001:10001 --workingdir /app --env NODE_ENV=production --env "PATH=$IMAGE_PATH"
  --entrypoint '["tern-entry"]' --cmd '["--help"]' --created-by "scripts/image.sh: /app and tern-entry")
for p in $PORTS; do config+=(--port "$p"); done
for l in "${LABELS[@]}"; do config+=(--label "$l"); done
"${B[@]}" config "${config[@]}" "$ctr"
"${B[@]}" commit --quiet --rm --format oci "$ctr" "$IMAGE" >/dev/null
rm -f "$ARCHIVE.tmp"
"${B[@]}" push --quiet "$IMAGE" "oci-archive:$ARCHIVE.tmp:$IMAGE"
mv "$ARCHIVE.tmp" "$ARCHIVE"
# Keep only the base in the store: the archive is the product.
"${B[@]}" images --format '{{.Name}}:{{.Tag}}' | while read -r img; do
  [[ "$img" == "$BASE_IMAGE" || "$img" == "localhost/$BASE_IMAGE" ]] || "${B[@]}" rmi -f "$img" >/dev/null 2>&1 || true
done
"${B[@]}" rmi --prune >/dev/null 2>&1 || true
safe_rm "$BUILD"
tern_log "$T" "archive $ARCHIVE: $(du -h "$ARCHIVE" | cut -f1)"
write_env "$TAG" oci-archive
