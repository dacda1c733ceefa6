import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import nodemailer from 'nodemailer';
import type SMTPTransport from 'nodemailer/lib/smtp-transport';
import { SmtpSink, selfSignedCert } from '../src/index';

const sinks: SmtpSink[] = [];
after(async () => {
  for (const s of sinks) await s.close();
});
async function sink(opts: ConstructorParameters<typeof SmtpSink>[0] = {}): Promise<SmtpSink> {
  const s = await new SmtpSink(opts).start();
  sinks.push(s);
  return s;
}

function transport(s: SmtpSink, extra: Record<string, unknown> = {}) {
  return nodemailer.createTransport({
    host: s.host,
    port: s.port,
    secure: false,
    ignoreTLS: true,
    connectionTimeout: 2000,
    greetingTimeout: 2000,
    socketTimeout: 2000,
    ...extra,
  } as SMTPTransport.Options);
}

const mail = (to: string | string[]) => ({ from: 'sender@example.org', to, subject: 'hi', text: 'hello\r\n.dot line\r\n' });

/** A tiny raw SMTP client: sends lines, returns every reply line received. */
async function converse(s: SmtpSink, lines: string[], waitMs = 300): Promise<string[]> {
  const sock = net.connect(s.port, s.host);
  let got = '';
  sock.on('data', (d: Buffer) => (got += d.toString()));
  await new Promise((r) => sock.once('connect', r));
  await new Promise((r) => setTimeout(r, 100));
  for (const l of lines) {
    sock.write(`${l}\r\n`);
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, waitMs));
  sock.destroy();
  return got.split('\r\n').filter(Boolean);
}

describe('SmtpSink', () => {
  test('accepts, permfails and tempfails by local part; keeps and writes the message', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sink-'));
    const s = await sink({ host: '127.0.0.3', dir });
    const t = transport(s);
    const info = await t.sendMail(mail(['ok@example.com', 'permfail-1@example.com', 'tempfail@example.com']));
    assert.deepEqual(info.accepted, ['ok@example.com']);
    assert.deepEqual(info.rejected.sort(), ['permfail-1@example.com', 'tempfail@example.com']);
    const errs = info.rejectedErrors?.map((e) => (e as Error & { response: string }).response).sort();
    assert.match(errs?.[0] ?? '', /^451 4\.3\.0 /);
    assert.match(errs?.[1] ?? '', /^550 5\.1\.1 /);
    const [m] = await s.waitForMessages(1, 2000);
    assert.ok(m);
    assert.equal(m.mailFrom, 'sender@example.org');
    assert.deepEqual(m.rcptTo, ['ok@example.com']);
    assert.equal(m.remoteAddress, '127.0.0.1');
    assert.equal(m.tls, false);
    assert.match(m.raw.toString(), /\r\n\r\nhello\r\n\.dot line\r\n$/);
    assert.ok(m.file && fs.existsSync(m.file));
    assert.deepEqual(fs.readFileSync(m.file), m.raw);
    assert.equal(JSON.parse(fs.readFileSync(m.file.replace(/\.eml$/, '.json'), 'utf8')).mailFrom, 'sender@example.org');
    t.close();
  });

  test('all recipients refused: nodemailer fails', async () => {
    const s = await sink();
    await assert.rejects(transport(s).sendMail(mail('permfail@example.com')), /550 5\.1\.1/);
    assert.equal(s.messages.length, 0);
  });

  test('counts connections and messages per connection', async () => {
    const s = await sink();
    const pooled = transport(s, { pool: true, maxConnections: 1, maxMessages: 10 });
    await Promise.all([1, 2, 3].map((i) => pooled.sendMail(mail(`u${i}@example.com`))));
    pooled.close();
    await transport(s).sendMail(mail('solo@example.com'));
    await s.waitForMessages(4, 2000);
    assert.equal(s.connectionCount, 2);
    assert.deepEqual(s.messagesPerConnection(), [3, 1]);
    assert.equal(s.messagesFor('U2@example.com').length, 1);
  });

  test('421 at greeting, and a hanging greeting', async () => {
    const s = await sink({ behaviour: { greeting: { code: 421, text: '4.3.2 busy' } } });
    await assert.rejects(transport(s).sendMail(mail('a@example.com')), /421 4\.3\.2 busy/);
    s.setBehaviour({ greeting: 'hang' });
    await assert.rejects(transport(s, { greetingTimeout: 300 }).sendMail(mail('a@example.com')), /Greeting never received|timeout/i);
    assert.equal(s.connectionCount, 2);
  });

  test('replies at MAIL, RCPT (matching), end of data', async () => {
    const s = await sink({ behaviour: { mail: { code: 451, text: '4.7.1 slow down' } } });
    await assert.rejects(transport(s).sendMail(mail('a@example.com')), /451 4\.7\.1 slow down/);
    s.setBehaviour({ rcpt: (to) => (to.startsWith('vip') ? { code: 452, text: '4.2.2 mailbox full' } : undefined) });
    const info = await transport(s).sendMail(mail(['vip@example.com', 'b@example.com']));
    assert.deepEqual(info.accepted, ['b@example.com']);
    s.setBehaviour({ data: { code: 554, text: '5.7.1 spam' } });
    await assert.rejects(transport(s).sendMail(mail('c@example.com')), /554 5\.7\.1 spam/);
    s.setBehaviour({ data: { code: 250, text: '2.0.0 custom ok' } });
    const ok = await transport(s).sendMail(mail('d@example.com'));
    assert.match(ok.response, /^250 2\.0\.0 custom ok/);
    assert.equal(s.messages.length, 2);
  });

  test('hang at a stage and disconnect', async () => {
    const s = await sink({ behaviour: { data: 'hang' } });
    await assert.rejects(transport(s, { socketTimeout: 400 }).sendMail(mail('a@example.com')), /timeout/i);
    assert.equal(s.messages.length, 0);
    s.setBehaviour({ rcpt: 'disconnect' });
    await assert.rejects(transport(s).sendMail(mail('a@example.com')));
  });

  test('extensions advertised or not', async () => {
    const s = await sink({ size: 1000 });
    let lines = await converse(s, ['EHLO client.test']);
    assert.match(lines[0]!, /^220 /);
    for (const kw of ['PIPELINING', 'SIZE 1000', '8BITMIME', 'SMTPUTF8', 'DSN', 'ENHANCEDSTATUSCODES']) {
      assert.ok(lines.some((l) => l.slice(4) === kw), `${kw} in ${lines.join('|')}`);
    }
    assert.ok(!lines.some((l) => l.includes('STARTTLS')));
    const bare = await sink({ pipelining: false, size: 0, smtputf8: false, dsn: false });
    lines = await converse(bare, ['EHLO client.test']);
    for (const kw of ['PIPELINING', 'SIZE', 'SMTPUTF8', 'DSN']) assert.ok(!lines.some((l) => l.slice(4).startsWith(kw)), kw);
    // SIZE is enforced.
    lines = await converse(s, ['EHLO c', 'MAIL FROM:<a@b> SIZE=5000']);
    assert.match(lines.at(-1)!, /^552 5\.3\.4 /);
  });

  test('pipelined commands are answered in order', async () => {
    const s = await sink();
    const lines = await converse(s, ['EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<permfail@y.test>\r\nDATA', 'Subject: p\r\n\r\nbody\r\n.', 'QUIT']);
    const codes = lines.filter((l) => /^\d{3} /.test(l)).map((l) => l.slice(0, 3));
    assert.deepEqual(codes, ['220', '250', '250', '250', '550', '354', '250', '221']);
    assert.deepEqual(s.messages[0]?.rcptTo, ['x@y.test']);
    assert.equal(s.messages[0]?.raw.toString(), 'Subject: p\r\n\r\nbody\r\n');
  });

  test('STARTTLS with a generated or given certificate', async () => {
    const s = await sink({ starttls: true });
    const lines = await converse(s, ['EHLO c']);
    assert.ok(lines.includes('250-STARTTLS') || lines.includes('250 STARTTLS'));
    await transport(s, { ignoreTLS: false, requireTLS: true, tls: { rejectUnauthorized: false } }).sendMail(mail('a@example.com'));
    assert.equal(s.messages[0]?.tls, true);

    const cert = selfSignedCert({ names: ['mx.secure.test'] });
    const s2 = await sink({ starttls: true, hostname: 'mx.secure.test', tlsCert: cert });
    await transport(s2, { ignoreTLS: false, requireTLS: true, tls: { ca: cert.cert, servername: 'mx.secure.test' } }).sendMail(mail('b@example.com'));
    assert.equal(s2.messages[0]?.tls, true);
  });

  test('LMTP: one reply per recipient', async () => {
    const s = await sink({ lmtp: true, behaviour: { data: (_m, rcpt) => (rcpt === 'full@x.test' ? { code: 452, text: '4.2.2 full' } : undefined) } });
    const lines = await converse(s, ['LHLO c', 'MAIL FROM:<a@b.test>', 'RCPT TO:<ok@x.test>', 'RCPT TO:<full@x.test>', 'DATA', 'Subject: l\r\n\r\nx\r\n.']);
    const tailCodes = lines.slice(-2).map((l) => l.slice(0, 3));
    assert.deepEqual(tailCodes, ['250', '452']);
    assert.deepEqual(s.messages.map((m) => m.rcptTo), [['ok@x.test']]);
  });

  test('close() ends open connections', async () => {
    const s = await new SmtpSink({ behaviour: { greeting: 'hang' } }).start();
    const sock = net.connect(s.port, s.host);
    await new Promise((r) => sock.once('connect', r));
    const closed = new Promise((r) => sock.once('close', r));
    await s.close();
    await closed;
  });

  test('waitForMessages times out with a clear message', async () => {
    const s = await sink();
    await assert.rejects(s.waitForMessages(1, 100), /0 of 1 messages after 100 ms/);
  });
});
