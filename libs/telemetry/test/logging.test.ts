// Log lines are written as they are made (libs/telemetry: a synchronous pino
// destination): a process killed right after logging has its lines on
// stdout, none left in memory.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';

test('a line logged just before SIGKILL is on stdout', () => {
  const entry = path.join(__dirname, '..', 'src', 'index.ts');
  const script = `
    const { createTelemetry } = require(${JSON.stringify(entry)});
    const { logger } = createTelemetry({ service: 'log-test', logLevel: 'info' });
    for (let i = 0; i < 3; i++) logger.info({ event: 'accepted', n: i }, 'message accepted');
    process.kill(process.pid, 'SIGKILL');
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.signal, 'SIGKILL', r.stderr);
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { service: string; n: number; msg: string });
  assert.deepEqual(lines.map((l) => l.n), [0, 1, 2]);
  assert.equal(lines[0]!.service, 'log-test');
  assert.equal(lines[0]!.msg, 'message accepted');
});
