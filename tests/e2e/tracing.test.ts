// Issue 23, traces: the platform exports to a real OTLP/HTTP receiver on
// loopback (devkit's OtlpReceiver, which decodes what
// @opentelemetry/exporter-trace-otlp-http sends). One message delivered and
// one that bounces (its report delivered to the sender's MX) each make one
// trace, from the SMTP session to the report's delivery; background polls
// make none; and every log line written for a message, read from the
// services' stdout, carries its trace_id and queue_id. And `npm start`
// (scripts/stack.ts) passes OTEL_EXPORTER_OTLP_ENDPOINT to every service.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { Harness, nodeBinary, repoRoot, startPlatform, SERVICE_NAMES, STANDARD_PORTS, type CollectedSpan, type OtlpReceiver, type Platform, type SmtpSink } from '@tern/devkit';
import { send, ternRaw } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-tracing' });
let platform: Platform;
let recipientMx: SmtpSink; // MX of dest.test
let senderMx: SmtpSink; // MX of sender.test, where the report goes
let otlp: OtlpReceiver;

/** What the ingress polls the queue's status at (default 1 s): a few seconds of idle make a dozen polls. */
const STATUS_POLL_MS = 250;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  otlp = await harness.startOtlp();
  const port = await harness.freePort('127.0.0.90');
  recipientMx = await harness.startSink({ host: '127.0.0.90', port, hostname: 'mx.dest.test' });
  senderMx = await harness.startSink({ host: '127.0.0.91', port, hostname: 'mx.sender.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.90');
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.0.91');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    otlpEndpoint: otlp.endpoint,
    env: { ingress: { TERN_QUEUE_STATUS_CACHE_MS: String(STATUS_POLL_MS) } },
  });
});

after(() => harness.close());

const label = (s: CollectedSpan) => `${s.serviceName}:${s.name}`;
const roots = (spans: readonly CollectedSpan[]) => spans.filter((s) => !s.parentSpanId).map(label);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('an idle platform exports no root span: background polls (ingress\' queue Status, ...) are traced by nobody', async () => {
  // Idle: no SMTP client yet. Each Status poll used to be a root trace on the queue.
  await sleep(12 * STATUS_POLL_MS);
  // Spans end up at the receiver within the exporters' 500 ms batch delay.
  await sleep(1_000);
  assert.deepEqual(roots(otlp.spans), [], `root spans seen while idle: ${JSON.stringify(roots(otlp.spans))}`);
});

/** The trace of the message `queueId`: the one of ingress' transaction span naming it. */
function traceOf(queueId: string): Promise<string> {
  return otlp
    .waitForSpan((s) => s.serviceName === 'tern-ingress' && s.name === 'smtp.transaction' && s.attributes['tern.queue_id'] === queueId, 20_000)
    .then((s) => s.traceId);
}

/**
 * Waits until the trace holds every span in `want` (service:name, a
 * `=<queue id>` suffix asks for the span naming that message) and is one
 * tree under ingress' smtp.session; returns its spans.
 */
async function waitForTrace(traceId: string, want: string[]): Promise<CollectedSpan[]> {
  const has = (spans: CollectedSpan[], w: string) => {
    const [name, queueId] = w.split('=');
    return spans.some((s) => label(s) === name && (queueId === undefined || s.attributes['tern.queue_id'] === queueId));
  };
  try {
    return await otlp.waitFor(() => {
      const spans = otlp.spansFor(traceId);
      const ids = new Set(spans.map((s) => s.spanId));
      const complete = want.every((w) => has(spans, w));
      const tree = spans.every((s) => (s.parentSpanId ? ids.has(s.parentSpanId) : label(s) === 'tern-ingress:smtp.session'));
      return complete && tree ? spans : undefined;
    }, 30_000);
  } catch {
    const spans = otlp.spansFor(traceId);
    assert.fail(
      `trace ${traceId} lacks ${JSON.stringify(want.filter((w) => !has(spans, w)))} or is not one tree under smtp.session; it holds ${JSON.stringify(
        spans.map((s) => `${label(s)}${s.parentSpanId ? '' : ' (root)'}${s.attributes['tern.queue_id'] ? `=${String(s.attributes['tern.queue_id'])}` : ''}`),
      )}`,
    );
  }
}

/** Every span naming one of `queueIds` is in `traceId`. */
function assertAllIn(traceId: string, queueIds: string[]): void {
  const stray = otlp.spans.filter((s) => queueIds.includes(String(s.attributes['tern.queue_id'] ?? '')) && s.traceId !== traceId);
  assert.deepEqual(stray.map(label), [], `spans of ${queueIds.join(', ')} outside their message's trace ${traceId}`);
}

interface LogLine {
  service: string;
  msg: string;
  event?: string;
  queue_id?: string;
  trace_id?: string;
}

/** The services' log lines (their stdout, as the harness keeps it). */
function logLines(): LogLine[] {
  return SERVICE_NAMES.flatMap((name) =>
    platform.services[name]
      .log()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine),
  );
}

/**
 * The message's log lines: those naming one of `queueIds` and those of its
 * trace. Each carries both (a line written for the message joins its trace
 * and names it); `events` are among them.
 */
function assertLogs(traceId: string, queueIds: string[], events: string[]): void {
  const lines = logLines().filter((l) => queueIds.includes(l.queue_id ?? '') || l.trace_id === traceId);
  const bad = lines.filter((l) => l.trace_id !== traceId || !queueIds.includes(l.queue_id ?? ''));
  assert.deepEqual(
    bad.map((l) => `${l.service}: ${l.msg} (queue_id ${l.queue_id}, trace_id ${l.trace_id})`),
    [],
    `log lines of ${queueIds.join(', ')} without trace_id ${traceId} or the queue id`,
  );
  for (const e of events) assert.ok(lines.some((l) => `${l.service}:${l.event}` === e), `a ${e} line for ${queueIds.join(', ')}: ${JSON.stringify(lines.map((l) => `${l.service}:${l.event}`))}`);
}

let delivered: { queueId: string; traceId: string } | undefined;
let bounced: { queueId: string; reportId: string; traceId: string } | undefined;

test('a delivered message is one trace: SMTP session, policy checks, enqueue, dispatch, delivery attempt', async () => {
  const queueId = await send(platform, 'alice@sender.test', ['bob@dest.test'], 'traced delivery');
  await recipientMx.waitForMessages(1, 20_000);
  delivered = { queueId, traceId: await traceOf(queueId) };
  await waitForTrace(delivered.traceId, [
    'tern-ingress:smtp.session',
    `tern-ingress:smtp.transaction=${queueId}`,
    'tern-policy:tern.v1.PolicyService/Check',
    `tern-ingress:queue.enqueue=${queueId}`,
    `tern-queue:queue.dispatch=${queueId}`,
    `tern-delivery:delivery.attempt=${queueId}`,
  ]);
  assertAllIn(delivered.traceId, [queueId]);
});

test('the delivered message\'s log lines carry its trace_id and queue_id', () => {
  assert.ok(delivered, 'the message was sent');
  assertLogs(delivered.traceId, [delivered.queueId], ['ingress:smtp_queued', 'delivery:delivery_attempt']);
});

test('a bounced message is one trace through to its report\'s delivery, bounce\'s Suppress call included', async () => {
  const queueId = await send(platform, 'alice@sender.test', ['permfail-traced@dest.test'], 'traced bounce');
  const [report] = await senderMx.waitForMessages(1, 30_000);
  assert.equal(report!.mailFrom, '', 'the report reached the sender\'s MX');
  const traceId = await traceOf(queueId);
  // The report's queue id: bounce's Enqueue span names it.
  const enqueued = await otlp.waitForSpan((s) => s.serviceName === 'tern-bounce' && s.name === 'tern.v1.QueueService/Enqueue' && s.attributes['tern.queue_id'] !== undefined, 20_000);
  const reportId = String(enqueued.attributes['tern.queue_id']);
  bounced = { queueId, reportId, traceId };
  await waitForTrace(traceId, [
    'tern-ingress:smtp.session',
    `tern-ingress:smtp.transaction=${queueId}`,
    'tern-policy:tern.v1.PolicyService/Check',
    `tern-ingress:queue.enqueue=${queueId}`,
    `tern-queue:queue.dispatch=${queueId}`,
    `tern-delivery:delivery.attempt=${queueId}`,
    `tern-queue:queue.report=${queueId}`,
    `tern-bounce:bounce.report=${queueId}`,
    'tern-policy:tern.v1.PolicyService/Suppress',
    `tern-bounce:tern.v1.QueueService/ReadBody=${queueId}`,
    'tern-queue:tern.v1.QueueService/ReadBody',
    `tern-bounce:tern.v1.QueueService/Enqueue=${reportId}`,
    'tern-queue:tern.v1.QueueService/Enqueue',
    `tern-queue:queue.dispatch=${reportId}`,
    `tern-delivery:delivery.attempt=${reportId}`,
  ]);
  assertAllIn(traceId, [queueId, reportId]);
});

test('the bounced message\'s log lines (bounce\'s and policy\'s Suppress included) carry its trace_id and queue_id', () => {
  assert.ok(bounced, 'the message was sent');
  assertLogs(bounced.traceId, [bounced.queueId, bounced.reportId], [
    'ingress:smtp_queued',
    'delivery:delivery_attempt',
    'bounce:suppressions_fed',
    'policy:policy_change',
    'bounce:report_enqueued',
  ]);
});

test('over the whole run, stopped and flushed, the only root spans are the messages\' SMTP sessions', async () => {
  // Graceful stops flush every exporter; ingress first, so its polls end before the queue does.
  for (const name of ['ingress', 'admin', 'bounce', 'delivery', 'queue', 'policy'] as const) await platform.services[name].stop();
  const seen = roots(otlp.spans);
  assert.deepEqual(seen, ['tern-ingress:smtp.session', 'tern-ingress:smtp.session'], `root spans seen: ${JSON.stringify(seen)}`);
  assert.deepEqual(
    otlp.spans.filter((s) => !s.parentSpanId).map((s) => s.traceId).sort(),
    [delivered?.traceId, bounced?.traceId].sort(),
    'the roots are the two messages\' sessions',
  );
});

/** Whether something listens on 127.0.0.1:`port`. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

test('npm start (scripts/stack.ts) passes OTEL_EXPORTER_OTLP_ENDPOINT to every service: all six export spans', async (t) => {
  // npm start listens on the documented ports; a developer's own npm start would hold them.
  const ports = Object.values(STANDARD_PORTS).flatMap((p) => [p.grpc, p.metrics]);
  const busy = (await Promise.all(ports.map(async (p) => ((await listening(p)) ? p : 0)))).filter(Boolean);
  if (busy.length) return t.skip(`ports ${busy.join(', ')} are in use (a running npm start?)`);
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const receiver = await harness.startOtlp();
  const smtpPort = await harness.freePort();
  const root = repoRoot();
  const child = spawn(nodeBinary(), ['--import', 'tsx', 'scripts/stack.ts'], {
    cwd: root,
    env: {
      ...process.env,
      TERN_DATABASE_URL: db.url,
      TERN_NATS_URL: nats.url,
      TERN_DEMO_DNS_PORT: String(await harness.freePort()),
      TERN_DEMO_SINK_PORT: String(await harness.freePort()),
      TERN_DEMO_SMTP_PORT: String(smtpPort),
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  harness.defer(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
    await exited;
  }, 'stop npm start');
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  // Its demo message is delivered once it prints how to stop it.
  await Promise.race([
    new Promise<void>((resolve) => child.stdout.on('data', () => out.includes('Ctrl-C stops everything') && resolve())),
    exited.then(() => assert.fail(`npm start exited: ${out}`)),
  ]);

  // A bounce (bounce's spans) and an operator's call (admin's).
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port: smtpPort, secure: false, ignoreTLS: true, name: 'client.example' } as Parameters<typeof nodemailer.createTransport>[0]);
  const info = await transport.sendMail({ envelope: { from: 'you@sender.test', to: ['permfail@example.test'] }, raw: 'Subject: bounce me\r\n\r\nno such user\r\n' });
  transport.close();
  const queueId = /queued as (\S+)/.exec(info.response)?.[1] ?? '';
  const token = fs.readFileSync(path.join(root, '.tern', 'admin-token'), 'utf8').trim();
  const shown = await ternRaw({ adminAddr: `127.0.0.1:${STANDARD_PORTS.admin.grpc}`, adminToken: token }, ['message', 'show', queueId]);
  assert.equal(shown.code, 0, shown.stderr);

  const every = ['tern-ingress', 'tern-policy', 'tern-queue', 'tern-delivery', 'tern-bounce', 'tern-admin'];
  await receiver.waitFor(() => every.every((n) => receiver.spans.some((s) => s.serviceName === n)), 30_000);
  assert.match(out, new RegExp(`traces +${receiver.endpoint.replace(/[.]/g, '\\.')} \\(OTLP/HTTP\\)`), 'it says where traces go');
});
