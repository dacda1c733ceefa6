// Issue 6, end to end through every service: one report for many failed
// recipients, and a report the sender's MX refuses ends there (a report never
// causes a report). Reports are parsed with mailparser, independently of the
// code that wrote them.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { simpleParser } from 'mailparser';
import { send as sendVia, waitFor as waitUntil } from '../ops/helpers';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';

const harness = new Harness({ name: 'e2e-reports' });
let platform: Platform;
let db: pg.Pool;
let recipientMx: SmtpSink;
let senderMx: SmtpSink; // sender.test: takes reports
let grumpyMx: SmtpSink; // grumpy.test: refuses mail from the null sender

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.70');
  recipientMx = await harness.startSink({ host: '127.0.0.70', port, hostname: 'mx.dest.test' });
  senderMx = await harness.startSink({ host: '127.0.0.71', port, hostname: 'mx.sender.test' });
  grumpyMx = await harness.startSink({
    host: '127.0.0.72',
    port,
    hostname: 'mx.grumpy.test',
    behaviour: { rcpt: (_to, tx) => (tx.mailFrom === '' ? { code: 550, text: '5.7.1 we do not accept bounces' } : undefined) },
  });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.70');
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.0.71');
  dns.mx('grumpy.test', 'mx.grumpy.test').a('mx.grumpy.test', '127.0.0.72');
  platform = await startPlatform(harness, { databaseUrl: database.url, natsUrl: nats.url, dnsServer: dns.address, remoteSmtpPort: port });
  db = new pg.Pool({ connectionString: database.url, max: 2 });
  harness.defer(() => db.end(), 'end pool');
});

after(() => harness.close());

const send = (from: string, to: string[], subject: string): Promise<string> => sendVia(platform, from, to, subject, `${subject}\r\n`);

/** Polls until `fn` gives something other than undefined or false. */
const waitFor = <T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> =>
  waitUntil(what, async () => (await fn()) || undefined, timeoutMs, 100);

/** Every recipient of the message final (delivered, failed, expired, relayed). */
async function settled(queueId: string): Promise<boolean> {
  const r = await db.query<{ n: string }>('SELECT count(*) AS n FROM queue.recipients WHERE message_id = $1 AND state IN (1, 2, 3)', [queueId]);
  return Number(r.rows[0]!.n) === 0;
}

test('a message with 50 recipients refused at RCPT yields one report listing all 50', async () => {
  const to = Array.from({ length: 50 }, (_, i) => `permfail-${i}@dest.test`);
  const queueId = await send('alice@sender.test', to, 'fifty');
  await waitFor('all 50 failed', () => settled(queueId));
  const [report] = await senderMx.waitForMessages(1, 30_000);
  assert.equal(report!.mailFrom, '');
  assert.deepEqual(report!.rcptTo, ['alice@sender.test']);
  const parsed = await simpleParser(report!.raw);
  const ct = parsed.headers.get('content-type') as { value: string; params: Record<string, string> };
  assert.equal(ct.value, 'multipart/report');
  assert.equal(ct.params['report-type'], 'delivery-status');
  // The delivery-status part: between its part header and the next boundary.
  const raw = report!.raw.toString('utf8');
  const start = raw.search(/^Content-Type: message\/delivery-status/im);
  assert.ok(start > 0, 'a message/delivery-status part');
  const text = raw.slice(start, raw.indexOf(`--${ct.params.boundary}`, start));
  const finals = [...text.matchAll(/^Final-Recipient: rfc822; ?(\S+)/gim)].map((m) => m[1]!.toLowerCase()).sort();
  assert.deepEqual(finals, [...to].sort());
  assert.equal((text.match(/^Action: failed/gim) ?? []).length, 50);
  assert.equal((text.match(/^Status: 5\.1\.1/gim) ?? []).length, 50);
  // And only one: give the platform time to (wrongly) send another.
  await new Promise((r) => setTimeout(r, 1_500));
  assert.equal(senderMx.messages.length, 1, 'one report for the 50 failures');
  assert.equal(recipientMx.messages.length, 0, 'every recipient was refused at RCPT');
});

test('a report refused by the sender\'s MX ends there: no report about the report', async () => {
  const before = await db.query<{ n: string }>('SELECT count(*) AS n FROM queue.messages');
  const original = await send('grumpy@grumpy.test', ['permfail-x@dest.test'], 'grumpy');
  await waitFor('the original failed', () => settled(original));
  // The report is attempted at grumpy's MX and refused there.
  const reportId = await waitFor('the report in the queue', async () => {
    const r = await db.query<{ id: string }>("SELECT id FROM queue.messages WHERE sender = '' AND id > $1 ORDER BY id LIMIT 1", [original]);
    return r.rows[0]?.id;
  });
  await waitFor('the report refused and final', () => settled(reportId), 30_000);
  const state = await db.query<{ state: number; last_code: number }>('SELECT state, last_code FROM queue.recipients WHERE message_id = $1', [reportId]);
  assert.deepEqual(state.rows.map((r) => [r.state, r.last_code]), [[5 /* failed */, 550]]);
  assert.ok(grumpyMx.connections.length >= 1, 'the report was attempted');
  assert.equal(grumpyMx.messages.length, 0);
  // Nothing more is created: the original and its one report.
  await new Promise((r) => setTimeout(r, 1_500));
  const now = await db.query<{ n: string }>('SELECT count(*) AS n FROM queue.messages');
  assert.equal(Number(now.rows[0]!.n) - Number(before.rows[0]!.n), 2, 'the original and one report, no report about the report');
});
