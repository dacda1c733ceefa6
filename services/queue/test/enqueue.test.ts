// Enqueue, ReadBody, GetMessage and Status against a real Postgres and NATS.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { grpc } from '@tern/grpc';
import { EnqueueStreamRequest, MessageOrigin, RecipientState, type EnqueueStreamResponse } from '@tern/proto';
import type { App } from '../src/app';
import { body, createDatabase, eventually, FakeDelivery, header, queueClient, startNats, startQueue, type QueueClient } from './helpers';

/** An EnqueueStream on `client`, with the answers as they come and its final status. */
function openEnqueueStream(client: QueueClient) {
  const call = (client.raw.enqueueStream as (o: object) => grpc.ClientDuplexStream<EnqueueStreamRequest, EnqueueStreamResponse>).call(client.raw, {});
  const answers: EnqueueStreamResponse[] = [];
  call.on('data', (r: EnqueueStreamResponse) => answers.push(r));
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  call.on('error', () => undefined);
  return { call, answers, status };
}

describe('enqueue', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let app: App;
  let client: QueueClient;
  let delivery: FakeDelivery;

  before(async () => {
    db = await createDatabase();
    nats = await startNats();
    app = await startQueue(db.url, nats.url);
    client = queueClient(app.grpcPort);
    delivery = await FakeDelivery.connect(nats.url);
  });
  after(async () => {
    client?.close();
    await delivery?.close();
    await app?.stop();
    await nats?.stop();
    await db?.drop();
  });

  it('commits message, body and recipients before answering, and the id is time-sortable', async () => {
    const b = body(1000);
    const res = await client.enqueue(header({}, ['a@dest.example', 'b@dest.example']), b);
    assert.match(res.queueId, /^[0-9A-Z]{16}$/);
    assert.equal(Number(res.size), b.length);
    const m = await db.query('SELECT * FROM queue.messages WHERE id = $1', [res.queueId]);
    assert.equal(m.rowCount, 1);
    const r = await db.query('SELECT * FROM queue.recipients WHERE message_id = $1', [res.queueId]);
    assert.equal(r.rowCount, 2);
    const res2 = await client.enqueue(header(), body(10));
    assert.ok(res2.queueId > res.queueId);
  });

  it('EnqueueBatch stores each whole message before answering and refuses the bad ones one by one, naming the field', async () => {
    const b1 = body(800);
    const b2 = body(300);
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const res = await client.enqueueBatch({
      messages: [
        { header: header({}, ['x@batch.example']), body: b1, commit: { size: b1.length }, trace: { traceparent } },
        { header: header({}, ['y@batch.example']), body: b2, commit: { size: b2.length + 1 } },
        { body: b2, commit: { size: b2.length } },
        { header: header({}, ['z@batch.example']), body: b2, commit: { size: b2.length, prepend: Buffer.from('X-Check: 1\r\n'), hold: true } },
      ],
    });
    assert.equal(res.outcomes.length, 4);
    const [ok, mismatch, noHeader, held] = res.outcomes;
    assert.match(ok!.queueId, /^[0-9A-Z]{16}$/);
    assert.equal(ok!.errorCode, 0);
    assert.equal(mismatch!.queueId, '');
    assert.equal(mismatch!.errorCode, 3 /* INVALID_ARGUMENT */);
    assert.equal(mismatch!.error, `messages[1]: commit size ${b2.length + 1} does not match the ${b2.length} bytes of body`);
    assert.match(noHeader!.error, /^messages\[2\]: header: required/);
    // Committed before the answer: visible now, exactly as sent.
    assert.ok((await client.readBody(ok!.queueId)).equals(b1));
    const m = await db.query('SELECT trace FROM queue.messages WHERE id = $1', [ok!.queueId]);
    assert.equal(m.rows[0].trace.traceparent, traceparent, 'the trace of the message, not of the call');
    assert.ok((await client.readBody(held!.queueId)).equals(Buffer.concat([Buffer.from('X-Check: 1\r\n'), b2])));
    assert.equal(Number(held!.size), b2.length + 12);
    const r = await db.query('SELECT state FROM queue.recipients WHERE message_id = $1', [held!.queueId]);
    assert.equal(r.rows[0].state, RecipientState.RECIPIENT_STATE_HELD);
    const stored = await db.query(`SELECT count(*)::int AS n FROM queue.recipients WHERE address IN ('y@batch.example')`);
    assert.equal(stored.rows[0].n, 0, 'a refused message stores nothing');
  });

  it('EnqueueBatch: a message that Postgres could not store is refused alone (NUL: INVALID_ARGUMENT naming the field), a stray trace is dropped, the others of the call are stored', async () => {
    const b = body(200);
    const res = await client.enqueueBatch({
      messages: [
        { header: header({}, ['bad\u0000@nul.example']), body: b, commit: { size: b.length } },
        { header: header({}, ['good@nul.example']), body: b, commit: { size: b.length }, trace: { traceparent: 'garbage\u0000' } },
      ],
    });
    const [bad, good] = res.outcomes;
    assert.equal(bad!.errorCode, 3 /* INVALID_ARGUMENT */);
    assert.equal(bad!.error, 'messages[0]: header.recipients[0].address: contains NUL');
    assert.equal(good!.errorCode, 0, good!.error);
    const m = await db.query('SELECT trace FROM queue.messages WHERE id = $1', [good!.queueId]);
    const kept = m.rows[0].trace.traceparent as string | undefined;
    assert.ok(kept === undefined || /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/.test(kept), `an unreadable trace context is not kept: ${JSON.stringify(kept)}`);
  });

  it('EnqueueStream answers each request with its seq once its messages are committed; the stream ends OK after the client half-closes', async () => {
    const { call, answers, status } = openEnqueueStream(client);
    const b = body(500);
    call.write(EnqueueStreamRequest.fromPartial({ seq: 7, messages: [{ header: header({}, ['s1@stream.example']), body: b, commit: { size: b.length } }] }));
    call.write(
      EnqueueStreamRequest.fromPartial({
        seq: 8,
        messages: [
          { header: header({}, ['s2@stream.example']), body: b, commit: { size: b.length } },
          { header: header({}, ['s3@stream.example']), body: b, commit: { size: 1 } },
        ],
      }),
    );
    await eventually(async () => answers.length, (n) => n === 2);
    const bySeq = new Map(answers.map((a) => [Number(a.seq), a.outcomes]));
    assert.deepEqual([...bySeq.keys()].sort(), [7, 8]);
    const [s1] = bySeq.get(7)!;
    const [s2, s3] = bySeq.get(8)!;
    assert.equal(s1!.errorCode, 0, s1!.error);
    assert.equal(s2!.errorCode, 0, s2!.error);
    assert.equal(s3!.errorCode, 3 /* INVALID_ARGUMENT */);
    assert.equal(s3!.error, `messages[1]: commit size 1 does not match the ${b.length} bytes of body`);
    // Committed before the answer.
    assert.ok((await client.readBody(s1!.queueId)).equals(b));
    assert.ok((await client.readBody(s2!.queueId)).equals(b));
    call.end();
    assert.equal((await status).code, grpc.status.OK);
  });

  it('EnqueueStream at shutdown: the queue answers what it read, then ends the stream OK at once (not after the grace period)', async () => {
    const other = await startQueue(db.url, nats.url, { TERN_SHUTDOWN_GRACE_MS: '10000' });
    const c2 = queueClient(other.grpcPort);
    try {
      const { call, answers, status } = openEnqueueStream(c2);
      const b = body(300);
      call.write(EnqueueStreamRequest.fromPartial({ seq: 1, messages: [{ header: header({}, ['down@stream.example']), body: b, commit: { size: b.length } }] }));
      await eventually(async () => answers.length, (n) => n === 1);
      const started = Date.now();
      await other.stop();
      const st = await status;
      assert.equal(st.code, grpc.status.OK, st.details);
      assert.ok(Date.now() - started < 5000, `ended ${Date.now() - started} ms after stop began`);
      assert.equal(answers[0]!.outcomes[0]!.errorCode, 0);
      assert.ok((await client.readBody(answers[0]!.outcomes[0]!.queueId)).equals(b));
    } finally {
      c2.close();
    }
  });

  it('is idempotent by key: the second Enqueue returns the first id and stores nothing', async () => {
    const h = header({ idempotencyKey: 'report-event-1', origin: MessageOrigin.MESSAGE_ORIGIN_REPORT, envelope: { sender: '' } });
    const first = await client.enqueue(h, body(300));
    const second = await client.enqueue(h, body(300));
    const concurrent = await Promise.all([1, 2, 3].map(() => client.enqueue(h, body(300))));
    assert.equal(second.queueId, first.queueId);
    for (const c of concurrent) assert.equal(c.queueId, first.queueId);
    const n = await db.query(`SELECT count(*)::int AS n FROM queue.messages WHERE idempotency_key = 'report-event-1'`);
    assert.equal(n.rows[0].n, 1);
  });

  it('is idempotent by the commit\'s key too (a key known only at the end), small and spilled; a bad one is refused naming the field', async () => {
    const big = Buffer.concat([body(100, 'commit-key'), Buffer.alloc(700_000, 0x44), Buffer.from('\r\nend\r\n')]);
    for (const [key, b, chunk] of [['commit-key-small', body(300), undefined], ['commit-key-big', big, 50_000]] as const) {
      const first = await client.enqueue(header(), b, { commitKey: key, chunk });
      const second = await client.enqueue(header(), b, { commitKey: key, chunk });
      assert.equal(second.queueId, first.queueId);
      const n = await db.query('SELECT count(*)::int AS n FROM queue.messages WHERE idempotency_key = $1', [key]);
      assert.equal(n.rows[0].n, 1);
    }
    assert.equal((await db.query('SELECT count(*)::int AS n FROM queue.spools')).rows[0].n, 0, 'the spilled duplicate left nothing behind');
    await assert.rejects(client.enqueue(header(), body(100), { commitKey: 'k'.repeat(257) }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /commit\.idempotency_key/.test(e.details));
  });

  it('stores nothing for a stream without commit or with a wrong size', async () => {
    const before = (await db.query('SELECT count(*)::int AS n FROM queue.messages')).rows[0].n;
    await assert.rejects(client.enqueue(header(), body(100), { commit: false }), (e: grpc.ServiceError) => e.code === grpc.status.CANCELLED);
    await assert.rejects(client.enqueue(header(), body(100), { size: 5 }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    await assert.rejects(client.enqueue({ ...header(), recipients: [] }, body(100)), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    const afterN = (await db.query('SELECT count(*)::int AS n FROM queue.messages')).rows[0].n;
    assert.equal(afterN, before);
  });

  it('ReadBody returns the exact bytes, small and spilled, and headers only', async () => {
    // Bytes that are not UTF-8 (8BITMIME, BINARYMIME) must come back exact.
    const high = Buffer.from(Array.from({ length: 128 }, (_, i) => 128 + i));
    const small = Buffer.concat([body(5000, 'small'), high, Buffer.from('\r\n')]);
    const big = Buffer.concat([body(100, 'big'), Buffer.alloc(1_500_000, 0x41), high, Buffer.from('\r\nend\r\n')]);
    const s = await client.enqueue(header(), small);
    const b = await client.enqueue(header(), big, { chunk: 60_000 });
    assert.ok((await client.readBody(s.queueId)).equals(small));
    assert.ok((await client.readBody(b.queueId)).equals(big));
    const spilled = await db.query('SELECT count(*)::int AS n FROM queue.body_chunks WHERE message_id = $1', [b.queueId]);
    assert.ok(spilled.rows[0].n > 1, 'a big body is stored in several rows');
    assert.equal((await db.query('SELECT count(*)::int AS n FROM queue.spools')).rows[0].n, 0);
    // Out-of-line rows are lz4-compressed (migration 005) where the server has lz4, and read back exact.
    const lz4 = (await db.query(`SELECT 'lz4' = ANY(enumvals) AS ok FROM pg_settings WHERE name = 'default_toast_compression'`)).rows[0]?.ok;
    if (lz4) {
      const methods = await db.query('SELECT DISTINCT pg_column_compression(data) AS m FROM queue.body_chunks WHERE message_id = $1', [b.queueId]);
      assert.deepEqual(methods.rows.map((r) => r.m), ['lz4']);
    }
    const headers = (await client.readBody(b.queueId, true)).toString();
    assert.ok(headers.endsWith('\r\n\r\n'));
    assert.ok(headers.includes('Subject: test big'));
    assert.ok(!headers.includes('quick brown fox'));
    await assert.rejects(client.readBody('0000000000000000'), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  });

  it('commit.prepend goes ahead of the body (small and spilled), counts in the size, and commit.hold holds', async () => {
    const lines = Buffer.from('Authentication-Results: mx.test; spf=pass smtp.mailfrom=origin.example\r\n');
    const small = body(3000, 'small-prepend');
    const big = Buffer.concat([body(100, 'big-prepend'), Buffer.alloc(700_000, 0x43), Buffer.from('\r\nend\r\n')]);
    const s = await client.enqueue(header(), small, { prepend: lines });
    const b = await client.enqueue(header(), big, { chunk: 50_000, prepend: lines, hold: true });
    assert.equal(Number(s.size), lines.length + small.length);
    assert.ok((await client.readBody(s.queueId)).equals(Buffer.concat([lines, small])));
    assert.ok((await client.readBody(b.queueId)).equals(Buffer.concat([lines, big])));
    assert.ok((await client.readBody(b.queueId, true)).toString().startsWith('Authentication-Results: mx.test;'));
    const sizes = await db.query('SELECT id, size::int AS size FROM queue.messages WHERE id = ANY($1::text[]) ORDER BY id', [[s.queueId, b.queueId]]);
    assert.deepEqual(sizes.rows.map((r: { size: number }) => r.size), [lines.length + small.length, lines.length + big.length]);
    const held = await client.getMessage({ queueId: b.queueId });
    assert.equal(held.message!.recipients[0]!.state, RecipientState.RECIPIENT_STATE_HELD);
    const free = await client.getMessage({ queueId: s.queueId });
    assert.notEqual(free.message!.recipients[0]!.state, RecipientState.RECIPIENT_STATE_HELD);
    // The size check is about the chunks only; an oversized prepend is refused and stores nothing.
    await assert.rejects(client.enqueue(header(), small, { size: small.length + lines.length, prepend: lines }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    await assert.rejects(client.enqueue(header(), small, { prepend: Buffer.alloc(70_000, 0x41) }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
  });

  it('an abandoned big upload leaves nothing behind after it is cancelled', async () => {
    const big = Buffer.alloc(600_000, 0x42);
    await assert.rejects(client.enqueue(header(), big, { commit: false }));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal((await db.query('SELECT count(*)::int AS n FROM queue.spools')).rows[0].n, 0);
  });

  it('GetMessage shows envelope, recipients, state and headers', async () => {
    const res = await client.enqueue(header({ hold: true }, ['x@held.example']), body(400, 'held'));
    const { message } = await client.getMessage({ queueId: res.queueId, includeHeaders: true });
    assert.equal(message!.queueId, res.queueId);
    assert.equal(message!.envelope!.sender, 'sender@origin.example');
    assert.equal(message!.recipients[0]!.state, RecipientState.RECIPIENT_STATE_HELD);
    assert.equal(message!.recipients[0]!.destination, 'held.example');
    assert.ok(message!.headers.includes('Subject: test held'));
    await assert.rejects(client.getMessage({ queueId: '0000000000000000' }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
    await assert.rejects(client.getMessage({ queueId: 'NOPE' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /queue_id: "NOPE" is not a queue id/.test(e.details));
  });

  it('Status accepts below the high-water mark', async () => {
    const st = await client.status({});
    assert.equal(st.accepting, true);
  });

  it('many concurrent enqueues share group commits', async () => {
    const N = 200;
    const results = await Promise.all(Array.from({ length: N }, (_, i) => client.enqueue(header({}, [`r${i}@bulk.example`]), body(2000, `bulk${i}`))));
    assert.equal(new Set(results.map((r) => r.queueId)).size, N);
    const jobs = await delivery.jobs(1, 3000);
    assert.ok(jobs.length >= 1);
  });

  it('a group commit waits for a destination row another transaction holds, then dispatches its messages itself', async () => {
    const b = body(300);
    const one = (to: string) => client.enqueueBatch({ messages: [{ header: header({}, [to]), body: b, commit: { size: b.length } }] });
    // The destination row exists (and the queue knows it: the one-statement path).
    assert.equal((await one('first@held-row.example')).outcomes[0]!.errorCode, 0);
    const holder = await db.pool.connect();
    let released = false;
    let answeredWhileHeld: boolean | undefined;
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM queue.destinations WHERE name = 'held-row.example' FOR UPDATE`);
      const pending = one('second@held-row.example').then((res) => {
        answeredWhileHeld = !released;
        return res;
      });
      await new Promise((r) => setTimeout(r, 300));
      released = true;
      await holder.query('COMMIT');
      const res = await pending;
      assert.equal(answeredWhileHeld, false, 'no answer while the row was held');
      const queueId = res.outcomes[0]!.queueId;
      const r = await db.query('SELECT state, job_id FROM queue.recipients WHERE message_id = $1', [queueId]);
      assert.notEqual(r.rows[0].state, RecipientState.RECIPIENT_STATE_QUEUED, 'dispatched in its own commit, not left to the scheduler');
      const jobs = await delivery.jobsWhere((j) => j.queueId === queueId, 1, 5000);
      assert.equal(jobs.length, 1);
    } finally {
      if (!released) await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
    }
  });

  it('a group commit that waits past TERN_QUEUE_LOCK_TIMEOUT_MS stores its messages for the scheduler instead', async () => {
    const impatient = await startQueue(db.url, nats.url, { TERN_QUEUE_LOCK_TIMEOUT_MS: '200' });
    const other = queueClient(impatient.grpcPort);
    const holder = await db.pool.connect();
    let released = false;
    try {
      const b = body(300);
      const one = (to: string) => other.enqueueBatch({ messages: [{ header: header({}, [to]), body: b, commit: { size: b.length } }] });
      assert.equal((await one('first@stuck-row.example')).outcomes[0]!.errorCode, 0);
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM queue.destinations WHERE name = 'stuck-row.example' FOR UPDATE`);
      const res = await one('second@stuck-row.example');
      assert.equal(released, false);
      const queueId = res.outcomes[0]!.queueId;
      assert.equal(res.outcomes[0]!.errorCode, 0, 'stored while the row is still held');
      const r = await db.query('SELECT state FROM queue.recipients WHERE message_id = $1', [queueId]);
      assert.equal(r.rows[0].state, RecipientState.RECIPIENT_STATE_QUEUED, 'left to the scheduler');
      released = true;
      await holder.query('COMMIT');
      const jobs = await delivery.jobsWhere((j) => j.queueId === queueId, 1, 8000);
      assert.equal(jobs.length, 1, 'dispatched by the scheduler once the row is free');
    } finally {
      if (!released) await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
      other.close();
      await impatient.stop();
    }
  });
});
