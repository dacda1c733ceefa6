// The parts of a message split by envelope sender (SRS: a local recipient
// and a forwarded one) carry idempotency keys that are the same when the
// client sends the same message again, so the queue answers a part it
// already stored instead of storing it twice (tests/e2e/split-resend.test.ts
// shows that through the real queue); a message stored whole carries none,
// as before. And a part refused while the message is still streamed ends
// the other parts' Enqueue streams too.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PolicyAction } from '@tern/proto';
import { RawClient } from '../../../libs/smtp/test/helpers';
import { startIngress, type Harness, type StoredMessage } from './fakes';

const SRS = 'SRS0=HHHH=TT=sender.test=someone@forward.test';
let h: Harness;

before(async () => {
  h = await startIngress({}, (policy) => {
    // fwd@example.test is an alias of a remote address, forwarded with an SRS sender.
    policy.decide = (req) =>
      req.recipient === 'fwd@example.test'
        ? { action: PolicyAction.POLICY_ACTION_ACCEPT, aliasTargets: ['carol@remote.test'], srsTargets: ['carol@remote.test'], srsSender: SRS }
        : { action: PolicyAction.POLICY_ACTION_ACCEPT };
  });
});

after(() => h.stop());

/** One transaction: the reply to its end of data. */
async function send(rcpts: string[], message: string): Promise<{ code: number; raw: string }> {
  const c = await RawClient.connect(h.app.ports.smtp!);
  try {
    assert.equal((await c.read()).code, 220);
    assert.equal((await c.cmd('EHLO client.example')).code, 250);
    assert.equal((await c.cmd('MAIL FROM:<someone@sender.test>')).code, 250);
    for (const r of rcpts) assert.equal((await c.cmd(`RCPT TO:<${r}>`)).code, 250);
    assert.equal((await c.cmd('DATA')).code, 354);
    c.send(`${message}\r\n.\r\n`);
    return await c.read();
  } finally {
    c.close();
  }
}

/** What the fake queue stored from `from` on: each message's sender, recipients and key. */
const storedSince = (from: number) =>
  h.queue.stored.slice(from).map((m: StoredMessage) => ({ sender: m.header.envelope!.sender, rcpts: m.header.recipients.map((r) => r.address), key: m.header.idempotencyKey }));

const message = (id: string | undefined, bodyLines = 3) =>
  `From: <someone@sender.test>\r\nSubject: split\r\n${id ? `Message-ID: <${id}@sender.test>\r\n` : ''}\r\n` + Array.from({ length: bodyLines }, () => 'x'.repeat(76)).join('\r\n');

for (const size of [{ name: 'held whole (EnqueueBatch)', lines: 3 }, { name: 'streamed (Enqueue per part)', lines: 3000 }]) {
  test(`split parts carry idempotency keys, the same when the message is sent again: ${size.name}`, async () => {
    const from = h.queue.stored.length;
    const msg = message(`keys-${size.lines}`, size.lines);
    assert.equal((await send(['alice@example.test', 'fwd@example.test'], msg)).code, 250);
    assert.equal((await send(['alice@example.test', 'fwd@example.test'], msg)).code, 250);
    const [a, b, a2, b2] = storedSince(from);
    assert.deepEqual([a!.sender, a!.rcpts], ['someone@sender.test', ['alice@example.test']]);
    assert.deepEqual([b!.sender, b!.rcpts], [SRS, ['carol@remote.test']]);
    assert.match(a!.key, /^smtp-split:[0-9a-f]{64}$/);
    assert.match(b!.key, /^smtp-split:[0-9a-f]{64}$/);
    assert.notEqual(a!.key, b!.key, 'each part its own key');
    assert.deepEqual([a2!.key, b2!.key], [a!.key, b!.key], 'sent again: the same keys (Received and the session differ)');
    // Another message (other bytes) to the same recipients: other keys.
    assert.equal((await send(['alice@example.test', 'fwd@example.test'], message(`other-${size.lines}`, size.lines))).code, 250);
    const [c, d] = storedSince(from + 4);
    assert.ok(c!.key && d!.key && c!.key !== a!.key && d!.key !== b!.key);
  });
}

test('no key for a message stored whole, nor for a split one without a Message-ID (two sends of it may be two messages)', async () => {
  const from = h.queue.stored.length;
  assert.equal((await send(['alice@example.test'], message('whole'))).code, 250);
  assert.equal((await send(['fwd@example.test'], message('all-forwarded'))).code, 250);
  assert.equal((await send(['alice@example.test', 'fwd@example.test'], message(undefined))).code, 250);
  assert.deepEqual(
    storedSince(from).map((m) => [m.rcpts.join(','), m.key]),
    [
      ['alice@example.test', ''],
      ['carol@remote.test', ''],
      ['alice@example.test', ''],
      ['carol@remote.test', ''],
    ],
  );
});

test('a part refused while the message is streamed: 451, and the other part\'s Enqueue stream is cancelled, not left open', async () => {
  const stored = h.queue.stored.length;
  const cancelled = h.queue.cancelled;
  h.queue.refuse = (header) => (header.envelope?.sender === SRS ? 'refused for this test' : undefined);
  try {
    const r = await send(['alice@example.test', 'fwd@example.test'], message('refused', 30_000));
    assert.equal(r.code, 451, r.raw);
  } finally {
    h.queue.refuse = () => undefined;
  }
  // The local part's stream ends one way or the other: stored (its commit went out before the refusal came) or cancelled.
  const deadline = Date.now() + 10_000;
  while (h.queue.stored.length - stored + h.queue.cancelled - cancelled < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(h.queue.stored.length - stored + h.queue.cancelled - cancelled, 1, 'the local part\'s stream was ended');
});
