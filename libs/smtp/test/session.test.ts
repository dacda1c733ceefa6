import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { RawClient, ready, recordingHooks, startServer, sleep } from './helpers';
import type { SmtpServer } from '../src/index';

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

async function transaction(c: RawClient, body: string | Buffer, from = '<a@sender.test>', rcpts = ['<b@example.test>']) {
  assert.equal((await c.cmd(`MAIL FROM:${from}`)).code, 250);
  for (const r of rcpts) assert.equal((await c.cmd(`RCPT TO:${r}`)).code, 250);
  assert.equal((await c.cmd('DATA')).code, 354);
  c.send(body);
  return c.read();
}

test('greeting, EHLO capabilities, a full transaction, QUIT', async () => {
  const { hooks, port } = await setup();
  const c = await RawClient.connect(port);
  const g = await c.read();
  assert.equal(g.code, 220);
  assert.match(g.lines[0]!, /^mx\.test ESMTP/);
  const e = await c.cmd('EHLO client.test');
  assert.equal(e.code, 250);
  assert.equal(e.lines[0], 'mx.test');
  for (const ext of ['PIPELINING', 'SIZE 10240000', 'ENHANCEDSTATUSCODES', '8BITMIME', 'SMTPUTF8', 'CHUNKING', 'BINARYMIME', 'DSN']) {
    assert.ok(e.lines.includes(ext), `missing ${ext}`);
  }
  assert.ok(!e.lines.includes('STARTTLS'), 'no TLS configured');
  assert.ok(!e.lines.some((l) => l.startsWith('AUTH')), 'no AUTH without onAuth');
  assert.ok(!e.lines.includes('REQUIRETLS'), 'no REQUIRETLS without TLS');
  const r = await transaction(c, 'Subject: hi\r\n\r\n..dot line\r\nbody\r\n.\r\n');
  assert.equal(r.raw, '250 2.0.0 Ok: queued as Q1\r\n');
  assert.equal(hooks.stored[0]!.body.toString(), 'Subject: hi\r\n\r\n.dot line\r\nbody\r\n');
  assert.equal(hooks.stored[0]!.envelope.mailFrom.address, 'a@sender.test');
  assert.deepEqual(hooks.stored[0]!.envelope.rcptTo.map((x) => x.address), ['b@example.test']);
  assert.equal((await c.cmd('QUIT')).raw, '221 2.0.0 Bye\r\n');
  await c.waitClosed();
});

test('after QUIT the server closes once 221 is written (Postfix does too), so a client that resets after QUIT is no socket error', async () => {
  const { hooks, port } = await setup();
  // A client that never closes: the server does.
  const a = await ready(port);
  assert.equal((await a.cmd('QUIT')).raw, '221 2.0.0 Bye\r\n');
  const t0 = Date.now();
  await a.waitClosed();
  assert.ok(Date.now() - t0 < 2_000, 'closed by the server, not by its 5 s linger');
  // A client that resets as soon as it has the 221 (as Postfix's smtp-source does).
  const b = await ready(port);
  assert.equal((await b.cmd('QUIT')).raw, '221 2.0.0 Bye\r\n');
  b.sock.resetAndDestroy();
  for (let i = 0; i < 100 && hooks.closed.length < 2; i++) await sleep(10);
  assert.deepEqual(hooks.closed, ['quit', 'quit']);
});

test('empty message and second transaction in one session', async () => {
  const { hooks, port } = await setup();
  const c = await ready(port);
  assert.equal((await transaction(c, '.\r\n')).code, 250);
  assert.equal((await transaction(c, 'x\r\n.\r\n', '<>')).code, 250);
  assert.equal(hooks.stored[0]!.body.length, 0);
  assert.equal(hooks.stored[1]!.envelope.mailFrom.address, '');
  assert.equal(hooks.stored[1]!.session.transactions, 2);
  c.close();
});

test('bad sequence, syntax and unknown commands carry enhanced codes', async () => {
  const { port } = await setup({ limits: { maxErrors: 100 } });
  const c = await RawClient.connect(port);
  await c.read();
  assert.equal((await c.cmd('MAIL FROM:<a@b.test>')).raw, '503 5.5.1 Error: send HELO/EHLO first\r\n');
  assert.equal((await c.cmd('EHLO')).raw, '501 5.5.4 Syntax: EHLO hostname\r\n');
  await c.cmd('EHLO c.test');
  assert.equal((await c.cmd('RCPT TO:<a@b.test>')).raw, '503 5.5.1 Error: need MAIL command\r\n');
  assert.equal((await c.cmd('DATA')).raw, '503 5.5.1 Error: need MAIL command\r\n');
  assert.equal((await c.cmd('FOO')).raw, '500 5.5.2 Error: command not recognized\r\n');
  for (const v of ['TURN', 'SEND FROM:<a@b>', 'SOML FROM:<a@b>', 'SAML FROM:<a@b>']) {
    assert.equal((await c.cmd(v)).raw, '502 5.5.1 Error: command not implemented\r\n');
  }
  assert.equal((await c.cmd('VRFY someone')).code, 252);
  assert.match((await c.cmd('VRFY someone')).raw, /^252 2\.5\.0 /);
  assert.equal((await c.cmd('EXPN list')).raw, '502 5.5.1 Error: EXPN command is disabled\r\n');
  assert.equal((await c.cmd('ETRN example.test')).raw, '502 5.5.1 Error: ETRN command is disabled\r\n');
  assert.match((await c.cmd('HELP')).raw, /^214 2\.0\.0 /);
  assert.equal((await c.cmd('NOOP')).raw, '250 2.0.0 Ok\r\n');
  assert.equal((await c.cmd('STARTTLS')).raw, '502 5.5.1 Error: command not implemented\r\n');
  assert.equal((await c.cmd('AUTH PLAIN')).raw, '503 5.5.1 Error: authentication not enabled\r\n');
  assert.equal((await c.cmd('MAIL FROM:a@b.test')).raw, '501 5.1.7 Error: bad sender address syntax\r\n');
  assert.equal((await c.cmd('MAIL FROM:<a b@b.test>')).raw, '501 5.1.7 Error: bad sender address syntax\r\n');
  assert.equal((await c.cmd('MAIL TO:<a@b.test>')).raw, '501 5.5.4 Syntax: MAIL FROM:<address>\r\n');
  assert.equal((await c.cmd('MAIL FROM: ')).raw, '501 5.5.4 Syntax: MAIL FROM:<address>\r\n', 'no path: a command syntax error');
  assert.equal((await c.cmd('MAIL FROM:<a@b.test> FOO=bar')).raw, '555 5.5.4 Error: unsupported parameter FOO\r\n');
  assert.equal((await c.cmd('MAIL FROM:<a@b.test> SIZE=99999999999')).raw, '552 5.3.4 Error: message size exceeds fixed limit\r\n');
  assert.equal((await c.cmd('MAIL FROM:<a@b.test> BODY=8BITMIME BODY=7BIT')).raw, '501 5.5.4 Error: conflicting duplicate parameter BODY\r\n');
  assert.equal((await c.cmd('MAIL FROM:<ü@b.test>')).raw, '553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n');
  assert.equal((await c.cmd('MAIL FROM: <a@b.test>')).code, 250, 'a space after the colon is tolerated (Postfix)');
  assert.equal((await c.cmd('MAIL FROM:<a@b.test>')).raw, '503 5.5.1 Error: nested MAIL command\r\n');
  assert.equal((await c.cmd('RCPT TO:')).raw, '501 5.5.4 Syntax: RCPT TO:<address>\r\n', 'no path: a command syntax error');
  assert.equal((await c.cmd('RCPT TO:<postmaster>')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<@relay.test,@other.test:c@d.test>')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<c@d.test> NOTIFY=NEVER,SUCCESS')).raw, '501 5.5.4 Error: NOTIFY=NEVER cannot be combined with other keywords\r\n');
  assert.equal((await c.cmd('RCPT TO:<c@d..test>')).raw, '501 5.1.3 Error: bad recipient address syntax\r\n');
  assert.equal((await c.cmd('DATA extra')).raw, '501 5.5.4 Syntax: DATA\r\n');
  assert.equal((await c.cmd('RSET')).raw, '250 2.0.0 Ok\r\n');
  assert.equal((await c.cmd('DATA')).raw, '503 5.5.1 Error: need MAIL command\r\n');
  c.close();
});

test('DSN, SMTPUTF8 and BODY parameters reach the hooks decoded', async () => {
  const { hooks, port } = await setup();
  const c = await ready(port);
  assert.equal((await c.cmd('MAIL FROM:<ä@bücher.test> SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=QQ+2Bid SIZE=100')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<"x y"@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2By@example.test')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<δ@例え.test> NOTIFY=NEVER')).code, 250);
  assert.equal((await c.cmd('DATA')).code, 354);
  c.send('Subject: \u00e4\r\n\r\nb\u00fcch\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  const m = hooks.stored[0]!;
  const p = m.envelope.mailFrom.params;
  assert.deepEqual(p, { smtputf8: true, requiretls: false, body: '8BITMIME', ret: 'HDRS', envid: 'QQ+id', size: 100 });
  assert.equal(m.envelope.mailFrom.address, 'ä@bücher.test');
  assert.equal(m.envelope.rcptTo[0]!.address, '"x y"@example.test');
  assert.deepEqual(m.envelope.rcptTo[0]!.params, { notify: ['SUCCESS', 'FAILURE'], orcpt: { type: 'rfc822', address: 'x+y@example.test' } });
  assert.equal(m.envelope.rcptTo[1]!.parsed.asciiDomain, 'xn--r8jz45g.test');
  assert.equal(m.body.toString('utf8'), 'Subject: \u00e4\r\n\r\nb\u00fcch\r\n');
  c.close();
});

test('a pipelined batch with an error in the middle answers in order', async () => {
  const { hooks, port } = await setup({}, {
    async onRcptTo(_s, rcpt) {
      await sleep(5);
      return rcpt.parsed.local === 'unknown' ? { code: 550, enhanced: '5.1.1', text: 'unknown user' } : undefined;
    },
  });
  const c = await ready(port);
  c.send('MAIL FROM:<a@s.test>\r\nRCPT TO:<one@x.test>\r\nRCPT TO:<unknown@x.test>\r\nRCPT TO:<bad address>\r\nRCPT TO:<two@x.test>\r\nDATA\r\n');
  const codes: string[] = [];
  for (let i = 0; i < 6; i++) codes.push((await c.read()).raw.slice(0, 9));
  assert.deepEqual(codes, ['250 2.1.0', '250 2.1.5', '550 5.1.1', '501 5.1.3', '250 2.1.5', '354 End d']);
  c.send('hello\r\n.\r\nRSET\r\nNOOP\r\n');
  assert.equal((await c.read()).code, 250);
  assert.equal((await c.read()).raw, '250 2.0.0 Ok\r\n');
  assert.equal((await c.read()).raw, '250 2.0.0 Ok\r\n');
  assert.deepEqual(hooks.stored[0]!.envelope.rcptTo.map((r) => r.address), ['one@x.test', 'two@x.test']);
  c.close();
});

test('every octet written separately still works', async () => {
  const { hooks, port } = await setup();
  const c = await RawClient.connect(port);
  await c.read();
  await c.sendSlowly('EHLO slow.test\r\n');
  assert.equal((await c.read()).code, 250);
  await c.sendSlowly('MAIL FROM:<a@s.test>\r\n');
  assert.equal((await c.read()).code, 250);
  await c.sendSlowly('RCPT TO:<b@x.test>\r\n');
  assert.equal((await c.read()).code, 250);
  await c.sendSlowly('DATA\r\n');
  assert.equal((await c.read()).code, 354);
  await c.sendSlowly('a\r\n..b\r\n.c\r\n\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  assert.equal(hooks.stored[0]!.body.toString(), 'a\r\n.b\r\nc\r\n\r\n');
  await c.sendSlowly('BDAT 5\r\nab\r\nc');
  assert.equal((await c.read()).code, 503, 'BDAT without MAIL is refused after its octets');
  await c.sendSlowly('NOOP\r\n');
  assert.equal((await c.read()).code, 250);
  c.close();
});

// Each sequence would, on a lenient server, end the DATA early and let the
// remainder be read as commands ("smuggled" second message).
const smuggling: Array<[string, string]> = [
  ['LF.LF', '\n.\n'],
  ['LF.CRLF', '\n.\r\n'],
  ['CRLF.LF', '\r\n.\n'],
  ['CR.CR', '\r.\r'],
  ['CR.CRLF', '\r.\r\n'],
  ['CRLF.CR', '\r\n.\r'],
  ['NUL before dot', '\r\n\x00.\r\n'],
  ['NUL after dot', '\r\n.\x00\r\n'],
];

for (const [name, seq] of smuggling) {
  test(`smuggling sequence ${name} is refused after the real end of data and nothing is queued`, async () => {
    const { hooks, port } = await setup();
    const c = await ready(port);
    assert.equal((await c.cmd('MAIL FROM:<a@s.test>')).code, 250);
    assert.equal((await c.cmd('RCPT TO:<b@x.test>')).code, 250);
    assert.equal((await c.cmd('DATA')).code, 354);
    const smuggled = `Subject: first\r\n\r\nhello${seq}MAIL FROM:<evil@s.test>\r\nRCPT TO:<victim@x.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n`;
    c.send(smuggled);
    const r = await c.read();
    assert.equal(r.code, 554, `got ${r.raw}`);
    assert.match(r.raw, /^554 5\.6\.0 /);
    // The session is in sync again: nothing of the smuggled text was a command.
    assert.equal((await c.cmd('NOOP')).raw, '250 2.0.0 Ok\r\n');
    assert.equal(c.pending(), '');
    assert.equal(hooks.stored.length, 0);
    assert.equal(hooks.aborted, 1, 'the data stream was aborted');
    c.close();
  });
}

test('bare LF or CR in a command line is refused and the session closed', async () => {
  const { port } = await setup();
  for (const bad of ['NOOP\n', 'NOOP\rX\r\n']) {
    const c = await ready(port);
    c.send(bad);
    const r = await c.read();
    assert.equal(r.code, 521);
    assert.match(r.raw, /5\.5\.2/);
    await c.waitClosed();
  }
});

test('line limits: command 512, text 1000 (998 + CRLF allowed)', async () => {
  const { hooks, port } = await setup();
  const c = await ready(port);
  assert.equal((await c.cmd(`NOOP ${'x'.repeat(505)}`)).code, 250, '512 octets with CRLF');
  assert.equal((await c.cmd(`NOOP ${'x'.repeat(506)}`)).raw, '500 5.5.2 Error: line too long\r\n');
  c.send(`NOOP ${'y'.repeat(5000)}`);
  await sleep(20);
  assert.equal((await c.cmd('')).raw, '500 5.5.2 Error: line too long\r\n');
  assert.equal((await c.cmd('NOOP')).code, 250, 'in sync after a long line');
  const ok = `${'a'.repeat(998)}\r\n.${'b'.repeat(998)}\r\n`;
  assert.equal((await transaction(c, `${ok}.\r\n`)).code, 250);
  assert.equal(hooks.stored[0]!.body.toString(), `${'a'.repeat(998)}\r\n${'b'.repeat(998)}\r\n`);
  const r = await transaction(c, `${'a'.repeat(999)}\r\n.\r\n`);
  assert.equal(r.raw, '554 5.6.0 Error: message line too long (limit 1000 octets including CRLF)\r\n');
  assert.equal(hooks.stored.length, 1);
  c.close();
});

test('message size limit: 552 5.3.4 after the end of data, nothing queued', async () => {
  const { hooks, port } = await setup({ limits: { maxMessageSize: 1000 } });
  const c = await ready(port);
  const e = await c.cmd('EHLO again.test');
  assert.ok(e.lines.includes('SIZE 1000'));
  const r = await transaction(c, `${'x'.repeat(600)}\r\n${'y'.repeat(600)}\r\n.\r\n`);
  assert.equal(r.raw, '552 5.3.4 Error: message file too big\r\n');
  assert.equal(hooks.stored.length, 0);
  assert.equal((await transaction(c, `${'x'.repeat(500)}\r\n.\r\n`)).code, 250);
  c.close();
});

test('recipient limit gives 452 4.5.3; duplicate recipients are merged', async () => {
  const { hooks, port } = await setup({ limits: { maxRecipients: 2 } });
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  assert.equal((await c.cmd('RCPT TO:<r1@x.test>')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<r1@X.TEST>')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<r2@x.test>')).code, 250);
  assert.equal((await c.cmd('RCPT TO:<r3@x.test>')).raw, '452 4.5.3 Error: too many recipients\r\n');
  await c.cmd('DATA');
  c.send('x\r\n.\r\n');
  assert.equal((await c.read()).code, 250);
  assert.equal(hooks.stored[0]!.envelope.rcptTo.length, 2);
  c.close();
});

test('too many errors: 421 4.7.0 and close', async () => {
  const { port } = await setup({ limits: { maxErrors: 3 } });
  const c = await ready(port);
  assert.equal((await c.cmd('BOGUS')).code, 500);
  assert.equal((await c.cmd('BOGUS')).code, 500);
  c.send('BOGUS\r\n');
  const r1 = await c.read();
  const r2 = await c.read();
  assert.equal(r1.code, 500);
  assert.match(r2.raw, /^421 4\.7\.0 mx\.test Error: too many errors/);
  await c.waitClosed();
});

test('talking before the greeting is refused (pregreet)', async () => {
  const { port, hooks } = await setup({ limits: { greetingDelayMs: 150 } });
  const c = await RawClient.connect(port);
  c.send('EHLO early.test\r\n');
  const r = await c.read();
  assert.equal(r.code, 554);
  assert.match(r.raw, /^554 5\.5\.0 /);
  await c.waitClosed();
  await sleep(20);
  assert.ok(hooks.closed.includes('pregreet'));
});

test('pipelining before EHLO is a synchronization error', async () => {
  const { port } = await setup();
  const c = await RawClient.connect(port);
  await c.read();
  c.send('HELO x.test\r\nMAIL FROM:<a@s.test>\r\n');
  const r = await c.read();
  assert.match(r.raw, /^554 5\.5\.0 /);
  await c.waitClosed();
  // After HELO (no PIPELINING) commands must still come one at a time.
  const d = await RawClient.connect(port);
  await d.read();
  assert.equal((await d.cmd('HELO x.test')).code, 250);
  d.send('MAIL FROM:<a@s.test>\r\nRCPT TO:<b@x.test>\r\n');
  assert.equal((await d.read()).code, 554);
  await d.waitClosed();
});

test('message text pipelined behind DATA (before the 354) is a synchronization error, never read as commands', async () => {
  const { port, hooks } = await setup();
  const c = await ready(port);
  // DATA refused (no valid recipients): the text behind it must not run as commands.
  c.send('MAIL FROM:<a@s.test>\r\nDATA\r\nRCPT TO:<b@x.test>\r\n');
  assert.equal((await c.read()).code, 250);
  assert.match((await c.read()).raw, /^554 5\.5\.0 .*improper command pipelining/);
  await c.waitClosed();
  // The same with DATA accepted: nothing stored.
  const d = await ready(port);
  d.send('MAIL FROM:<a@s.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n');
  assert.equal((await d.read()).code, 250);
  assert.equal((await d.read()).code, 250);
  assert.match((await d.read()).raw, /^554 5\.5\.0 /);
  await d.waitClosed();
  assert.equal(hooks.stored.length, 0);
  // DATA last in its group, the text after the 354: accepted.
  const e = await ready(port);
  e.send('MAIL FROM:<a@s.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n');
  for (const code of [250, 250, 354]) assert.equal((await e.read()).code, code);
  assert.equal((await e.cmd('Subject: x\r\n\r\nbody\r\n.')).code, 250);
  assert.equal(hooks.stored.length, 1);
  e.close();
});

test('command timeout: 421 4.4.2', async () => {
  const { port } = await setup({ limits: { commandTimeoutMs: 150 } });
  const c = await ready(port);
  const r = await c.read(2000);
  assert.match(r.raw, /^421 4\.4\.2 mx\.test /);
  await c.waitClosed();
});

test('data timeout: 421 4.4.2 and the stream is aborted', async () => {
  const { port, hooks } = await setup({ limits: { dataTimeoutMs: 150 } });
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  await c.cmd('DATA');
  c.send('partial\r\n');
  const r = await c.read(2000);
  assert.match(r.raw, /^421 4\.4\.2 /);
  await c.waitClosed();
  await sleep(20);
  assert.equal(hooks.stored.length, 0);
  assert.equal(hooks.aborted, 1);
});

test('client disconnect mid-DATA aborts the stream', async () => {
  const { port, hooks } = await setup();
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  await c.cmd('DATA');
  c.send('partial\r\n');
  await sleep(20);
  c.close();
  await sleep(50);
  assert.equal(hooks.stored.length, 0);
  assert.equal(hooks.aborted, 1);
});

test('hooks: refusals pass through, a throwing hook gives 451 4.3.0, never an accept', async () => {
  const { hooks, port } = await setup({}, {
    async onMailFrom(_s, from) {
      if (from.parsed.local === 'boom') throw new Error('policy down');
      if (from.parsed.local === 'spam') return { code: 554, enhanced: '5.7.1', text: 'go away' };
      return undefined;
    },
    async onData(_s, _e, stream) {
      stream.resume();
      throw new Error('queue down');
    },
  });
  const c = await ready(port);
  assert.equal((await c.cmd('MAIL FROM:<boom@s.test>')).raw, '451 4.3.0 Error: internal error, try again later\r\n');
  assert.equal((await c.cmd('MAIL FROM:<spam@s.test>')).raw, '554 5.7.1 go away\r\n');
  assert.equal((await transaction(c, 'x\r\n.\r\n')).raw, '451 4.3.0 Error: internal error, try again later\r\n');
  assert.equal(hooks.stored.length, 0);
  c.close();
});

test('a hook reply with a mismatched enhanced class is corrected', async () => {
  const { port } = await setup({}, {
    async onRcptTo() {
      return { code: 550, enhanced: '4.1.1', text: 'no' };
    },
  });
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  assert.equal((await c.cmd('RCPT TO:<b@x.test>')).raw, '550 5.1.1 no\r\n');
  c.close();
});

test('onDataStart refusal is given instead of 354', async () => {
  const { port } = await setup({}, {
    async onDataStart() {
      return { code: 452, enhanced: '4.3.1', text: 'Insufficient system storage' };
    },
  });
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  assert.equal((await c.cmd('DATA')).raw, '452 4.3.1 Insufficient system storage\r\n');
  // BDAT: the chunk is skipped, then refused.
  c.send('BDAT 4 LAST\r\nabcdNOOP\r\n');
  assert.equal((await c.read()).raw, '452 4.3.1 Insufficient system storage\r\n');
  assert.equal((await c.read()).code, 250);
  c.close();
});

test('per-client and total session limits', async () => {
  const { port } = await setup({ limits: { maxSessionsPerClient: 2 } });
  const a = await ready(port);
  const b = await ready(port);
  const c = await RawClient.connect(port);
  const r = await c.read();
  assert.match(r.raw, /^421 4\.7\.0 mx\.test Error: too many connections from 127\.0\.0\.1/);
  a.close();
  await sleep(30);
  const d = await ready(port);
  b.close();
  d.close();
  const t = await setup({ limits: { maxSessions: 1 } });
  const x = await ready(t.port);
  const y = await RawClient.connect(t.port);
  assert.match((await y.read()).raw, /^421 4\.7\.0 mx\.test Error: too many connections/);
  x.close();
});

test('graceful close: idle sessions get 421 4.3.2 at once, a transaction may finish', async () => {
  const { port, server, hooks } = await setup();
  const idle = await ready(port);
  const busy = await ready(port);
  await busy.cmd('MAIL FROM:<a@s.test>');
  await busy.cmd('RCPT TO:<b@x.test>');
  const closing = server.close(2000);
  assert.match((await idle.read()).raw, /^421 4\.3\.2 /);
  await idle.waitClosed();
  assert.equal((await busy.cmd('DATA')).code, 354);
  busy.send('x\r\n.\r\n');
  assert.equal((await busy.read()).code, 250);
  assert.match((await busy.read()).raw, /^421 4\.3\.2 /);
  await busy.waitClosed();
  await closing;
  assert.equal(hooks.stored.length, 1);
  await assert.rejects(RawClient.connect(port));
});

test('graceful close: after the grace period a stuck transaction gets 421 and nothing is queued', async () => {
  const { port, server, hooks } = await setup();
  const c = await ready(port);
  await c.cmd('MAIL FROM:<a@s.test>');
  await c.cmd('RCPT TO:<b@x.test>');
  await c.cmd('DATA');
  c.send('part\r\n');
  await sleep(20);
  const t0 = Date.now();
  await server.close(200);
  assert.ok(Date.now() - t0 >= 150);
  assert.match((await c.read()).raw, /^421 4\.3\.2 /);
  assert.equal(hooks.stored.length, 0);
  assert.equal(hooks.aborted, 1);
});
