// EnqueueBatcher: messages ready while the calls in flight are at the limit
// go together in the next call, each answered with its own outcome.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { EnqueueBatchRequest, EnqueueBatchResponse, EnqueueMessage } from '@tern/proto';
import { EnqueueBatcher } from '../src/enqueue-batch';
import type { QueueClient } from '../src/clients';

/** A queue whose EnqueueBatch answers only when told to, recording each call. */
function slowQueue() {
  const calls: { req: EnqueueBatchRequest; answer(): void; fail(err: Error): void }[] = [];
  const client = {
    enqueueBatch(req: EnqueueBatchRequest, _md: unknown, _opts: unknown, cb: (err: Error | null, res?: EnqueueBatchResponse) => void) {
      calls.push({
        req,
        answer: () => cb(null, { outcomes: req.messages.map((m) => ({ queueId: `q-${m.header!.envelope!.sender}`, size: m.body.length, errorCode: 0, error: '' })) }),
        fail: (err) => cb(err),
      });
      return {};
    },
  } as unknown as QueueClient;
  return { client, calls };
}

const msg = (sender: string): EnqueueMessage =>
  ({ header: { envelope: { sender } }, body: Buffer.from(`body of ${sender}\r\n`) }) as unknown as EnqueueMessage;

const tick = () => new Promise((r) => setImmediate(r));

describe('EnqueueBatcher', () => {
  it('with one call in flight, the messages ready meanwhile go together in the next call', async () => {
    const q = slowQueue();
    const b = new EnqueueBatcher(q.client, { maxCalls: 1, maxMessages: 64, deadlineMs: 5000 });
    const first = b.add(msg('a'));
    await tick();
    assert.equal(q.calls.length, 1, 'the first message leaves at once, alone');
    const rest = [b.add(msg('b')), b.add(msg('c')), b.add(msg('d'))];
    await tick();
    assert.equal(q.calls.length, 1, 'the others wait for the call in flight');
    q.calls[0]!.answer();
    assert.equal((await first).queueId, 'q-a');
    await tick();
    assert.equal(q.calls.length, 2);
    assert.deepEqual(q.calls[1]!.req.messages.map((m) => m.header!.envelope!.sender), ['b', 'c', 'd']);
    q.calls[1]!.answer();
    assert.deepEqual((await Promise.all(rest)).map((o) => o.queueId), ['q-b', 'q-c', 'q-d']);
  });

  it('caps a call at maxMessages and fails every message of a failed call', async () => {
    const q = slowQueue();
    const b = new EnqueueBatcher(q.client, { maxCalls: 1, maxMessages: 2, deadlineMs: 5000 });
    const settledP = Promise.allSettled(['a', 'b', 'c', 'd'].map((s) => b.add(msg(s))));
    await tick();
    q.calls[0]!.answer();
    await tick();
    assert.equal(q.calls[1]!.req.messages.length, 2);
    q.calls[1]!.fail(new Error('queue unavailable'));
    await tick();
    q.calls[2]!.answer();
    const settled = await settledP;
    assert.deepEqual(settled.map((s) => s.status), ['fulfilled', 'rejected', 'rejected', 'fulfilled']);
  });
});
