// Issue 26 item 3, end to end through every service: NOTIFY=SUCCESS (RFC
// 3461). A final delivery by Tern (an LMTP route) is reported "delivered",
// whether or not the LMTP server offers DSN; a relay to an SMTP next hop with
// DSN passes the request on (no report from Tern); to one without DSN, it is
// reported "relayed". Each report is the one message the sender's MX (another
// sink) receives about that recipient, read from its delivery-status part.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { RawSmtp, tern, waitFor } from '../ops/helpers';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';

const harness = new Harness({ name: 'e2e-success-reports' });
let platform: Platform;
let db: pg.Pool;
let senderMx: SmtpSink; // sender.test: takes the reports
let relayDsn: SmtpSink; // MX of dsn.test: offers DSN
let relayPlain: SmtpSink; // MX of plain.test: no DSN
let lmtpDsn: SmtpSink; // the mailbox store of store.test: LMTP with DSN
let lmtpPlain: SmtpSink; // the mailbox store of store2.test: LMTP without DSN

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.7.71');
  senderMx = await harness.startSink({ host: '127.0.7.71', port, hostname: 'mx.sender.test' });
  relayDsn = await harness.startSink({ host: '127.0.7.72', port, hostname: 'mx.dsn.test' });
  relayPlain = await harness.startSink({ host: '127.0.7.73', port, hostname: 'mx.plain.test', dsn: false });
  lmtpDsn = await harness.startSink({ host: '127.0.7.74', lmtp: true, hostname: 'store.test' });
  lmtpPlain = await harness.startSink({ host: '127.0.7.75', lmtp: true, hostname: 'store2.test', dsn: false });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.7.71');
  dns.mx('dsn.test', 'mx.dsn.test').a('mx.dsn.test', '127.0.7.72');
  dns.mx('plain.test', 'mx.plain.test').a('mx.plain.test', '127.0.7.73');
  platform = await startPlatform(harness, { databaseUrl: database.url, natsUrl: nats.url, dnsServer: dns.address, remoteSmtpPort: port });
  db = new pg.Pool({ connectionString: database.url, max: 2 });
  harness.defer(() => db.end(), 'end pool');
  for (const [domain, sink, mailbox] of [['store.test', lmtpDsn, 'ann@store.test'], ['store2.test', lmtpPlain, 'bob@store2.test']] as const) {
    await tern(platform, 'domain', 'add', domain, '--kind', 'local');
    await tern(platform, 'route', 'set', domain, '--kind', 'lmtp', '--target', `${sink.host}:${sink.port}`, '--tls-policy', 'none');
    await tern(platform, 'mailbox', 'add', mailbox);
  }
});

after(() => harness.close());

/** One message from alice@sender.test (a trusted client) to `rcpt` with NOTIFY=SUCCESS; its queue id. */
async function send(rcpt: string, subject: string): Promise<string> {
  // The mailbox may take a moment to reach policy's copy: retry while RCPT is refused.
  return waitFor(`a message to ${rcpt} accepted`, async () => {
    const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort);
    try {
      assert.equal(greeting.code, 220);
      assert.equal((await client.command('EHLO client.example')).code, 250);
      assert.equal((await client.command('MAIL FROM:<alice@sender.test>')).code, 250);
      const r = await client.command(`RCPT TO:<${rcpt}> NOTIFY=SUCCESS`);
      if (r.code !== 250) return undefined;
      assert.equal((await client.command('DATA')).code, 354);
      const end = await client.command(`From: alice@sender.test\r\nTo: ${rcpt}\r\nSubject: ${subject}\r\n\r\nHello.\r\n.`);
      assert.equal(end.code, 250, end.text);
      return /queued as (\S+)/.exec(end.text)![1]!;
    } finally {
      client.close();
    }
  }, 10_000, 200);
}

/** Every recipient of the message final (nothing queued, deferred or inflight). */
async function settled(queueId: string): Promise<true | undefined> {
  const r = await db.query<{ n: string }>('SELECT count(*) AS n FROM queue.recipients WHERE message_id = $1 AND state IN (1, 2, 3)', [queueId]);
  return Number(r.rows[0]!.n) === 0 ? true : undefined;
}

/** The delivery-status part of each report at the sender's MX about `rcpt`. */
function reportsAbout(rcpt: string): string[] {
  return senderMx.messages
    .map((m) => m.raw.toString('utf8'))
    .filter((raw) => new RegExp(`^Final-Recipient: rfc822; ?${rcpt.replace(/\./g, '\\.')}\\s*$`, 'im').test(raw))
    .map((raw) => {
      const start = raw.search(/^Content-Type: message\/delivery-status/im);
      assert.ok(start > 0, 'a message/delivery-status part');
      return raw.slice(start, raw.indexOf('\r\n--', start));
    });
}

/** Sends, waits for the delivery and for the recipient to settle, then a moment (a second report would show); the reports about it. */
async function deliverAndCollect(rcpt: string, sink: SmtpSink, wantReport: boolean): Promise<string[]> {
  const subject = `success ${rcpt}`;
  const queueId = await send(rcpt, subject);
  await waitFor(`${rcpt} delivered`, async () => (sink.messages.some((m) => m.raw.toString('utf8').includes(`Subject: ${subject}`)) ? true : undefined), 30_000, 100);
  await waitFor(`${rcpt} settled`, () => settled(queueId), 30_000, 100);
  if (wantReport) await waitFor(`a report about ${rcpt}`, async () => (reportsAbout(rcpt).length ? true : undefined), 30_000, 100);
  await new Promise((r) => setTimeout(r, 2_000));
  const reports = reportsAbout(rcpt);
  for (const m of senderMx.messages) {
    assert.equal(m.mailFrom, '', 'a report has the null sender');
    assert.deepEqual(m.rcptTo, ['alice@sender.test']);
  }
  return reports;
}

const actions = (part: string) => [...part.matchAll(/^Action: (\S+)/gim)].map((m) => m[1]!.toLowerCase());
const statuses = (part: string) => [...part.matchAll(/^Status: (\S+)/gim)].map((m) => m[1]!);

test('LMTP with DSN (a final delivery): exactly one report, "delivered", status 2.0.0', async () => {
  const reports = await deliverAndCollect('ann@store.test', lmtpDsn, true);
  assert.equal(reports.length, 1, 'one report');
  assert.deepEqual(actions(reports[0]!), ['delivered']);
  assert.deepEqual(statuses(reports[0]!), ['2.0.0']);
  // Tern reports the success itself, so the LMTP server is not asked to.
  const m = lmtpDsn.messages.find((x) => x.rcptTo.includes('ann@store.test'))!;
  assert.equal(m.rcptParams[0]?.NOTIFY, 'NEVER');
});

test('LMTP without DSN (a final delivery): exactly one report, "delivered", not "relayed"', async () => {
  const reports = await deliverAndCollect('bob@store2.test', lmtpPlain, true);
  assert.equal(reports.length, 1, 'one report');
  assert.deepEqual(actions(reports[0]!), ['delivered']);
  assert.deepEqual(statuses(reports[0]!), ['2.0.0']);
});

test('a relay to an SMTP next hop with DSN passes NOTIFY=SUCCESS on: no report from Tern', async () => {
  const reports = await deliverAndCollect('carol@dsn.test', relayDsn, false);
  assert.equal(reports.length, 0);
  const m = relayDsn.messages.find((x) => x.rcptTo.includes('carol@dsn.test'))!;
  assert.equal(m.rcptParams[0]?.NOTIFY, 'SUCCESS', 'the request went on with the recipient');
});

test('a relay to an SMTP next hop without DSN: exactly one report, "relayed"', async () => {
  const reports = await deliverAndCollect('dan@plain.test', relayPlain, true);
  assert.equal(reports.length, 1, 'one report');
  assert.deepEqual(actions(reports[0]!), ['relayed']);
});
