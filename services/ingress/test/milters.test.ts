// Milters on ingress' listeners, over SMTP on loopback, against milter
// servers of the test's own (libs/milter/test/fake-milter.ts) and the fake
// policy/queue: each action, verdicts and replies, a chain where the second
// sees the first's changes, default actions of a milter down or silent, a big
// body streamed in chunks through a spool file, listeners, run-time changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Listener, MilterDefaultAction, type Milter } from '@tern/proto';
import { FakeMilter, pkt, R } from '../../../libs/milter/test/fake-milter';
import { RawClient } from '../../../libs/smtp/test/helpers';
import { startIngress, type Harness } from './fakes';

const MX = [Listener.LISTENER_MX];

function def(name: string, m: FakeMilter | string, over: Partial<Milter> = {}): Partial<Milter> {
  return { name, address: typeof m === 'string' ? m : m.address, listeners: MX, connectTimeoutMs: 2000, commandTimeoutMs: 2000, totalTimeoutMs: 10_000, order: 0, ...over };
}

async function withMilters(milters: Partial<Milter>[], env: Record<string, string> = {}): Promise<Harness> {
  const h = await startIngress(env);
  h.policy.milters = milters;
  await h.app.milters.refresh();
  return h;
}

/** One message over SMTP; the reply to its end of data. */
async function send(port: number, body: string, rcpts = ['rcpt@example.net'], from = 'sender@example.org'): Promise<{ code: number; raw: string }> {
  const c = await RawClient.connect(port);
  try {
    assert.equal((await c.read()).code, 220);
    assert.equal((await c.cmd('EHLO client.example')).code, 250);
    assert.equal((await c.cmd(`MAIL FROM:<${from}>`)).code, 250);
    for (const r of rcpts) assert.equal((await c.cmd(`RCPT TO:<${r}>`)).code, 250);
    assert.equal((await c.cmd('DATA')).code, 354);
    c.send(`${body}.\r\n`);
    const r = await c.read();
    await c.cmd('QUIT');
    return { code: r.code, raw: r.raw };
  } finally {
    c.close();
  }
}

const MESSAGE = 'Subject: hello\r\nX-Old: 1\r\nX-Old: 2\r\n\r\nbody line\r\n';

test('every action a milter may take at the end of the message reaches the stored message', async () => {
  const milter = await new FakeMilter({
    eom: () => [
      pkt(R.ADDHEADER, 'X-Spam-Status', 'No, score=0.1'),
      pkt(R.INSHEADER, 1, 'X-Inserted', 'second'),
      pkt(R.CHGHEADER, 1, 'Subject', '[checked] hello'),
      pkt(R.CHGHEADER, 2, 'X-Old', ''),
      pkt(R.ADDRCPT, '<added@example.net>'),
      pkt(R.DELRCPT, '<gone@example.net>'),
      pkt(R.CHGFROM, '<bounces@example.org>'),
      pkt(R.REPLBODY, Buffer.from('replaced ')),
      pkt(R.REPLBODY, Buffer.from('body\r\n')),
      pkt(R.CONTINUE),
    ],
  }).start();
  const h = await withMilters([def('m1', milter)]);
  try {
    const r = await send(h.app.ports.smtp!, MESSAGE, ['rcpt@example.net', 'gone@example.net']);
    assert.match(r.raw, /^250 2\.0\.0 Ok: queued as Q000001/);
    const m = h.queue.stored[0]!;
    const text = m.body.toString();
    // Received (ingress') stays on top; the milter saw it as the first header.
    assert.match(text, /^Received: from client\.example[^]*?\r\nX-Inserted: second\r\nSubject: \[checked\] hello\r\nX-Old: 1\r\nX-Spam-Status: No, score=0\.1\r\n\r\nreplaced body\r\n$/);
    assert.equal(m.header.envelope!.sender, 'bounces@example.org');
    assert.deepEqual(m.header.recipients.map((x) => x.address), ['rcpt@example.net', 'added@example.net']);
    assert.equal(m.header.hold, false);
    const seen = milter.messages[0]!;
    assert.deepEqual(seen.mail, ['<sender@example.org>']);
    assert.deepEqual(seen.rcpts, [['<rcpt@example.net>'], ['<gone@example.net>']]);
    assert.equal(seen.connect!.address, '127.0.0.1');
    assert.equal(seen.helo, 'client.example');
    assert.equal(seen.headers[0]![0], 'Received');
    assert.deepEqual(seen.headers.slice(1), [['Subject', 'hello'], ['X-Old', '1'], ['X-Old', '2']]);
    assert.equal(seen.body.toString(), 'body line\r\n');
    assert.equal(seen.macros.C?.j, 'mx.tern.test');
    assert.equal(seen.macros.C?.['{daemon_name}'], 'mx');
  } finally {
    await h.stop();
    await milter.stop();
  }
});

test('verdicts: reject, tempfail and a reply of its own refuse with nothing stored; quarantine stores held; discard answers 250 and stores nothing', async () => {
  const cases: Array<[() => Buffer[], RegExp, 'none' | 'held']> = [
    [() => [pkt(R.REJECT)], /^550 5\.7\.1 Command rejected\r\n$/, 'none'],
    [() => [pkt(R.TEMPFAIL)], /^451 4\.7\.1 Service unavailable - try again later\r\n$/, 'none'],
    [() => [pkt(R.REPLYCODE, '554 5.7.1 Gtube pattern')], /^554 5\.7\.1 Gtube pattern\r\n$/, 'none'],
    [() => [pkt(R.REPLYCODE, '550-5.7.1 first line\r\n550 5.7.1 second line')], /^550-5\.7\.1 first line\r\n550 5\.7\.1 second line\r\n$/, 'none'],
    [() => [pkt(R.REPLYCODE, '421 4.7.0 later')], /^421 4\.7\.0 later\r\n$/, 'none'],
    [() => [pkt(R.QUARANTINE, 'suspicious'), pkt(R.CONTINUE)], /^250 2\.0\.0 Ok: queued as /, 'held'],
    [() => [pkt(R.DISCARD)], /^250 2\.0\.0 Ok\r\n$/, 'none'],
  ];
  for (const [eom, reply, stored] of cases) {
    const milter = await new FakeMilter({ eom }).start();
    const h = await withMilters([def('m', milter)]);
    try {
      const r = await send(h.app.ports.smtp!, MESSAGE);
      assert.match(r.raw, reply);
      if (stored === 'none') assert.equal(h.queue.stored.length, 0, r.raw);
      else assert.equal(h.queue.stored[0]!.header.hold, true);
    } finally {
      await h.stop();
      await milter.stop();
    }
  }
});

test('a refusal at an earlier stage (MAIL) refuses the message', async () => {
  const milter = await new FakeMilter({ stage: (c) => (c === 'M' ? [pkt(R.REPLYCODE, '550 5.7.1 Sender blocked')] : undefined) }).start();
  const h = await withMilters([def('m', milter)]);
  try {
    assert.match((await send(h.app.ports.smtp!, MESSAGE)).raw, /^550 5\.7\.1 Sender blocked/);
    assert.equal(h.queue.stored.length, 0);
  } finally {
    await h.stop();
    await milter.stop();
  }
});

test('a chain of two: the second sees the first one\'s header and body changes, and the result of both is stored', async () => {
  const first = await new FakeMilter({ eom: () => [pkt(R.CHGHEADER, 1, 'Subject', '[one] hello'), pkt(R.ADDHEADER, 'X-First', 'yes'), pkt(R.REPLBODY, Buffer.from('from first\r\n')), pkt(R.CONTINUE)] }).start();
  const second = await new FakeMilter({ eom: () => [pkt(R.ADDHEADER, 'X-Second', 'yes'), pkt(R.ACCEPT)] }).start();
  // Order decides, not the list's order.
  const h = await withMilters([def('b', second, { order: 2 }), def('a', first, { order: 1 })]);
  try {
    assert.equal((await send(h.app.ports.smtp!, MESSAGE)).code, 250);
    const seen = second.messages[0]!;
    assert.deepEqual(seen.headers.slice(1), [['Subject', '[one] hello'], ['X-Old', '1'], ['X-Old', '2'], ['X-First', 'yes']]);
    assert.equal(seen.body.toString(), 'from first\r\n');
    assert.match(h.queue.stored[0]!.body.toString(), /\r\nSubject: \[one\] hello\r\nX-Old: 1\r\nX-Old: 2\r\nX-First: yes\r\nX-Second: yes\r\n\r\nfrom first\r\n$/);
  } finally {
    await h.stop();
    await first.stop();
    await second.stop();
  }
});

test('default actions: a milter down or silent gets tempfail (451 4.7.1), accept (stored without it) or reject (550 5.7.1)', async () => {
  const free = net.createServer();
  await new Promise<void>((r) => free.listen(0, '127.0.0.1', r));
  const downAddress = `127.0.0.1:${(free.address() as net.AddressInfo).port}`;
  await new Promise<void>((r) => free.close(() => r()));
  const silent = await new FakeMilter({ eom: () => 'hang' }).start();
  const cases: Array<[string, Partial<Milter>, RegExp, number]> = [
    ['down, tempfail', { defaultAction: MilterDefaultAction.MILTER_DEFAULT_ACTION_TEMPFAIL }, /^451 4\.7\.1 Service unavailable - try again later/, 0],
    ['down, unspecified = tempfail', {}, /^451 4\.7\.1 /, 0],
    ['down, accept', { defaultAction: MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT }, /^250 2\.0\.0 Ok: queued as /, 1],
    ['down, reject', { defaultAction: MilterDefaultAction.MILTER_DEFAULT_ACTION_REJECT }, /^550 5\.7\.1 Command rejected/, 0],
    ['silent, tempfail (command timeout)', { address: silent.address, commandTimeoutMs: 300 }, /^451 4\.7\.1 /, 0],
    ['silent, accept (total timeout)', { address: silent.address, commandTimeoutMs: 5000, totalTimeoutMs: 400, defaultAction: MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT }, /^250 /, 1],
  ];
  try {
    for (const [what, over, reply, stored] of cases) {
      const tagger = await new FakeMilter({ eom: () => [pkt(R.ADDHEADER, 'X-Tagged', 'yes'), pkt(R.CONTINUE)] }).start();
      const h = await withMilters([def('broken', downAddress, { order: 1, ...over }), def('tagger', tagger, { order: 2 })]);
      try {
        const r = await send(h.app.ports.smtp!, MESSAGE);
        assert.match(r.raw, reply, what);
        assert.equal(h.queue.stored.length, stored, what);
        // Accept goes on with the rest of the chain.
        if (stored) assert.match(h.queue.stored[0]!.body.toString(), /X-Tagged: yes/, what);
      } finally {
        await h.stop();
        await tagger.stop();
      }
    }
  } finally {
    await silent.stop();
  }
});

test('a big message is spooled to a file, streamed to the milter in chunks of at most 65535 octets and stored whole', async () => {
  const milter = await new FakeMilter({ eom: () => [pkt(R.ADDHEADER, 'X-Checked', 'yes'), pkt(R.CONTINUE)] }).start();
  // Spool memory 64 KiB: this message (about 300 KB) goes to disk.
  const h = await withMilters([def('m', milter)], { TERN_MILTER_SPOOL_MEMORY: String(64 * 1024) });
  try {
    const line = `${'x'.repeat(98)}\r\n`;
    const body = line.repeat(3_000);
    const r = await send(h.app.ports.smtp!, `Subject: big\r\n\r\n${body}`);
    assert.match(r.raw, /^250 /);
    const seen = milter.messages[0]!;
    assert.equal(seen.body.length, body.length);
    assert.ok(seen.bodyChunks.every((n) => n <= 65535), String(seen.bodyChunks));
    assert.ok(seen.bodyChunks.length >= 5);
    const stored = h.queue.stored[0]!.body.toString();
    assert.ok(stored.endsWith(`Subject: big\r\nX-Checked: yes\r\n\r\n${body}`));
  } finally {
    await h.stop();
    await milter.stop();
  }
});

test('milters apply to their listeners only, and a change of the chain applies at the next refresh', async () => {
  const milter = await new FakeMilter({ eom: () => [pkt(R.REJECT)] }).start();
  const h = await withMilters([def('sub-only', milter, { listeners: [Listener.LISTENER_SUBMISSION] })]);
  try {
    assert.equal((await send(h.app.ports.smtp!, MESSAGE)).code, 250);
    assert.equal(milter.connections, 0);
    h.policy.milters = [def('now-mx', milter)];
    await h.app.milters.refresh();
    assert.equal((await send(h.app.ports.smtp!, MESSAGE)).code, 550);
    h.policy.milters = [];
    await h.app.milters.refresh();
    assert.equal((await send(h.app.ports.smtp!, MESSAGE)).code, 250);
  } finally {
    await h.stop();
    await milter.stop();
  }
});

test('until the chain is known (policy ListMilters never answered) a message gets 451 4.3.0; a failed refresh later keeps the last chain', async () => {
  const milter = await new FakeMilter({ eom: () => [pkt(R.REJECT)] }).start();
  const h = await startIngress({}, (policy) => (policy.milters = 'down'));
  try {
    await h.app.milters.refresh();
    assert.match((await send(h.app.ports.smtp!, MESSAGE)).raw, /^451 4\.3\.0 /);
    assert.equal(h.queue.stored.length, 0);
    h.policy.milters = [def('m', milter)];
    await h.app.milters.refresh();
    h.policy.milters = 'down';
    await h.app.milters.refresh();
    assert.match((await send(h.app.ports.smtp!, MESSAGE)).raw, /^550 5\.7\.1 /, 'the last chain known still applies');
  } finally {
    await h.stop();
    await milter.stop();
  }
});
