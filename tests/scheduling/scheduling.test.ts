// Issue 4 scheduling, end to end: the whole platform with TWO delivery
// processes sharing the job stream, and remote MX sinks that answer 4xx,
// 421, or hang. What is checked is what the queue recorded in Postgres
// (attempts, states, destinations) and what the sinks saw.
//
// Timing knobs are shrunk so that minutes become seconds: first retry after
// 1 s doubling to 2 s, lifetime 10 s, a dead destination probed after 2 s.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { simpleParser } from 'mailparser';
import { send as sendVia, waitFor as waitUntil } from '../ops/helpers';
import { Harness, startPlatform, type Platform, type ServiceHandle, type SmtpSink, type DnsServer } from '@tern/devkit';

const harness = new Harness({ name: 'scheduling' });
let platform: Platform;
let db: pg.Pool;
let dns: DnsServer;
let senderMx: SmtpSink;
let delivery2: ServiceHandle;
let port: number;

const CONCURRENCY_MAX = 2;
const LIFETIME_S = 10;

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  port = await harness.freePort('127.0.0.60');
  senderMx = await harness.startSink({ host: '127.0.0.60', port, hostname: 'mx.sender.test' });
  dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.0.60');
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      queue: {
        TERN_QUEUE_BACKOFF_MIN_S: '1',
        TERN_QUEUE_BACKOFF_MAX_S: '2',
        TERN_QUEUE_BACKOFF_JITTER: '0.1',
        TERN_QUEUE_LIFETIME_S: String(LIFETIME_S),
        TERN_QUEUE_DEST_CONCURRENCY_INIT: String(CONCURRENCY_MAX),
        TERN_QUEUE_DEST_CONCURRENCY_MAX: String(CONCURRENCY_MAX),
        TERN_QUEUE_DEST_FAILURES_TO_SUSPEND: '3',
        TERN_QUEUE_DEST_PROBE_S: '2',
        TERN_QUEUE_SCHEDULE_INTERVAL_MS: '200',
      },
      // A silent remote gives up after 2 s instead of the RFC's minutes.
      delivery: { TERN_SMTP_COMMAND_TIMEOUT_MS: '2000', TERN_SMTP_DATA_END_TIMEOUT_MS: '2000', TERN_SMTP_IDLE_MS: '200' },
    },
  });
  const d = platform.services.delivery;
  delivery2 = await harness.startService('delivery', {
    ...d.env,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
  });
  db = new pg.Pool({ connectionString: database.url, max: 2 });
  harness.defer(() => db.end(), 'end pool');
});

after(() => harness.close());

/** A sink for `domain` on its own 127.0.0.x, published as the domain's MX. */
async function remote(domain: string, host: string): Promise<SmtpSink> {
  const sink = await harness.startSink({ host, port, hostname: `mx.${domain}` });
  dns.mx(domain, `mx.${domain}`).a(`mx.${domain}`, host);
  return sink;
}

const send = (to: string[], subject: string): Promise<string> => sendVia(platform, 'alice@sender.test', to, subject, `${subject}\r\n`);

/** Polls until `fn` gives something other than undefined or false. */
const waitFor = <T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> =>
  waitUntil(what, async () => (await fn()) || undefined, timeoutMs, 100);

async function recipient(address: string) {
  const r = await db.query<{ state: number; attempt_count: number; last_code: number | null; last_enhanced: string | null }>(
    'SELECT state, attempt_count, last_code, last_enhanced FROM queue.recipients WHERE address = $1',
    [address],
  );
  return r.rows[0];
}

async function attempts(address: string) {
  const r = await db.query<{ started_at: Date; code: number; enhanced: string; worker: string; outcome: number }>(
    `SELECT a.started_at, a.code, a.enhanced, a.worker, a.outcome FROM queue.attempts a
       JOIN queue.recipients r ON r.message_id = a.message_id AND r.idx = a.idx
      WHERE r.address = $1 ORDER BY a.started_at`,
    [address],
  );
  return r.rows;
}

const DELIVERED = 4;
const DEFERRED = 3;
const EXPIRED = 7;

test('a 4xx at RCPT defers that recipient only; it is retried after the backoff (1 s, then doubled) and delivered', async () => {
  const sink = await remote('tempo.test', '127.0.0.61');
  let refusals = 0;
  sink.setBehaviour({
    rcpt: (to) => (to.startsWith('greylisted@') && refusals++ < 2 ? { code: 451, text: '4.7.1 greylisted, try again later' } : undefined),
  });
  await send(['greylisted@tempo.test', 'ok@tempo.test'], 'tempo');
  await waitFor('the other recipient delivered at once', async () => (await recipient('ok@tempo.test'))?.state === DELIVERED);
  const midway = await recipient('greylisted@tempo.test');
  assert.ok(midway && midway.state !== DELIVERED, 'the greylisted recipient waits');
  await waitFor('the greylisted recipient delivered on its third attempt', async () => (await recipient('greylisted@tempo.test'))?.state === DELIVERED, 20_000);
  const tries = await attempts('greylisted@tempo.test');
  assert.deepEqual(
    tries.map((a) => a.code),
    [451, 451, 250],
  );
  assert.equal(tries[0]!.enhanced, '4.7.1');
  const gaps = [1, 2].map((i) => (tries[i]!.started_at.getTime() - tries[i - 1]!.started_at.getTime()) / 1000);
  // Backoff 1 s then 2 s, each +-10 %: never retried sooner.
  assert.ok(gaps[0]! >= 0.85, `first retry after ${gaps[0]} s`);
  assert.ok(gaps[1]! >= 1.75, `second retry after ${gaps[1]} s (doubled)`);
  assert.equal(sink.messagesFor('ok@tempo.test').length, 1, 'the accepted recipient got one copy');
  assert.equal(sink.messagesFor('greylisted@tempo.test').length, 1);
});

test(`two delivery processes together never run more than ${CONCURRENCY_MAX} transactions at once to one destination`, async () => {
  const sink = await remote('busy.test', '127.0.0.62');
  let inflight = 0;
  let peak = 0;
  sink.setBehaviour({
    mail: () => {
      inflight++;
      peak = Math.max(peak, inflight);
      return undefined;
    },
    data: () => {
      // The reply comes after 300 ms; the transaction ends with it.
      setTimeout(() => inflight--, 300);
      return { code: 250, text: '2.0.0 Ok', delayMs: 300 };
    },
  });
  const count = 16;
  await Promise.all(Array.from({ length: count }, (_, i) => send([`user${i}@busy.test`], `busy ${i}`)));
  await sink.waitForMessages(count, 60_000);
  assert.ok(peak <= CONCURRENCY_MAX, `peak ${peak} concurrent transactions (limit ${CONCURRENCY_MAX})`);
  assert.equal(peak, CONCURRENCY_MAX, 'the limit was reached, so the test could have failed');
  const workers = await db.query<{ worker: string }>(
    `SELECT DISTINCT a.worker FROM queue.attempts a JOIN queue.recipients r ON r.message_id = a.message_id AND r.idx = a.idx WHERE r.domain = 'busy.test'`,
  );
  assert.equal(workers.rows.length, 2, `both delivery processes took jobs: ${workers.rows.map((w) => w.worker).join(', ')}`);
  assert.ok(delivery2.running);
});

test('a destination answering 421 is suspended after 3 failures, probed, and resumed when it recovers', async () => {
  const sink = await remote('dead.test', '127.0.0.63');
  sink.setBehaviour({ greeting: { code: 421, text: '4.3.2 Service not available, closing transmission channel' } });
  for (let i = 0; i < 4; i++) await send([`d${i}@dead.test`], `dead ${i}`);
  const dest = await waitFor(
    'dead.test suspended',
    async () => {
      const r = await db.query<{ dead_until: Date | null; failures: number; last_error: string }>(
        "SELECT dead_until, failures, last_error FROM queue.destinations WHERE name = 'dead.test'",
      );
      const row = r.rows[0];
      return row?.dead_until ? row : undefined;
    },
    20_000,
  );
  assert.ok(dest.failures >= 3, `failures ${dest.failures}`);
  assert.match(dest.last_error, /421/);
  // While dead, new mail for it waits instead of hammering it.
  const connectionsWhileDead = sink.connections.length;
  sink.setBehaviour({});
  await sink.waitForMessages(4, 20_000);
  for (let i = 0; i < 4; i++) await waitFor(`d${i}@dead.test delivered`, async () => (await recipient(`d${i}@dead.test`))?.state === DELIVERED, 10_000);
  const after = await db.query<{ dead_until: Date | null; failures: number }>("SELECT dead_until, failures FROM queue.destinations WHERE name = 'dead.test'");
  assert.equal(after.rows[0]!.failures, 0, 'a success resets the failure count');
  assert.ok(!after.rows[0]!.dead_until || after.rows[0]!.dead_until.getTime() <= Date.now(), 'resumed');
  assert.ok(connectionsWhileDead <= 4 + 2, `no hammering while suspended: ${connectionsWhileDead} connections`);
});

test('a remote that never answers the end of data: deferred with a timeout, then expired after the lifetime with a failure report', async () => {
  const sink = await remote('silent.test', '127.0.0.64');
  sink.setBehaviour({ data: 'hang' });
  const queueId = await send(['nobody@silent.test'], 'silent');
  await waitFor('a timed-out attempt recorded', async () => (await attempts('nobody@silent.test')).length >= 1, 15_000);
  const first = (await attempts('nobody@silent.test'))[0]!;
  assert.ok(first.code >= 400 && first.code < 500, `a timeout is temporary: ${first.code} ${first.enhanced}`);
  assert.equal((await recipient('nobody@silent.test'))?.state === DELIVERED, false);
  const final = await waitFor(
    'the recipient expired',
    async () => {
      const r = await recipient('nobody@silent.test');
      return r?.state === EXPIRED ? r : undefined;
    },
    (LIFETIME_S + 15) * 1000,
  );
  assert.equal(final.state, EXPIRED);
  assert.ok((await recipient('nobody@silent.test'))?.state !== DEFERRED);
  const report = await waitFor('the report at the sender MX', async () => senderMx.messagesFor('alice@sender.test').find((m) => m.raw.includes(queueId) || m.raw.includes('nobody@silent.test')), 20_000);
  assert.equal(report.mailFrom, '', 'reports come from the null sender');
  const parsed = await simpleParser(report.raw);
  const ct = parsed.headers.get('content-type') as { value: string; params: Record<string, string> };
  assert.equal(ct.value, 'multipart/report');
  assert.equal(ct.params['report-type'], 'delivery-status');
  const status = report.raw.toString('latin1');
  assert.match(status, /Final-Recipient: rfc822;\s*nobody@silent\.test/i);
  assert.match(status, /Action: failed/);
  assert.match(status, /Status: 4\.\d+\.\d+/);
});
