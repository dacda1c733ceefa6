// Bundles one entry of the current workspace into dist/ with esbuild.
// Workspace libraries (@tern/*) are compiled in; npm packages stay external
// (they are in the image's node_modules, and OpenTelemetry can patch them).
// Usage (from a workspace dir): node ../../scripts/bundle.mjs [entry] [outfile]
import { build } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { pureClients } from './pure-clients.mjs';
import { SOURCE_MAPS_BANNER, trimSourceMap } from './source-maps.mjs';

const entry = process.argv[2] ?? 'src/main.ts';
const outfile = path.join('dist', process.argv[3] ?? 'main.js');
const root = path.resolve(import.meta.dirname, '..');
const external = new Set();
for (const dir of ['libs', 'services', 'cli']) {
  const base = path.join(root, dir);
  if (!fs.existsSync(base)) continue;
  for (const name of fs.readdirSync(base)) {
    const pkgFile = path.join(base, name, 'package.json');
    if (!fs.existsSync(pkgFile)) continue;
    const pkg = JSON.parse(fs.readFileSync(pkgFile, 'utf8'));
    for (const dep of Object.keys(pkg.dependencies ?? {})) if (!dep.startsWith('@tern/')) external.add(dep);
  }
}
await build({
  entryPoints: [entry],
  outfile,
  bundle: true,
  platform: 'node',
  target: 'node24',
  format: 'cjs',
  sourcemap: 'linked',
  banner: { js: SOURCE_MAPS_BANNER },
  external: [...external, '@opentelemetry/*', '@grpc/*', '@nats-io/*'],
  plugins: [pureClients],
  logLevel: 'warning',
});
// libs/proto's generated code: see trimSourceMap.
trimSourceMap(`${outfile}.map`, (source) => /(^|\/)libs\/proto\/src\/gen\//.test(source));

