// Seeds a million recipients (250k messages x 4) into a fresh database and
// prints the time of filtered first pages of ListMessages (target < 100 ms).
// Usage: node --import tsx services/queue/bench/seed-million.ts [recipients]
//   TERN_TEST_DATABASE_URL (default postgres://tern:tern@127.0.0.1:5432/postgres)
import crypto from 'node:crypto';
import path from 'node:path';
import { migrate, pg } from '@tern/db';
import { RecipientState } from '@tern/proto';
import { createTelemetry } from '@tern/telemetry';
import { Operations } from '../src/operations';
import { RouteTable } from '../src/routes';
import { withSearchPath } from '../src/app';

const ADMIN_URL = process.env.TERN_TEST_DATABASE_URL ?? 'postgres://tern:tern@127.0.0.1:5432/postgres';

async function main() {
  const total = Number(process.argv[2] ?? 1_000_000);
  const perMessage = 4;
  const name = `tern_queue_bench_${crypto.randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const url = ADMIN_URL.replace(/\/[^/]*$/, `/${name}`);
  const pool = new pg.Pool({ connectionString: withSearchPath(url), max: 4 });
  try {
    await migrate(url, [{ schema: 'queue', dir: path.resolve(__dirname, '../migrations') }]);
    await pool.query(`CREATE FUNCTION public.b32(v bigint, len int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
      SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', ((v >> (5 * (len - 1 - i))) & 31)::int + 1, 1), '' ORDER BY i)
      FROM generate_series(0, len - 1) i $$`);
    const messages = Math.ceil(total / perMessage);
    const t0 = Date.now();
    // Ids spread over the last 5 days, so age filters mean something.
    const start = Date.now() - 5 * 86400_000;
    const step = (5 * 86400_000) / messages;
    const chunk = 50_000;
    for (let from = 0; from < messages; from += chunk) {
      const n = Math.min(chunk, messages - from);
      await pool.query(
        `WITH m AS (
           SELECT g, public.b32(($4::float8 + g * $5::float8)::bigint, 10) || public.b32(g, 6) || $3::text AS id FROM generate_series($1::int, $1::int + $2::int - 1) g)
         INSERT INTO messages (id, sender, envelope, origin, size, rcpt_count, created_at)
         SELECT id, 'sender' || (g % 1000) || '@origin' || (g % 50) || '.example', '\\x'::bytea, 1, 2000, ${perMessage},
                to_timestamp(($4::float8 + g * $5::float8) / 1000)
         FROM m`,
        [from, n, '', start, step],
      );
      await pool.query(
        `INSERT INTO recipients (message_id, idx, address, domain, state, created_at, expires_at, next_attempt_at, attempt_count, last_code, last_text)
         SELECT public.b32(($3::float8 + g * $4::float8)::bigint, 10) || public.b32(g, 6), i,
                'user' || g || '_' || i || '@d' || ((g * 7 + i) % 500) || '.example',
                'd' || ((g * 7 + i) % 500) || '.example',
                (ARRAY[1,3,3,3,3,3,6,4,5,3])[1 + ((g + i) % 10)],
                to_timestamp(($3::float8 + g * $4::float8) / 1000), now() + interval '5 days',
                now() + ((g % 3600) || ' seconds')::interval, (g % 5), 451, 'try later'
         FROM generate_series($1::int, $1::int + $2::int - 1) g, generate_series(0, ${perMessage - 1}) i`,
        [from, n, start, step],
      );
      process.stdout.write(`\rseeded ${Math.min(total, (from + n) * perMessage)} recipients`);
    }
    await pool.query('ANALYZE');
    process.stdout.write(`\nseeded ${messages} messages / ${messages * perMessage} recipients in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    const telemetry = createTelemetry({ service: 'queue-bench', logLevel: 'silent' });
    const ops = new Operations({
      pool,
      logger: telemetry.logger,
      routes: new RouteTable(pool, telemetry.logger),
      limits: { initialConcurrency: 5, maxConcurrency: 20, ratePerMin: 0, failuresToSuspend: 5, probeS: 60 },
      onOutbox: () => undefined,
      onDue: () => undefined,
    });
    const cases: Array<[string, Parameters<Operations['listMessages']>[0]]> = [
      ['domain=d42.example', { filter: f({ domain: 'd42.example' }), pageSize: 50, pageToken: '' }],
      ['domain=d42.example state=DEFERRED', { filter: f({ domain: 'd42.example', states: [RecipientState.RECIPIENT_STATE_DEFERRED] }), pageSize: 50, pageToken: '' }],
      ['state=HELD', { filter: f({ states: [RecipientState.RECIPIENT_STATE_HELD] }), pageSize: 50, pageToken: '' }],
      ['state=QUEUED,DEFERRED', { filter: f({ states: [RecipientState.RECIPIENT_STATE_QUEUED, RecipientState.RECIPIENT_STATE_DEFERRED] }), pageSize: 50, pageToken: '' }],
      ['sender=sender7@origin7.example', { filter: f({ sender: 'sender7@origin7.example' }), pageSize: 50, pageToken: '' }],
      ['recipient=user1234_2@...', { filter: f({ recipient: `user1234_2@d${(1234 * 7 + 2) % 500}.example` }), pageSize: 50, pageToken: '' }],
      ['domain + sender', { filter: f({ domain: 'd42.example', sender: 'sender7@origin7.example' }), pageSize: 50, pageToken: '' }],
      ['older than 4 days', { filter: f({ minAgeSeconds: 4 * 86400 }), pageSize: 50, pageToken: '' }],
      ['domain, state, younger than 1 day', { filter: f({ domain: 'd42.example', states: [RecipientState.RECIPIENT_STATE_DEFERRED], maxAgeSeconds: 86400 }), pageSize: 50, pageToken: '' }],
      ['no filter', { filter: undefined, pageSize: 50, pageToken: '' }],
    ];
    for (const [label, req] of cases) {
      await ops.listMessages(req); // warm
      const t = performance.now();
      const res = await ops.listMessages(req);
      const ms = performance.now() - t;
      const t2 = performance.now();
      if (res.nextPageToken) await ops.listMessages({ ...req, pageToken: res.nextPageToken });
      const ms2 = performance.now() - t2;
      process.stdout.write(`first page ${label.padEnd(36)} ${ms.toFixed(1).padStart(7)} ms  (${res.messages.length} messages; next page ${ms2.toFixed(1)} ms)\n`);
    }
    const ts = performance.now();
    const s = await ops.summary();
    process.stdout.write(`QueueSummary: ${s.rows.length} rows in ${(performance.now() - ts).toFixed(1)} ms\n`);
  } finally {
    await pool.end();
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}

function f(p: Partial<{ sender: string; recipient: string; domain: string; states: number[]; minAgeSeconds: number; maxAgeSeconds: number }>) {
  return { sender: '', recipient: '', domain: '', states: [], minAgeSeconds: 0, maxAgeSeconds: 0, ...p };
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
