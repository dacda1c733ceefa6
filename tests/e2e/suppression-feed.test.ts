// Issue 26 item 10, the suppression list through the running services: only
// a remote server's permanent refusal of the address (5.1.1, 5.1.3, 5.1.6)
// lists it; policy blocks (5.7.x), size refusals (5.3.4) and an operator's
// bounce do not; recipients owed no report (NOTIFY=NEVER, the null sender)
// are listed too; the list is enforced for the senders TERN_SUPPRESSION_ENFORCE
// names (default: authenticated and trusted clients, not the internet on the
// MX listener); entries expire and are swept.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { queueIdOf, RawSmtp, send, smtp, tern, ternJson, ternRaw, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-suppression-feed' });
let platform: Platform;
let senderMx: SmtpSink;
let db: pg.Pool;

interface Entry {
  address: string;
  reason?: string;
  queueId?: string;
  createdAt?: string;
  expiresAt?: string;
}

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  db = new pg.Pool({ connectionString: database.url, max: 2 });
  harness.defer(() => db.end(), 'close pg');
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.84');
  await harness.startSink({
    host: '127.0.0.84',
    port,
    hostname: 'mx.dest.test',
    behaviour: {
      rcpt: (to) =>
        to.startsWith('blocked')
          ? { code: 550, text: '5.7.1 blocked by our policy' }
          : to.startsWith('big')
            ? { code: 552, text: '5.3.4 message too big for this mailbox' }
            : to.startsWith('moved')
              ? { code: 550, text: '5.1.6 mailbox has moved, no forwarding address' }
              : undefined,
    },
  });
  senderMx = await harness.startSink({ host: '127.0.0.85', port, hostname: 'mx.sender.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.84');
  dns.mx('held.test', 'mx.dest.test');
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.0.85');
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: { policy: { TERN_SUPPRESSION_SWEEP_MS: '300' } },
  });
  await tern(platform, 'domain', 'add', 'local.test');
  await tern(platform, 'mailbox', 'add', 'gone@local.test');
});

after(() => harness.close());

const listed = async () => new Map(((await ternJson<{ suppressions?: Entry[] }>(platform, 'suppression', 'ls', '--limit', '1000')).suppressions ?? []).map((e) => [e.address, e]));

/** The failure report for `address` at the sender's MX (bounce fed the list before it built the report). */
const reportFor = (address: string) =>
  waitFor(`the report for ${address}`, async () => senderMx.messagesFor('bob@sender.test').find((m) => new RegExp(`^Final-Recipient: rfc822; ?${address.replace(/\./g, '\\.')}\r?$`, 'im').test(m.raw.toString())), 30_000);

test('only a remote refusal of the address (5.1.1, 5.1.6) lists it: not 5.7.1, 5.3.4 or an operator bounce; 30 days by default', async () => {
  const rcpts = ['permfail-a@dest.test', 'moved-a@dest.test', 'blocked-a@dest.test', 'big-a@dest.test'];
  const id = await send(platform, 'bob@sender.test', rcpts, 'four refusals');
  for (const r of rcpts) await reportFor(r);

  await tern(platform, 'destination', 'suspend', 'held.test', '--force');
  const held = await send(platform, 'bob@sender.test', ['user@held.test'], 'bounced by hand');
  await tern(platform, 'queue', 'bounce', held, '--reason', 'test');
  await reportFor('user@held.test');

  const list = await listed();
  assert.deepEqual([...list.keys()].sort(), ['moved-a@dest.test', 'permfail-a@dest.test']);
  const entry = list.get('permfail-a@dest.test')!;
  assert.equal(entry.queueId, id);
  assert.match(entry.reason ?? '', /^550 5\.1\.1 /);
  assert.equal((Date.parse(entry.expiresAt!) - Date.parse(entry.createdAt!)) / 1000, 30 * 86400, 'an entry lasts 30 days by default');
  assert.match(await tern(platform, 'suppression', 'ls'), /^ADDRESS +SINCE +EXPIRES +QUEUE ID +REASON$/m);
});

/** One message over raw SMTP from the trusted address; returns the queue id. */
async function rawSend(mailFrom: string, rcpt: string): Promise<string> {
  const { client } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, '127.0.0.1');
  try {
    assert.equal((await client.command('EHLO client.example')).code, 250);
    assert.equal((await client.command(`MAIL FROM:${mailFrom}`)).code, 250);
    const r = await client.command(`RCPT TO:${rcpt}`);
    assert.equal(r.code, 250, r.text);
    assert.equal((await client.command('DATA')).code, 354);
    const done = await client.command(`From: bob@sender.test\r\nSubject: no report wanted\r\n\r\nhello\r\n.`);
    return queueIdOf(done.lines.join('\n'));
  } finally {
    client.close();
  }
}

test('recipients owed no report (NOTIFY=NEVER, the null sender) reach the list; bounce makes no report of them', async () => {
  const never = await rawSend('<bob@sender.test>', '<permfail-never@dest.test> NOTIFY=NEVER');
  const nullSender = await rawSend('<>', '<permfail-null@dest.test>');
  const list = await waitFor('both on the list', async () => {
    const l = await listed();
    return l.has('permfail-never@dest.test') && l.has('permfail-null@dest.test') ? l : undefined;
  }, 30_000);
  assert.equal(list.get('permfail-never@dest.test')?.queueId, never);
  assert.equal(list.get('permfail-null@dest.test')?.queueId, nullSender);
  // Bounce fed the list from the request, then dropped it: no report.
  for (const [id, reason] of [[never, 'no-recipients'], [nullSender, 'null-sender']] as const) {
    await waitFor(`bounce dropping the request of ${id}`, async () =>
      platform.services.bounce.log().split('\n').some((l) => l.includes('"report_dropped"') && l.includes(id) && l.includes(`"reason":"${reason}"`)) ? true : undefined,
    );
  }
  assert.ok(!senderMx.messagesFor('bob@sender.test').some((m) => m.raw.toString().includes('permfail-never@dest.test')), 'no report about NOTIFY=NEVER');
});

test('enforced for trusted clients by default, not for the internet on the MX listener; an expired entry is neither enforced nor listed, and is swept', async () => {
  // permfail-a is listed by the first test; 127.0.0.1 is a trusted network.
  await assert.rejects(send(platform, 'bob@sender.test', ['permfail-a@dest.test'], 'again'), (err: { responseCode?: number; response?: string }) => {
    assert.equal(err.responseCode, 550, err.response);
    assert.match(err.response ?? '', /5\.1\.1 <permfail-a@dest\.test>: Recipient address rejected: delivery failed permanently/);
    return true;
  });
  // A local mailbox listed by hand: refused for the trusted client, accepted from the internet.
  await tern(platform, 'suppression', 'add', 'gone@local.test', '--reason', 'complaints');
  await assert.rejects(send(platform, 'bob@sender.test', ['gone@local.test'], 'trusted'), (err: { responseCode?: number }) => err.responseCode === 550);
  const inbound = await smtp(platform, '127.0.0.86').sendMail({ envelope: { from: 'someone@elsewhere.test', to: ['gone@local.test'] }, raw: 'Subject: inbound\r\n\r\nhi\r\n' });
  queueIdOf(inbound.response);

  // Expired (as 30 days on would make it): not enforced, not listed, then removed.
  const expired = await db.query(
    `UPDATE policy.suppressions SET created_at = now() - interval '31 days', expires_at = now() - interval '1 day' WHERE address IN ('permfail-a@dest.test', 'moved-a@dest.test')`,
  );
  assert.equal(expired.rowCount, 2);
  const now = await listed();
  assert.ok(!now.has('permfail-a@dest.test') && !now.has('moved-a@dest.test'), 'an expired entry is not listed');
  const gone = await ternRaw(platform, ['suppression', 'rm', 'permfail-a@dest.test']);
  assert.equal(gone.code, 5, 'nor removable: it is no longer there for the operator');
  queueIdOf((await smtp(platform).sendMail({ envelope: { from: 'bob@sender.test', to: ['permfail-a@dest.test'] }, raw: 'Subject: after expiry\r\n\r\nhi\r\n' })).response);
  // (permfail-a fails again and is listed afresh; moved-a is not sent to again.)
  await waitFor('the sweep removing the expired entry', async () => {
    const { rows } = await db.query(`SELECT count(*)::int AS n FROM policy.suppressions WHERE address = 'moved-a@dest.test'`);
    return rows[0].n === 0 ? true : undefined;
  });
});
