// The bounce process never writes the NATS password: started with a NATS URL
// holding one, its whole output (the start line names the NATS URL) is
// checked for it (invariant I5). The server requires no authentication:
// @nats-io v3 sends no credentials taken from a server URL (only its user,
// pass and token options), so an authenticating server would refuse bounce.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { startNats } from '@tern/devkit';
import { FakeQueue, waitFor } from './fakes';

test('the process connects with a NATS URL holding a password and its output never shows the password', async () => {
  const password = `pw-${crypto.randomBytes(12).toString('hex')}`;
  const nats = await startNats();
  const queue = await new FakeQueue().start();
  const url = nats.url.replace('nats://', `nats://tern:${password}@`);
  const root = path.resolve(__dirname, '../../..');
  const child = spawn(path.join(root, 'node_modules/.bin/node'), ['--import', 'tsx', path.join(root, 'services/bounce/src/main.ts')], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? '',
      TERN_NATS_URL: url,
      TERN_QUEUE_ADDR: queue.address,
      TERN_GRPC_LISTEN: '127.0.0.1:0',
      TERN_METRICS_LISTEN: '127.0.0.1:0',
      TERN_HOSTNAME: 'bounce-creds',
      TERN_LOG_LEVEL: 'debug',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    await waitFor('bounce serving', () => out.includes('bounce serving'), 20_000).catch((err: Error) => {
      throw new Error(`${err.message}; output:\n${out.replaceAll(password, '<PASSWORD>')}`);
    });
    const serving = out.split('\n').find((l) => l.includes('bounce serving'))!;
    assert.equal((JSON.parse(serving) as { nats: string }).nats, nats.url.replace('nats://', 'nats://tern:***@'), 'the URL is logged, its password masked');
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.ok(!out.includes(password), `the output holds the password:\n${out}`);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await queue.stop();
    await nats.kill();
    await nats.close();
  }
});
