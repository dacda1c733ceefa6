// Ingress's own transient failures are not the client's errors: while
// policy is down, a session gets 451 4.3.0 as often as it asks without being
// closed for "too many errors"; one that gets nothing else for
// TERN_UNAVAILABLE_CLOSE_MS is closed with 421 4.3.0. The client's own
// errors still count toward TERN_MAX_ERRORS.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { RawSmtp, sleep } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-unavailable' });
let platform: Platform;
const CLOSE_MS = 3000;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: 25,
    env: { ingress: { TERN_MAX_ERRORS: '3', TERN_UNAVAILABLE_CLOSE_MS: String(CLOSE_MS) } },
  });
});

after(() => harness.close());

/** A session after EHLO; waits (10 s) for a 220 greeting while ingress reconnects to a restarted policy. */
async function session(): Promise<RawSmtp> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, '127.0.0.1');
    if (greeting.code === 220) {
      assert.equal((await client.command('EHLO client.example')).code, 250);
      return client;
    }
    client.close();
    assert.ok(Date.now() < deadline, `greeting: ${greeting.lines.join(' | ')}`);
    await sleep(250);
  }
}

test('policy down: 451 4.3.0 for every RCPT without "too many errors", then 421 4.3.0 once only our failures came for TERN_UNAVAILABLE_CLOSE_MS', async () => {
  const c = await session();
  assert.equal((await c.command('MAIL FROM:<a@sender.test>')).code, 250);
  await platform.services.policy.stop();
  try {
    const started = Date.now();
    for (let i = 0; i < 6; i++) {
      const r = await c.command(`RCPT TO:<u${i}@dest.test>`);
      assert.equal(`${r.code} ${r.enhanced}`, '451 4.3.0', `RCPT ${i + 1}: ${r.lines.join(' | ')}`);
    }
    await sleep(Math.max(0, CLOSE_MS - (Date.now() - started)) + 200);
    const last = await c.command('RCPT TO:<late@dest.test>');
    assert.equal(last.code, 451);
    const closing = await c.reply();
    assert.equal(`${closing.code} ${closing.enhanced}`, '421 4.3.0', closing.lines.join(' | '));
    assert.match(closing.text, /service temporarily unavailable/);
  } finally {
    c.close();
    await platform.services.policy.restart();
  }
});

test('the client\'s own errors still count: the third unknown command gets 421 4.7.0', async () => {
  const c = await session();
  try {
    assert.equal((await c.command('BOGUS')).code, 500);
    assert.equal((await c.command('BOGUS')).code, 500);
    const third = await c.command('BOGUS');
    assert.equal(third.code, 500);
    const closing = await c.reply();
    assert.equal(`${closing.code} ${closing.enhanced}`, '421 4.7.0', closing.lines.join(' | '));
  } finally {
    c.close();
  }
});
