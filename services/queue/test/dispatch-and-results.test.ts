// Dispatch, results and reports against a real Postgres and NATS: the queue
// publishes jobs, a fake delivery answers, the queue settles.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AttemptOutcome, DsnNotify, MessageOrigin, RecipientState, ReportKind, RouteKind } from '@tern/proto';
import type { App } from '../src/app';
import { body, createDatabase, eventually, FakeDelivery, header, queueClient, sleep, startNats, startQueue, type QueueClient } from './helpers';

const ENV = { TERN_QUEUE_BACKOFF_MIN_S: '300', TERN_QUEUE_BACKOFF_MAX_S: '3600', TERN_QUEUE_BACKOFF_JITTER: '0.1', TERN_QUEUE_SCHEDULE_INTERVAL_MS: '200' };

describe('dispatch and results', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let app: App;
  let client: QueueClient;
  let delivery: FakeDelivery;

  const states = async (queueId: string) =>
    (await db.query('SELECT idx, state, next_attempt_at, attempt_count, job_id FROM queue.recipients WHERE message_id = $1 ORDER BY idx', [queueId])).rows;

  before(async () => {
    db = await createDatabase();
    nats = await startNats();
    app = await startQueue(db.url, nats.url, ENV);
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

  it('publishes one job per message and destination with its recipients and route', async () => {
    await client.putRoute({ route: { domain: 'routed.example', kind: RouteKind.ROUTE_KIND_SMARTHOST, target: 'relay.internal:2525' }, operator: 'test' });
    const b = body(500);
    const res = await client.enqueue(header({}, ['a@routed.example', 'b@routed.example', 'c@other.example']), b);
    const jobs = await delivery.jobs(2);
    const mine = jobs.filter((j) => j.queueId === res.queueId);
    assert.equal(mine.length, 2);
    const routed = mine.find((j) => j.destination === 'routed.example')!;
    assert.deepEqual(routed.recipients.map((r) => r.address).sort(), ['a@routed.example', 'b@routed.example']);
    assert.equal(routed.route?.kind, RouteKind.ROUTE_KIND_SMARTHOST);
    assert.equal(routed.route?.target, 'relay.internal:2525');
    assert.equal(routed.envelope?.sender, 'sender@origin.example');
    assert.equal(Number(routed.size), b.length);
    assert.ok(Buffer.from(routed.body).equals(b), 'a small body travels in the job');
    assert.ok(routed.leaseExpiresAt && routed.leaseExpiresAt.getTime() > Date.now());
    const other = mine.find((j) => j.destination === 'other.example')!;
    assert.equal(other.route, undefined);
    for (const r of await states(res.queueId)) assert.equal(r.state, RecipientState.RECIPIENT_STATE_INFLIGHT);
  });

  it('applies a result once: delivered, attempt recorded, a replay changes nothing', async () => {
    const res = await client.enqueue(header({}, ['ok@once.example']), body(300));
    const [job] = (await delivery.jobs(1)).filter((j) => j.queueId === res.queueId);
    assert.ok(job);
    await delivery.result(job, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250, enhanced: '2.0.0', text: 'ok' });
    await eventually(() => states(res.queueId), (r) => r[0]?.state === RecipientState.RECIPIENT_STATE_DELIVERED);
    // The same result again (another result id, so JetStream delivers it): nothing changes.
    await delivery.result(job, AttemptOutcome.ATTEMPT_OUTCOME_FAILED, { code: 550, enhanced: '5.1.1', text: 'late' });
    await sleep(500);
    const r = await states(res.queueId);
    assert.equal(r[0].state, RecipientState.RECIPIENT_STATE_DELIVERED);
    assert.equal(r[0].attempt_count, 1);
    const attempts = await db.query('SELECT * FROM queue.attempts WHERE message_id = $1', [res.queueId]);
    assert.equal(attempts.rowCount, 1);
    const { message } = await client.getMessage({ queueId: res.queueId });
    assert.equal(message!.recipients[0]!.attempts.length, 1);
    assert.equal(message!.recipients[0]!.attempts[0]!.remoteHost, 'mx.dest.example');
    assert.equal(message!.recipients[0]!.attempts[0]!.reply?.code, 250);
  });

  it('applies each result of a batch message (tern.results.batch), and a replayed batch changes nothing', async () => {
    const a = await client.enqueue(header({}, ['one@batched.example']), body(300));
    const b = await client.enqueue(header({}, ['two@batched.example', 'three@batched.example']), body(300));
    const jobs = (await delivery.jobs(2)).filter((j) => j.queueId === a.queueId || j.queueId === b.queueId);
    assert.equal(jobs.length, 2);
    const ja = jobs.find((j) => j.queueId === a.queueId)!;
    const jb = jobs.find((j) => j.queueId === b.queueId)!;
    const batch = [
      delivery.resultOf(ja, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250, enhanced: '2.0.0', text: 'ok' }),
      delivery.resultOf(jb, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, { code: 451, enhanced: '4.3.0', text: 'later' }),
    ];
    await delivery.resultBatch(batch);
    await eventually(() => states(b.queueId), (r) => r.length === 2 && r.every((x) => x.state === RecipientState.RECIPIENT_STATE_DEFERRED));
    assert.deepEqual((await states(a.queueId)).map((x) => x.state), [RecipientState.RECIPIENT_STATE_DELIVERED]);
    assert.equal((await db.query('SELECT inflight FROM queue.destinations WHERE name = $1', ['batched.example'])).rows[0].inflight, 0, 'both slots given back');
    await delivery.resultBatch(batch);
    await sleep(500);
    const attempts = await db.query('SELECT count(*)::int AS n FROM queue.attempts WHERE message_id = ANY($1)', [[a.queueId, b.queueId]]);
    assert.equal(attempts.rows[0].n, 3, 'one attempt per recipient, none from the replay');
    assert.equal((await db.query('SELECT inflight FROM queue.destinations WHERE name = $1', ['batched.example'])).rows[0].inflight, 0, 'no slot given back twice');
    // Acked one behind (HeldAck): the last one too, once nothing follows it.
    const left = await eventually(() => delivery.bus.jsm.streams.info('TERN_RESULTS').then((i) => i.state.messages), (n) => n === 0, 3_000);
    assert.equal(left, 0, 'every result message acked');
  });

  it('a message is done (its body may go) only when its last job settles; each job gives its slot back once', async () => {
    const slots = async (name: string) => (await db.query('SELECT inflight FROM queue.destinations WHERE name = $1', [name])).rows[0]?.inflight;
    const doneAt = async (id: string) => (await db.query('SELECT done_at FROM queue.messages WHERE id = $1', [id])).rows[0]?.done_at;
    const res = await client.enqueue(header({}, ['a@done-one.example', 'b@done-two.example', 'c@done-two.example']), body(300));
    const jobs = (await delivery.jobs(2)).filter((j) => j.queueId === res.queueId);
    const one = jobs.find((j) => j.destination === 'done-one.example')!;
    const two = jobs.find((j) => j.destination === 'done-two.example')!;
    assert.ok(one && two);
    assert.equal(await slots('done-one.example'), 1);
    assert.equal(await slots('done-two.example'), 1);
    await delivery.result(one, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250, enhanced: '2.0.0', text: 'ok' });
    await eventually(() => slots('done-one.example'), (n) => n === 0);
    assert.equal(await doneAt(res.queueId), null, 'two recipients still inflight');
    assert.equal(await slots('done-two.example'), 1);
    // The second job settles one recipient delivered and one deferred: not done, slot back.
    const [first, second] = two.recipients;
    await delivery.result(two, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 }, {
      recipients: [
        { recipientId: first!.recipientId, outcome: AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply: { code: 250, enhanced: '2.0.0', text: 'ok' }, remoteDsn: true, finalDelivery: false },
        { recipientId: second!.recipientId, outcome: AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply: { code: 451, enhanced: '4.3.0', text: 'later' }, remoteDsn: true, finalDelivery: false },
      ],
    });
    await eventually(() => slots('done-two.example'), (n) => n === 0);
    const r = await states(res.queueId);
    assert.deepEqual(r.map((x) => x.state), [RecipientState.RECIPIENT_STATE_DELIVERED, RecipientState.RECIPIENT_STATE_DELIVERED, RecipientState.RECIPIENT_STATE_DEFERRED]);
    assert.equal(await doneAt(res.queueId), null, 'a deferred recipient keeps the message');
    // Every recipient final: done.
    const res2 = await client.enqueue(header({}, ['x@done-one.example', 'y@done-two.example']), body(300));
    const jobs2 = (await delivery.jobs(2)).filter((j) => j.queueId === res2.queueId);
    assert.equal(jobs2.length, 2);
    // (Delivered, not failed: a failure would leave a report on the stream for the next test to find.)
    for (const j of jobs2) await delivery.result(j, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250, enhanced: '2.0.0', text: 'ok' });
    await eventually(() => doneAt(res2.queueId), (d) => d instanceof Date);
    assert.equal(await slots('done-one.example'), 0);
    assert.equal(await slots('done-two.example'), 0);
  });

  it('a 550 fails the recipient and writes one ReportRequest per message', async () => {
    const res = await client.enqueue(header({}, ['u1@fail.example', 'u2@fail.example']), body(300));
    const [job] = (await delivery.jobs(1)).filter((j) => j.queueId === res.queueId);
    assert.ok(job);
    await delivery.result(job, AttemptOutcome.ATTEMPT_OUTCOME_FAILED, { code: 550, enhanced: '5.1.1', text: 'no such user' });
    await eventually(() => states(res.queueId), (r) => r.every((x) => x.state === RecipientState.RECIPIENT_STATE_FAILED));
    const reports = (await delivery.reports(1)).filter((r) => r.queueId === res.queueId);
    assert.equal(reports.length, 1);
    const rep = reports[0]!;
    assert.equal(rep.kind, ReportKind.REPORT_KIND_FAILED);
    assert.equal(rep.recipients.length, 2);
    assert.equal(rep.recipients[0]!.status, '5.1.1');
    assert.equal(rep.recipients[0]!.action, 'failed');
    assert.equal(rep.recipients[0]!.diagnostic?.code, 550);
    assert.equal(rep.envelope?.sender, 'sender@origin.example');
    assert.ok(rep.eventId.startsWith(res.queueId));
  });

  it('no report for the null sender, a report message, or NOTIFY=NEVER; their remote 5xx refusals go to bounce as unreported (the suppression feed)', async () => {
    const a = await client.enqueue(header({ envelope: { sender: '' } }, ['n1@never.example']), body(100));
    const b = await client.enqueue(header({ origin: MessageOrigin.MESSAGE_ORIGIN_REPORT, envelope: { sender: 'x@y.example' } }, ['n2@never.example']), body(100));
    const c = await client.enqueue(
      { ...header({}, []), recipients: [{ address: 'n3@never.example', orcpt: '', notify: [DsnNotify.DSN_NOTIFY_NEVER] }] },
      body(100),
    );
    const ids = new Set([a.queueId, b.queueId, c.queueId]);
    const jobs = (await delivery.jobs(3)).filter((j) => ids.has(j.queueId));
    assert.equal(jobs.length, 3);
    for (const j of jobs) await delivery.result(j, AttemptOutcome.ATTEMPT_OUTCOME_FAILED, { code: 550, text: 'no' });
    for (const id of ids) await eventually(() => states(id), (r) => r[0]?.state === RecipientState.RECIPIENT_STATE_FAILED);
    const reports = (await delivery.reports(3)).filter((r) => ids.has(r.queueId));
    assert.equal(reports.length, 3);
    for (const r of reports) {
      assert.deepEqual(r.recipients, [], `${r.queueId}: no recipient owed a report`);
      assert.deepEqual(
        r.unreported.map((u) => [u.address, u.action, u.diagnostic?.code, u.remoteMta]),
        [[r.envelope?.sender === '' ? 'n1@never.example' : r.unreported[0]!.address, 'failed', 550, 'mx.dest.example']],
      );
    }
    assert.deepEqual(reports.map((r) => r.unreported[0]!.address).sort(), ['n1@never.example', 'n2@never.example', 'n3@never.example']);
  });

  it('a 4xx defers that recipient with backoff; NOTIFY=SUCCESS on a relay without DSN is reported as relayed', async () => {
    // Every byte value above 127 (not UTF-8): the body must come back exact from storage.
    const eightBit = Buffer.concat([body(100), Buffer.from(Array.from({ length: 128 }, (_, i) => 128 + i)), Buffer.from('\r\n')]);
    const res = await client.enqueue(
      {
        ...header({}, []),
        recipients: [
          { address: 'later@defer.example', orcpt: '', notify: [] },
          { address: 'fine@defer.example', orcpt: '', notify: [DsnNotify.DSN_NOTIFY_SUCCESS, DsnNotify.DSN_NOTIFY_FAILURE] },
        ],
      },
      eightBit,
    );
    const [job] = (await delivery.jobs(1)).filter((j) => j.queueId === res.queueId);
    assert.ok(job);
    assert.ok(Buffer.from(job.body).equals(eightBit), 'the job carries the 8-bit body exactly');
    const t0 = Date.now();
    await delivery.result(job, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, { code: 0 }, {
      recipients: [
        { recipientId: job.recipients[0]!.recipientId, outcome: AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, reply: { code: 451, enhanced: '4.2.1', text: 'try later' }, remoteDsn: false, finalDelivery: false },
        { recipientId: job.recipients[1]!.recipientId, outcome: AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, reply: { code: 250, enhanced: '2.0.0', text: 'ok' }, remoteDsn: false, finalDelivery: false },
      ],
    });
    const r = await eventually(() => states(res.queueId), (x) => x[0]?.state === RecipientState.RECIPIENT_STATE_DEFERRED);
    assert.equal(r[0].state, RecipientState.RECIPIENT_STATE_DEFERRED);
    assert.equal(r[1].state, RecipientState.RECIPIENT_STATE_RELAYED);
    const delay = new Date(r[0].next_attempt_at).getTime() - t0;
    assert.ok(delay > 260_000 && delay < 340_000, `first retry after ~5 min with jitter, got ${delay} ms`);
    const reports = (await delivery.reports(1)).filter((x) => x.queueId === res.queueId);
    assert.equal(reports.length, 1);
    assert.equal(reports[0]!.kind, ReportKind.REPORT_KIND_RELAYED);
    assert.deepEqual(reports[0]!.recipients.map((x) => x.address), ['fine@defer.example']);
    // Retry now (operator): dispatched again as attempt 2; a second 4xx doubles the backoff.
    await client.applyAction({ action: 3, queueId: res.queueId, operator: 'test', reason: 'retry' });
    const [again] = (await delivery.jobs(1)).filter((j) => j.queueId === res.queueId);
    assert.ok(again);
    assert.equal(again.attempt, 2);
    // Dispatched from storage this time (body read back from Postgres): still byte for byte.
    assert.ok(Buffer.from(again.body).equals(eightBit), 'the retried job carries the 8-bit body exactly');
    const t1 = Date.now();
    await delivery.result(again, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, { code: 451, text: 'still later' });
    const r2 = await eventually(() => states(res.queueId), (x) => x[0]?.attempt_count === 2);
    const delay2 = new Date(r2[0].next_attempt_at).getTime() - t1;
    assert.ok(delay2 > 530_000 && delay2 < 670_000, `second retry after ~10 min, got ${delay2} ms`);
  });
});

describe('crash safety', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let delivery: FakeDelivery;

  before(async () => {
    db = await createDatabase();
    nats = await startNats();
    delivery = await FakeDelivery.connect(nats.url);
  });
  after(async () => {
    await delivery?.close();
    await nats?.stop();
    await db?.drop();
  });

  it('a queue stopped between commit and publish publishes after restart (outbox relay)', async () => {
    const first = await startQueue(db.url, nats.url, ENV, { disable: ['relay'] });
    const c1 = queueClient(first.grpcPort);
    const b = body(3000);
    const res = await c1.enqueue(header({}, ['x@outbox.example']), b);
    c1.close();
    await first.stop();
    const rows = (await db.query("SELECT body_of, length(payload) AS n FROM queue.outbox WHERE subject LIKE 'tern.jobs.%'")).rows;
    assert.equal(rows.length, 1);
    // The body is stored once (body_chunks), not again in the outbox row.
    assert.equal(rows[0].body_of, res.queueId);
    assert.ok(rows[0].n < 1000, `outbox payload of ${rows[0].n} bytes`);
    assert.equal((await delivery.jobs(1, 1200)).length, 0);
    const second = await startQueue(db.url, nats.url, ENV);
    try {
      const jobs = await delivery.jobs(1);
      assert.equal(jobs.length, 1);
      assert.equal(jobs[0]!.queueId, res.queueId);
      assert.ok(Buffer.from(jobs[0]!.body).equals(b), 'the republished job has its body back');
      await eventually(async () => (await db.query('SELECT count(*)::int AS n FROM queue.outbox')).rows[0].n, (n) => n === 0);
    } finally {
      await second.stop();
    }
  });

  it('a lease that expires without a result makes the recipients due again (new job)', async () => {
    const app = await startQueue(db.url, nats.url, { ...ENV, TERN_QUEUE_LEASE_S: '2' });
    const c = queueClient(app.grpcPort);
    try {
      const res = await c.enqueue(header({}, ['y@lease.example']), body(100));
      const [job1] = (await delivery.jobs(1)).filter((j) => j.queueId === res.queueId);
      assert.ok(job1);
      // No result: after the lease the scheduler dispatches again.
      const [job2] = (await delivery.jobs(1, 8000)).filter((j) => j.queueId === res.queueId);
      assert.ok(job2, 'redispatched after the lease expired');
      assert.notEqual(job2.jobId, job1.jobId);
      // The second job's result counts; the late result of the first is ignored.
      await delivery.result(job2, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250, text: 'ok' });
      await delivery.result(job1, AttemptOutcome.ATTEMPT_OUTCOME_FAILED, { code: 550, text: 'late' });
      const r = await eventually(
        async () => (await db.query('SELECT state FROM queue.recipients WHERE message_id = $1', [res.queueId])).rows,
        (x) => x[0]?.state === RecipientState.RECIPIENT_STATE_DELIVERED,
      );
      assert.equal(r[0].state, RecipientState.RECIPIENT_STATE_DELIVERED);
      const d = await eventually(
        async () => (await db.query(`SELECT inflight FROM queue.destinations WHERE name = 'lease.example'`)).rows[0],
        (x) => x?.inflight === 0,
      );
      assert.equal(d.inflight, 0, 'the slot is given back once');
    } finally {
      c.close();
      await app.stop();
    }
  });
});
