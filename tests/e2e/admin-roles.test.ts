// Admin roles through the CLI against the real admin, queue and policy
// services: a viewer reads, an operator acts on mail, an admin changes
// configuration; a refusal names the role needed and the next step.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { send, ternJson, ternRaw, type AdminTarget } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-admin-roles' });
let platform: Platform;
let viewer: AdminTarget;
let operator: AdminTarget;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  // Nothing listens there: mail for nowhere.test is deferred and stays in the queue.
  dns.mx('nowhere.test', 'mx.nowhere.test').a('mx.nowhere.test', '127.0.0.10');
  const adminToken = 'root-token-0123456789';
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: await harness.freePort('127.0.0.10'),
    adminToken,
    env: {
      admin: { TERN_ADMIN_TOKENS: `root:${adminToken},ops:ops-token-0123456789:operator,ro:ro-token-0123456789:viewer` },
      queue: { TERN_QUEUE_BACKOFF_MIN_S: '600' },
    },
  });
  viewer = { adminAddr: platform.adminAddr, adminToken: 'ro-token-0123456789' };
  operator = { adminAddr: platform.adminAddr, adminToken: 'ops-token-0123456789' };
});

after(() => harness.close());

async function refused(target: AdminTarget, args: string[], needed: string, who: string, has: string) {
  const r = await ternRaw(target, args);
  assert.notEqual(r.code, 0, `tern ${args.join(' ')} must fail for ${who}`);
  const out = r.stderr + r.stdout;
  assert.match(out, new RegExp(`needs the ${needed} role; ${who} has ${has}`), out);
  assert.match(out, /PERMISSION_DENIED/, out);
  assert.match(out, new RegExp(`name:token:${needed} in TERN_ADMIN_TOKENS_FILE`), 'the next step is named');
}

test('a viewer reads the queue and configuration, and may not act on mail or read a body', async () => {
  const id = await send(platform, 'app@sender.test', ['someone@nowhere.test'], 'roles 1');
  const listing = await ternJson<{ messages?: Array<{ queueId: string }> }>(viewer, 'queue', 'ls');
  assert.ok(listing.messages?.some((m) => m.queueId === id), 'the viewer sees the message');
  await ternJson(viewer, 'alias', 'ls');
  await refused(viewer, ['queue', 'hold', id, '--reason', 'x'], 'operator', 'ro', 'viewer');
  await refused(viewer, ['message', 'download', id], 'operator', 'ro', 'viewer');
  await refused(viewer, ['destination', 'suspend', 'nowhere.test', '--reason', 'x'], 'operator', 'ro', 'viewer');
});

test('an operator acts on mail and may not change configuration; an admin may', async () => {
  const id = await send(platform, 'app@sender.test', ['someone@nowhere.test'], 'roles 2');
  const held = await ternJson<{ messages?: number | string }>(operator, 'queue', 'hold', id, '--reason', 'checking');
  assert.equal(Number(held.messages), 1);
  await refused(operator, ['alias', 'add', 'postmaster@local.test', 'alice@local.test'], 'admin', 'ops', 'operator');
  await refused(operator, ['route', 'set', 'nowhere.test', '--kind', 'smarthost', '--target', '127.0.0.12:25'], 'admin', 'ops', 'operator');
  const r = await ternRaw(platform, ['domain', 'add', 'local.test']);
  assert.equal(r.code, 0, r.stderr);
  const added = await ternRaw(platform, ['alias', 'add', 'postmaster@local.test', 'alice@local.test']);
  assert.equal(added.code, 0, `the admin adds an alias: ${added.stderr}`);
});
