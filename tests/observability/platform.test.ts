// Issue 23, against a running platform (the six services as processes, real
// Postgres and NATS, SMTP sinks on loopback) and a real Prometheus scraping
// it every second with the chart's rules loaded:
//  - after a known set of queued, in-flight, deferred, held and delivered
//    recipients, the dashboards' queue-depth and oldest-age queries evaluate
//    to it in Prometheus;
//  - the rules load and evaluate with no error;
//  - every metric a dashboard or a rule names exists in the services'
//    /metrics (traffic in the test produces the ones that need it);
//  - docs/metrics.md and docs/operating.md name only metrics that exist, and
//    docs/metrics.md lists every one.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import * as grpc from '@grpc/grpc-js';
import { Harness, startPlatform, submissionListener, type Platform, type SmtpSink, type TestDatabase } from '@tern/devkit';
import { FakeMilter } from '../../libs/milter/test/fake-milter';
import { AuthenticateRequest, CheckRequest, CheckStage, PolicyServiceClient, RecipientState } from '@tern/proto';
import { Receiver } from '../../services/webhooks/test/receiver';
import { send, tern, waitFor } from '../ops/helpers';
import { NAMESPACE, ROOT } from '../chart/render';
import { metricNames } from './promql';
import { sampleNames, startPrometheus, type Prometheus } from './prometheus';
import { dashboardQueries, renderedRuleGroups, substituteGrafanaVariables, type RuleGroup } from './rules';

const harness = new Harness({ name: 'observability' });
let platform: Platform;
let db: TestDatabase;
let mx: SmtpSink;
let slow: SmtpSink | undefined;
let prom: Prometheus;
let groups: RuleGroup[];
let firstSentAt = 0;
let heldId = '';

before(async () => {
  groups = renderedRuleGroups();
  db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.30');
  // One MX for every domain but slow.test: delivers, answers 451 to tempfail*, 550 to permfail*.
  mx = await harness.startSink({ host: '127.0.0.30', port, hostname: 'mx.obs.test' });
  slow = await harness.startSink({ host: '127.0.0.31', port, hostname: 'mx.slow.test' });
  slow.setBehaviour({ rcpt: 'hang' }); // a job that stays in flight
  const dns = await harness.startDns({ host: '127.0.0.1' });
  for (const d of ['ok.test', 'defer.test', 'queued.test', 'sender.test', 'verify.test']) dns.mx(d, 'mx.obs.test');
  dns.a('mx.obs.test', '127.0.0.30').mx('slow.test', 'mx.slow.test').a('mx.slow.test', '127.0.0.31');
  // A submission listener gives ingress a certificate (whose expiry is a metric).
  const submission = await submissionListener(harness);
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      // Deferred recipients stay deferred for the test: the first retry is far away.
      queue: { TERN_QUEUE_BACKOFF_MIN_S: '600', TERN_QUEUE_BACKOFF_MAX_S: '3600' },
      // The milter chain is read every second (so the milter below applies before the first message).
      ingress: { ...submission.env, TERN_MILTER_REFRESH_MS: '1000' },
    },
  });
  prom = await startPrometheus(harness, platform, { namespace: NAMESPACE, groups });
  // A milter that accepts everything on the MX listener, so the per-milter metrics have samples.
  const milter = await new FakeMilter().start();
  harness.defer(() => milter.stop(), 'stop the milter');
  await tern(platform, 'milter', 'set', 'observe', milter.address, '--listeners', 'mx', '--default-action', 'accept');
  await new Promise((r) => setTimeout(r, 2_000));
  // A webhook endpoint for the delivered events, so the webhooks service's counters and histogram have samples.
  const receiver = await new Receiver().start();
  harness.defer(() => receiver.close(), 'close the webhook receiver');
  await tern(platform, 'webhook', 'add', receiver.url('/hook'), '--events', 'delivered');
});

after(async () => {
  // The hung session first: delivery then records a deferral instead of waiting out its grace period at shutdown.
  await slow?.close();
  await harness.close();
});

const panelQuery = (dashboard: string, title: string) => {
  const q = dashboardQueries().find((x) => x.dashboard === dashboard && x.panel === title);
  assert.ok(q, `${dashboard} has a panel "${title}"`);
  return substituteGrafanaVariables(q.expr, { namespace: NAMESPACE });
};

const byState = (rows: Array<{ metric: Record<string, string>; value: [number, string] }>) =>
  Object.fromEntries(rows.map((r) => [r.metric.state, Number(r.value[1])]));

test('after 3 delivered, 1 failed, 2 deferred, 1 held, 1 queued and 1 in flight, Prometheus evaluates the dashboards\' depth and oldest-age queries to them', async () => {
  firstSentAt = Date.now();
  await tern(platform, 'destination', 'suspend', 'queued.test', '--force', '--reason', 'observability test');
  await send(platform, 'alice@sender.test', ['someone@queued.test'], 'queued');
  for (let i = 1; i <= 3; i++) await send(platform, 'alice@sender.test', [`user${i}@ok.test`], `ok ${i}`);
  await send(platform, 'alice@sender.test', ['permfail@ok.test'], 'bounced');
  const deferredIds: string[] = [];
  for (let i = 1; i <= 3; i++) deferredIds.push(await send(platform, 'alice@sender.test', [`tempfail${i}@defer.test`], `deferred ${i}`));
  await send(platform, 'alice@sender.test', ['someone@slow.test'], 'in flight');
  // The third deferred one is held once its first attempt is recorded (hold applies to queued and deferred recipients).
  heldId = deferredIds[2]!;
  await waitFor('the first attempts to defer', async () => ((await tern(platform, 'message', 'show', heldId)).includes('deferred') ? true : undefined), 30_000);
  await tern(platform, 'queue', 'hold', heldId, '--reason', 'observability test');
  // The 3 deliveries and the failure report to sender.test's MX.
  await mx.waitForMessages(4, 30_000);

  const depth = panelQuery('queue.json', 'Recipients by state');
  const want = { queued: 1, inflight: 1, deferred: 2, held: 1 };
  const got = await waitFor(
    'Prometheus to have scraped the known set',
    async () => {
      const s = byState(await prom.query(depth));
      return Object.entries(want).every(([k, v]) => s[k] === v) ? s : undefined;
    },
    60_000,
  ).catch(async (err: Error) => {
    throw new Error(`${err.message}; last: ${JSON.stringify(byState(await prom.query(depth)))}`);
  });
  assert.deepEqual(got, want);
  assert.equal(panelQuery('overview.json', 'Recipients by state'), depth, 'the overview shows the same query');

  const ages = byState(await prom.query(panelQuery('queue.json', 'Oldest recipient by state')));
  const elapsedS = (Date.now() - firstSentAt) / 1000;
  for (const state of ['queued', 'inflight', 'deferred', 'held']) {
    assert.ok(ages[state]! > 0 && ages[state]! <= elapsedS + 2, `oldest ${state}: ${ages[state]} s, sent within the last ${elapsedS.toFixed(1)} s`);
  }
  // Stats of the overview, same sample.
  const one = async (dashboard: string, title: string) => Number((await prom.query(panelQuery(dashboard, title)))[0]?.value[1]);
  assert.equal(await one('overview.json', 'Deferred recipients'), 2);
  assert.equal(await one('overview.json', 'Unfinished recipients'), 5);
  assert.equal(await one('overview.json', 'Accepting mail'), 1);
  assert.equal(await one('overview.json', 'Services down'), 0);
  const oldestDeferred = await one('overview.json', 'Oldest deferred');
  assert.ok(oldestDeferred > 0 && oldestDeferred <= elapsedS + 2, `oldest deferred ${oldestDeferred} s`);
});

test('the chart\'s rules load in Prometheus and every one evaluates without error', async () => {
  const want = groups.flatMap((g) => g.rules).length;
  // The queued recipient of the suspended destination is due work that does not move
  // (TernDeliveryStalled would page after its `for`): let it go first.
  await tern(platform, 'destination', 'resume', 'queued.test');
  const depth = panelQuery('queue.json', 'Recipients by state');
  await waitFor('Prometheus to see nothing queued', async () => (byState(await prom.query(depth)).queued === 0 ? true : undefined), 30_000);
  // Targets start one after another: judge the rules once every service has been scraped.
  await waitFor('every service to be scraped', async () => ((await prom.query(`up{namespace="${NAMESPACE}"} == 1`)).length === Object.keys(platform.services).length ? true : undefined), 30_000);
  const allUpAt = Date.now();
  const rules = await waitFor(
    'every rule to have been evaluated since',
    async () => {
      const d = await prom.get<{ groups: Array<{ name: string; rules: Array<{ name: string; health: string; lastError?: string; lastEvaluation: string }> }> }>('/api/v1/rules');
      const all = d.groups.flatMap((g) => g.rules);
      return all.length === want && all.every((r) => Date.parse(r.lastEvaluation) > allUpAt + 2000) ? all : undefined;
    },
    30_000,
  );
  for (const r of rules) assert.equal(r.health, 'ok', `${r.name}: ${r.lastError ?? ''}`);
  // The platform is healthy: nothing that pages is even pending.
  const alerts = await prom.get<{ alerts: Array<{ labels: Record<string, string>; state: string; activeAt: string }> }>('/api/v1/alerts');
  const targets = await prom.get<{ activeTargets: Array<{ labels: Record<string, string>; health: string; lastError: string; lastScrapeDuration: number }> }>('/api/v1/targets');
  assert.deepEqual(
    alerts.alerts.filter((a) => a.labels.severity === 'critical').map((a) => `${a.labels.alertname} ${a.labels.job ?? ''} ${a.state}`),
    [],
    `no critical alert for a healthy platform; targets: ${JSON.stringify(targets.activeTargets.map((t) => [t.labels.job, t.health, t.lastError, t.lastScrapeDuration]))}`,
  );
});

/** Traffic that makes the remaining series appear: a scheduler claim, an expiry and its report, an AUTH, a policy change. */
async function moreTraffic(): Promise<void> {
  await tern(platform, 'queue', 'release', heldId); // the scheduler claims it: dispatch lag
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    // Time passing, without waiting 5 days: the deferred recipients reach their lifetime now.
    await client.query(`UPDATE queue.recipients SET expires_at = now() WHERE state = $1 AND domain = 'defer.test'`, [RecipientState.RECIPIENT_STATE_DEFERRED]);
  } finally {
    await client.end();
  }
  const policy = new PolicyServiceClient(platform.policyAddr, grpc.credentials.createInsecure());
  try {
    await new Promise<void>((resolve, reject) =>
      policy.authenticate(AuthenticateRequest.fromPartial({ username: 'nobody@ok.test', password: 'wrong', session: { sessionId: 'obs', clientAddress: '127.0.0.1' } }), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    // A relay domain checked by callout: the first RCPT asks the MX through delivery, the second is a cache hit.
    await tern(platform, 'domain', 'add', 'verify.test', '--kind', 'relay', '--recipients', 'callout');
    for (let i = 0; i < 2; i++) {
      await new Promise<void>((resolve, reject) =>
        policy.check(
          CheckRequest.fromPartial({ stage: CheckStage.CHECK_STAGE_RCPT, sender: 'a@ok.test', recipient: 'someone@verify.test', session: { sessionId: 'obs', clientAddress: '127.0.0.9' } }),
          (err) => (err ? reject(err) : resolve()),
        ),
      );
    }
  } finally {
    policy.close();
  }
  await tern(platform, 'domain', 'add', 'obs.test', '--kind', 'relay');
}

async function scrapeAll(): Promise<Set<string>> {
  const names = new Set<string>();
  for (const svc of Object.values(platform.services)) {
    const res = await fetch(`http://${svc.metricsAddr}/metrics`);
    assert.equal(res.status, 200);
    for (const n of sampleNames(await res.text())) names.add(n);
  }
  return names;
}

test('every metric the dashboards and rules name exists in the services\' /metrics, and every dashboard query is valid PromQL to Prometheus', async () => {
  await moreTraffic();
  const named = new Map<string, string>(); // metric -> where
  for (const q of dashboardQueries()) for (const m of metricNames(q.expr)) named.set(m, `${q.dashboard} / ${q.panel}`);
  for (const g of groups) for (const r of g.rules) for (const m of metricNames(r.expr)) named.set(m, `rule ${r.alert ?? r.record}`);
  assert.ok(named.size > 50, `${named.size} metrics named`);
  // `up` is Prometheus' own, per target: one per service.
  named.delete('up');
  const ups = await prom.query(`up{namespace="${NAMESPACE}"} == 1`);
  assert.deepEqual(ups.map((u) => u.metric.job).sort(), Object.keys(platform.services).sort());

  const scraped = await waitFor(
    'every named metric to be exposed',
    async () => {
      const s = await scrapeAll();
      return [...named.keys()].every((m) => s.has(m)) ? s : undefined;
    },
    30_000,
  ).catch(async () => scrapeAll());
  const missing = [...named].filter(([m]) => !scraped.has(m)).map(([m, where]) => `${m} (${where})`);
  assert.deepEqual(missing, [], 'named but not exposed');

  for (const q of dashboardQueries()) {
    await assert.doesNotReject(prom.query(substituteGrafanaVariables(q.expr, { namespace: NAMESPACE })), `${q.dashboard} / ${q.panel}: ${q.expr}`);
  }
});

/** Metric names written in a document: tern_*, nodejs_*, process_* and target_info wherever they stand. */
function namesInDoc(file: string): Set<string> {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  return new Set([...text.matchAll(/\b(?:(?:tern|nodejs|process)_[a-z0-9_]*[a-z0-9]|target_info)\b/g)].map((m) => m[0]));
}

/** A name as written (a histogram by its base name) is exposed. */
const exposed = (scraped: Set<string>, name: string) => scraped.has(name) || scraped.has(`${name}_bucket`) || scraped.has(`${name}_count`);

test('every metric docs/metrics.md and docs/operating.md name exists in the scrapes, and docs/metrics.md lists every metric exposed', async () => {
  // Runs after the traffic of the test above, so counters with labels exist.
  const scraped = await scrapeAll();
  for (const doc of ['docs/metrics.md', 'docs/operating.md']) {
    const names = namesInDoc(doc);
    assert.ok(names.size > (doc === 'docs/metrics.md' ? 50 : 10), `${doc} names metrics (${names.size})`);
    assert.deepEqual([...names].filter((n) => !exposed(scraped, n)), [], `${doc}: named but not exposed by any service`);
  }
  const catalog = namesInDoc('docs/metrics.md');
  const undocumented = [...scraped].filter((n) => !catalog.has(n) && !catalog.has(n.replace(/_(bucket|sum|count)$/, '')));
  assert.deepEqual(undocumented, [], 'exposed but missing from docs/metrics.md');
});
