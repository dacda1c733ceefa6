// The foundation path, end to end: six services as separate processes against
// real Postgres and NATS, a DNS server the test controls, and SMTP sinks on
// 127.0.0.x standing in for the recipients' and the sender's MX hosts.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { simpleParser } from 'mailparser';
import * as grpc from '@grpc/grpc-js';
import { Harness, startPlatform, repoRoot, type Platform, type SmtpSink, type OtlpReceiver, type DnsServer } from '@tern/devkit';
import { AdminServiceClient, GetMessageRequest, GetMessageResponse, RecipientState } from '@tern/proto';

const run = promisify(execFile);
const harness = new Harness({ name: 'e2e-path' });
let platform: Platform;
let recipientMx: SmtpSink; // MX of dest.test
let senderMx: SmtpSink; // MX of sender.test, where reports arrive
let otlp: OtlpReceiver;
let dns: DnsServer;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  otlp = await harness.startOtlp();
  const port = await harness.freePort('127.0.0.10');
  recipientMx = await harness.startSink({ host: '127.0.0.10', port, hostname: 'mx.dest.test' });
  senderMx = await harness.startSink({ host: '127.0.0.11', port, hostname: 'mx.sender.test' });
  dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.10');
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.0.11');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    otlpEndpoint: otlp.endpoint,
  });
});

after(() => harness.close());

function smtp(localAddress = '127.0.0.1') {
  return nodemailer.createTransport({
    host: platform.smtpHost,
    port: platform.smtpPort,
    secure: false,
    ignoreTLS: true,
    localAddress,
    name: 'client.example',
  } as Parameters<typeof nodemailer.createTransport>[0]);
}

function queueIdOf(response: string): string {
  const m = /^250 2\.0\.0 Ok: queued as (\S+)$/.exec(response.trim());
  assert.ok(m, `the 250 reply names the queue id: "${response}"`);
  return m[1]!;
}

function admin(): AdminServiceClient {
  return new AdminServiceClient(platform.adminAddr, grpc.credentials.createInsecure());
}

function getMessage(queueId: string, token = platform.adminToken): Promise<GetMessageResponse> {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  const client = admin();
  return new Promise<GetMessageResponse>((resolve, reject) =>
    client.getMessage(GetMessageRequest.fromPartial({ queueId }), md, (err, res) => (err ? reject(err) : resolve(res))),
  ).finally(() => client.close());
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

function tern(...args: string[]) {
  return run(path.join(repoRoot(), 'node_modules/.bin/node'), [path.join(repoRoot(), 'cli/bin/tern.js'), ...args], {
    env: { ...process.env, TERN_ADMIN_ADDR: platform.adminAddr, TERN_ADMIN_TOKEN: platform.adminToken },
  });
}

test('a message is delivered to the recipient domain MX, and the queue id in the 250 is the one the admin API and CLI know', async () => {
  const info = await smtp().sendMail({
    envelope: { from: 'alice@sender.test', to: ['bob@dest.test'] },
    raw: 'From: alice@sender.test\r\nTo: bob@dest.test\r\nSubject: hello\r\nMessage-ID: <e2e-1@sender.test>\r\n\r\nHello Bob.\r\n',
  });
  const queueId = queueIdOf(info.response);

  const [delivered] = await recipientMx.waitForMessages(1, 20_000);
  assert.deepEqual(delivered!.rcptTo, ['bob@dest.test']);
  assert.equal(delivered!.mailFrom, 'alice@sender.test');
  const raw = delivered!.raw.toString('utf8');
  assert.match(raw, /^Received: from client\.example /m, 'ingress added a Received header');
  assert.match(raw, /\r\n\r\nHello Bob\.\r\n$/);

  const res = await waitFor('the delivery to be recorded', async () => {
    const r = await getMessage(queueId);
    return r.message?.recipients[0]?.state === RecipientState.RECIPIENT_STATE_DELIVERED ? r : undefined;
  });
  const msg = res.message!;
  assert.equal(msg.queueId, queueId);
  assert.equal(msg.envelope?.sender, 'alice@sender.test');
  const rcpt = msg.recipients[0]!;
  assert.equal(rcpt.address, 'bob@dest.test');
  assert.ok(rcpt.attempts.length >= 1, 'the attempt is in the history');
  assert.equal(rcpt.attempts.at(-1)!.reply?.code, 250);
  assert.equal(rcpt.attempts.at(-1)!.remoteIp, '127.0.0.10');

  const { stdout } = await tern('message', 'show', queueId, '--json');
  const shown = JSON.parse(stdout);
  assert.equal(JSON.stringify(shown).includes(queueId), true, 'tern message show prints the message');
  assert.match(JSON.stringify(shown), /bob@dest\.test/);
});

test('a 550 from the recipient MX produces one RFC 3464 report, delivered to the sender domain MX from the null sender, in one trace', async () => {
  const info = await smtp().sendMail({
    envelope: { from: 'alice@sender.test', to: ['permfail-user@dest.test'] },
    raw: 'From: alice@sender.test\r\nTo: permfail-user@dest.test\r\nSubject: doomed\r\nMessage-ID: <e2e-2@sender.test>\r\n\r\nThis will bounce.\r\n',
  });
  const queueId = queueIdOf(info.response);

  const [report] = await senderMx.waitForMessages(1, 30_000);
  assert.equal(report!.mailFrom, '', 'reports are sent from the null sender');
  assert.deepEqual(report!.rcptTo, ['alice@sender.test']);
  const parsed = await simpleParser(report!.raw);
  assert.match(String(parsed.headers.get('content-type') && (parsed.headers.get('content-type') as { value: string }).value), /multipart\/report/);
  const raw = report!.raw.toString('utf8');
  assert.match(raw, /report-type="?delivery-status"?/i);
  assert.match(raw, /^Final-Recipient: rfc822; ?permfail-user@dest\.test/im);
  assert.match(raw, /^Action: failed/im);
  assert.match(raw, /^Status: 5\.1\.1/im);
  assert.match(raw, /^Diagnostic-Code: smtp; ?550/im);
  assert.match(raw, /^Remote-MTA: dns; ?/im);
  assert.match(raw, /Message-ID: <e2e-2@sender\.test>/i, 'the report carries the original (or its headers)');

  const res = await waitFor('the failure to be recorded', async () => {
    const r = await getMessage(queueId);
    return r.message?.recipients[0]?.state === RecipientState.RECIPIENT_STATE_FAILED ? r : undefined;
  });
  assert.equal(res.message!.recipients[0]!.lastReply?.code, 550);

  // One trace: the transaction span carries the queue id; every service has spans in its trace.
  const tx = await otlp.waitForSpan((s) => s.attributes['tern.queue_id'] === queueId && s.serviceName === 'tern-ingress', 20_000);
  const services = await otlp.waitFor(() => {
    const names = new Set(otlp.spansFor(tx.traceId).map((s) => s.serviceName));
    return ['tern-ingress', 'tern-policy', 'tern-queue', 'tern-delivery', 'tern-bounce'].every((n) => names.has(n)) ? names : undefined;
  }, 20_000);
  assert.ok(services.has('tern-bounce'));
});

test('after deliveries: results applied are labelled by state name, delivery\'s connection counts are counters', async () => {
  const queue = await (await fetch(`http://${platform.services.queue.metricsAddr}/metrics`)).text();
  assert.match(queue, /^tern_queue_results_applied_total\{[^}]*state="delivered"[^}]*\} [1-9]/m, queue.split('\n').filter((l) => l.includes('results_applied')).join('\n'));
  assert.doesNotMatch(queue, /^tern_queue_results_applied_total\{[^}]*state="\d+"/m, 'no state given as a number');
  const delivery = await (await fetch(`http://${platform.services.delivery.metricsAddr}/metrics`)).text();
  for (const name of ['tern_delivery_connections_opened_total', 'tern_delivery_connections_reused_total', 'tern_delivery_session_waits_total']) {
    assert.match(delivery, new RegExp(`^# TYPE ${name} counter$`, 'm'), `${name} is a counter`);
  }
  assert.match(delivery, /^tern_delivery_connections_opened_total(\{[^}]*\})? [1-9]/m, 'a connection was opened');
});

test('an untrusted client may not relay to a foreign domain (554 5.7.1)', async () => {
  await assert.rejects(
    smtp('127.0.0.2').sendMail({
      envelope: { from: 'mallory@evil.test', to: ['victim@dest.test'] },
      raw: 'Subject: relay?\r\n\r\nno\r\n',
    }),
    (err: { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 554);
      assert.match(err.response ?? '', /5\.7\.1/);
      return true;
    },
  );
});

test('the admin API refuses a call without a token (UNAUTHENTICATED)', async () => {
  await assert.rejects(getMessage('whatever', ''), (err: grpc.ServiceError) => err.code === grpc.status.UNAUTHENTICATED);
});

test('with the queue stopped, ingress answers end of data with 4xx, never 250', async () => {
  await platform.services.queue.stop();
  try {
    // Let ingress notice (its queue status is cached for about a second).
    await new Promise((r) => setTimeout(r, 1_500));
    await assert.rejects(
      smtp().sendMail({
        envelope: { from: 'alice@sender.test', to: ['bob@dest.test'] },
        raw: 'Subject: queue down\r\n\r\nplease keep your copy\r\n',
      }),
      (err: { responseCode?: number; response?: string }) => {
        assert.ok(err.responseCode !== undefined && err.responseCode >= 400 && err.responseCode < 500, `4xx, got ${err.response}`);
        return true;
      },
    );
  } finally {
    await platform.services.queue.restart();
  }
  // And the platform takes mail again once the queue is back.
  const info = await waitFor('ingress to accept again', async () => {
    try {
      return await smtp().sendMail({ envelope: { from: 'alice@sender.test', to: ['carol@dest.test'] }, raw: 'Subject: back\r\n\r\nok\r\n' });
    } catch {
      return undefined;
    }
  });
  queueIdOf(info.response);
  assert.ok(net.isIP(platform.smtpHost));
});
