// Source maps of the bundles scripts/bundle.mjs makes (their own module so
// that tests/build/source-maps.test.ts can use them on a bundle of its own).
import fs from 'node:fs';

/**
 * First lines of every bundle: when source maps are on (the services and
 * the image run with --enable-source-maps), they stay on for the bundle,
 * whose map Node has read as it loaded it, and go off for what it loads
 * next: node_modules (readable JavaScript already) and generated code.
 * With the flag alone Node reads and keeps the map of every package file
 * that has one (grpc-js, OpenTelemetry, pg...): 2-3 MB of heap a process.
 */
export const SOURCE_MAPS_BANNER =
  // "use strict" first, as esbuild would put it (it comes after a banner, where it is no directive).
  '"use strict";\n' +
  '{ const m = require("node:module"); if (m.getSourceMapsSupport?.().enabled) m.setSourceMapsSupport(true, { nodeModules: false, generatedCode: false }); }';
/**
 * Leaves generated code out of a source map. Node (--enable-source-maps)
 * decodes a bundle's whole map into one array per mapping the first time it
 * formats a stack, and keeps them and the sources' text for the life of the
 * process: in every service about 100,000 mappings, 10-13 MB of heap, three
 * quarters of them into libs/proto's generated code (docs/performance.md,
 * "Memory"). Those mappings and sources go; a run of them becomes one
 * unmapped position, so that a frame in generated code shows its place in
 * the bundle (which names the file in esbuild's `// path` comments) instead
 * of the position of the code before it.
 */
export function trimSourceMap(file, drop) {
  const map = JSON.parse(fs.readFileSync(file, 'utf8'));
  const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const decode = (seg) => {
    const out = [];
    for (let i = 0, value = 0, shift = 0; i < seg.length; i++) {
      const digit = B64.indexOf(seg[i]);
      value += (digit & 31) << shift;
      if (digit & 32) shift += 5;
      else {
        out.push(value & 1 ? -(value >>> 1) : value >>> 1);
        value = shift = 0;
      }
    }
    return out;
  };
  const encode = (n) => {
    let v = n < 0 ? (-n << 1) | 1 : n << 1;
    let s = '';
    do {
      let digit = v & 31;
      v >>>= 5;
      if (v) digit |= 32;
      s += B64[digit];
    } while (v);
    return s;
  };
  const keep = map.sources.map((source) => !drop(source));
  if (keep.every(Boolean)) return;
  const newIndex = [];
  const sources = [];
  const sourcesContent = [];
  map.sources.forEach((source, i) => {
    if (!keep[i]) return;
    newIndex[i] = sources.length;
    sources.push(source);
    sourcesContent.push(map.sourcesContent?.[i] ?? null);
  });
  // Absolute fields in, relative fields out (source, line, column and name carry across lines; the generated column restarts per line).
  const abs = { src: 0, line: 0, col: 0, name: 0 };
  const prev = { src: 0, line: 0, col: 0, name: 0 };
  let dropping = false;
  const lines = map.mappings.split(';').map((line) => {
    const out = [];
    let genCol = 0;
    let prevGenCol = 0;
    for (const seg of line ? line.split(',') : []) {
      const f = decode(seg);
      genCol += f[0];
      if (f.length >= 4) {
        abs.src += f[1];
        abs.line += f[2];
        abs.col += f[3];
        if (f.length >= 5) abs.name += f[4];
      }
      const dropped = f.length >= 4 && !keep[abs.src];
      if (dropped && dropping) continue;
      let s = encode(genCol - prevGenCol);
      prevGenCol = genCol;
      if (f.length >= 4 && !dropped) {
        s += encode(newIndex[abs.src] - prev.src) + encode(abs.line - prev.line) + encode(abs.col - prev.col);
        prev.src = newIndex[abs.src];
        prev.line = abs.line;
        prev.col = abs.col;
        if (f.length >= 5) {
          s += encode(abs.name - prev.name);
          prev.name = abs.name;
        }
      }
      dropping = dropped;
      out.push(s);
    }
    return out.join(',');
  });
  fs.writeFileSync(file, JSON.stringify({ ...map, sources, sourcesContent, mappings: lines.join(';') }));
}
