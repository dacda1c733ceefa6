// Several queue replicas run at once with no double dispatch: a second queue
// process on the same database and NATS, a second ingress enqueueing into it,
// small destination concurrency so that most recipients wait for a slot and
// both replicas' schedulers compete to claim them, greylisted recipients so
// that deferred ones are claimed again. With no crash, every recipient must
// be delivered exactly once at the sink (or bounced once), and the queue must
// have recorded exactly one attempt per delivery (two for a greylisted one:
// the 451, then the 250).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Harness, type ServiceHandle } from '@tern/devkit';
import { assertConverged, converge, expectedFate, Load, startWorld, summary, type World } from './scenario';
import { metricSum } from '../ops/helpers';

const harness = new Harness({ name: 'crash-replicas' });
let world: World;
let queue2: ServiceHandle;
let ingress2: ServiceHandle;
let smtpPort2: number;

// Two jobs per destination at first, four at most: dispatch mostly happens
// in the schedulers, not at enqueue.
const QUEUE_ENV = { TERN_QUEUE_DEST_CONCURRENCY_INIT: '2', TERN_QUEUE_DEST_CONCURRENCY_MAX: '4', TERN_QUEUE_JOB_MAX_RECIPIENTS: '5' };

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url);
  world = await startWorld(harness, { databaseUrl: db.url, destHost: '127.0.0.44', senderHost: '127.0.0.45', env: { queue: QUEUE_ENV } });
  const q = world.platform.services.queue;
  queue2 = await harness.startService('queue', {
    ...q.env,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
  });
  const i = world.platform.services.ingress;
  smtpPort2 = await harness.freePort();
  ingress2 = await harness.startService('ingress', {
    ...i.env,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_QUEUE_ADDR: queue2.grpcAddr,
    TERN_SMTP_LISTEN: `127.0.0.1:${smtpPort2}`,
  });
  world.extra.push(queue2, ingress2);
});

after(() => harness.close());

test('two queue replicas under load never dispatch one recipient twice', async () => {
  const t0 = Date.now();
  const load = new Load(world, {
    tag: 'q',
    clients: 6,
    ratePerSec: 60,
    targets: [
      { host: world.platform.smtpHost, port: world.platform.smtpPort },
      { host: world.platform.smtpHost, port: smtpPort2 },
    ],
  });
  await load.burst(300);
  const t = await converge(world, load.sent, 90_000);
  console.log(summary('replicas', t, [], Date.now() - t0));
  assert.equal(t.refused + t.uncertain, 0, 'with nothing crashing, every message is accepted');
  await assertConverged(world, load, t, []);
  assert.equal(t.deliveryDuplicates, 0, `no recipient delivered twice: ${t.duplicateKeys.join('; ')}`);

  // The queue's own record: one attempt per job sent, never two jobs for one recipient at once.
  const ids = load.accepted.map((s) => s.queueId!);
  const { rows } = await world.db.query<{ message_id: string; address: string; attempts: string; jobs: string; codes: number[] }>(
    `SELECT r.message_id, r.address, count(a.id) AS attempts, count(DISTINCT a.job_id) AS jobs, array_agg(a.code ORDER BY a.id) AS codes
     FROM queue.recipients r LEFT JOIN queue.attempts a ON a.message_id = r.message_id AND a.idx = r.idx
     WHERE r.message_id = ANY($1::text[]) GROUP BY r.message_id, r.address`,
    [ids],
  );
  const wrong: string[] = [];
  for (const r of rows) {
    const expected = r.address.startsWith('flaky-') ? [451, 250] : expectedFate(r.address) === 'bounced' ? [550] : [250];
    if (Number(r.attempts) !== expected.length || Number(r.jobs) !== expected.length || JSON.stringify(r.codes) !== JSON.stringify(expected)) {
      wrong.push(`${r.message_id} ${r.address}: ${r.attempts} attempts in ${r.jobs} jobs, codes ${JSON.stringify(r.codes)}, expected ${JSON.stringify(expected)}`);
    }
  }
  assert.equal(rows.length, t.acceptedRecipients);
  assert.deepEqual(wrong, [], 'attempts per recipient');

  // Both replicas did work (otherwise this proved nothing about two of them).
  const m1 = await counters(world.platform.services.queue);
  const m2 = await counters(queue2);
  console.log(`[crash]   replica 1: ${JSON.stringify(m1)}\n[crash]   replica 2: ${JSON.stringify(m2)}`);
  for (const [name, m] of [['replica 1', m1], ['replica 2', m2]] as const) {
    assert.ok((m.tern_queue_messages_enqueued_total ?? 0) > 0, `${name} enqueued messages`);
    assert.ok((m.tern_queue_jobs_dispatched_total ?? 0) > 0, `${name}'s scheduler dispatched jobs`);
  }
  assert.ok(ingress2.running);
});

/** A few counters from a queue replica's /metrics (summed over labels). */
async function counters(svc: ServiceHandle): Promise<Record<string, number>> {
  const text = await (await fetch(`http://${svc.metricsAddr}/metrics`)).text();
  const names = ['tern_queue_messages_enqueued_total', 'tern_queue_jobs_dispatched_total', 'tern_queue_outbox_published_total', 'tern_queue_results_applied_total'];
  return Object.fromEntries(names.map((name) => [name, metricSum(text, name)]));
}
