// The services' bundles (scripts/bundle.mjs) leave libs/proto's generated
// code out of their source maps (scripts/source-map-trim.mjs): Node keeps a
// decoded map for the life of the process, and three quarters of it was
// generated code. Stack frames in the rest still point at the sources; a
// frame in generated code points at the bundle, never at unrelated code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { nodeBinary, repoRoot } from '@tern/devkit';

type Trim = (file: string, drop: (source: string) => boolean) => void;

async function bundled(trim: boolean): Promise<{ dir: string; out: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-source-maps-'));
  fs.mkdirSync(path.join(dir, 'libs/proto/src/gen'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'src'));
  // Generated code between two hand-written files, called from one and calling back into it.
  fs.writeFileSync(path.join(dir, 'src/before.ts'), 'export function before(n: number): number {\n  return n + 1;\n}\n');
  fs.writeFileSync(path.join(dir, 'libs/proto/src/gen/codec.ts'), 'export function encodeThing(f: () => number): number {\n  const x = f();\n  return x * 2;\n}\n');
  fs.writeFileSync(
    path.join(dir, 'src/main.ts'),
    "import { before } from './before';\nimport { encodeThing } from '../libs/proto/src/gen/codec';\n\nexport function outer(): number {\n  return before(encodeThing(() => {\n    throw new Error('boom');\n  }));\n}\n",
  );
  const out = path.join(dir, 'dist/main.js');
  await build({ entryPoints: [path.join(dir, 'src/main.ts')], outfile: out, bundle: true, platform: 'node', format: 'cjs', sourcemap: 'linked', logLevel: 'silent' });
  if (trim) {
    const { trimSourceMap } = (await import(pathToFileURL(path.join(repoRoot(), 'scripts/source-map-trim.mjs')).href)) as { trimSourceMap: Trim };
    trimSourceMap(`${out}.map`, (source) => /(^|\/)libs\/proto\/src\/gen\//.test(source));
  }
  return { dir, out };
}

function stackOf(out: string): string[] {
  const script = `try { require(${JSON.stringify(out)}).outer(); } catch (e) { console.log(e.stack); }`;
  return execFileSync(nodeBinary(), ['--enable-source-maps', '-e', script], { encoding: 'utf8' }).split('\n');
}

test('a trimmed map drops generated sources and their text, and keeps every other mapping', async () => {
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
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an untrimmed map (what the trimming replaces) maps the generated frame to its source', async () => {
  const { dir, out } = await bundled(false);
  try {
    const generated = stackOf(out).find((l) => l.includes('encodeThing'));
    assert.match(generated ?? '', /libs\/proto\/src\/gen\/codec\.ts:2:\d+\)?$/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
