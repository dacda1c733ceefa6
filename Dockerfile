# syntax=docker/dockerfile:1
# The one Tern image: every service, the migrate command and the tern CLI.
#   docker build -t tern .
#   docker run tern <ingress|policy|queue|delivery|bounce|webhooks|admin|migrate|tern ...>
# `npm run image` (scripts/image.sh) runs this build where Docker runs; without
# Docker it makes the same /app, user and entry point with buildah, on a base
# debootstrapped from Debian instead of ${NODE_IMAGE} (docs/operating.md).
# The entry point `tern-entry` takes the service name as its first argument;
# a pod sets only `args: ["<service>"]` (charts/tern). Runs as uid 10001 on
# unprivileged ports: SMTP 2525/2587/2465, gRPC 7000-7005, metrics 9100-9105.

ARG NODE_IMAGE=node:24-slim

# ---- build: install everything, bundle every service -------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
ENV npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
# npm ci needs every workspace's package.json (.dockerignore keeps the context
# to sources and manifests).
COPY . .
# npm 11 may leave other platforms' optional binaries (turbo, buf) out of the
# lockfile and then refuse `npm ci` (npm/cli#4828): install from the same
# lockfile without rewriting it, as scripts/ensure-deps.sh does.
RUN npm ci || npm install --no-save
# Each service bundles to services/<name>/dist/main.js, migrate to
# libs/db/dist/migrate.js (esbuild; workspace libraries compiled in).
RUN npm run build \
 && (cd cli && node ../scripts/bundle.mjs src/main.ts tern.js) \
 && for s in ingress policy queue delivery bounce webhooks admin; do test -f "services/$s/dist/main.js" || { echo "missing services/$s/dist/main.js" >&2; exit 1; }; done \
 && test -f libs/db/dist/migrate.js && test -f cli/dist/tern.js
# Production dependencies only (the bundles keep npm packages external).
RUN npm prune --omit=dev
# The runtime tree: manifests, bundles, migrations and node_modules; no sources
# (and no tests workspace, so its link in node_modules/@tern goes).
RUN mkdir -p /out \
 && cp -a package.json node_modules /out/ \
 && for d in libs/* services/* cli; do \
      mkdir -p "/out/$d"; cp "$d/package.json" "/out/$d/"; \
      for sub in dist migrations node_modules; do [ -e "$d/$sub" ] && cp -a "$d/$sub" "/out/$d/" || true; done; \
    done \
 && rm -f /out/node_modules/@tern/tests

# ---- runtime ------------------------------------------------------------------
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
# (scripts/image.sh runs these two commands in its base too.)
RUN groupadd --system --gid 10001 tern \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tern
WORKDIR /app
COPY --from=build /out/ /app/
# The entry point is one file shared with scripts/image.sh (the buildah build).
COPY scripts/image/tern-entry /usr/local/bin/tern-entry
RUN chmod 0755 /usr/local/bin/tern-entry
USER 10001:10001
EXPOSE 2525 2587 2465 7000 7001 7002 7003 7004 7005 9100 9101 9102 9103 9104 9105
ENTRYPOINT ["tern-entry"]
CMD ["--help"]
