// Summarizes V8 .cpuprofile files (node --cpu-prof): self time per function
// and per source file / package, with bundle positions mapped back to the
// TypeScript sources through the bundles' source maps.
//
//   node_modules/.bin/node --import tsx bench/profile.ts DIR_OR_FILE [top]
//   node_modules/.bin/node --import tsx bench/profile.ts DIR_OR_FILE --callers FUNCTION
import fs from 'node:fs';
import path from 'node:path';
import { SourceMap } from 'node:module';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const maps = new Map<string, SourceMap | null>();
function sourceMapFor(file: string): SourceMap | null {
  if (maps.has(file)) return maps.get(file)!;
  let sm: SourceMap | null = null;
  try {
    const payload = JSON.parse(fs.readFileSync(file + '.map', 'utf8'));
    sm = new SourceMap(payload);
  } catch {
    sm = null;
  }
  maps.set(file, sm);
  return sm;
}

function locate(cf: CallFrame): { where: string; bucket: string } {
  if (!cf.url) return { where: cf.functionName || '(native)', bucket: cf.functionName.startsWith('(') ? cf.functionName : '(native)' };
  let file = cf.url.startsWith('file://') ? fileURLToPath(cf.url) : cf.url;
  let line = cf.lineNumber + 1;
  const sm = file.endsWith('.js') ? sourceMapFor(file) : null;
  if (sm) {
    const e = sm.findEntry(cf.lineNumber, cf.columnNumber) as { originalSource?: string; originalLine?: number };
    if (e && e.originalSource) {
      file = e.originalSource.startsWith('file://') ? fileURLToPath(e.originalSource) : path.resolve(path.dirname(file), e.originalSource);
      line = (e.originalLine ?? 0) + 1;
    }
  }
  const rel = file.includes('/node_modules/') ? file.slice(file.lastIndexOf('/node_modules/') + 14) : file.replace(/^.*?\/(services|libs|cli)\//, '$1/');
  let bucket: string;
  if (file.startsWith('node:') || !file.startsWith('/')) bucket = `node:${file.replace(/^node:/, '').split('/')[0]}`;
  else if (file.includes('/node_modules/')) {
    const parts = rel.split('/');
    bucket = parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  } else bucket = rel;
  return { where: `${rel}:${line}`, bucket };
}

export function summarize(file: string, top = 25): string {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i]!;
    self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const idle = [...self.entries()].filter(([id]) => byId.get(id)!.callFrame.functionName === '(idle)').reduce((a, [, v]) => a + v, 0);
  const fn = new Map<string, number>();
  const bucket = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    if (n.callFrame.functionName === '(idle)') continue;
    const loc = locate(n.callFrame);
    const key = `${n.callFrame.functionName || '(anonymous)'}  ${loc.where}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    bucket.set(loc.bucket, (bucket.get(loc.bucket) ?? 0) + us);
  }
  // Inclusive time per package/file: a sample counts once for every bucket on its stack.
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const bucketOf = new Map<number, string>();
  for (const n of prof.nodes) bucketOf.set(n.id, locate(n.callFrame).bucket);
  const incl = new Map<string, number>();
  const stackBuckets = new Map<number, Set<string>>();
  const bucketsOn = (id: number): Set<string> => {
    let set = stackBuckets.get(id);
    if (set) return set;
    const p = parent.get(id);
    set = new Set(p === undefined ? [] : bucketsOn(p));
    set.add(bucketOf.get(id)!);
    stackBuckets.set(id, set);
    return set;
  };
  for (const [id, us] of self) {
    if (byId.get(id)!.callFrame.functionName === '(idle)') continue;
    for (const b of bucketsOn(id)) incl.set(b, (incl.get(b) ?? 0) + us);
  }
  const busy = total - idle;
  const pct = (us: number): string => `${((100 * us) / Math.max(1, busy)).toFixed(1).padStart(5)}%`;
  const lines: string[] = [];
  lines.push(`${path.basename(file)}: ${(total / 1e6).toFixed(1)} s profiled, ${(busy / 1e6).toFixed(1)} s busy (${((100 * busy) / Math.max(1, total)).toFixed(0)}%)`);
  lines.push('  self time by file/package:');
  for (const [k, v] of [...bucket].sort((a, b) => b[1] - a[1]).slice(0, 15)) lines.push(`    ${pct(v)}  ${k}`);
  lines.push('  inclusive time by file/package (everything called from it):');
  for (const [k, v] of [...incl].filter(([k]) => !k.startsWith('(') && !k.startsWith('node:')).sort((a, b) => b[1] - a[1]).slice(0, 15)) lines.push(`    ${pct(v)}  ${k}`);
  lines.push('  top functions by self time:');
  for (const [k, v] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`    ${pct(v)}  ${k}`);
  return lines.join('\n');
}

/** The heaviest call paths (innermost `depth` frames) ending in functions named `fn`. */
export function callers(file: string, fn: string, depth = Number(process.env.DEPTH ?? 8), top = 8): string {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<number, number>();
  for (let i = 0; i < prof.samples.length; i++) self.set(prof.samples[i]!, (self.get(prof.samples[i]!) ?? 0) + (prof.timeDeltas[i] ?? 0));
  const paths = new Map<string, number>();
  let all = 0;
  for (const [id, us] of self) {
    if (byId.get(id)!.callFrame.functionName !== fn) continue;
    all += us;
    const frames: string[] = [];
    let cur: number | undefined = parent.get(id);
    while (cur !== undefined && frames.length < depth) {
      const cf = byId.get(cur)!.callFrame;
      if (cf.functionName !== '(root)') frames.push(`${cf.functionName || '(anonymous)'} ${locate(cf).where}`);
      cur = parent.get(cur);
    }
    const k = frames.join('\n        <- ');
    paths.set(k, (paths.get(k) ?? 0) + us);
  }
  const out = [`${fn}: ${(all / 1e6).toFixed(2)} s self; heaviest callers:`];
  for (const [k, v] of [...paths].sort((a, b) => b[1] - a[1]).slice(0, top)) out.push(`  ${((100 * v) / Math.max(1, all)).toFixed(1)}%  <- ${k}`);
  return out.join('\n');
}

export function summarizeProfiles(target: string, top = 25): string {
  let files: string[] = [];
  try {
    const st = fs.statSync(target);
    files = st.isDirectory()
      ? fs
          .readdirSync(target, { recursive: true })
          .map(String)
          .filter((f) => f.endsWith('.cpuprofile'))
          .map((f) => path.join(target, f))
      : [target];
  } catch {
    return `no profiles under ${target}`;
  }
  if (!files.length) return `no profiles under ${target}`;
  return files.map((f) => `${path.relative(target, f) || f}\n${summarize(f, top)}`).join('\n\n');
}

if (require.main === module) {
  const target = process.argv[2];
  if (!target) {
    process.stderr.write('usage: bench/profile.ts DIR_OR_FILE [top]\n');
    process.exit(2);
  }
  const ci = process.argv.indexOf('--callers');
  if (ci > 0) {
    const files = fs.statSync(target).isDirectory()
      ? fs.readdirSync(target, { recursive: true }).map(String).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(target, f))
      : [target];
    for (const f of files) process.stdout.write(`${path.basename(f)}\n${callers(f, process.argv[ci + 1]!)}\n`);
  } else {
    process.stdout.write(summarizeProfiles(target, Number(process.argv[3] ?? 25)) + '\n');
  }
}
