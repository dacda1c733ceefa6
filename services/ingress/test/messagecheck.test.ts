// End-of-data checks (policy CheckMessage) against fake policy and queue:
// the body is teed to both streams, the verdict is awaited before the commit
// marker, refusals and failures store nothing, accepted headers go on top.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { grpc } from '@tern/grpc';
import { Listener, PolicyAction } from '@tern/proto';
import { RawClient } from '../../../libs/smtp/test/helpers';
import { loadConfig } from '../src/config';
import { headerLines } from '../src/messagecheck';
import { startIngress } from './fakes';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MESSAGE = 'From: ceo@signed.test\r\nSubject: hi\r\n\r\nbody\r\n';

async function send(port: number, data = `${MESSAGE}.\r\n`): Promise<{ code: number; raw: string }> {
  const c = await RawClient.connect(port);
  try {
    assert.equal((await c.read()).code, 220);
    assert.equal((await c.cmd('EHLO client.example')).code, 250);
    assert.equal((await c.cmd('MAIL FROM:<bounce@signed.test>')).code, 250);
    assert.equal((await c.cmd('RCPT TO:<alice@local.test>')).code, 250);
    assert.equal((await c.cmd('DATA')).code, 354);
    c.send(data);
    const r = await c.read(15_000);
    return { code: r.code, raw: r.raw };
  } finally {
    c.close();
  }
}

test('accept: policy gets the body as sent, the queue stores the added headers on top, above Received', async () => {
  const h = await startIngress();
  try {
    h.policy.decideMessage = () => ({
      action: PolicyAction.POLICY_ACTION_ACCEPT,
      addHeaders: [{ name: 'Authentication-Results', value: 'mx.tern.test;\r\n dkim=pass header.d=signed.test;\r\n dmarc=pass' }],
    });
    const r = await send(h.app.ports.smtp!);
    assert.match(r.raw, /^250 2\.0\.0 Ok: queued as Q000001\r\n$/);
    const m = h.policy.messages[0]!;
    assert.equal(m.body.toString(), MESSAGE, 'policy saw the message as the client sent it (dot-unstuffed, no Received)');
    assert.equal(m.header?.sender, 'bounce@signed.test');
    assert.deepEqual(m.header?.recipients, ['alice@local.test']);
    assert.equal(m.header?.session?.listener, Listener.LISTENER_MX);
    const stored = h.queue.stored[0]!.body.toString();
    assert.ok(stored.startsWith('Authentication-Results: mx.tern.test;\r\n dkim=pass header.d=signed.test;\r\n dmarc=pass\r\nReceived: from client.example'), stored);
    assert.ok(stored.endsWith(`\r\n${MESSAGE}`));
    assert.equal(h.queue.stored[0]!.header.hold, false);
  } finally {
    await h.stop();
  }
});

test('EnqueueBatch path (small messages, the default): a refusal at end of data makes no queue call; an accept stores one whole message with its prepend and trace', async () => {
  const h = await startIngress({ TERN_MESSAGE_CHECK_TIMEOUT_MS: '500' });
  try {
    const port = h.app.ports.smtp!;
    h.policy.decideMessage = () => ({ action: PolicyAction.POLICY_ACTION_REJECT, reply: { code: 550, enhanced: '5.7.1', text: 'rejected' } });
    assert.equal((await send(port)).raw, '550 5.7.1 rejected\r\n');
    await sleep(100);
    assert.equal(h.queue.streamBatches + h.queue.batchCalls, 0, 'nothing was sent to the queue');
    assert.equal(h.queue.cancelled, 0, 'no stream was opened either');
    h.policy.decideMessage = () => ({ action: PolicyAction.POLICY_ACTION_ACCEPT, addHeaders: [{ name: 'Authentication-Results', value: 'mx.tern.test; spf=pass' }] });
    assert.match((await send(port)).raw, /^250 2\.0\.0 Ok: queued as Q000001\r\n$/);
    assert.equal(h.queue.streamBatches, 1, 'one batch, on the EnqueueStream');
    assert.equal(h.queue.batchCalls, 0);
    const m = h.queue.stored[0]!;
    const body = m.body.toString();
    assert.ok(body.startsWith('Authentication-Results: mx.tern.test; spf=pass\r\nReceived: from client.example'), body);
    assert.ok(body.endsWith(`\r\n${MESSAGE}`));
    assert.match(m.traceparent ?? '', /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/, 'the session trace travels with the message');
  } finally {
    await h.stop();
  }
});

test('EnqueueBatch: a message over TERN_ENQUEUE_BATCH_BODY_MAX is streamed; a queue that refuses or fails gives 451 4.3.0', async () => {
  const h = await startIngress({ TERN_ENQUEUE_BATCH_BODY_MAX: '2000' });
  try {
    const port = h.app.ports.smtp!;
    h.policy.decideMessage = () => ({ action: PolicyAction.POLICY_ACTION_ACCEPT });
    const big = `Subject: big\r\n\r\n${'x'.repeat(70)}\r\n`.repeat(60);
    assert.match((await send(port, `${big}.\r\n`)).raw, /^250 2\.0\.0 /);
    assert.equal(h.queue.streamBatches + h.queue.batchCalls, 0, 'streamed, not batched');
    assert.ok(h.queue.stored[0]!.body.toString().endsWith(big));
    h.queue.mode = 'error';
    assert.match((await send(port)).raw, /^451 4\.3\.0 /);
    assert.equal(h.queue.streamBatches, 1);
    assert.equal(h.queue.stored.length, 1, 'nothing more stored');
  } finally {
    await h.stop();
  }
});

test('reject, defer, policy error, late verdict: the reply given and nothing stored; HOLD stores on hold', async () => {
  // Streamed (no EnqueueBatch), to see each Enqueue end without its commit marker.
  const h = await startIngress({ TERN_MESSAGE_CHECK_TIMEOUT_MS: '500', TERN_ENQUEUE_BATCH_BODY_MAX: '0' });
  try {
    const port = h.app.ports.smtp!;
    h.policy.decideMessage = () => ({ action: PolicyAction.POLICY_ACTION_REJECT, reply: { code: 550, enhanced: '5.7.1', text: 'Email rejected per DMARC policy for signed.test' } });
    assert.equal((await send(port)).raw, '550 5.7.1 Email rejected per DMARC policy for signed.test\r\n');
    h.policy.decideMessage = () => ({ action: PolicyAction.POLICY_ACTION_DEFER, reply: { code: 451, enhanced: '4.7.1', text: 'Try again later' } });
    assert.equal((await send(port)).raw, '451 4.7.1 Try again later\r\n');
    h.policy.decideMessage = () => {
      throw { code: grpc.status.UNAVAILABLE, details: 'down', metadata: new grpc.Metadata() };
    };
    assert.match((await send(port)).raw, /^451 4\.3\.0 /);
    h.policy.decideMessage = async () => {
      await sleep(2_000);
      return { action: PolicyAction.POLICY_ACTION_ACCEPT };
    };
    assert.match((await send(port)).raw, /^451 4\.3\.0 /, 'no verdict within the deadline');
    h.policy.decideMessage = () => ({ action: PolicyAction.POLICY_ACTION_UNSPECIFIED });
    assert.match((await send(port)).raw, /^451 4\.3\.0 /, 'an answer that cannot be read is not an accept');
    assert.equal(h.queue.stored.length, 0, 'nothing stored');
    await sleep(100);
    assert.equal(h.queue.cancelled, 5, 'every Enqueue ended without the commit marker');
    h.policy.decideMessage = () => ({ action: PolicyAction.POLICY_ACTION_HOLD });
    assert.match((await send(port)).raw, /^250 2\.0\.0 /);
    assert.equal(h.queue.stored[0]!.header.hold, true);
  } finally {
    await h.stop();
  }
});

test('policy unreachable at DATA: 451 4.3.0 and nothing stored', async () => {
  const h = await startIngress();
  try {
    // Policy goes away after RCPT, before the end-of-data check.
    const c = await RawClient.connect(h.app.ports.smtp!);
    assert.equal((await c.read()).code, 220);
    assert.equal((await c.cmd('EHLO client.example')).code, 250);
    assert.equal((await c.cmd('MAIL FROM:<bounce@signed.test>')).code, 250);
    assert.equal((await c.cmd('RCPT TO:<alice@local.test>')).code, 250);
    await h.policy.stop();
    assert.equal((await c.cmd('DATA')).code, 354);
    c.send(`${MESSAGE}.\r\n`);
    assert.match((await c.read(10_000)).raw, /^451 4\.3\.0 /);
    c.close();
    assert.equal(h.queue.stored.length, 0);
  } finally {
    await h.stop();
  }
});

test('a big body goes whole to both streams', async () => {
  const h = await startIngress();
  try {
    const line = `${'x'.repeat(76)}\r\n`;
    const body = `Subject: big\r\n\r\n${line.repeat(40_000)}`; // about 3 MiB
    const r = await send(h.app.ports.smtp!, `${body}.\r\n`);
    assert.match(r.raw, /^250 2\.0\.0 /);
    assert.equal(h.policy.messages[0]!.body.length, body.length);
    assert.ok(h.queue.stored[0]!.body.toString().endsWith(body));
  } finally {
    await h.stop();
  }
});

test('TERN_MESSAGE_CHECKS: off asks nothing; on means the MX listener; a bad value names the variable', async () => {
  assert.deepEqual([...loadConfig({ TERN_POLICY_ADDR: 'p:1', TERN_QUEUE_ADDR: 'q:1' }).TERN_MESSAGE_CHECKS], ['mx']);
  assert.deepEqual([...loadConfig({ TERN_POLICY_ADDR: 'p:1', TERN_QUEUE_ADDR: 'q:1', TERN_MESSAGE_CHECKS: 'mx, Submission' }).TERN_MESSAGE_CHECKS], ['mx', 'submission']);
  assert.throws(() => loadConfig({ TERN_POLICY_ADDR: 'p:1', TERN_QUEUE_ADDR: 'q:1', TERN_MESSAGE_CHECKS: 'yes' }), /TERN_MESSAGE_CHECKS/);
  const off = await startIngress({ TERN_MESSAGE_CHECKS: 'off' });
  try {
    assert.match((await send(off.app.ports.smtp!)).raw, /^250 2\.0\.0 /);
    assert.equal(off.policy.messages.length, 0);
    assert.ok(off.queue.stored[0]!.body.toString().startsWith('Received: '));
  } finally {
    await off.stop();
  }
});

test('headerLines keeps folds with CRLF and drops what is not a header', () => {
  assert.equal(
    headerLines([
      { name: 'Authentication-Results', value: 'mx; spf=pass\n\tdkim=pass ' },
      { name: 'Bad Name', value: 'x' },
      { name: 'X-Injected', value: 'a\r\nBcc: victim@example.org' },
      { name: 'X-Null', value: 'a\0b' },
    ]).toString(),
    'Authentication-Results: mx; spf=pass\r\n\tdkim=pass\r\n',
  );
});

test('RCPT says the check would only compare sizes (trusted client): no CheckMessage call, ingress refuses a message over the smallest limit itself', async () => {
  const h = await startIngress();
  try {
    h.policy.decide = (req) => ({
      action: PolicyAction.POLICY_ACTION_ACCEPT,
      messageCheckSizeOnly: true,
      maxMessageSize: req.recipient === 'alice@local.test' ? 1000 : 0,
    });
    const port = h.app.ports.smtp!;
    assert.match((await send(port)).raw, /^250 2\.0\.0 Ok: queued as /);
    assert.equal(h.policy.messages.length, 0, 'no CheckMessage stream');
    assert.equal(h.queue.stored.length, 1);
    const big = `${MESSAGE}${'x'.repeat(70)}\r\n`.repeat(20);
    assert.equal((await send(port, `${big}.\r\n`)).raw, '552 5.3.4 Message size exceeds fixed limit\r\n');
    assert.equal(h.queue.stored.length, 1, 'nothing stored');
    // One recipient whose check would do more: the check runs as before.
    h.policy.decide = () => ({ action: PolicyAction.POLICY_ACTION_ACCEPT, messageCheckSizeOnly: false });
    assert.match((await send(port)).raw, /^250 /);
    assert.equal(h.policy.messages.length, 1);
  } finally {
    await h.stop();
  }
});
