// Issue 24, rate limits through the admin API: two ingress processes, each
// with its own policy process (sharing Postgres), run with permissive
// TERN_LIMIT_* defaults. `tern limit set` lowers the limit for one client
// network, and within seconds both pods refuse that network's extra mail
// (450 4.7.1, the rate-limit reply) while other clients keep the default;
// `tern limit rm` restores the default on both. `tern limit ls` shows the
// rules and the variables that hold where none applies.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { RawSmtp, tern, ternJson, ternRaw, waitFor, type SmtpReply } from './helpers';

const harness = new Harness({ name: 'ops-rate-limits' });
let platform: Platform;
let smtpPort2: number;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: await harness.freePort(),
    only: ['policy', 'queue', 'admin', 'ingress'],
    env: { policy: { TERN_LIMIT_MESSAGES_PER_IP: '1000/1h', TERN_SPF_FAIL_ACTION: 'none' } },
  });
  // A second policy and a second ingress using it: a rule must reach policy 2
  // through Postgres (NOTIFY), not through the call that made it (admin asks policy 1).
  const p = platform.services.policy;
  const policy2 = await harness.startService('policy', {
    ...p.env,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
  });
  const i = platform.services.ingress;
  smtpPort2 = await harness.freePort();
  await harness.startService('ingress', {
    ...i.env,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_POLICY_ADDR: policy2.grpcAddr,
    TERN_SMTP_LISTEN: `127.0.0.1:${smtpPort2}`,
  });
  await tern(platform, 'domain', 'add', 'relay.test', '--kind', 'relay');
});

after(() => harness.close());

/** One MAIL from `client` through ingress `n`; the reply. */
async function mail(n: 1 | 2, client: string): Promise<SmtpReply> {
  const { client: s, greeting } = await RawSmtp.connect('127.0.0.1', n === 1 ? platform.smtpPort : smtpPort2, client);
  try {
    assert.equal(greeting.code, 220, greeting.text);
    await s.command('EHLO client.test');
    const r = await s.command('MAIL FROM:<someone@outside.test>');
    await s.command('QUIT');
    return r;
  } finally {
    s.close();
  }
}

/** MAILs from `client` through ingress `n` until one is refused; the refusal and how many passed before it. */
async function untilRefused(n: 1 | 2, client: string, what: string): Promise<{ reply: SmtpReply; passed: number; ms: number }> {
  const t0 = Date.now();
  let passed = 0;
  const reply = await waitFor(
    what,
    async () => {
      const r = await mail(n, client);
      if (r.code === 250) passed++;
      return r.code === 250 ? undefined : r;
    },
    30_000,
    100,
  );
  return { reply, passed, ms: Date.now() - t0 };
}

test('tern limit set lowers a limit for one client network; within seconds both policy pods enforce it, others keep the default; rm restores it', async () => {
  // The default (TERN_LIMIT_MESSAGES_PER_IP 1000/1h) lets a client send a few.
  for (const n of [1, 2] as const) assert.equal((await mail(n, '127.0.0.41')).code, 250);

  const set = await tern(platform, 'limit', 'set', 'messages-per-ip', '2/1h', '--for', '127.0.0.40/29');
  assert.match(set, /Rate limit messages-per-ip for 127\.0\.0\.40\/29: 2\/1h\./);
  // Each pod in turn: policy 2 heard of the rule only through Postgres. The
  // counter is shared, so a refusal comes once the pod knows the rule.
  const second = await untilRefused(2, '127.0.0.42', 'ingress 2 (policy 2) refusing 127.0.0.42 under the new rule');
  console.log(`# ingress 2 refused ${second.ms} ms after tern limit set (${second.passed} MAILs passed first)`);
  assert.ok(second.passed >= 2, 'the rule\'s 2 messages pass first');
  assert.equal(`${second.reply.code} ${second.reply.enhanced}`, '450 4.7.1');
  assert.match(second.reply.text, /too much mail from 127\.0\.0\.42/);
  // Policy 1 made the change and reloaded before answering: exactly the rule's 2 pass there.
  const first = await untilRefused(1, '127.0.0.43', 'ingress 1 refusing 127.0.0.43');
  assert.equal(first.passed, 2);
  assert.equal(`${first.reply.code} ${first.reply.enhanced}`, '450 4.7.1');
  // Clients outside the network keep the default.
  for (const n of [1, 2] as const) for (let k = 0; k < 3; k++) assert.equal((await mail(n, '127.0.0.60')).code, 250);

  const ls = await tern(platform, 'limit', 'ls');
  assert.match(ls, /messages-per-ip\s+127\.0\.0\.40\/29\s+2\/1h\s+rule by operator/);
  assert.match(ls, /messages-per-ip\s+\(everyone\)\s+1000\/1h\s+TERN_LIMIT_MESSAGES_PER_IP/);

  await tern(platform, 'limit', 'rm', 'messages-per-ip', '--for', '127.0.0.40/29');
  const t0 = Date.now();
  for (const n of [2, 1] as const) {
    await waitFor(`ingress ${n} accepting 127.0.0.42 again`, async () => ((await mail(n, '127.0.0.42')).code === 250 ? true : undefined), 30_000, 100);
  }
  console.log(`# both pods back to the default ${Date.now() - t0} ms after tern limit rm`);
  assert.equal((await ternJson<{ limits?: unknown[] }>(platform, 'limit', 'ls')).limits, undefined, 'no rules left');
});

test('a rule for everyone replaces the variable, a more specific one wins over it, and off exempts a network', async () => {
  await tern(platform, 'limit', 'set', 'messages-per-ip', '1/1h');
  await tern(platform, 'limit', 'set', 'messages-per-ip', 'off', '--for', '127.0.0.48/30');
  const everyone = await untilRefused(1, '127.0.0.52', 'the rule for everyone');
  assert.equal(everyone.passed, 1);
  for (let k = 0; k < 4; k++) assert.equal((await mail(1, '127.0.0.49')).code, 250, 'the exempt network has no limit');
  await tern(platform, 'limit', 'rm', 'messages-per-ip');
  await tern(platform, 'limit', 'rm', 'messages-per-ip', '--for', '127.0.0.48/30');
});

test('bad rules are refused naming what to fix', async () => {
  const badKind = await ternRaw(platform, ['limit', 'set', 'messages-per-planet', '10/1m']);
  assert.equal(badKind.code, 2);
  assert.match(badKind.stderr, /kind: "messages-per-planet" is not one of connections-per-ip, messages-per-ip/);
  const badRate = await ternRaw(platform, ['limit', 'set', 'messages-per-ip', 'lots']);
  assert.equal(badRate.code, 2);
  assert.match(badRate.stderr, /rate: "lots" is not N\/window/);
  const badNet = await ternRaw(platform, ['limit', 'set', 'messages-per-ip', '10/1m', '--for', 'example.com']);
  assert.equal(badNet.code, 1);
  assert.match(badNet.stderr, /limit\.match: "example\.com" is not an address or CIDR network/);
  const none = await ternRaw(platform, ['limit', 'rm', 'messages-per-user', '--for', 'nobody']);
  assert.equal(none.code, 5);
  assert.match(none.stderr, /no messages-per-user rule for nobody/);
});
