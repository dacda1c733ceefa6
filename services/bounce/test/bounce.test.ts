// bounce against a real nats-server (JetStream) and a fake QueueService:
// a ReportRequest published on tern.reports becomes one report enqueued with
// the null sender; null-sender originals and reports about reports produce
// nothing; failures are retried and the request is acked only after commit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { simpleParser } from 'mailparser';
import { context, trace } from '@opentelemetry/api';
import { Bus, SUBJECTS } from '@tern/bus';
import { DsnNotify, DsnRet, MessageOrigin, ReportKind, ReportRequest } from '@tern/proto';
import { createTelemetry } from '@tern/telemetry';
import { ConfigError } from '@tern/config';
import { createApp, retryDelay, type App } from '../src/app';
import { loadConfig } from '../src/config';
import { FakeQueue, NatsServer, sleep, waitFor } from './fakes';

const telemetry = createTelemetry({ service: 'bounce-test', logLevel: 'silent' });
const nats = new NatsServer();
let bus: Bus;

before(async () => {
  await nats.start();
  bus = await Bus.connect({ url: nats.url, name: 'bounce-test-publisher', logger: pino({ level: 'silent' }) });
  await bus.ensureTopology(['bounce']);
});

after(async () => {
  await bus.close();
  await nats.stop();
  await telemetry.shutdown();
});

const ORIGINAL = Buffer.from(
  [
    'Received: from client.example (client.example [192.0.2.10]) by mx.tern.test (Tern) with ESMTP id Q0001',
    'From: Alice <alice@example.org>',
    'To: bob@example.net',
    'Subject: Lunch?',
    'Message-ID: <lunch-1@example.org>',
    'Date: Mon, 02 Mar 2026 07:59:58 +0000',
    '',
    'Are you free at noon?',
    '',
  ].join('\r\n'),
);

function request(over: Partial<ReportRequest> = {}): ReportRequest {
  return ReportRequest.fromPartial({
    eventId: `evt-${Math.random().toString(36).slice(2)}`,
    queueId: 'Q0001',
    kind: ReportKind.REPORT_KIND_FAILED,
    size: ORIGINAL.length,
    envelope: { sender: 'alice@example.org', arrivalTime: new Date('2026-03-02T08:00:00Z'), ret: DsnRet.DSN_RET_FULL, envid: 'alice-42' },
    recipients: [
      {
        address: 'bob@example.net',
        orcpt: 'rfc822;bob@example.net',
        action: 'failed',
        status: '5.1.1',
        remoteMta: 'mx.example.net',
        diagnostic: { code: 550, enhanced: '5.1.1', text: 'User unknown' },
        lastAttemptAt: new Date('2026-03-02T08:00:05Z'),
      },
    ],
    ...over,
  });
}

interface Harness {
  app: App;
  queue: FakeQueue;
  logs: Array<Record<string, unknown>>;
  stop(): Promise<void>;
}

async function startBounce(env: Record<string, string> = {}): Promise<Harness> {
  const queue = await new FakeQueue().start();
  queue.messages.set('Q0001', ORIGINAL);
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const config = loadConfig({
    TERN_GRPC_LISTEN: '127.0.0.1:0',
    TERN_METRICS_LISTEN: '127.0.0.1:0',
    TERN_NATS_URL: nats.url,
    TERN_QUEUE_ADDR: queue.address,
    TERN_HOSTNAME: 'bounce-0',
    TERN_REPORTING_MTA: 'mx.tern.test',
    TERN_BOUNCE_RETRY_MIN_MS: '100',
    TERN_BOUNCE_RETRY_MAX_MS: '400',
    ...env,
  });
  const app = createApp(config, { telemetry: { ...telemetry, logger: pino({ level: 'info' }, sink) } });
  await app.start();
  return {
    app,
    queue,
    logs,
    async stop() {
      await app.stop();
      await queue.stop();
    },
  };
}

async function publish(req: ReportRequest, msgId = req.eventId, ctx = context.active()): Promise<void> {
  await bus.publish(SUBJECTS.reports, ReportRequest.encode(req).finish(), { msgId, ctx });
}

/** Nothing left for the consumer: every request was acked (or terminated). */
async function drained(): Promise<boolean> {
  const info = await bus.jsm.consumers.info('TERN_REPORTS', 'bounce');
  return info.num_pending === 0 && info.num_ack_pending === 0;
}

async function metricsText(app: App): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${app.ports.metrics}/metrics`);
  return res.text();
}

test('a failed-delivery request becomes one report from the null sender to the original sender, in the same trace', async () => {
  const h = await startBounce();
  try {
    assert.equal(h.app.ready(), true);
    const ready = await fetch(`http://127.0.0.1:${h.app.ports.metrics}/readyz`);
    assert.equal(ready.status, 200);
    const span = telemetry.tracer.startSpan('queue.settle');
    const req = request();
    await publish(req, req.eventId, trace.setSpan(context.active(), span));
    span.end();
    await waitFor('a stored report', () => h.queue.stored.length === 1);
    await waitFor('the request acked', drained);

    assert.deepEqual(h.queue.readBodyCalls.map((c) => ({ queueId: c.queueId, headersOnly: c.headersOnly })), [{ queueId: 'Q0001', headersOnly: false }]);
    assert.equal(h.queue.enqueueCalls.length, 1);
    const call = h.queue.enqueueCalls[0]!;
    const header = call.header!;
    assert.equal(header.envelope?.sender, '', 'the null sender');
    assert.deepEqual(header.recipients, [{ address: 'alice@example.org', orcpt: '', notify: [DsnNotify.DSN_NOTIFY_NEVER] }]);
    assert.equal(header.origin, MessageOrigin.MESSAGE_ORIGIN_REPORT);
    assert.equal(header.idempotencyKey, req.eventId);
    assert.equal(call.committed, call.body.length, 'ends with the commit marker carrying the size');
    assert.equal(call.traceparent?.split('-')[1], span.spanContext().traceId, 'Enqueue continues the trace from the NATS headers');

    const mail = await simpleParser(h.queue.stored[0]!.body);
    assert.equal(mail.subject, 'Undelivered Mail Returned to Sender');
    assert.equal(mail.from?.value[0]?.address, 'MAILER-DAEMON@mx.tern.test');
    assert.equal(mail.inReplyTo, '<lunch-1@example.org>');
    assert.equal(mail.headers.get('auto-submitted'), 'auto-replied');
    const ct = mail.headers.get('content-type') as { value: string; params: Record<string, string> };
    assert.equal(ct.value, 'multipart/report');
    assert.equal(ct.params['report-type'], 'delivery-status');
    assert.match(mail.text ?? '', /Reporting-MTA: dns; mx\.tern\.test/);
    assert.match(mail.text ?? '', /Original-Envelope-Id: alice-42/);
    assert.match(mail.text ?? '', /Final-Recipient: rfc822; bob@example\.net/);
    assert.match(mail.text ?? '', /Diagnostic-Code: smtp; 550 5\.1\.1 User unknown/);
    const returned = mail.attachments.find((a) => a.contentType === 'message/rfc822');
    assert.equal(returned?.content.toString(), ORIGINAL.toString(), 'RET=FULL: the whole original');
    assert.match(mail.messageId ?? '', /^<dsn\.[0-9a-f]{32}@mx\.tern\.test>$/);

    const done = h.logs.find((l) => l.event === 'report_enqueued');
    assert.equal(done?.queue_id, 'Q0001');
    assert.equal(done?.report_queue_id, h.queue.stored[0]!.queueId);
    assert.match(await metricsText(h.app), /tern_bounce_reports_total\{[^}]*result="enqueued"[^}]*\} 1/);
  } finally {
    await h.stop();
  }
});

test('a redelivered request enqueues again with the same idempotency key; the queue keeps one report', async () => {
  const h = await startBounce();
  try {
    const req = request();
    // Two publications of one event (as after a crash between Enqueue and ack): distinct
    // Nats-Msg-Ids so JetStream does not drop the second, the same event id inside.
    await publish(req, `${req.eventId}-a`);
    await publish(req, `${req.eventId}-b`);
    await waitFor('two Enqueue calls', () => h.queue.enqueueCalls.length === 2);
    await waitFor('both acked', drained);
    assert.deepEqual(h.queue.enqueueCalls.map((c) => c.header?.idempotencyKey), [req.eventId, req.eventId]);
    assert.equal(h.queue.stored.length, 1);
    assert.equal(h.queue.enqueueCalls[0]!.answer, h.queue.enqueueCalls[1]!.answer, 'same queue id both times');
  } finally {
    await h.stop();
  }
});

test('no report when the original sender is null, or when the original is itself a delivery report', async () => {
  const h = await startBounce();
  try {
    const nullSender = request({ envelope: { ...request().envelope!, sender: '' } });
    await publish(nullSender);
    await waitFor('the null-sender request dropped', () => h.logs.some((l) => l.event === 'report_dropped' && l.event_id === nullSender.eventId));
    await waitFor('acked', drained);
    assert.equal(h.queue.readBodyCalls.length, 0, 'not even the original is read');

    // A report that reached us with a real sender (a misbehaving relay rewrote it).
    const report = Buffer.from(
      'From: MAILER-DAEMON@elsewhere.example\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n',
    );
    h.queue.messages.set('Q0002', report);
    const aboutReport = request({ queueId: 'Q0002', size: report.length });
    await publish(aboutReport);
    await waitFor('the report-about-a-report dropped', () => h.logs.some((l) => l.event === 'report_dropped' && l.event_id === aboutReport.eventId));
    await waitFor('acked', drained);
    assert.equal(h.queue.enqueueCalls.length, 0, 'nothing enqueued');
    const drops = h.logs.filter((l) => l.event === 'report_dropped').map((l) => l.reason);
    assert.deepEqual(drops, ['null-sender', 'original-is-report']);
    const metrics = await metricsText(h.app);
    assert.match(metrics, /tern_bounce_reports_total\{[^}]*reason="null-sender"[^}]*\} \d/);
    assert.match(metrics, /tern_bounce_reports_total\{[^}]*reason="original-is-report"[^}]*\} \d/);
  } finally {
    await h.stop();
  }
});

test('a queue failure is retried with a delay and the request stays unacked until the report is committed', async () => {
  const h = await startBounce();
  try {
    h.queue.failEnqueue = 2;
    const req = request();
    await publish(req);
    await waitFor('a stored report after retries', () => h.queue.stored.length === 1);
    assert.equal(h.queue.enqueueCalls.length, 3);
    assert.deepEqual(h.queue.enqueueCalls.map((c) => typeof c.answer), ['number', 'number', 'string']);
    const retries = h.logs.filter((l) => l.event === 'report_retry');
    assert.deepEqual(retries.map((l) => l.attempt), [1, 2]);
    assert.deepEqual(retries.map((l) => l.retry_in_ms), [100, 200]);
    await waitFor('acked', drained);
    await sleep(600);
    assert.equal(h.queue.enqueueCalls.length, 3, 'no further delivery once acked');
  } finally {
    await h.stop();
  }
});

test('a request the queue refuses as invalid is retried a bounded number of times, then terminated with an error log', async () => {
  const h = await startBounce({ TERN_BOUNCE_MAX_ATTEMPTS: '2' });
  try {
    h.queue.refuseEnqueue = true;
    const req = request();
    await publish(req);
    await waitFor('abandoned', () => h.logs.some((l) => l.event === 'report_abandoned'));
    await waitFor('terminated', drained);
    assert.equal(h.queue.enqueueCalls.length, 2);
    const log = h.logs.find((l) => l.event === 'report_abandoned')!;
    assert.equal(log.level, 50, 'logged at error level');
    assert.deepEqual(log.recipients, ['bob@example.net']);
    assert.equal(log.sender, 'alice@example.org');
  } finally {
    await h.stop();
  }
});

test('RET=HDRS reads only the headers; the postmaster copy is an extra envelope recipient; a vanished original still gets a report', async () => {
  const h = await startBounce({ TERN_POSTMASTER_COPY: 'postmaster@tern.test' });
  try {
    const hdrs = request({ envelope: { ...request().envelope!, ret: DsnRet.DSN_RET_HDRS } });
    await publish(hdrs);
    await waitFor('report', () => h.queue.stored.length === 1);
    assert.equal(h.queue.readBodyCalls[0]!.headersOnly, true);
    const stored = h.queue.stored[0]!;
    assert.deepEqual(stored.header.recipients.map((r) => r.address), ['alice@example.org', 'postmaster@tern.test']);
    const mail = await simpleParser(stored.body);
    assert.equal(mail.headers.get('to') && (mail.headers.get('to') as { text: string }).text, 'alice@example.org', 'Bcc: the copy is not in the header');
    assert.equal(mail.attachments.find((a) => a.contentType === 'text/rfc822-headers')?.content.toString(), ORIGINAL.toString().split('\r\n\r\n')[0] + '\r\n');

    // Delay warnings are not copied by default (TERN_POSTMASTER_COPY_ACTIONS=failed).
    const delayed = request({
      kind: ReportKind.REPORT_KIND_DELAYED,
      recipients: [{ ...request().recipients[0]!, action: 'delayed', status: '4.2.2', willRetryUntil: new Date('2026-03-07T08:00:00Z') }],
    });
    await publish(delayed);
    await waitFor('delay report', () => h.queue.stored.length === 2);
    assert.deepEqual(h.queue.stored[1]!.header.recipients.map((r) => r.address), ['alice@example.org']);
    assert.equal((await simpleParser(h.queue.stored[1]!.body)).subject, 'Delayed Mail (still being retried)');

    const gone = request({ queueId: 'Q-GONE' });
    await publish(gone);
    await waitFor('report without original', () => h.queue.stored.length === 3);
    const goneMail = await simpleParser(h.queue.stored[2]!.body);
    assert.match(goneMail.text ?? '', /no longer available/);
    await waitFor('acked', drained);
  } finally {
    await h.stop();
  }
});

test('configuration: defaults, and bad values are named', () => {
  const base = { TERN_NATS_URL: 'nats://127.0.0.1:4222', TERN_QUEUE_ADDR: '127.0.0.1:7003', TERN_HOSTNAME: 'bounce-7' };
  const c = loadConfig(base);
  assert.equal(c.reportingMta, 'bounce-7', 'TERN_REPORTING_MTA defaults to TERN_HOSTNAME');
  assert.deepEqual(c.TERN_GRPC_LISTEN, { host: '0.0.0.0', port: 7005 });
  assert.deepEqual(c.TERN_METRICS_LISTEN, { host: '0.0.0.0', port: 9105 });
  assert.equal(c.TERN_POSTMASTER_COPY, undefined);
  assert.deepEqual([...c.postmasterCopyActions], ['failed']);
  const bad = (env: Record<string, string>, variable: string) =>
    assert.throws(() => loadConfig({ ...base, ...env }), (e: unknown) => e instanceof ConfigError && e.problems.some((p) => p.variable === variable));
  bad({ TERN_NATS_URL: 'http://x' }, 'TERN_NATS_URL');
  bad({ TERN_POSTMASTER_COPY: 'not an address' }, 'TERN_POSTMASTER_COPY');
  bad({ TERN_POSTMASTER_COPY_ACTIONS: 'failed,bogus' }, 'TERN_POSTMASTER_COPY_ACTIONS');
  bad({ TERN_REPORTING_MTA: 'bad name;' }, 'TERN_REPORTING_MTA');
  bad({ TERN_BOUNCE_RETRY_MIN_MS: '5000', TERN_BOUNCE_RETRY_MAX_MS: '10' }, 'TERN_BOUNCE_RETRY_MIN_MS');
  assert.deepEqual([1, 2, 3, 4, 10].map((n) => retryDelay(n, 100, 500)), [100, 200, 400, 500, 500]);
});

test('the process: starts from the environment, reports, and exits cleanly on SIGTERM', async () => {
  const queue = await new FakeQueue().start();
  queue.messages.set('Q0001', ORIGINAL);
  const root = path.resolve(__dirname, '../../..');
  const child = spawn(path.join(root, 'node_modules/.bin/node'), ['--import', 'tsx', path.join(root, 'services/bounce/src/main.ts')], {
    cwd: root,
    env: {
      PATH: process.env.PATH ?? '',
      TERN_NATS_URL: nats.url,
      TERN_QUEUE_ADDR: queue.address,
      TERN_GRPC_LISTEN: '127.0.0.1:0',
      TERN_METRICS_LISTEN: '127.0.0.1:0',
      TERN_HOSTNAME: 'bounce-proc',
      TERN_LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    await waitFor('bounce serving', () => out.includes('bounce serving'), 20_000);
    const req = request();
    await publish(req);
    await waitFor('a stored report', () => queue.stored.length === 1);
    assert.match((await simpleParser(queue.stored[0]!.body)).text ?? '', /Reporting-MTA: dns; bounce-proc/, 'TERN_REPORTING_MTA defaults to TERN_HOSTNAME');
    await waitFor('acked', drained);
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.match(out, /bounce stopped/);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await queue.stop();
  }
});
