// The outbox relay (services/queue/src/outbox.ts): rows handed over by a
// commit are published from memory and deleted; the relay's own passes
// publish whatever a hand-off missed, and leave alone the rows a hand-off is
// still publishing or deleting (they would only be published twice).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { Bus, jobSubject } from '@tern/bus';
import { tx } from '../src/db';
import { Relay, insertOutbox, type OutboxRow } from '../src/outbox';
import { createDatabase, eventually, sleep, startNats, telemetry } from './helpers';

describe('outbox relay', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let bus: Bus;

  before(async () => {
    db = await createDatabase();
    nats = await startNats();
    bus = await Bus.connect({ url: nats.url, name: 'relay-test', logger: pino({ level: 'silent' }) });
    await bus.ensureTopology([]);
  });
  after(async () => {
    await bus?.close();
    await nats?.stop();
    await db?.drop();
  });

  it('publishes each handed-over row once although passes run meanwhile, and a pass takes the rows a hand-off failed to publish', async () => {
    const published: string[] = [];
    let failFirst = 'job-relay-2';
    // The real bus, slowed down and counted (a publish takes 150 ms: several passes run meanwhile).
    const slowBus = Object.create(bus) as Bus;
    slowBus.publish = async (subject, data, opts) => {
      await sleep(150);
      if (opts.msgId === failFirst) {
        failFirst = '';
        throw new Error('NATS unavailable (test)');
      }
      published.push(opts.msgId);
      return bus.publish(subject, data, opts);
    };
    const relay = new Relay({
      pool: db.pool,
      bus: () => slowBus,
      logger: pino({ level: 'silent' }),
      tracer: telemetry.tracer,
      batch: 100,
      pollMs: 10,
      published: telemetry.meter.createCounter('relay_test_published'),
    });
    const rows: OutboxRow[] = [1, 2, 3, 4].map((n) => ({ subject: jobSubject('relay.test'), msgId: `job-relay-${n}`, payload: Buffer.from(`job ${n}`), trace: null, span: 'queue.dispatch' }));
    const stored = await tx(db.pool, (c) => insertOutbox(c, rows));
    void relay.start();
    relay.handoff(stored);
    try {
      await eventually(async () => (await db.query('SELECT count(*)::int AS n FROM outbox')).rows[0].n, (n) => n === 0);
    } finally {
      await relay.drain();
    }
    assert.deepEqual([...published].sort(), ['job-relay-1', 'job-relay-2', 'job-relay-3', 'job-relay-4'], 'each row published once, the failed one by a pass');
    const info = await bus.jsm.streams.info('TERN_JOBS');
    assert.equal(info.state.messages, 4);
  });
});
