import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { RawClient, ready, recordingHooks, startServer, sleep, tlsOptions } from './helpers';
import type { AuthRequest, SmtpServer } from '../src/index';

const servers: SmtpServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close(100)));
});

async function setup(opts: Parameters<typeof startServer>[0] = {}, overrides: Parameters<typeof recordingHooks>[0] = {}) {
  const hooks = recordingHooks(overrides);
  const { server, port } = await startServer(opts, hooks);
  servers.push(server);
  return { hooks, server, port };
}

const auths: AuthRequest[] = [];
const authHooks = {
  async onAuth(_s: unknown, req: AuthRequest) {
    auths.push(req);
    return req.username === 'alice' && req.password === 'secret' ? { ok: true as const, user: 'alice' } : { ok: false as const };
  },
};

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

test('STARTTLS: offered, upgrades, state is reset, AUTH and REQUIRETLS only under TLS', async () => {
  const { port, hooks } = await setup({ tls: tlsOptions() }, authHooks);
  const c = await ready(port);
  const e = await c.cmd('EHLO c.test');
  assert.ok(e.lines.includes('STARTTLS'));
  assert.ok(!e.lines.some((l) => l.startsWith('AUTH')), 'AUTH only after TLS');
  assert.equal((await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).raw, '538 5.7.11 Encryption required for requested authentication mechanism\r\n');
  assert.equal((await c.cmd('MAIL FROM:<a@s.test> REQUIRETLS')).raw, '530 5.7.10 Error: REQUIRETLS needs a TLS session\r\n');
  assert.equal((await c.cmd('STARTTLS')).raw, '220 2.0.0 Ready to start TLS\r\n');
  await c.startTls();
  assert.equal((await c.cmd('MAIL FROM:<a@s.test>')).code, 503, 'EHLO forgotten after STARTTLS');
  const e2 = await c.cmd('EHLO c.test');
  assert.ok(!e2.lines.includes('STARTTLS'));
  assert.ok(e2.lines.includes('AUTH PLAIN LOGIN'));
  assert.ok(e2.lines.includes('REQUIRETLS'));
  assert.equal((await c.cmd('STARTTLS')).raw, '554 5.5.1 Error: TLS already active\r\n');
  assert.equal((await c.cmd(`AUTH PLAIN ${b64('\0alice\0wrong')}`)).raw, '535 5.7.8 Authentication credentials invalid\r\n');
  assert.equal((await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).raw, '235 2.7.0 Authentication successful\r\n');
  assert.equal((await c.cmd('AUTH PLAIN')).code, 503);
  assert.equal((await c.cmd('MAIL FROM:<a@s.test> REQUIRETLS AUTH=<>')).code, 250);
  await c.cmd('RCPT TO:<b@x.test>');
  await c.cmd('DATA');
  c.send('hi\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  const m = hooks.stored[0]!;
  assert.equal(m.session.user, 'alice');
  assert.equal(m.session.tls?.implicit, false);
  assert.match(m.session.tls!.protocol, /^TLSv1\.[23]$/);
  assert.equal(m.envelope.mailFrom.params.requiretls, true);
  c.close();
});

test('STARTTLS drops plaintext pipelined after it (CVE-2011-0411)', async () => {
  const { port } = await setup({ tls: tlsOptions() });
  const c = await ready(port);
  c.send('STARTTLS\r\nMAIL FROM:<injected@s.test>\r\n');
  assert.equal((await c.read()).code, 220);
  await c.startTls();
  await c.cmd('EHLO c.test');
  // Had the injected MAIL been kept, this would be a nested MAIL.
  assert.equal((await c.cmd('MAIL FROM:<a@s.test>')).code, 250);
  c.close();
});

test('AUTH LOGIN with and without initial response, cancel, bad base64', async () => {
  auths.length = 0;
  const { port } = await setup({ tls: tlsOptions() }, authHooks);
  const c = await ready(port);
  await c.cmd('STARTTLS');
  await c.startTls();
  await c.cmd('EHLO c.test');
  assert.equal((await c.cmd('AUTH LOGIN')).raw, '334 VXNlcm5hbWU6\r\n');
  assert.equal((await c.cmd('*')).raw, '501 5.7.0 Authentication aborted\r\n');
  assert.equal((await c.cmd('AUTH LOGIN')).code, 334);
  assert.equal((await c.cmd('!!notbase64')).raw, '501 5.5.2 Cannot decode response\r\n');
  assert.equal((await c.cmd('AUTH CRAM-MD5')).raw, '504 5.5.4 Unrecognized authentication type\r\n');
  assert.equal((await c.cmd(`AUTH LOGIN ${b64('alice')}`)).raw, '334 UGFzc3dvcmQ6\r\n');
  assert.equal((await c.cmd(b64('secret'))).code, 235);
  assert.deepEqual(auths.at(-1), { mechanism: 'LOGIN', username: 'alice', password: 'secret', authzid: '' });
  c.close();
  const d = await ready(port);
  await d.cmd('STARTTLS');
  await d.startTls();
  await d.cmd('EHLO c.test');
  assert.equal((await d.cmd('AUTH PLAIN')).raw, '334 \r\n');
  assert.equal((await d.cmd(b64('alice\0alice\0secret'))).code, 235);
  d.close();
  const e = await ready(port);
  await e.cmd('STARTTLS');
  await e.startTls();
  await e.cmd('EHLO c.test');
  assert.equal((await e.cmd(`AUTH PLAIN ${b64('bob\0alice\0secret')}`)).code, 535, 'authzid must match');
  e.close();
});

test('submission: MAIL requires AUTH (530 5.7.0); implicit TLS listener', async () => {
  const { port, hooks } = await setup({ tls: tlsOptions(), implicitTls: true, authRequired: true, name: 'submissions' }, authHooks);
  const c = await RawClient.connectTls(port);
  assert.equal((await c.read()).code, 220);
  const e = await c.cmd('EHLO c.test');
  assert.ok(!e.lines.includes('STARTTLS'));
  assert.ok(e.lines.includes('AUTH PLAIN LOGIN'));
  assert.equal((await c.cmd('MAIL FROM:<a@s.test>')).raw, '530 5.7.0 Authentication required\r\n');
  assert.equal((await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).code, 235);
  assert.equal((await c.cmd('MAIL FROM:<alice@s.test>')).code, 250);
  await c.cmd('RCPT TO:<b@x.test>');
  await c.cmd('DATA');
  c.send('x\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  assert.equal(hooks.stored[0]!.session.tls?.implicit, true);
  assert.equal(hooks.stored[0]!.session.listener, 'submissions');
  c.close();
});

test('BDAT: text chunks, BINARYMIME binary, LAST, octet counts', async () => {
  const { port, hooks } = await setup();
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  c.send('BDAT 9\r\nSubject: ');
  assert.equal((await c.read()).raw, '250 2.0.0 Ok: 9 octets received\r\n');
  c.send('BDAT 8 LAST\r\nx\r\n\r\n.\r\n');
  assert.equal((await c.read()).raw, '250 2.0.0 Ok: queued as Q1\r\n');
  assert.equal(hooks.stored[0]!.body.toString(), 'Subject: x\r\n\r\n.\r\n', 'no dot-unstuffing in BDAT');
  assert.equal(hooks.stored[0]!.envelope.chunking, true);

  const binary = Buffer.alloc(3000);
  for (let i = 0; i < binary.length; i++) binary[i] = (i * 7) & 0xff; // NUL, bare CR/LF and all
  await c.cmd('MAIL FROM:<a@s.test> BODY=BINARYMIME');
  await c.cmd('RCPT TO:<b@x.test>');
  assert.equal((await c.cmd('DATA')).raw, '503 5.5.1 Error: DATA cannot be used with BDAT or BODY=BINARYMIME\r\n');
  const head = Buffer.from('Content-Type: application/octet-stream\r\n\r\n');
  c.send(Buffer.concat([Buffer.from(`BDAT ${head.length}\r\n`), head, Buffer.from(`BDAT ${binary.length} LAST\r\n`), binary]));
  assert.equal((await c.read()).code, 250);
  assert.equal((await c.read()).code, 250);
  assert.deepEqual(hooks.stored[1]!.body, Buffer.concat([head, binary]));

  // BDAT 0 LAST ends a message.
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  c.send('BDAT 3\r\nab\r');
  assert.equal((await c.read()).code, 250);
  c.send('BDAT 0 LAST\r\n');
  assert.equal((await c.read()).code, 554, 'a CR without LF at the end is a bare CR');
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  c.send('BDAT 3\r\nab\r');
  await c.read();
  c.send('BDAT 1\r\n\n');
  await c.read();
  c.send('BDAT 0 LAST\r\n');
  assert.equal((await c.read()).code, 250, 'CR and LF split across chunks is fine');
  assert.equal(hooks.stored[2]!.body.toString(), 'ab\r\n');
  c.close();
});

test('BDAT text with bare LF is refused after the chunk; the session stays in sync', async () => {
  const { port, hooks } = await setup();
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  const body = 'a\nMAIL FROM:<x@y>\r\n';
  c.send(`BDAT ${body.length} LAST\r\n${body}NOOP\r\n`);
  assert.match((await c.read()).raw, /^554 5\.6\.0 /);
  assert.equal((await c.read()).raw, '250 2.0.0 Ok\r\n');
  // later chunks of the failed transaction are consumed and refused
  c.send('BDAT 4\r\nabcdNOOP\r\n');
  assert.equal((await c.read()).raw, '503 5.5.1 Error: need MAIL command\r\n');
  assert.equal((await c.read()).code, 250);
  assert.equal(hooks.stored.length, 0);
  assert.equal(hooks.aborted, 1);
  c.close();
});

test('BDAT size limit and an unparseable size', async () => {
  const { port, hooks } = await setup({ limits: { maxMessageSize: 100 } });
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  c.send(`BDAT 60\r\n${'x'.repeat(58)}\r\n`);
  assert.equal((await c.read()).code, 250);
  c.send(`BDAT 60 LAST\r\n${'y'.repeat(58)}\r\nNOOP\r\n`);
  assert.equal((await c.read()).raw, '552 5.3.4 Error: message file too big\r\n');
  assert.equal((await c.read()).code, 250);
  assert.equal(hooks.stored.length, 0);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  c.send('BDAT 99999999999999\r\n');
  assert.equal((await c.read()).code, 552);
  await c.waitClosed();
  const d = await ready(port);
  d.send('BDAT 1x\r\n');
  assert.equal((await d.read()).raw, '521 5.5.4 Syntax: BDAT count [LAST]\r\n');
  await d.waitClosed();
});

test('RSET between BDAT chunks aborts the message', async () => {
  const { port, hooks } = await setup();
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  c.send('BDAT 3\r\nabc');
  assert.equal((await c.read()).code, 250);
  assert.equal((await c.cmd('MAIL FROM:<a@s.test>')).code, 503);
  assert.equal((await c.cmd('RSET')).code, 250);
  await sleep(20);
  assert.equal(hooks.aborted, 1);
  assert.equal(hooks.stored.length, 0);
  c.close();
});

test('PROXY protocol v1 and v2 from trusted CIDRs only', async () => {
  const { port, hooks } = await setup({ proxyProtocolFrom: ['127.0.0.1/32'] }, {
    async onConnect(s) {
      return s.clientAddress === '203.0.113.9' || s.clientAddress === '2001:db8::7' ? undefined : { code: 554, enhanced: '5.7.1', text: `unexpected ${s.clientAddress}` };
    },
  });
  const c = await RawClient.connect(port);
  await c.sendSlowly('PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\n');
  assert.equal((await c.read()).code, 220);
  await c.cmd('EHLO c.test');
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  await c.cmd('DATA');
  c.send('x\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  assert.equal(hooks.stored[0]!.session.clientAddress, '203.0.113.9');
  assert.equal(hooks.stored[0]!.session.clientPort, 40000);
  assert.equal(hooks.stored[0]!.session.proxied, true);
  c.close();

  const v2 = Buffer.concat([
    Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21, 0x00, 36]),
    Buffer.from('20010db8000000000000000000000007', 'hex'),
    Buffer.from('20010db8000000000000000000000001', 'hex'),
    Buffer.from([0x9c, 0x40, 0x00, 0x19]),
  ]);
  const d = await RawClient.connect(port);
  d.send(v2);
  assert.equal((await d.read()).code, 220);
  d.close();

  // A trusted peer that does not send a header is cut off.
  const e = await RawClient.connect(port);
  e.send('EHLO c.test\r\n');
  await e.waitClosed();

  // An untrusted peer saying PROXY is just talking nonsense.
  const other = await setup({ proxyProtocolFrom: ['10.0.0.0/8'] });
  const f = await RawClient.connect(other.port);
  await f.read();
  assert.equal((await f.cmd('PROXY TCP4 203.0.113.9 192.0.2.1 40000 25')).code, 500);
  f.close();
});

test('PROXY header followed by implicit TLS in the same segment', async () => {
  const { port, hooks } = await setup({ proxyProtocolFrom: ['127.0.0.1'], tls: tlsOptions(), implicitTls: true });
  const net = await import('node:net');
  const tls = await import('node:tls');
  const raw = net.connect({ port, host: '127.0.0.1' });
  await new Promise((r) => raw.once('connect', r));
  // Cork so the header and the ClientHello leave in one write.
  raw.cork();
  raw.write('PROXY TCP4 198.51.100.4 192.0.2.1 1234 465\r\n');
  const secure = tls.connect({ socket: raw, rejectUnauthorized: false });
  process.nextTick(() => raw.uncork());
  await new Promise((r) => secure.once('secureConnect', r));
  const chunks: string[] = [];
  secure.setEncoding('latin1');
  secure.on('data', (d: string) => chunks.push(d));
  await sleep(100);
  assert.match(chunks.join(''), /^220 /);
  secure.write('EHLO c.test\r\nQUIT\r\n');
  await sleep(100);
  secure.destroy();
  assert.equal(hooks.stored.length, 0);
});

test('ETRN, VRFY and EXPN hooks when enabled', async () => {
  const { port } = await setup({}, {
    async onEtrn(_s, arg) {
      return { code: 250, enhanced: '2.0.0', text: `Queuing started for ${arg}` };
    },
    async onVrfy() {
      return { code: 550, enhanced: '5.1.1', text: 'no such user' };
    },
    async onExpn() {
      return { code: 250, enhanced: '2.1.5', text: ['a@x.test', 'b@x.test'] };
    },
  });
  const c = await ready(port);
  const e = await c.cmd('EHLO c.test');
  assert.ok(e.lines.includes('ETRN'));
  assert.equal((await c.cmd('ETRN example.test')).raw, '250 2.0.0 Queuing started for example.test\r\n');
  assert.equal((await c.cmd('ETRN bad domain')).code, 501);
  assert.equal((await c.cmd('VRFY x')).raw, '550 5.1.1 no such user\r\n');
  assert.equal((await c.cmd('EXPN list')).raw, '250-2.1.5 a@x.test\r\n250 2.1.5 b@x.test\r\n');
  c.close();
});

test('a slow consumer pauses the socket instead of buffering the message', async () => {
  let maxBuffered = 0;
  const { port, hooks } = await setup({ limits: { maxMessageSize: 50_000_000 } }, {
    async onData(_s, _e, stream) {
      let total = 0;
      for await (const c of stream) {
        total += (c as Buffer).length;
        maxBuffered = Math.max(maxBuffered, stream.readableLength);
        await sleep(1);
      }
      return { code: 250, enhanced: '2.0.0', text: `got ${total}` };
    },
  });
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  await c.cmd('DATA');
  const line = `${'z'.repeat(998)}\r\n`;
  const block = line.repeat(1000); // 1 MB
  for (let i = 0; i < 8; i++) c.send(block);
  c.send('.\r\n');
  const r = await c.read(30_000);
  assert.equal(r.raw, `250 2.0.0 got ${8 * block.length}\r\n`);
  assert.ok(maxBuffered <= 512 * 1024, `stream buffered ${maxBuffered}`);
  assert.equal(hooks.stored.length, 0);
  c.close();
});
