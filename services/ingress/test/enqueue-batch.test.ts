// EnqueueBatcher and its EnqueueStream, against a gRPC server on loopback
// that answers only when told to: messages ready while the batches in
// flight are at the limit go together in the next batch, each answered
// with its own outcome; how a stream ends decides what its unanswered
// batches become.
import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { grpc } from '@tern/grpc';
import { EnqueueMessage, QueueServiceBodyService, type EnqueueBatchRequest, type EnqueueBatchResponse, type EnqueueOutcome, type EnqueueStreamRequest, type EnqueueStreamResponse } from '@tern/proto';
import { EnqueueBatcher } from '../src/enqueue-batch';
import { queueClient } from '../src/clients';

interface Received {
  stream: number;
  req: EnqueueStreamRequest;
  answer(): void;
}

const outcomesFor = (messages: EnqueueMessage[]): EnqueueOutcome[] =>
  messages.map((m) => ({ queueId: `q-${m.header!.envelope!.sender}`, size: m.body.length, errorCode: 0, error: '' }));

/** A queue whose EnqueueStream answers each request only when told to; `streams: false` has no EnqueueStream (UNIMPLEMENTED). */
async function slowQueue(o: { streams?: boolean } = {}) {
  const received: Received[] = [];
  const calls: grpc.ServerDuplexStream<EnqueueStreamRequest, EnqueueStreamResponse>[] = [];
  const ended: number[] = [];
  const unary: EnqueueBatchRequest[] = [];
  const server = new grpc.Server();
  const impl: grpc.UntypedServiceImplementation = {
    enqueueBatch: (call: grpc.ServerUnaryCall<EnqueueBatchRequest, EnqueueBatchResponse>, cb: grpc.sendUnaryData<EnqueueBatchResponse>) => {
      unary.push(call.request);
      cb(null, { outcomes: outcomesFor(call.request.messages) });
    },
  };
  if (o.streams !== false) {
    impl.enqueueStream = (call: grpc.ServerDuplexStream<EnqueueStreamRequest, EnqueueStreamResponse>) => {
      const stream = calls.push(call) - 1;
      call.on('data', (req: EnqueueStreamRequest) => received.push({ stream, req, answer: () => call.write({ seq: req.seq, outcomes: outcomesFor(req.messages) }) }));
      call.on('end', () => ended.push(stream));
      call.on('error', () => undefined);
    };
  }
  server.addService(QueueServiceBodyService, impl);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const client = queueClient(`127.0.0.1:${port}`, 5000);
  cleanups.push(() => {
    client.close();
    server.forceShutdown();
  });
  return { client, received, calls, ended, unary };
}

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

const msg = (sender: string): EnqueueMessage => EnqueueMessage.fromPartial({ header: { envelope: { sender } }, body: Buffer.from(`body of ${sender}\r\n`) });

async function until(what: string, ok: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const senders = (r: Received) => r.req.messages.map((m) => m.header!.envelope!.sender);

/** A message from `sender` goes in a batch on the second stream opened, and gets its answer. */
/** Messages a and c in two batches on one stream, a's answered, c's not. */
async function twoBatchesFirstAnswered() {
    const q = await slowQueue();
    const b = new EnqueueBatcher(q.client, { maxCalls: 2, maxMessages: 64, deadlineMs: 5000 });
    const a = b.add(msg('a'));
    const c = b.add(msg('c'));
    await until('two batches', () => q.received.length === 2);
    q.received[0]!.answer();
  return { q, b, a, c };
}

async function sentOnNewStream(q: Awaited<ReturnType<typeof slowQueue>>, b: EnqueueBatcher, sender: string): Promise<void> {
  const outcome = b.add(msg(sender));
  await until(`the batch of ${sender}`, () => q.received.some((r) => senders(r)[0] === sender));
  const r = q.received.find((x) => senders(x)[0] === sender)!;
  assert.equal(r.stream, 1, 'on a new stream');
  r.answer();
  assert.equal((await outcome).queueId, `q-${sender}`);
}

describe('EnqueueBatcher', () => {
  it('with one batch in flight, the messages ready meanwhile go together in the next batch, on the same stream', async () => {
    const q = await slowQueue();
    const b = new EnqueueBatcher(q.client, { maxCalls: 1, maxMessages: 64, deadlineMs: 5000 });
    const first = b.add(msg('a'));
    await until('the first batch', () => q.received.length === 1);
    const rest = [b.add(msg('b')), b.add(msg('c')), b.add(msg('d'))];
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(q.received.length, 1, 'the others wait for the batch in flight');
    q.received[0]!.answer();
    assert.equal((await first).queueId, 'q-a');
    await until('the second batch', () => q.received.length === 2);
    assert.deepEqual(senders(q.received[1]!), ['b', 'c', 'd']);
    q.received[1]!.answer();
    assert.deepEqual((await Promise.all(rest)).map((o) => o.queueId), ['q-b', 'q-c', 'q-d']);
    assert.equal(q.calls.length, 1, 'both batches on one stream');
    assert.notEqual(q.received[0]!.req.seq, q.received[1]!.req.seq);
    b.close();
    await until('the half-close', () => q.ended.length === 1);
  });

  it('answers out of order settle their own batches; a batch is capped at maxMessages', async () => {
    const q = await slowQueue();
    const b = new EnqueueBatcher(q.client, { maxCalls: 2, maxMessages: 2, deadlineMs: 5000 });
    const all = ['a', 'b', 'c', 'd'].map((s) => b.add(msg(s)));
    await until('two batches', () => q.received.length === 2);
    q.received[1]!.answer();
    q.received[0]!.answer();
    await until('the third batch', () => q.received.length === 3);
    assert.deepEqual(q.received.map(senders), [['a'], ['b'], ['c', 'd']]);
    q.received[2]!.answer();
    assert.deepEqual((await Promise.all(all)).map((o) => o.queueId), ['q-a', 'q-b', 'q-c', 'q-d']);
  });

  it('a stream that fails fails its unanswered batches; the next batch opens a new stream', async () => {
    const { q, b, a, c } = await twoBatchesFirstAnswered();
    assert.equal((await a).queueId, 'q-a');
    q.calls[0]!.emit('error', { code: grpc.status.UNAVAILABLE, details: 'database down', metadata: new grpc.Metadata() });
    await assert.rejects(c, (err: Error & { code?: number }) => err.code === grpc.status.UNAVAILABLE && /database down/.test(err.message));
    await sentOnNewStream(q, b, 'd');
  });

  it('a stream the queue ends with OK: its unanswered batches were not read and go again on a new stream', async () => {
    const { q, b, a, c } = await twoBatchesFirstAnswered();
    q.calls[0]!.end(); // what closeStreams does once every request it read is answered
    await until('the batch sent again', () => q.received.length === 3);
    assert.equal(q.received[2]!.stream, 1);
    assert.deepEqual(senders(q.received[2]!), ['c']);
    q.received[2]!.answer();
    assert.deepEqual([(await a).queueId, (await c).queueId], ['q-a', 'q-c']);
  });

  it('a queue without EnqueueStream (UNIMPLEMENTED) gets EnqueueBatch calls instead', async () => {
    const q = await slowQueue({ streams: false });
    const b = new EnqueueBatcher(q.client, { maxCalls: 1, maxMessages: 64, deadlineMs: 5000 });
    assert.equal((await b.add(msg('a'))).queueId, 'q-a');
    assert.equal((await b.add(msg('b'))).queueId, 'q-b');
    assert.deepEqual(q.unary.map((r) => r.messages.map((m) => m.header!.envelope!.sender)), [['a'], ['b']]);
  });

  it('a batch without an answer fails at its deadline, and its stream is given up for a new one', async () => {
    const q = await slowQueue();
    const b = new EnqueueBatcher(q.client, { maxCalls: 1, maxMessages: 64, deadlineMs: 300 });
    const started = Date.now();
    await assert.rejects(b.add(msg('a')), (err: Error & { code?: number }) => err.code === grpc.status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - started >= 290);
    await sentOnNewStream(q, b, 'c');
  });

  it('after streamBatches batches the stream is half-closed and the next batch opens another', async () => {
    const q = await slowQueue();
    const b = new EnqueueBatcher(q.client, { maxCalls: 1, maxMessages: 64, deadlineMs: 5000, streamBatches: 2 });
    for (const s of ['a', 'b', 'c']) {
      const p = b.add(msg(s));
      await until(`batch ${s}`, () => q.received.some((r) => senders(r)[0] === s));
      q.received.find((r) => senders(r)[0] === s)!.answer();
      assert.equal((await p).queueId, `q-${s}`);
    }
    assert.deepEqual(q.received.map((r) => r.stream), [0, 0, 1]);
    await until('the first stream half-closed', () => q.ended.includes(0));
  });
});
