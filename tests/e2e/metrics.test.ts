// What an operator watches, through the running platform: after a known set
// of delivered, deferred, queued and held recipients, the queue's /metrics
// give the depth by state, the oldest age, per-destination results with
// bounded labels, suspended destinations, the NATS backlogs and the lags;
// ingress counts commands and replies by class per listener; every service
// has process and Node runtime metrics.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform, type DnsServer } from '@tern/devkit';
import { RawSmtp, send, tern, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-metrics' });
let platform: Platform;
let dns: DnsServer;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.10');
  await harness.startSink({ host: '127.0.0.10', port, hostname: 'mx.dest.test' });
  dns = await harness.startDns({ host: '127.0.0.1' });
  for (const d of ['busy.test', 'slow.test', 'held.test']) dns.mx(d, 'mx.dest.test');
  dns.a('mx.dest.test', '127.0.0.10');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    // Deferred recipients stay deferred for the test (the first retry is far away).
    env: { queue: { TERN_QUEUE_BACKOFF_MIN_S: '600', TERN_QUEUE_BACKOFF_MAX_S: '3600', TERN_QUEUE_METRICS_TOP_DESTINATIONS: '1' } },
  });
});

after(() => harness.close());

async function scrape(service: keyof Platform['services']): Promise<string> {
  const res = await fetch(`http://${platform.services[service].metricsAddr}/metrics`);
  assert.equal(res.status, 200);
  return res.text();
}

/** The value of one series (labels given must match; others are ignored); undefined when absent. */
function value(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  let found: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    found = (found ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return found;
}

const BUSY = 12;
let heldId = '';

test('queue depth by state, oldest age, per-destination results with bounded labels, suspended destinations', async () => {
  await tern(platform, 'destination', 'suspend', 'held.test', '--force', '--reason', 'metrics test');
  for (let i = 0; i < BUSY; i++) await send(platform, 'app@sender.test', [`user${i}@busy.test`], `busy ${i}`);
  await send(platform, 'app@sender.test', ['tempfail1@slow.test'], 'slow 1');
  await send(platform, 'app@sender.test', ['tempfail2@slow.test'], 'slow 2');
  heldId = await send(platform, 'app@sender.test', ['someone@held.test'], 'held');
  await tern(platform, 'queue', 'hold', heldId, '--reason', 'metrics test');

  const queue = await waitFor('the sample to show 2 deferred, 1 held, nothing queued or in flight', async () => {
    const t = await scrape('queue');
    const ok =
      value(t, 'tern_queue_recipients', { state: 'deferred' }) === 2 &&
      value(t, 'tern_queue_recipients', { state: 'held' }) === 1 &&
      value(t, 'tern_queue_recipients', { state: 'queued' }) === 0 &&
      value(t, 'tern_queue_recipients', { state: 'inflight' }) === 0 &&
      value(t, 'tern_queue_results_applied_total', { state: 'delivered' }) === BUSY;
    return ok ? t : undefined;
  }, 30_000);
  const deferredAge = value(queue, 'tern_queue_oldest_recipient_age_seconds', { state: 'deferred' })!;
  assert.ok(deferredAge > 0 && deferredAge < 120, `oldest deferred age ${deferredAge} s`);
  assert.equal(value(queue, 'tern_queue_oldest_recipient_age_seconds', { state: 'queued' }), 0, 'no queued recipient: age 0');
  assert.equal(value(queue, 'tern_queue_high_water_recipients'), 2_000_000);
  assert.equal(value(queue, 'tern_queue_accepting'), 1);
  assert.equal(value(queue, 'tern_queue_destinations_suspended', { reason: 'operator' }), 1);
  assert.equal(value(queue, 'tern_queue_destinations_suspended', { reason: 'unreachable' }), 0);

  // Top 1 destination: busy.test has its own series; slow.test and held.test are "other".
  // Volume is counted at enqueue: busy.test has its own series from its 10th recipient on (the minimum volume).
  assert.equal(value(queue, 'tern_queue_recipients_enqueued_total', { destination: 'busy.test' }), BUSY - 9);
  const busyDelivered = value(queue, 'tern_queue_results_applied_total', { state: 'delivered', destination: 'busy.test' }) ?? 0;
  assert.ok(busyDelivered >= BUSY - 9 && busyDelivered <= BUSY, `busy.test delivered under its own label: ${busyDelivered}`);
  assert.equal(value(queue, 'tern_queue_results_applied_total', { state: 'deferred', destination: 'other' }), 2);
  assert.equal(value(queue, 'tern_queue_results_applied_total', { destination: 'slow.test' }), undefined, 'no series for a destination outside the top N');
  assert.equal(value(queue, 'tern_queue_recipients_enqueued_total'), BUSY + 3);
  assert.ok((value(queue, 'tern_queue_result_apply_lag_seconds_count') ?? 0) >= BUSY + 2, 'every applied result has its lag');

  // NATS: every stream and durable consumer reported.
  for (const stream of ['TERN_JOBS', 'TERN_RESULTS', 'TERN_REPORTS']) assert.notEqual(value(queue, 'tern_nats_stream_messages', { stream }), undefined, stream);
  for (const consumer of ['delivery', 'queue', 'bounce']) assert.notEqual(value(queue, 'tern_nats_consumer_pending_messages', { consumer }), undefined, consumer);
  assert.equal(value(queue, 'tern_queue_outbox_rows'), 0, 'the outbox is drained');
});

test('a released message is dispatched by the scheduler, and its wait since due is measured', async () => {
  const before = value(await scrape('queue'), 'tern_queue_dispatch_lag_seconds_count') ?? 0;
  await tern(platform, 'destination', 'resume', 'held.test');
  await tern(platform, 'queue', 'release', heldId);
  const t = await waitFor('the released recipient to be delivered', async () => {
    const s = await scrape('queue');
    return value(s, 'tern_queue_recipients', { state: 'held' }) === 0 && value(s, 'tern_queue_results_applied_total', { state: 'delivered' }) === BUSY + 1 ? s : undefined;
  }, 30_000);
  assert.ok((value(t, 'tern_queue_dispatch_lag_seconds_count') ?? 0) > before, 'the scheduler claim recorded its dispatch lag');
  assert.equal(value(t, 'tern_queue_destinations_suspended', { reason: 'operator' }), 0);
});

test('ingress counts commands by verb and replies by class, per listener', async () => {
  const before = await scrape('ingress');
  const { client } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort);
  assert.equal((await client.command('EHLO client.test')).code, 250);
  assert.equal((await client.command('MAIL FROM:<app@sender.test>')).code, 250);
  assert.equal((await client.command('RCPT TO:<broken')).code, 501);
  assert.equal((await client.command('XYZZY')).code, 500);
  assert.equal((await client.command('QUIT')).code, 221);
  const after = await waitFor('the counts to include the session', async () => {
    const t = await scrape('ingress');
    return (value(t, 'tern_ingress_smtp_commands_total', { listener: 'mx', command: 'QUIT' }) ?? 0) > (value(before, 'tern_ingress_smtp_commands_total', { listener: 'mx', command: 'QUIT' }) ?? 0) ? t : undefined;
  });
  const delta = (name: string, labels: Record<string, string>) => (value(after, name, labels) ?? 0) - (value(before, name, labels) ?? 0);
  assert.equal(delta('tern_ingress_smtp_commands_total', { listener: 'mx', command: 'EHLO' }), 1);
  assert.equal(delta('tern_ingress_smtp_commands_total', { listener: 'mx', command: 'RCPT' }), 1);
  assert.equal(delta('tern_ingress_smtp_commands_total', { listener: 'mx', command: 'other' }), 1, 'an unknown verb counts as "other"');
  // Greeting, EHLO, MAIL and QUIT: 2xx; the bad RCPT and the unknown verb: 5xx.
  assert.equal(delta('tern_ingress_smtp_replies_total', { listener: 'mx', class: '2xx' }), 4);
  assert.equal(delta('tern_ingress_smtp_replies_total', { listener: 'mx', class: '5xx' }), 2);
  assert.equal(delta('tern_ingress_smtp_replies_total', { listener: 'mx', class: '4xx' }), 0);
});

test('every service exposes process and Node runtime metrics', async () => {
  for (const service of Object.keys(platform.services) as Array<keyof Platform['services']>) {
    const t = await scrape(service);
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_open_fds', 'nodejs_heap_used_bytes', 'nodejs_gc_runs_total']) {
      assert.ok((value(t, name) ?? 0) > 0, `${service}: ${name}`);
    }
    assert.match(t, /^nodejs_eventloop_delay_seconds\{quantile="0\.99"/m, `${service}: event-loop delay`);
  }
});
