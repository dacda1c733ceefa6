import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Harness, createTestDatabase, freePort, grpcHealthCheck, repoRoot } from '../src/index';

const FAKE = path.join(__dirname, 'fixtures', 'fake-service.cjs');
const h = new Harness({ name: 'devkit-harness' });
after(() => h.close());

describe('Harness', () => {
  test('repo root and free ports', async () => {
    assert.ok(fs.existsSync(path.join(repoRoot(), 'libs', 'devkit', 'src', 'harness.ts')));
    const a = await freePort();
    const b = await h.freePort();
    assert.ok(a > 0 && b > 0);
  });

  test('createTestDatabase: a fresh database, dropped afterwards', async () => {
    const db = await h.createTestDatabase();
    assert.match(db.name, /^tern_devkit_harness_[0-9a-f]{12}$/);
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    const { rows } = await c.query<{ db: string }>('select current_database() as db');
    assert.equal(rows[0]?.db, db.name);
    await c.query('create table t (x int)');
    await c.end();

    const other = await createTestDatabase({ prefix: 'devkit_drop' });
    const admin = new pg.Client({ connectionString: other.adminUrl });
    await admin.connect();
    const holder = new pg.Client({ connectionString: other.url }); // an open connection does not block the drop
    await holder.connect();
    holder.on('error', () => undefined);
    await other.drop();
    const gone = await admin.query('select 1 from pg_database where datname = $1', [other.name]);
    assert.equal(gone.rowCount, 0);
    await admin.end();
    await holder.end().catch(() => undefined);
    await other.drop(); // idempotent
  });

  test('startNats: JetStream on a private port; stop, kill, restart keep the store', async () => {
    const nats = await h.startNats();
    assert.match(nats.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
    let nc = await connect({ servers: nats.url });
    let jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'DEVKIT', subjects: ['devkit.>'] });
    const info = await jsm.getAccountInfo();
    assert.equal(info.streams, 1);
    await nc.close();

    await nats.kill();
    assert.equal(nats.running, false);
    await nats.restart();
    assert.equal(nats.running, true);
    nc = await connect({ servers: nats.url });
    jsm = await jetstreamManager(nc);
    const names: string[] = [];
    for await (const s of jsm.streams.names()) names.push(s);
    assert.deepEqual(names, ['DEVKIT'], 'the stream survives SIGKILL and restart (same store)');
    await nc.close();
    await nats.stop();
    assert.equal(nats.running, false);
  });

  test('startService: gRPC readiness, env, log file, stop/kill/restart', async () => {
    const svc = await h.startService('fake', { FAKE_DELAY_MS: '300', FAKE_MARKER: 'one' }, { entry: FAKE });
    assert.equal(await grpcHealthCheck(svc.grpcAddr), 'SERVING');
    assert.equal(svc.env.FAKE_MARKER, 'one');
    assert.equal(svc.env.HOME !== undefined, true);
    assert.equal(svc.logFile, path.join(repoRoot(), '.tern', 'test-logs', 'devkit-harness', 'fake.log'));
    assert.match(svc.log(), /"marker":"one"/);
    const pid = svc.pid;
    const killed = await svc.kill();
    assert.equal(killed.signal, 'SIGKILL');
    await svc.restart({ FAKE_MARKER: 'two' });
    assert.notEqual(svc.pid, pid);
    assert.match(svc.log(), /"marker":"two"/);
    const stopped = await svc.stop();
    assert.deepEqual(stopped, { code: 0, signal: null });
    assert.match(svc.log(), /fake stopping/);
  });

  test('startService: HTTP readiness and a second instance gets its own log', async () => {
    const svc = await h.startService('fake', {}, { entry: FAKE, readiness: 'http' });
    assert.equal(svc.logFile.endsWith('fake-2.log'), true);
    const res = await fetch(`http://${svc.metricsAddr}/healthz`);
    assert.equal(res.status, 200);
  });

  test('startService: a process that dies before ready fails with its log', async () => {
    await assert.rejects(
      h.startService('fake', { FAKE_EXIT: '3' }, { entry: FAKE, logName: 'dies.log' }),
      (err: Error) => /exited \(code 3/.test(err.message) && /dies\.log/.test(err.message) && /failing on purpose/.test(err.message),
    );
    await assert.rejects(h.startService('no-such-service', {}), /services\/no-such-service\/dist\/main\.js is missing/);
  });

  test('close() runs every cleanup, even when one fails', async () => {
    const inner = new Harness({ name: 'devkit-harness-inner' });
    const order: string[] = [];
    inner.defer(() => order.push('first'));
    inner.defer(() => {
      throw new Error('boom');
    }, 'failing');
    inner.defer(() => order.push('last'));
    await assert.rejects(inner.close(), /failing: boom/);
    assert.deepEqual(order, ['last', 'first']);
  });
});
