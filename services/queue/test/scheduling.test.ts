// Scheduling: concurrency limits, destination failure -> dead -> probe ->
// resume, expiry with its report, delay warnings, and two replicas that
// never dispatch one recipient twice.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AttemptOutcome, DsnNotify, RecipientState, ReportKind, type DeliveryJob } from '@tern/proto';
import type { App } from '../src/app';
import { body, createDatabase, eventually, FakeDelivery, header, queueClient, sleep, startNats, startQueue, type QueueClient } from './helpers';

describe('scheduling', () => {
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

  const withQueue = async (env: Record<string, string>, fn: (app: App, c: QueueClient) => Promise<void>, opts: Parameters<typeof startQueue>[3] = {}) => {
    const app = await startQueue(db.url, nats.url, { TERN_QUEUE_SCHEDULE_INTERVAL_MS: '100', ...env }, opts);
    const c = queueClient(app.grpcPort);
    try {
      await fn(app, c);
    } finally {
      c.close();
      await app.stop();
    }
  };

  it('a group commit that wants more slots than are free takes those that are; the rest of its messages wait queued', async () => {
    // No scheduler: what is inflight was granted by the group commits themselves.
    const env = { TERN_QUEUE_DEST_CONCURRENCY_INIT: '3', TERN_QUEUE_DEST_CONCURRENCY_MAX: '3' };
    await withQueue(env, async (_app, c) => {
      await c.enqueue(header({}, ['first@part.example']), body(100)); // creates the destination row, takes 1 of 3 slots
      const b = body(200);
      const res = await c.enqueueBatch({ messages: [1, 2, 3, 4, 5].map((i) => ({ header: header({}, [`r${i}@part.example`]), body: b, commit: { size: b.length } })) });
      assert.ok(res.outcomes.every((o) => o.errorCode === 0));
      const states = (await db.query(`SELECT state, count(*)::int AS n FROM queue.recipients WHERE domain = 'part.example' GROUP BY state ORDER BY state`)).rows;
      assert.deepEqual(states, [
        { state: RecipientState.RECIPIENT_STATE_QUEUED, n: 3 },
        { state: RecipientState.RECIPIENT_STATE_INFLIGHT, n: 3 },
      ]);
      const d = (await db.query(`SELECT inflight FROM queue.destinations WHERE name = 'part.example'`)).rows[0];
      assert.equal(d.inflight, 3, 'the two free slots were taken');
      const jobs = await delivery.jobsWhere((j) => j.destination === 'part.example', 4, 1500);
      assert.equal(jobs.length, 3, 'a job for each slot, none for the queued messages');
      for (const j of jobs) await delivery.result(j, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
    }, { disable: ['scheduler'] });
  });

  it('a group commit takes no more jobs than a rate-limited destination has tokens for', async () => {
    // 24 a minute: a burst of 4 tokens, refilled at 0.4 a second; slots are not the limit here.
    const env = { TERN_QUEUE_DEST_RATE_PER_MIN: '24', TERN_QUEUE_DEST_CONCURRENCY_INIT: '10', TERN_QUEUE_DEST_CONCURRENCY_MAX: '10' };
    await withQueue(env, async (_app, c) => {
      await c.enqueue(header({}, ['first@rate.example']), body(100)); // 1 of the 4 tokens
      const b = body(200);
      await c.enqueueBatch({ messages: [1, 2, 3, 4, 5].map((i) => ({ header: header({}, [`r${i}@rate.example`]), body: b, commit: { size: b.length } })) });
      const states = (await db.query(`SELECT state, count(*)::int AS n FROM queue.recipients WHERE domain = 'rate.example' GROUP BY state ORDER BY state`)).rows;
      assert.deepEqual(states, [
        { state: RecipientState.RECIPIENT_STATE_QUEUED, n: 2 },
        { state: RecipientState.RECIPIENT_STATE_INFLIGHT, n: 4 },
      ]);
      const d = (await db.query(`SELECT inflight, tokens FROM queue.destinations WHERE name = 'rate.example'`)).rows[0];
      assert.equal(d.inflight, 4);
      assert.ok(d.tokens < 1, `tokens left: ${d.tokens}`);
      for (const j of await delivery.jobsWhere((j) => j.destination === 'rate.example', 5, 1500)) await delivery.result(j, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
    }, { disable: ['scheduler'] });
  });

  it('a message left queued at its commit keeps its body in memory: its later job carries it without reading it back', async () => {
    await withQueue({ TERN_QUEUE_DEST_CONCURRENCY_INIT: '1', TERN_QUEUE_DEST_CONCURRENCY_MAX: '1' }, async (_app, c) => {
      await c.enqueue(header({}, ['one@cache.example']), body(100)); // the only slot
      const b = body(3000, 'k');
      const [queued] = (await c.enqueueBatch({ messages: [{ header: header({}, ['two@cache.example']), body: b, commit: { size: b.length } }] })).outcomes;
      assert.equal(queued!.errorCode, 0);
      const st = (await db.query(`SELECT state FROM queue.recipients WHERE message_id = $1`, [queued!.queueId])).rows[0];
      assert.equal(st.state, RecipientState.RECIPIENT_STATE_QUEUED, 'no slot at its commit');
      // Its stored body gone: a job built from a read-back would have none.
      await db.query(`DELETE FROM queue.body_chunks WHERE message_id = $1`, [queued!.queueId]);
      const [first] = await delivery.jobsWhere((j) => j.destination === 'cache.example', 1, 1500);
      await delivery.result(first!, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 }); // frees the slot: the result applier dispatches the queued message
      const [second] = await delivery.jobsWhere((j) => j.queueId === queued!.queueId, 1, 3000);
      assert.ok(second, 'the queued message was dispatched');
      assert.ok(Buffer.from(second!.body).equals(b), 'with its body, from memory');
      await delivery.result(second!, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
    }, { disable: ['scheduler'] });
  });

  it('never has more jobs in flight for a destination than its limit', async () => {
    await withQueue({ TERN_QUEUE_DEST_CONCURRENCY_INIT: '2', TERN_QUEUE_DEST_CONCURRENCY_MAX: '2' }, async (_app, c) => {
      for (let i = 0; i < 6; i++) await c.enqueue(header({}, [`r${i}@conc.example`]), body(100));
      const first = await delivery.jobsWhere((j) => j.destination === 'conc.example', 3, 1500);
      assert.equal(first.length, 2, 'two slots, two jobs');
      await delivery.result(first[0]!, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
      const next = await delivery.jobsWhere((j) => j.destination === 'conc.example', 2, 1500);
      assert.equal(next.length, 1, 'one result frees one slot');
      const d = (await db.query(`SELECT inflight, concurrency_limit FROM queue.destinations WHERE name = 'conc.example'`)).rows[0];
      assert.equal(d.inflight, 2);
      // Finish the rest.
      let pending: DeliveryJob[] = [first[1]!, next[0]!];
      while (pending.length) {
        for (const j of pending) await delivery.result(j, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
        pending = await delivery.jobsWhere((j) => j.destination === 'conc.example', 1, 1500);
      }
      const done = await eventually(
        async () => (await db.query(`SELECT count(*)::int AS n FROM queue.recipients WHERE domain = 'conc.example' AND state = 4`)).rows[0].n,
        (n) => n === 6,
      );
      assert.equal(done, 6);
    });
  });

  it('a destination failing repeatedly is suspended, probed, then resumed', async () => {
    await withQueue(
      { TERN_QUEUE_DEST_CONCURRENCY_INIT: '1', TERN_QUEUE_DEST_FAILURES_TO_SUSPEND: '2', TERN_QUEUE_DEST_PROBE_S: '2' },
      async (_app, c) => {
        for (let i = 0; i < 4; i++) await c.enqueue(header({}, [`d${i}@dead.example`]), body(100));
        const fail = { destinationFailure: true };
        for (let n = 0; n < 2; n++) {
          const [job] = await delivery.jobsWhere((j) => j.destination === 'dead.example', 1, 3000);
          assert.ok(job, `job ${n}`);
          await delivery.result(job, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, { code: 421, enhanced: '4.3.2', text: 'shutting down' }, fail);
        }
        const dest = await eventually(
          async () => (await c.listDestinations({})).destinations.find((d) => d.name === 'dead.example'),
          (d) => Boolean(d?.suspended),
        );
        assert.equal(dest?.suspended, true);
        assert.match(dest!.lastError, /421/);
        const t0 = Date.now();
        // No dispatch while dead; one probe after the probe interval.
        const probe = await delivery.jobsWhere((j) => j.destination === 'dead.example', 2, 4000);
        assert.equal(probe.length, 1, 'exactly one probe');
        assert.ok(Date.now() - t0 > 1000, 'the probe waits for the interval');
        await delivery.result(probe[0]!, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
        const rest = await delivery.jobsWhere((j) => j.destination === 'dead.example', 1, 3000);
        assert.equal(rest.length, 1, 'resumed after a successful probe');
        await delivery.result(rest[0]!, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
        const after = (await c.listDestinations({})).destinations.find((d) => d.name === 'dead.example');
        assert.equal(after?.suspended, false);
        // The recipients of the failed jobs were deferred by backoff.
        const deferred = await db.query(`SELECT count(*)::int AS n FROM queue.recipients WHERE domain = 'dead.example' AND state = ${RecipientState.RECIPIENT_STATE_DEFERRED}`);
        assert.equal(deferred.rows[0].n, 2);
      },
    );
  });

  it('expires recipients past their lifetime with a failure report, and warns of delays where NOTIFY=DELAY', async () => {
    await withQueue({ TERN_QUEUE_LIFETIME_S: '2', TERN_QUEUE_DELAY_WARNING_S: '1' }, async (app, c) => {
      await c.suspendDestination({ destination: 'slow.example', operator: 'test', force: true });
      const exp = await c.enqueue(header({}, ['e@slow.example']), body(100));
      const del = await c.enqueue(
        { ...header({}, []), recipients: [{ address: 'w@late.example', orcpt: '', notify: [DsnNotify.DSN_NOTIFY_DELAY, DsnNotify.DSN_NOTIFY_FAILURE] }] },
        body(100),
      );
      const [job] = await delivery.jobsWhere((j) => j.queueId === del.queueId, 1);
      await delivery.result(job!, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, { code: 450, enhanced: '4.2.0', text: 'mailbox busy' });
      await eventually(
        async () => (await db.query('SELECT state FROM queue.recipients WHERE message_id = $1', [del.queueId])).rows[0].state,
        (s) => s === RecipientState.RECIPIENT_STATE_DEFERRED,
      );
      await sleep(2100);
      await app.parts.housekeeping.delayWarnings();
      await app.parts.housekeeping.expire();
      const reports = await delivery.reports(3, 3000);
      const delayed = reports.filter((r) => r.queueId === del.queueId);
      assert.equal(delayed.length >= 1, true);
      assert.equal(delayed[0]!.kind, ReportKind.REPORT_KIND_DELAYED);
      assert.equal(delayed[0]!.recipients[0]!.action, 'delayed');
      assert.equal(delayed[0]!.recipients[0]!.status, '4.2.0');
      const expired = reports.filter((r) => r.queueId === exp.queueId);
      assert.equal(expired.length, 1);
      assert.equal(expired[0]!.kind, ReportKind.REPORT_KIND_FAILED);
      assert.equal(expired[0]!.recipients[0]!.status, '4.4.7');
      const st = (await db.query('SELECT state FROM queue.recipients WHERE message_id = $1', [exp.queueId])).rows[0].state;
      assert.equal(st, RecipientState.RECIPIENT_STATE_EXPIRED);
      // The delay warning is sent once.
      await app.parts.housekeeping.delayWarnings();
      assert.equal((await delivery.reports(1, 1200)).filter((r) => r.queueId === del.queueId && r.kind === ReportKind.REPORT_KIND_DELAYED).length, 0);
      await c.resumeDestination({ destination: 'slow.example', operator: 'test' });
    });
  });

  it('two replicas under load never dispatch one recipient twice', async () => {
    const env = { TERN_QUEUE_DEST_CONCURRENCY_INIT: '3', TERN_QUEUE_DEST_CONCURRENCY_MAX: '6', TERN_QUEUE_JOB_MAX_RECIPIENTS: '2' };
    const a = await startQueue(db.url, nats.url, { TERN_QUEUE_SCHEDULE_INTERVAL_MS: '100', ...env });
    const b = await startQueue(db.url, nats.url, { TERN_QUEUE_SCHEDULE_INTERVAL_MS: '100', ...env });
    const ca = queueClient(a.grpcPort);
    const cb = queueClient(b.grpcPort);
    try {
      const ids = await Promise.all(
        Array.from({ length: 150 }, (_, i) =>
          (i % 2 ? ca : cb).enqueue(header({}, [`a${i}@r${i % 3}.example`, `b${i}@r${i % 3}.example`, `c${i}@r${i % 3}.example`]), body(200)),
        ),
      );
      const mine = new Set(ids.map((r) => r.queueId));
      const seen = new Map<string, number>();
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        const jobs = (await delivery.jobs(1, 1500)).filter((j) => mine.has(j.queueId));
        for (const j of jobs) {
          for (const r of j.recipients) seen.set(r.recipientId, (seen.get(r.recipientId) ?? 0) + 1);
          await delivery.result(j, AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, { code: 250 });
        }
        if (seen.size === 450 && !jobs.length) break;
      }
      assert.equal(seen.size, 450, 'every recipient dispatched');
      assert.deepEqual([...seen.values()].filter((n) => n > 1), [], 'none twice');
      const n = await eventually(
        async () => (await db.query(`SELECT count(*)::int AS n FROM queue.recipients WHERE message_id = ANY($1) AND state = 4`, [[...mine]])).rows[0].n,
        (x) => x === 450,
      );
      assert.equal(n, 450);
      const inflight = (await db.query(`SELECT sum(inflight)::int AS n FROM queue.destinations WHERE name LIKE 'r_.example'`)).rows[0].n;
      assert.equal(inflight, 0, 'every slot given back');
    } finally {
      ca.close();
      cb.close();
      await a.stop();
      await b.stop();
    }
  });
});
