// The milter client against a milter server of the test's own over TCP on
// loopback: negotiation, every stage in order, each action, verdicts, body
// chunking, timeouts and protocol errors; and the header section rules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  Action,
  applyHeaderChange,
  Cmd,
  converse,
  encode,
  MilterError,
  MilterSession,
  OFFERED_PROTOCOL,
  parseHeaderSection,
  parseReplyText,
  Proto,
  serializeHeaders,
  type MilterMessage,
  type Modification,
} from '../src/index';
import { FakeMilter, pkt, R } from './fake-milter';

const T = { connectMs: 2000, commandMs: 2000 };

function message(over: Partial<MilterMessage> = {}): MilterMessage {
  return {
    client: { name: 'client.example', address: '192.0.2.7', port: 40123 },
    helo: 'helo.example',
    sender: 'alice@example.org',
    recipients: ['bob@example.net', 'carol@example.net'],
    headers: [
      { name: 'Subject', raw: ' hello' },
      { name: 'X-Folded', raw: ' one\r\n\ttwo' },
    ],
    body: async function* () {
      yield Buffer.from('line 1\r\nline 2\r\n');
    },
    macros: (stage, rcpt) => (stage === 'C' ? { j: 'mx.test', '{daemon_name}': 'mx' } : stage === 'R' ? { '{rcpt_addr}': rcpt } : undefined),
    ...over,
  };
}

async function run(m: FakeMilter, msg = message(), timeouts = T): Promise<{ verdict: Awaited<ReturnType<typeof converse>>; mods: Modification[]; session: MilterSession }> {
  const session = await MilterSession.connect(m.address, timeouts);
  const mods: Modification[] = [];
  try {
    const verdict = await converse(session, msg, (x) => void mods.push(x));
    return { verdict, mods, session };
  } finally {
    await session.quit();
  }
}

test('negotiates version 6 and sends every stage in order with macros, folded headers as LF and the body', async () => {
  const offered: Buffer[] = [];
  const m = await new FakeMilter().start();
  // Record what the client offered in OPTNEG.
  const server = m as unknown as { handle: (p: { code: string; data: Buffer }, ...rest: unknown[]) => void };
  const orig = server.handle.bind(m);
  server.handle = (p, ...rest) => {
    if (p.code === Cmd.OPTNEG) offered.push(p.data);
    orig(p, ...rest);
  };
  try {
    const { verdict, mods, session } = await run(m);
    assert.deepEqual(verdict, { kind: 'continue' });
    assert.deepEqual(mods, []);
    assert.equal(offered[0]!.readUInt32BE(0), 6);
    assert.equal(offered[0]!.readUInt32BE(4), 0x1ff);
    assert.equal(offered[0]!.readUInt32BE(8), OFFERED_PROTOCOL);
    assert.equal(session.negotiated.version, 6);
    const seen = m.messages[0]!;
    // (OPTNEG before and QUIT after are not part of the message's record.)
    assert.deepEqual(seen.commands, ['D', 'C', 'H', 'M', 'D', 'R', 'D', 'R', 'T', 'L', 'L', 'N', 'B', 'E']);
    assert.deepEqual(seen.connect, { hostname: 'client.example', family: '4', port: 40123, address: '192.0.2.7' });
    assert.equal(seen.helo, 'helo.example');
    assert.deepEqual(seen.mail, ['<alice@example.org>']);
    assert.deepEqual(seen.rcpts, [['<bob@example.net>'], ['<carol@example.net>']]);
    assert.deepEqual(seen.macros.C, { j: 'mx.test', '{daemon_name}': 'mx' });
    assert.deepEqual(seen.macros.R, { '{rcpt_addr}': 'carol@example.net' });
    // Without HDR_LEADSPC the leading space goes; folds travel as LF.
    assert.deepEqual(seen.headers, [['Subject', 'hello'], ['X-Folded', 'one\n\ttwo']]);
    assert.equal(seen.body.toString(), 'line 1\r\nline 2\r\n');
  } finally {
    await m.stop();
  }
});

test('skips the stages a milter opts out of and waits for no reply where it asked for none', async () => {
  const m = await new FakeMilter({ protocol: Proto.NOHELO | Proto.NORCPT | Proto.NR_HDR | Proto.NR_CONN | Proto.NR_BODY | Proto.HDR_LEADSPC }).start();
  try {
    const { verdict } = await run(m);
    assert.equal(verdict.kind, 'continue');
    const seen = m.messages[0]!;
    assert.ok(!seen.commands.includes('H') && !seen.commands.includes('R'), seen.commands.join(''));
    // HDR_LEADSPC: the value as stored, leading space and all.
    assert.deepEqual(seen.headers[0], ['Subject', ' hello']);
  } finally {
    await m.stop();
  }
});

test('streams a big body in packets of at most 65535 octets', async () => {
  const m = await new FakeMilter().start();
  const piece = Buffer.alloc(100_000, 'a');
  try {
    await run(m, message({ body: async function* () { yield piece; yield piece; yield Buffer.from('\r\n'); } }));
    const seen = m.messages[0]!;
    assert.equal(seen.body.length, 200_002);
    assert.ok(seen.bodyChunks.every((n) => n <= 65535), String(seen.bodyChunks));
    assert.deepEqual(seen.bodyChunks, [65535, 34465, 65535, 34465, 2]);
  } finally {
    await m.stop();
  }
});

test('collects every modification at the end of the message, in order', async () => {
  const m = await new FakeMilter({
    eom: () => [
      pkt(R.ADDHEADER, 'X-Spam', 'Yes'),
      pkt(R.INSHEADER, 0, 'X-Top', 'first\n\tsecond'),
      pkt(R.CHGHEADER, 1, 'Subject', '[SPAM] hello'),
      pkt(R.CHGHEADER, 1, 'X-Folded', ''),
      pkt(R.ADDRCPT, '<dave@example.net>'),
      pkt(R.ADDRCPT_PAR, '<erin@example.net>', 'NOTIFY=NEVER'),
      pkt(R.DELRCPT, '<bob@example.net>'),
      pkt(R.CHGFROM, '<bounces@example.org>', 'SIZE=10'),
      pkt(R.PROGRESS),
      pkt(R.REPLBODY, Buffer.from('new ')),
      pkt(R.REPLBODY, Buffer.from('body\r\n')),
      pkt(R.QUARANTINE, 'looks odd'),
      pkt(R.ACCEPT),
    ],
  }).start();
  try {
    const { verdict, mods } = await run(m);
    assert.deepEqual(verdict, { kind: 'accept' });
    assert.deepEqual(mods, [
      { type: 'addheader', name: 'X-Spam', raw: ' Yes' },
      { type: 'insheader', index: 0, name: 'X-Top', raw: ' first\r\n\tsecond' },
      { type: 'chgheader', index: 1, name: 'Subject', raw: ' [SPAM] hello' },
      { type: 'chgheader', index: 1, name: 'X-Folded', raw: undefined },
      { type: 'addrcpt', address: 'dave@example.net', args: '' },
      { type: 'addrcpt', address: 'erin@example.net', args: 'NOTIFY=NEVER' },
      { type: 'delrcpt', address: 'bob@example.net' },
      { type: 'chgfrom', address: 'bounces@example.org', args: 'SIZE=10' },
      { type: 'replbody', chunk: Buffer.from('new ') },
      { type: 'replbody', chunk: Buffer.from('body\r\n') },
      { type: 'quarantine', reason: 'looks odd' },
    ]);
  } finally {
    await m.stop();
  }
});

test('verdicts: reject, tempfail, discard, a reply of its own, accept early, skip of the body', async () => {
  const cases: Array<[Partial<ConstructorParameters<typeof FakeMilter>[0]>, unknown, string]> = [
    [{ eom: () => [pkt(R.REJECT)] }, { kind: 'reject' }, 'E'],
    [{ eom: () => [pkt(R.TEMPFAIL)] }, { kind: 'tempfail' }, 'E'],
    [{ eom: () => [pkt(R.DISCARD)] }, { kind: 'discard' }, 'E'],
    [{ eom: () => [pkt(R.REPLYCODE, '554 5.7.1 Gtube pattern')] }, { kind: 'reply', reply: '554 5.7.1 Gtube pattern' }, 'E'],
    [{ stage: (c) => (c === Cmd.MAIL ? [pkt(R.REPLYCODE, '451 4.7.1 Greylisted')] : undefined) }, { kind: 'reply', reply: '451 4.7.1 Greylisted' }, 'M'],
    [{ stage: (c) => (c === Cmd.HELO ? [pkt(R.ACCEPT)] : undefined) }, { kind: 'accept' }, 'H'],
    [{ stage: (c) => (c === Cmd.BODY ? [pkt(R.SKIP)] : undefined), eom: () => [pkt(R.CONTINUE)] }, { kind: 'continue' }, 'E'],
  ];
  for (const [opts, want, last] of cases) {
    const m = await new FakeMilter(opts).start();
    try {
      const big = Buffer.alloc(150_000, 'b');
      const { verdict } = await run(m, message({ body: async function* () { yield big; } }));
      assert.deepEqual(verdict, want);
      const cmds = m.messages[0]!.commands;
      assert.equal(cmds[cmds.length - 1], last, cmds.join(''));
      // SKIP: no more body after the first chunk.
      if (opts?.stage?.(Cmd.BODY, m.messages[0]!)) assert.deepEqual(m.messages[0]!.bodyChunks, [65535]);
    } finally {
      await m.stop();
    }
  }
});

test('parses a milter reply: code, enhanced status, one or more lines', () => {
  assert.deepEqual(parseReplyText('554 5.7.1 Gtube pattern'), { code: 554, enhanced: '5.7.1', text: ['Gtube pattern'] });
  assert.deepEqual(parseReplyText('550-5.7.1 first\r\n550 5.7.1 second'), { code: 550, enhanced: '5.7.1', text: ['first', 'second'] });
  assert.deepEqual(parseReplyText('451 try later'), { code: 451, text: ['try later'] });
});

test('a milter that does not answer times out; PROGRESS restarts the wait', async () => {
  const hang = await new FakeMilter({ eom: () => 'hang' }).start();
  try {
    await assert.rejects(run(hang, message(), { connectMs: 2000, commandMs: 200 }), (err: MilterError) => err instanceof MilterError && err.kind === 'timeout' && /no answer within 200 ms/.test(err.message));
  } finally {
    await hang.stop();
  }
  // Ten PROGRESS, each well within the wait, then the answer: the whole takes longer than one wait.
  let sock: net.Socket | undefined;
  const slow = await new FakeMilter({ eom: () => 'hang' }).start();
  const server = slow as unknown as { serve: (s: net.Socket) => void };
  const serve = server.serve.bind(slow);
  server.serve = (s) => {
    sock = s;
    serve(s);
  };
  slow.opts.eom = () => {
    let n = 0;
    const timer = setInterval(() => {
      sock!.write(n++ < 10 ? pkt(R.PROGRESS) : pkt(R.CONTINUE));
      if (n > 10) clearInterval(timer);
    }, 100);
    return 'hang';
  };
  try {
    const { verdict } = await run(slow, message(), { connectMs: 2000, commandMs: 600 });
    assert.deepEqual(verdict, { kind: 'continue' });
  } finally {
    await slow.stop();
  }
});

test('protocol errors: a modification not negotiated, a bad packet length, an old version; a refused connection', async () => {
  const noHeaders = await new FakeMilter({ actions: Action.CHGBODY, eom: () => [pkt(R.ADDHEADER, 'X-A', 'b'), pkt(R.CONTINUE)] }).start();
  const badLength = await new FakeMilter({ eom: () => [Buffer.from([0x7f, 0xff, 0xff, 0xff, 0x63])] }).start();
  const old = await new FakeMilter({ version: 1 }).start();
  try {
    await assert.rejects(run(noHeaders), (e: MilterError) => e.kind === 'protocol' && /adds a header without negotiating it/.test(e.message));
    await assert.rejects(run(badLength), (e: MilterError) => e.kind === 'protocol' && /packet length/.test(e.message));
    await assert.rejects(run(old), (e: MilterError) => e.kind === 'protocol' && /version 1/.test(e.message));
  } finally {
    await Promise.all([noHeaders.stop(), badLength.stop(), old.stop()]);
  }
  const free = net.createServer();
  await new Promise<void>((r) => free.listen(0, '127.0.0.1', r));
  const port = (free.address() as net.AddressInfo).port;
  await new Promise<void>((r) => free.close(() => r()));
  await assert.rejects(MilterSession.connect(`127.0.0.1:${port}`, T), (e: MilterError) => e.kind === 'connect');
});

test('header section: parsed byte for byte, changed by the protocol rules, serialized with untouched fields unchanged', () => {
  const src = Buffer.from('Received: from a\r\n\tby b\r\nSubject: one\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\nbody\r\n', 'latin1');
  const { fields, bodyStart } = parseHeaderSection(src);
  assert.equal(src.subarray(bodyStart).toString(), 'body\r\n');
  assert.equal(serializeHeaders(fields).toString() + '\r\n' + 'body\r\n', src.toString());
  assert.equal(fields[0]!.raw, ' from a\r\n\tby b');
  applyHeaderChange(fields, { type: 'chgheader', index: 2, name: 'x-dup', raw: ' two' });
  applyHeaderChange(fields, { type: 'chgheader', index: 1, name: 'X-Dup', raw: undefined });
  applyHeaderChange(fields, { type: 'chgheader', index: 5, name: 'X-New', raw: ' added' });
  applyHeaderChange(fields, { type: 'insheader', index: 1, name: 'X-Ins', raw: ' here' });
  applyHeaderChange(fields, { type: 'addheader', name: 'X-Last', raw: ' end' });
  assert.equal(
    serializeHeaders(fields).toString(),
    'Received: from a\r\n\tby b\r\nX-Ins: here\r\nSubject: one\r\nX-Dup: two\r\nX-New: added\r\nX-Last: end\r\n',
  );
  // A line that is not a field starts the body; so does a line cut off.
  assert.equal(parseHeaderSection(Buffer.from('A: 1\r\nnot a header\r\n')).bodyStart, 6);
  assert.equal(parseHeaderSection(Buffer.from('A: 1\r\nB: cut')).bodyStart, 6);
  void encode;
});
