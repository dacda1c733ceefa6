// The OTLP trace exporter is loaded only when an endpoint is configured (it
// and its transformer are 59 modules and 0.5 MB of heap a process without
// one would keep). Each case in a child process: createTelemetry installs
// process-wide globals, and the module cache must start empty.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';

const entry = path.join(__dirname, '..', 'src', 'index.ts');
// A collector: the bodies of the OTLP/HTTP trace exports it was sent.
const exports: string[] = [];
const collector = http.createServer((req, res) => {
  const parts: Buffer[] = [];
  req.on('data', (c: Buffer) => parts.push(c));
  req.on('end', () => {
    if (req.url === '/v1/traces') exports.push(Buffer.concat(parts).toString('utf8'));
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
});
before(() => new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve)));
after(() => new Promise<void>((resolve) => collector.close(() => resolve())));

// Asynchronous: the receiver in this process must answer the child's export.
async function run(endpoint: string | undefined): Promise<{ exporterLoaded: boolean; traceId: string }> {
  const script = `
    const { createTelemetry } = require(${JSON.stringify(entry)});
    const t = createTelemetry({ service: 'exporter-test', logLevel: 'silent', otlpEndpoint: ${JSON.stringify(endpoint)} });
    const span = t.tracer.startSpan('smtp.session');
    span.end();
    const exporterLoaded = Object.keys(require.cache).some((f) => f.includes('exporter-trace-otlp-http'));
    t.shutdown().then(() => process.stdout.write(JSON.stringify({ exporterLoaded, traceId: span.spanContext().traceId }) + '\\n', () => process.exit(0)));
  `;
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { exporterLoaded: boolean; traceId: string };
}

test('without an OTLP endpoint the exporter is not loaded', async () => {
  assert.equal((await run(undefined)).exporterLoaded, false);
});

test('with an endpoint it is, and a span reaches the collector', async () => {
  const r = await run(`http://127.0.0.1:${(collector.address() as AddressInfo).port}`);
  assert.equal(r.exporterLoaded, true);
  // shutdown() flushed the span before the child wrote its line.
  assert.ok(exports.some((body) => body.includes(r.traceId) && body.includes('smtp.session')), `a span of trace ${r.traceId} in ${exports.length} exports`);
});
