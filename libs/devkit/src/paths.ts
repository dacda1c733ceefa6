// Where things are: the repository root, the Node binary and the flags the
// services run with, and the names tests run under (log directories,
// database prefixes).
import fs from 'node:fs';
import path from 'node:path';

let cachedRoot: string | undefined;

/** The repository root: TERN_ROOT, else the nearest ancestor of this file (or cwd) whose package.json is "tern". */
export function repoRoot(): string {
  if (cachedRoot) return cachedRoot;
  if (process.env.TERN_ROOT) return (cachedRoot = path.resolve(process.env.TERN_ROOT));
  for (const start of [__dirname, process.cwd()]) {
    let dir = start;
    for (;;) {
      try {
        const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; workspaces?: unknown };
        if (pkg.name === 'tern' && pkg.workspaces) return (cachedRoot = dir);
      } catch {
        /* keep looking */
      }
      const parent = path.dirname(dir);
      if (parent === dir) break;
      dir = parent;
    }
  }
  throw new Error('@tern/devkit: cannot find the repository root (set TERN_ROOT)');
}

/** Node 24 from node_modules/.bin (the node@24 devDependency), else this process's node. */
export function nodeBinary(): string {
  const local = path.join(repoRoot(), 'node_modules', '.bin', 'node');
  return fs.existsSync(local) ? local : process.execPath;
}

/**
 * Node flags every Tern service runs with (the image's tern-entry repeats
 * them). V8 starts a full mark as soon as the room left before its old-space
 * limit is less than what a young generation could promote; with the default
 * 32 MB young generation and a live heap of a few tens of MB growing by the
 * default factor, that was right after every full GC, and the services
 * carrying big bodies spent much of their CPU marking. A young generation of
 * 8 MB and an old-space limit three times the live heap end it (figures in
 * docs/performance.md).
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--heap-growing-percent=200'];

export function sanitize(s: string): string {
  return s.replace(/\.test\.[cm]?[jt]s$/, '').replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '') || 'test';
}

/** Default test name: the running test file's base name (node --test runs one file per process). */
export function defaultTestName(): string {
  const file = process.argv.find((a) => /\.test\.[cm]?[jt]s$/.test(a)) ?? process.argv[1] ?? 'test';
  return sanitize(path.basename(file));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
