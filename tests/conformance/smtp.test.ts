// Issue 3 conformance: a running ingress (in-process, real sockets) in front
// of fake policy/queue that record what was stored. Real clients (nodemailer,
// Python smtplib, swaks) and raw TCP; the stored message must equal what was
// sent (after dot-unstuffing) plus the headers ingress adds.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { RawClient, selfSignedCert } from '../../libs/smtp/test/helpers';
import { startIngress, type Harness } from '../../services/ingress/test/fakes';

const run = promisify(execFile);
let h: Harness;

before(async () => {
  const { certFile, keyFile } = selfSignedCert();
  h = await startIngress({ TERN_TLS_CERT_FILE: certFile, TERN_TLS_KEY_FILE: keyFile });
});
after(async () => {
  await h.stop();
});

/** The stored body without the Received header ingress prepended. */
function withoutReceived(body: Buffer): Buffer {
  const text = body.toString('latin1');
  assert.match(text, /^Received: /);
  const m = /^Received: (?:.*\r\n\t)*.*\r\n/.exec(text);
  assert.ok(m, 'Received header');
  return body.subarray(Buffer.byteLength(m[0], 'latin1'));
}

function lastStored() {
  const m = h.queue.stored.at(-1);
  assert.ok(m, 'a message was stored');
  return m;
}

async function raw(port: number, lines: Array<string | Buffer>, expectLast: RegExp): Promise<void> {
  const c = await RawClient.connect(port);
  assert.equal((await c.read()).code, 220);
  for (const l of lines) {
    c.send(l);
    if (typeof l === 'string' && /^(EHLO|MAIL|RCPT|DATA|RSET)/.test(l)) await c.read();
  }
  const r = await c.read();
  assert.match(r.raw, expectLast);
  c.close();
}

test('raw TCP: 8-bit body, dot-stuffing, 998-octet lines', async () => {
  const long = 'L'.repeat(998);
  const body = `Subject: 8bit\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n\xe9t\xe9\r\n..leading dot\r\n.\r\n${long}\r\n`;
  const wire = body.replace(/\r\n\./g, '\r\n..');
  await raw(
    h.app.ports.smtp!,
    ['EHLO raw.example\r\n', 'MAIL FROM:<a@example.org> BODY=8BITMIME\r\n', 'RCPT TO:<b@example.net>\r\n', 'DATA\r\n', Buffer.from(`${wire}.\r\n`, 'latin1')],
    /^250 2\.0\.0 Ok: queued as Q[0-9A-F]+\r\n$/,
  );
  assert.deepEqual(withoutReceived(lastStored().body), Buffer.from(body, 'latin1'));
});

test('raw TCP: SMTPUTF8 addresses and UTF-8 headers', async () => {
  const body = 'Subject: Grüße aus München\r\nFrom: Jörg <jörg@bücher.example>\r\n\r\nΚαλημέρα κόσμε\r\n';
  await raw(
    h.app.ports.smtp!,
    ['EHLO raw.example\r\n', 'MAIL FROM:<jörg@bücher.example> SMTPUTF8 BODY=8BITMIME\r\n', 'RCPT TO:<δοκιμή@παράδειγμα.example>\r\n', 'DATA\r\n', `${body}.\r\n`],
    /^250 2\.0\.0 Ok: queued as /,
  );
  const m = lastStored();
  assert.equal(withoutReceived(m.body).toString('utf8'), body);
  assert.equal(m.header.envelope!.smtputf8, true);
  assert.equal(m.header.envelope!.sender, 'jörg@bücher.example');
  assert.equal(m.header.recipients[0]!.address, 'δοκιμή@παράδειγμα.example');
  assert.match(m.body.toString('utf8'), /with UTF8SMTP id/);
});

test('raw TCP: BDAT with BINARYMIME carries arbitrary octets unchanged', async () => {
  const head = Buffer.from('Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n');
  const bin = Buffer.alloc(200_000);
  for (let i = 0; i < bin.length; i++) bin[i] = (i * 131 + (i >> 8)) & 0xff;
  const msg = Buffer.concat([head, bin]);
  const c = await RawClient.connect(h.app.ports.smtp!);
  await c.read();
  await c.cmd('EHLO raw.example');
  assert.equal((await c.cmd('MAIL FROM:<a@example.org> BODY=BINARYMIME')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<b@example.net>')).code, 250);
  const half = 70_001;
  c.send(Buffer.concat([Buffer.from(`BDAT ${half}\r\n`), msg.subarray(0, half), Buffer.from(`BDAT ${msg.length - half} LAST\r\n`), msg.subarray(half)]));
  assert.equal((await c.read()).raw, `250 2.0.0 Ok: ${half} octets received\r\n`);
  assert.match((await c.read()).raw, /^250 2\.0\.0 Ok: queued as /);
  c.close();
  const m = lastStored();
  assert.deepEqual(withoutReceived(m.body), msg);
  assert.equal(m.header.envelope!.bodyType, 2 /* BINARYMIME */);
  assert.ok(m.chunks >= 4, 'the body went to the queue in several chunks');
});

test('raw TCP: smuggling attempt is refused and nothing of it is stored', async () => {
  const before = h.queue.stored.length;
  const c = await RawClient.connect(h.app.ports.smtp!);
  await c.read();
  await c.cmd('EHLO raw.example');
  await c.cmd('MAIL FROM:<a@example.org>');
  await c.cmd('RCPT TO:<b@example.net>');
  await c.cmd('DATA');
  c.send('Subject: one\r\n\r\nx\n.\r\nMAIL FROM:<admin@example.net>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\ny\r\n.\r\n');
  assert.match((await c.read()).raw, /^554 5\.6\.0 /);
  assert.equal((await c.cmd('QUIT')).code, 221);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(h.queue.stored.length, before);
});

test('nodemailer: MX, plain', async () => {
  const t = nodemailer.createTransport({ host: '127.0.0.1', port: h.app.ports.smtp!, secure: false, ignoreTLS: true, name: 'nm.example' });
  const info = await t.sendMail({ from: 'a@example.org', to: 'b@example.net', subject: 'hello', text: 'line one\n.line two\n' });
  assert.match(info.response, /^250 2\.0\.0 Ok: queued as Q[0-9A-F]+$/);
  const m = lastStored();
  assert.ok(info.response.endsWith(m.queueId));
  const body = withoutReceived(m.body).toString();
  assert.match(body, /Subject: hello\r\n/);
  assert.match(body, /\r\n\r\nline one\r\n\.line two\r\n$/);
  t.close();
});

test('nodemailer: submission with STARTTLS + AUTH, and implicit TLS', async () => {
  for (const [port, secure] of [
    [h.app.ports.submission!, false],
    [h.app.ports.submissions!, true],
  ] as const) {
    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port,
      secure,
      requireTLS: !secure,
      tls: { rejectUnauthorized: false },
      auth: { user: 'alice', pass: 'secret' },
      name: 'nm.example',
    });
    const info = await t.sendMail({ from: 'alice@example.org', to: ['x@example.net', 'y@example.net'], subject: 'sub', text: 'hi' });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
    const m = lastStored();
    assert.equal(m.header.envelope!.authUser, 'alice');
    assert.equal(m.header.envelope!.protocol, 'ESMTPSA');
    assert.equal(m.header.recipients.length, 2);
    t.close();
  }
});

test('nodemailer: wrong password is refused with 535', async () => {
  const t = nodemailer.createTransport({ host: '127.0.0.1', port: h.app.ports.submissions!, secure: true, tls: { rejectUnauthorized: false }, auth: { user: 'alice', pass: 'nope' } });
  await assert.rejects(t.sendMail({ from: 'alice@example.org', to: 'x@example.net', text: 'x' }), /535/);
  t.close();
});

test('python smtplib: SMTPUTF8 + 8BITMIME send_message', async () => {
  const script = `
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m['From'] = 'pý@example.org'
m['To'] = 'ñ@example.net'
m['Subject'] = 'Prüfung'
m.set_content('Größe\\n.dot\\n')
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='py.example') as s:
    r = s.send_message(m, mail_options=['BODY=8BITMIME'])  # smtplib adds SMTPUTF8 itself
    code, text = s.noop()
    print('ok', code)
`;
  const { stdout } = await run('python3', ['-c', script, String(h.app.ports.smtp!)]);
  assert.match(stdout, /^ok 250/);
  const m = lastStored();
  assert.equal(m.header.envelope!.sender, 'pý@example.org');
  const body = withoutReceived(m.body).toString('utf8');
  assert.match(body, /Subject: Prüfung\r\n/);
  assert.match(body, /\r\n\r\nGröße\r\n\.dot\r\n$/);
});

test('swaks: STARTTLS + AUTH on submission, implicit TLS on submissions', async () => {
  const common = ['--from', 'alice@example.org', '--to', 'r@example.net', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'secret', '--helo', 'swaks.example', '--timeout', '10'];
  const a = await run('swaks', ['--server', '127.0.0.1', '--port', String(h.app.ports.submission!), '--tls', ...common]);
  assert.match(a.stdout, /<~ {2}250 2\.0\.0 Ok: queued as Q[0-9A-F]+/);
  assert.match(lastStored().body.toString(), /with ESMTPSA id/);
  const b = await run('swaks', ['--server', '127.0.0.1', '--port', String(h.app.ports.submissions!), '--tlsc', ...common]);
  assert.match(b.stdout, /<~ {2}250 2\.0\.0 Ok: queued as Q[0-9A-F]+/);
  const m = lastStored();
  assert.equal(m.header.envelope!.listener, 3 /* SUBMISSIONS */);
  assert.match(m.body.toString(), /^Received: .*\r\n\t\(using TLSv1\.[23] with cipher /);
  // submission added what swaks' message lacked only: swaks sends Date and Message-Id itself.
  assert.equal(m.body.toString().match(/^message-id:/gim)?.length, 1);
});

test('swaks: plain MX, no AUTH offered', async () => {
  const r = await run('swaks', ['--server', '127.0.0.1', '--port', String(h.app.ports.smtp!), '--from', 'a@example.org', '--to', 'b@example.net', '--helo', 'swaks.example', '--quit-after', 'EHLO']);
  assert.doesNotMatch(r.stdout, /250-AUTH/);
  assert.match(r.stdout, /250-CHUNKING/);
  assert.match(r.stdout, /250-STARTTLS/);
});
