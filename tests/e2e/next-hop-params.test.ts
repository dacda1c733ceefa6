// Issue 26, end to end through every service: what the MAIL and RCPT
// parameters of a message become at the next hop. A message sent with
// SMTPUTF8 but without UTF-8 in its envelope or headers goes to a next hop
// that lacks SMTPUTF8 (RFC 6531 3.2); ORCPT and ENVID are passed on as
// xtext of their UTF-8 bytes (RFC 3461 4) and a utf-8 ORCPT in the RFC 6533
// form the session allows.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { RawSmtp, waitFor } from '../ops/helpers';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';

const harness = new Harness({ name: 'e2e-next-hop-params' });
let platform: Platform;
let db: pg.Pool;
/** legacy.test: no SMTPUTF8 (8BITMIME and DSN offered). */
let legacyMx: SmtpSink;
/** modern.test: SMTPUTF8 and DSN. */
let modernMx: SmtpSink;

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.90');
  legacyMx = await harness.startSink({ host: '127.0.0.90', port, hostname: 'mx.legacy.test', smtputf8: false });
  modernMx = await harness.startSink({ host: '127.0.0.91', port, hostname: 'mx.modern.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('legacy.test', 'mx.legacy.test').a('mx.legacy.test', '127.0.0.90');
  dns.mx('modern.test', 'mx.modern.test').a('mx.modern.test', '127.0.0.91');
  platform = await startPlatform(harness, { databaseUrl: database.url, natsUrl: nats.url, dnsServer: dns.address, remoteSmtpPort: port });
  db = new pg.Pool({ connectionString: database.url, max: 2 });
  harness.defer(() => db.end(), 'end pool');
});

after(() => harness.close());

/** Sends one message with the given MAIL and RCPT lines (parameters included) from a trusted client; returns the queue id. */
async function sendRaw(mail: string, rcpts: string[], message: string): Promise<string> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    const m = await client.command(mail);
    assert.equal(m.code, 250, `${mail}: ${m.text}`);
    for (const rcpt of rcpts) {
      const r = await client.command(rcpt);
      assert.equal(r.code, 250, `${rcpt}: ${r.text}`);
    }
    assert.equal((await client.command('DATA')).code, 354);
    const end = await client.command(`${message.replace(/\r?\n/g, '\r\n').replace(/\r\n$/, '')}\r\n.`);
    assert.equal(end.code, 250, `end of data: ${end.text}`);
    const id = /queued as (\S+)/.exec(end.text)?.[1];
    assert.ok(id, `a queue id in "${end.text}"`);
    return id;
  } finally {
    client.close();
  }
}

/** The final state and last reply of each recipient of a message, once none is pending. */
async function settled(queueId: string): Promise<{ address: string; state: number; code: number; enhanced: string }[]> {
  return waitFor(`recipients of ${queueId} final`, async () => {
    const r = await db.query<{ address: string; state: number; last_code: number; last_enhanced: string }>(
      'SELECT address, state, last_code, last_enhanced FROM queue.recipients WHERE message_id = $1 ORDER BY idx',
      [queueId],
    );
    if (!r.rows.length || r.rows.some((x) => [1, 2, 3].includes(x.state))) return undefined;
    return r.rows.map((x) => ({ address: x.address, state: x.state, code: x.last_code, enhanced: x.last_enhanced }));
  }, 30_000, 100);
}

const FAILED = 5;

test('SMTPUTF8 with an ASCII envelope and headers is delivered to a next hop without SMTPUTF8, without the parameter', async () => {
  legacyMx.reset();
  const body = 'Gr\u00fc\u00dfe aus dem Text: UTF-8 in the body is 8BITMIME content, not SMTPUTF8.\r\n';
  await sendRaw('MAIL FROM:<alice@sender.test> SMTPUTF8 BODY=8BITMIME', ['RCPT TO:<bob@legacy.test>'], `From: alice@sender.test\r\nTo: bob@legacy.test\r\nSubject: ascii headers\r\n\r\n${body}`);
  const [msg] = await legacyMx.waitForMessages(1, 20_000);
  assert.deepEqual(msg!.rcptTo, ['bob@legacy.test']);
  assert.equal(msg!.mailParams.SMTPUTF8, undefined, 'no SMTPUTF8 parameter to a server that does not offer it');
  assert.equal(msg!.mailParams.BODY, '8BITMIME');
  assert.ok(msg!.raw.toString('utf8').includes(body), 'the body as sent');
});

test('SMTPUTF8 with UTF-8 in a header or in the envelope still fails 553 5.6.7 at a next hop without SMTPUTF8', async () => {
  legacyMx.reset();
  const inHeader = await sendRaw('MAIL FROM:<alice@sender.test> SMTPUTF8', ['RCPT TO:<carol@legacy.test>'], 'From: J\u00f6rg <alice@sender.test>\r\nTo: carol@legacy.test\r\nSubject: utf-8 header\r\n\r\nHello.\r\n');
  const inEnvelope = await sendRaw('MAIL FROM:<alice@sender.test> SMTPUTF8', ['RCPT TO:<j\u00f6rg@legacy.test>'], 'From: alice@sender.test\r\nTo: undisclosed-recipients:;\r\nSubject: utf-8 recipient\r\n\r\nHello.\r\n');
  const inSender = await sendRaw('MAIL FROM:<j\u00f6rg@sender.test> SMTPUTF8', ['RCPT TO:<dave@legacy.test>'], 'From: alice@sender.test\r\nTo: dave@legacy.test\r\nSubject: utf-8 sender\r\n\r\nHello.\r\n');
  for (const id of [inHeader, inEnvelope, inSender]) {
    const [r] = await settled(id);
    assert.deepEqual([r!.state, r!.code, r!.enhanced], [FAILED, 553, '5.6.7'], `${id} (${r!.address})`);
  }
  assert.equal(legacyMx.messages.length, 0);
});

test('SMTPUTF8 is passed on to a next hop that offers it', async () => {
  modernMx.reset();
  await sendRaw('MAIL FROM:<alice@sender.test> SMTPUTF8', ['RCPT TO:<j\u00f6rg@modern.test>'], 'From: alice@sender.test\r\nTo: j\u00f6rg@modern.test\r\nSubject: Gr\u00fc\u00dfe\r\n\r\nHello.\r\n');
  const [msg] = await modernMx.waitForMessages(1, 20_000);
  assert.equal(msg!.mailParams.SMTPUTF8, true);
  assert.deepEqual(msg!.rcptTo, ['j\u00f6rg@modern.test']);
});

test('ORCPT reaches a next hop without SMTPUTF8 as xtext of its UTF-8 bytes, a utf-8 ORCPT as utf-8-addr-xtext (RFC 6533)', async () => {
  legacyMx.reset();
  await sendRaw(
    'MAIL FROM:<alice@sender.test> ENVID=env+2Bid+3D1',
    ['RCPT TO:<erin@legacy.test> NOTIFY=FAILURE ORCPT=rfc822;j+C3+BCrgen+E2+82+AC@legacy.test', 'RCPT TO:<fred@legacy.test> ORCPT=utf-8;j\\x{FC}rgen\\x{1F600}@legacy.test'],
    'From: alice@sender.test\r\nTo: erin@legacy.test, fred@legacy.test\r\nSubject: orcpt\r\n\r\nHello.\r\n',
  );
  const [msg] = await legacyMx.waitForMessages(1, 20_000);
  assert.equal(msg!.mailParams.ENVID, 'env+2Bid+3D1');
  assert.equal(msg!.mailParams.SMTPUTF8, undefined);
  const byRcpt = Object.fromEntries(msg!.rcptTo.map((r, i) => [r, msg!.rcptParams[i]!]));
  assert.equal(byRcpt['erin@legacy.test']!.ORCPT, 'rfc822;j+C3+BCrgen+E2+82+AC@legacy.test', 'xtext of the UTF-8 bytes, as the client sent it');
  assert.equal(byRcpt['erin@legacy.test']!.NOTIFY, 'FAILURE');
  assert.equal(byRcpt['fred@legacy.test']!.ORCPT, 'utf-8;j\\x{FC}rgen\\x{1F600}@legacy.test', 'utf-8-addr-xtext: ASCII only, without SMTPUTF8');
});

test('a utf-8 ORCPT reaches a next hop in an SMTPUTF8 transaction as utf-8-addr-unitext (RFC 6533)', async () => {
  modernMx.reset();
  await sendRaw('MAIL FROM:<alice@sender.test> SMTPUTF8', ['RCPT TO:<gina@modern.test> ORCPT=utf-8;j\\x{FC}rgen\\x{2B}x\\x{1F600}@modern.test'], 'From: alice@sender.test\r\nTo: gina@modern.test\r\nSubject: orcpt utf-8\r\n\r\nHello.\r\n');
  const [msg] = await modernMx.waitForMessages(1, 20_000);
  assert.equal(msg!.mailParams.SMTPUTF8, true);
  assert.equal(msg!.rcptParams[0]!.ORCPT, 'utf-8;j\u00fcrgen\\x{2B}x\u{1F600}@modern.test', 'UTF-8 as is; "+" still escaped');
});
