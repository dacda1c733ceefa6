// Issue 26 item 1, end to end through every service into real Postfix: an
// 8-bit message (BODY=8BITMIME) reaches a Postfix configured without
// 8BITMIME (smtpd_discard_ehlo_keywords = 8bitmime) converted to 7 bit as
// Postfix itself would (quoted-printable text, base64 for the attachment,
// the multipart and the forwarded message relabelled 7bit, headers as they
// were), and a Postfix with 8BITMIME untouched; both checked byte for byte
// in their Maildirs. A message that cannot be converted (8-bit in a header)
// fails 554 5.6.3 at the first, and its sender gets a report.
// Postfix instances of their own (config, queue and mail directories) on
// 127.0.0.92/93, stopped at the end; skipped without postfix.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, postfixAvailable, startPlatform, startPostfix, type Platform, type PostfixHandle, type SmtpSink } from '@tern/devkit';
import { RawSmtp } from '../ops/helpers';

const skip = postfixAvailable() ? false : 'postfix is not installed (scripts/system-deps.sh installs it)';
const harness = new Harness({ name: 'e2e-eightbit-postfix' });
let platform: Platform;
let legacy: PostfixHandle; // no 8BITMIME
let modern: PostfixHandle; // 8BITMIME (Postfix's default)
let senderMx: SmtpSink; // where reports to sender.test go

before(async () => {
  if (skip) return;
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.92');
  legacy = await startPostfix({ host: '127.0.0.92', port, hostname: 'mx.legacy.test', mailboxes: ['bob@legacy.test'], mainCf: ['smtpd_discard_ehlo_keywords = 8bitmime'] });
  harness.defer(() => legacy.stop(), 'stop postfix (legacy)');
  modern = await startPostfix({ host: '127.0.0.93', port, hostname: 'mx.modern.test', mailboxes: ['bob@modern.test'] });
  harness.defer(() => modern.stop(), 'stop postfix (modern)');
  senderMx = await harness.startSink({ host: '127.0.0.94', port, hostname: 'mx.sender.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('legacy.test', 'mx.legacy.test').a('mx.legacy.test', '127.0.0.92');
  dns.mx('modern.test', 'mx.modern.test').a('mx.modern.test', '127.0.0.93');
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.0.94');
  platform = await startPlatform(harness, { databaseUrl: database.url, natsUrl: nats.url, dnsServer: dns.address, remoteSmtpPort: port });
});

after(() => harness.close());

/** Sends one message from a trusted client with these MAIL and RCPT lines; returns the queue id. */
async function sendRaw(mail: string, rcpts: string[], message: string): Promise<string> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    assert.equal((await client.command(mail)).code, 250);
    for (const rcpt of rcpts) assert.equal((await client.command(rcpt)).code, 250, rcpt);
    assert.equal((await client.command('DATA')).code, 354);
    // Dot-stuffed (RFC 5321 4.5.2): ingress takes one dot off again.
    const end = await client.command(`${message.replace(/\r\n$/, '').replace(/(^|\r\n)\./g, '$1..')}\r\n.`);
    assert.equal(end.code, 250, `end of data: ${end.text}`);
    return /queued as (\S+)/.exec(end.text)![1]!;
  } finally {
    client.close();
  }
}

/** The EHLO keywords a server offers. */
async function ehloKeywords(host: string, port: number): Promise<string[]> {
  const { client } = await RawSmtp.connect(host, port);
  try {
    return (await client.command('EHLO probe.test')).lines.slice(1).map((l) => l.slice(4).split(' ')[0]!.toUpperCase());
  } finally {
    client.close();
  }
}

/**
 * A message as Postfix's Maildir holds it, from its own first header line
 * on (Return-Path, Delivered-To and the Received fields of Postfix and Tern
 * come before), with the CRLF line ends it had on the wire.
 */
function asReceived(stored: Buffer, firstLine: string): Buffer {
  const text = stored.toString('latin1');
  const at = text.indexOf(`\n${firstLine}\n`);
  assert.ok(at >= 0, `"${firstLine}" not found in ${text.slice(0, 500)}`);
  assert.doesNotMatch(text, /\r/, 'Maildir lines end in LF alone');
  return Buffer.from(text.slice(at + 1).replace(/\n/g, '\r\n'), 'latin1');
}

const MESSAGE = [
  'From: alice@sender.test',
  'To: bob@legacy.test, bob@modern.test',
  'Subject: 8-bit through Tern',
  'Date: Mon, 23 Nov 2026 09:00:00 +0000',
  'Message-ID: <eightbit-1@sender.test>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="=-outer"',
  'Content-Transfer-Encoding: 8bit',
  '',
  'This is a message in MIME format.',
  '--=-outer',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: 8bit',
  '',
  'Grüße aus Köln! Der Preis: 5 € (= fünf Euro), zahlbar bis Freitag.',
  '.A line that starts with a dot, and trailing spaces  ',
  '--=-outer',
  'Content-Type: application/octet-stream; name="data.bin"',
  'Content-Disposition: attachment; filename="data.bin"',
  'Content-Transfer-Encoding: 8bit',
  '',
  'ÿþ 8-bit data',
  '--=-outer',
  'Content-Type: message/rfc822',
  'Content-Transfer-Encoding: 8bit',
  '',
  'From: carol@sender.test',
  'Subject: forwarded',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'Ça va très bien, merci. This forwarded text has no declared encoding.',
  '--=-outer--',
  '',
].join('\r\n');

/** MESSAGE in 7 bit, as a next hop without 8BITMIME must get it (RFC 6152 3). */
const CONVERTED = [
  'From: alice@sender.test',
  'To: bob@legacy.test, bob@modern.test',
  'Subject: 8-bit through Tern',
  'Date: Mon, 23 Nov 2026 09:00:00 +0000',
  'Message-ID: <eightbit-1@sender.test>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="=-outer"',
  'Content-Transfer-Encoding: 7bit',
  '',
  'This is a message in MIME format.',
  '--=-outer',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  'Gr=C3=BC=C3=9Fe aus K=C3=B6ln! Der Preis: 5 =E2=82=AC (=3D f=C3=BCnf Euro),=',
  ' zahlbar bis Freitag.',
  '.A line that starts with a dot, and trailing spaces =20',
  '--=-outer',
  'Content-Type: application/octet-stream; name="data.bin"',
  'Content-Disposition: attachment; filename="data.bin"',
  'Content-Transfer-Encoding: base64',
  '',
  'w7/DviA4LWJpdCBkYXRh',
  '--=-outer',
  'Content-Type: message/rfc822',
  'Content-Transfer-Encoding: 7bit',
  '',
  'From: carol@sender.test',
  'Subject: forwarded',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  '=C3=87a va tr=C3=A8s bien, merci. This forwarded text has no declared encod=',
  'ing.',
  '--=-outer--',
  '',
].join('\r\n');

test('an 8-bit message reaches Postfix without 8BITMIME converted to 7 bit, and Postfix with 8BITMIME untouched, byte for byte', { skip }, async () => {
  assert.ok(!(await ehloKeywords(legacy.host, legacy.port)).includes('8BITMIME'), 'the legacy Postfix does not offer 8BITMIME');
  assert.ok((await ehloKeywords(modern.host, modern.port)).includes('8BITMIME'), 'the modern Postfix offers 8BITMIME');
  await sendRaw('MAIL FROM:<alice@sender.test> BODY=8BITMIME', ['RCPT TO:<bob@legacy.test>', 'RCPT TO:<bob@modern.test>'], MESSAGE);

  const [atLegacy] = await legacy.waitForMail('bob@legacy.test', 1, 30_000);
  const [atModern] = await modern.waitForMail('bob@modern.test', 1, 30_000);
  assert.ok(atLegacy!.every((b) => b < 128), `8-bit bytes reached the server without 8BITMIME:\n${legacy.logTail()}`);
  assert.equal(asReceived(atLegacy!, 'From: alice@sender.test').toString('latin1'), CONVERTED);
  assert.equal(asReceived(atModern!, 'From: alice@sender.test').toString('utf8'), MESSAGE);
});

test('an 8-bit message that cannot be converted (8-bit in a header) fails 554 5.6.3 there, with a report to its sender', { skip }, async () => {
  senderMx.reset();
  const message = 'From: alice@sender.test\r\nTo: bob@legacy.test\r\nSubject: Grüße\r\nMessage-ID: <eightbit-2@sender.test>\r\n\r\nGrüße.\r\n';
  await sendRaw('MAIL FROM:<alice@sender.test> BODY=8BITMIME', ['RCPT TO:<bob@legacy.test>'], message);
  const [report] = await senderMx.waitForMessages(1, 30_000);
  const text = report!.raw.toString('latin1');
  assert.equal(report!.mailFrom, '', 'a report has the null sender');
  assert.match(text, /Action: failed/);
  assert.match(text, /Status: 5\.6\.3/);
  assert.match(text, /Diagnostic-Code: smtp; 554 5\.6\.3/);
  assert.equal(legacy.mail('bob@legacy.test').length, 1, 'only the first test message reached the legacy Postfix');
});
