// Planner statistics of a queue that grew from empty. The message path runs
// prepared statements, and Postgres keeps a generic plan made from the
// statistics of its time: made on empty tables it reads every row. The
// housekeeping pass analyzes a table that has more than doubled, which
// replaces those plans in every session.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import crypto from 'node:crypto';
import { pg } from '@tern/db';
import { withSearchPath, type App } from '../src/app';
import { createQueueMetrics } from '../src/metrics';
import { Housekeeping } from '../src/housekeeping';
import { createDatabase, startNats, startQueue, telemetry } from './helpers';

describe('planner statistics', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let app: App;

  before(async () => {
    db = await createDatabase();
    nats = await startNats();
    app = await startQueue(db.url, nats.url, {}, { disable: ['housekeeping'] });
  });
  after(async () => {
    await app?.stop();
    await nats?.stop();
    await db?.drop();
  });

  it('a table grown past twice its statistics is analyzed, and a generic plan made on the empty table turns into a lookup by key', async () => {
    const c = await db.pool.connect();
    try {
      // The shape of the result batch's lookup, prepared while the table is empty.
      await c.query(`SET plan_cache_mode = force_generic_plan`);
      await c.query(
        `PREPARE lookup(text[], int[]) AS
           SELECT r.state FROM recipients r JOIN unnest($1, $2) AS t(m, i) ON r.message_id = t.m AND r.idx = t.i`,
      );
      const plan = async () =>
        (await c.query(`EXPLAIN EXECUTE lookup('{q1}', '{0}')`)).rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n');
      assert.match(await plan(), /Seq Scan on recipients/, 'on an empty table the generic plan reads the table');

      await db.query(
        `INSERT INTO messages (id, sender, envelope, origin, size, rcpt_count)
           SELECT 'q' || n, 'a@b.example', '\\x', 1, 100, 1 FROM generate_series(1, 20000) AS n`,
      );
      await db.query(
        `INSERT INTO recipients (message_id, idx, address, domain, state, expires_at)
           SELECT 'q' || n, 0, 'r@d.example', 'd.example', 4, now() + interval '1 day' FROM generate_series(1, 20000) AS n`,
      );
      assert.match(await plan(), /Seq Scan on recipients/, 'still the plan of the empty table: nothing told Postgres otherwise');

      const analyzed = await app.parts.housekeeping.refreshStatistics();
      assert.ok(analyzed.includes('recipients') && analyzed.includes('messages'), `analyzed: ${analyzed.join(', ')}`);
      assert.doesNotMatch(await plan(), /Seq Scan on recipients/, 'the same prepared statement now looks recipients up by key');
      assert.match(await plan(), /Index (Only )?Scan using recipients_pkey/);

      assert.deepEqual(await app.parts.housekeeping.refreshStatistics(), [], 'fresh statistics: nothing to do');
    } finally {
      c.release();
    }
  });

  it('the message path connects with generic plans kept, the operator pool without; options given in the URL are kept', async () => {
    const show = async (url: string) => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        const get = async (name: string) => (await c.query(`SELECT current_setting($1) AS v`, [name])).rows[0].v as string;
        return { plans: await get('plan_cache_mode'), path: await get('search_path'), timeout: await get('statement_timeout') };
      } finally {
        await c.end();
      }
    };
    assert.deepEqual(await show(withSearchPath(db.url, { genericPlans: true })), { plans: 'force_generic_plan', path: 'queue,public', timeout: '0' });
    assert.deepEqual(await show(withSearchPath(db.url)), { plans: 'auto', path: 'queue,public', timeout: '0' });
    const given = `${db.url}?options=${encodeURIComponent('-c statement_timeout=5000')}`;
    assert.deepEqual(await show(withSearchPath(given, { genericPlans: true })), { plans: 'force_generic_plan', path: 'queue,public', timeout: '5s' });
  });

  it('a user that does not own the tables leaves them to autovacuum instead of asking Postgres to analyze them every pass', async () => {
    const role = `tern_stats_${crypto.randomBytes(4).toString('hex')}`;
    await db.query(`CREATE ROLE ${role} LOGIN PASSWORD 'x'`);
    await db.query(`GRANT USAGE ON SCHEMA queue TO ${role}`);
    await db.query(`GRANT SELECT ON ALL TABLES IN SCHEMA queue TO ${role}`);
    const url = new URL(db.url);
    url.username = role;
    url.password = 'x';
    const pool = new pg.Pool({ connectionString: url.toString(), max: 1 });
    try {
      await db.query(
        `INSERT INTO messages (id, sender, envelope, origin, size, rcpt_count)
           SELECT 'n' || n, 'a@b.example', '\\x', 1, 100, 1 FROM generate_series(1, 40000) AS n`,
      );
      const hk = new Housekeeping({ pool, logger: telemetry.logger, batch: 10, delayWarningS: 0, bodyGraceS: 0, retentionS: 0, intervalMs: 1000, metrics: createQueueMetrics(telemetry.meter, 0), events: { enabled: false, format: 'protobuf' }, classify: () => 'other', onOutbox() {} });
      assert.deepEqual(await hk.refreshStatistics(), [], 'nothing asked of Postgres');
      assert.deepEqual(await app.parts.housekeeping.refreshStatistics(), ['messages'], 'the owner does it');
    } finally {
      await pool.end();
      await db.query(`DROP OWNED BY ${role}`);
      await db.query(`DROP ROLE ${role}`);
    }
  });
});
