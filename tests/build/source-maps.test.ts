// The services' bundles (scripts/bundle.mjs, scripts/source-maps.mjs) leave
// libs/proto's generated code out of their source maps, and turn source maps
// off for node_modules once the bundle is loaded: Node keeps every map it
// reads for the life of the process. Stack frames in the rest still point at
// the sources; a frame in generated code points at the bundle, never at
// unrelated code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { nodeBinary, repoRoot } from '@tern/devkit';

type SourceMaps = { trimSourceMap: (file: string, drop: (source: string) => boolean) => void; SOURCE_MAPS_BANNER: string };
const sourceMaps = async () => (await import(pathToFileURL(path.join(repoRoot(), 'scripts/source-maps.mjs')).href)) as SourceMaps;

async function bundled(trim: boolean): Promise<{ dir: string; out: string }> {
  // Under the repository, so that the bundle finds node_modules.
  fs.mkdirSync(path.join(repoRoot(), '.tern'), { recursive: true });
  const dir = fs.mkdtempSync(path.join(repoRoot(), '.tern', 'source-maps-test-'));
  fs.mkdirSync(path.join(dir, 'libs/proto/src/gen'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'src'));
  // Generated code between two hand-written files, called from one and calling back into it.
  fs.writeFileSync(path.join(dir, 'src/before.ts'), 'export function before(n: number): number {\n  return n + 1;\n}\n');
  fs.writeFileSync(path.join(dir, 'libs/proto/src/gen/codec.ts'), 'export function encodeThing(f: () => number): number {\n  const x = f();\n  return x * 2;\n}\n');
  fs.writeFileSync(
    path.join(dir, 'src/main.ts'),
    "import { before } from './before';\nimport { encodeThing } from '../libs/proto/src/gen/codec';\n\nexport function outer(): number {\n  return before(encodeThing(() => {\n    throw new Error('boom');\n  }));\n}\nexport { credentials } from '@grpc/grpc-js';\n",
  );
  const out = path.join(dir, 'dist/main.js');
  const { SOURCE_MAPS_BANNER, trimSourceMap } = await sourceMaps();
  await build({
    entryPoints: [path.join(dir, 'src/main.ts')],
    outfile: out,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    sourcemap: 'linked',
    external: ['@grpc/*'],
    logLevel: 'silent',
    ...(trim ? { banner: { js: SOURCE_MAPS_BANNER } } : {}),
  });
  if (trim) trimSourceMap(`${out}.map`, (source) => /(^|\/)libs\/proto\/src\/gen\//.test(source));
  return { dir, out };
}

/** The stack of the bundle's error, then whether Node holds a map for the bundle and for grpc-js (which ships maps). */
function stackOf(out: string): string[] {
  const script = [
    `const bundle = require(${JSON.stringify(out)});`,
    'try { bundle.outer(); } catch (e) { console.log(e.stack); }',
    "const { findSourceMap } = require('node:module');",
    `console.log('maps: bundle ' + !!findSourceMap(${JSON.stringify(out)}) + ', grpc-js ' + !!findSourceMap(require.resolve('@grpc/grpc-js', { paths: [${JSON.stringify(path.dirname(out))}] })));`,
  ].join('\n');
  return execFileSync(nodeBinary(), ['--enable-source-maps', '-e', script], { encoding: 'utf8' }).trimEnd().split('\n');
}

test('a trimmed map drops generated sources and their text and keeps every other mapping; node_modules get no maps', async () => {
  const { dir, out } = await bundled(true);
  try {
    const map = JSON.parse(fs.readFileSync(`${out}.map`, 'utf8')) as { sources: string[]; sourcesContent: (string | null)[] };
    assert.deepEqual(map.sources.map((s) => path.basename(s)).sort(), ['before.ts', 'main.ts']);
    assert.equal(map.sourcesContent.length, 2);
    const stack = stackOf(out);
    // The throw, and the callers in hand-written code, at their lines in the sources.
    assert.match(stack[1]!, /src\/main\.ts:6:\d+\)?$/, stack.join('\n'));
    assert.ok(stack.some((l) => /at (Object\.)?outer .*src\/main\.ts:5:\d+\)?$/.test(l)), stack.join('\n'));
    // The generated frame: its place in the bundle, not a line of main.ts or before.ts.
    const generated = stack.find((l) => l.includes('encodeThing'));
    assert.ok(generated, stack.join('\n'));
    assert.match(generated, /dist\/main\.js:\d+:\d+\)?$/);
    // The bundle's map is kept; node_modules loaded after it have none.
    assert.equal(stack.at(-1), 'maps: bundle true, grpc-js false');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('without them (what they replace) the generated frame maps to its source, and grpc-js has its map', async () => {
  const { dir, out } = await bundled(false);
  try {
    const stack = stackOf(out);
    const generated = stack.find((l) => l.includes('encodeThing'));
    assert.match(generated ?? '', /libs\/proto\/src\/gen\/codec\.ts:2:\d+\)?$/);
    assert.equal(stack.at(-1), 'maps: bundle true, grpc-js true');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
