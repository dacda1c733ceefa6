// LMTP routes (RouteKind LMTP): LHLO, one reply per accepted recipient after
// the data (RFC 2033), over TCP ("host:port") and a unix socket
// ("unix:/path"), against the devkit sink in LMTP mode.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, test } from 'node:test';
import { forwardUnixSocket, Harness, type DnsServer, type SmtpSink, type UnixForward } from '@tern/devkit';
import { AttemptOutcome, DsnNotify, RouteKind, type DeliveryResult } from '@tern/proto';
import { deliver } from '../src/worker';
import { makeDeps, makeJob } from './helpers';

const harness = new Harness({ name: 'delivery-lmtp' });
const bodies = new Map<string, Buffer>();
let dns: DnsServer;
let lmtp: SmtpSink;
let fwd: UnixForward;

before(async () => {
  dns = await harness.startDns({ host: '127.0.4.1' });
  lmtp = await harness.startSink({ host: '127.0.4.70', lmtp: true, hostname: 'mailstore.test' });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-lmtp-'));
  harness.defer(() => fs.rmSync(dir, { recursive: true, force: true }), 'remove socket dir');
  fwd = await forwardUnixSocket(path.join(dir, 'lmtp.sock'), lmtp.host, lmtp.port);
  harness.defer(() => fwd.close(), 'close unix forward');
});
after(() => harness.close());
beforeEach(() => {
  lmtp.reset().setBehaviour({
    // Per recipient at end of data: a full mailbox (4xx) and a vanished one (5xx).
    data: (_msg, rcpt) => (rcpt?.startsWith('full') ? { code: 452, text: '4.2.2 mailbox full' } : rcpt?.startsWith('gone') ? { code: 550, text: '5.1.1 mailbox gone' } : undefined),
  });
});

const deps = () => makeDeps({ dns: dns.address, port: 1, bodies });
const summary = (r: DeliveryResult | undefined) => r!.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);
const { DELIVERED, DEFERRED, FAILED } = { DELIVERED: AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED, DEFERRED: AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED, FAILED: AttemptOutcome.ATTEMPT_OUTCOME_FAILED };

test('LMTP over TCP: LHLO, and each recipient gets its own reply after the data', async () => {
  const job = makeJob(bodies, ['ann@local.test', 'full-bob@local.test', 'permfail-cy@local.test', 'gone-dee@local.test', 'eve@local.test'], {
    route: { domain: 'local.test', kind: RouteKind.ROUTE_KIND_LMTP, target: `${lmtp.host}:${lmtp.port}` } as never,
  });
  const r = await deliver(deps(), job);
  assert.deepEqual(summary(r), ['250 2.0.0', '452 4.2.2', '550 5.1.1', '550 5.1.1', '250 2.0.0']);
  assert.deepEqual(r!.recipients.map((x) => x.outcome), [DELIVERED, DEFERRED, FAILED, FAILED, DELIVERED]);
  assert.equal(r!.destinationFailure, false);
  assert.equal(lmtp.connections[0]!.commands[0], 'LHLO');
  assert.deepEqual(lmtp.messages.map((m) => m.rcptTo[0]).sort(), ['ann@local.test', 'eve@local.test']);
  assert.equal(r!.remoteIp, lmtp.host);
});

test('LMTP is a final delivery: the result says so, and NOTIFY=SUCCESS is not passed on (the queue reports "delivered" itself)', async () => {
  const job = makeJob(bodies, ['ann@local.test', 'eve@local.test'], {
    route: { domain: 'local.test', kind: RouteKind.ROUTE_KIND_LMTP, target: `${lmtp.host}:${lmtp.port}` } as never,
  });
  job.recipients[0]!.notify = [DsnNotify.DSN_NOTIFY_SUCCESS, DsnNotify.DSN_NOTIFY_FAILURE];
  job.recipients[1]!.notify = [DsnNotify.DSN_NOTIFY_SUCCESS];
  const r = await deliver(deps(), job);
  assert.deepEqual(r!.recipients.map((x) => [x.outcome, x.remoteDsn, x.finalDelivery]), [[DELIVERED, true, true], [DELIVERED, true, true]]);
  const notify = lmtp.messages.flatMap((m) => m.rcptTo.map((to, i) => [to, m.rcptParams[i]?.NOTIFY]));
  assert.deepEqual(notify.sort(), [['ann@local.test', 'FAILURE'], ['eve@local.test', 'NEVER']]);
});

test('LMTP over a unix socket', async () => {
  const job = makeJob(bodies, ['ann@local.test', 'full-x@local.test'], {
    route: { domain: 'local.test', kind: RouteKind.ROUTE_KIND_LMTP, target: `unix:${fwd.path}` } as never,
  });
  const before = fwd.connections;
  const r = await deliver(deps(), job);
  assert.deepEqual(summary(r), ['250 2.0.0', '452 4.2.2']);
  assert.equal(fwd.connections, before + 1, 'the connection went through the socket');
  assert.equal(r!.remoteHost, `unix:${fwd.path}`);
  assert.equal(r!.tls?.used, false);
  assert.deepEqual(lmtp.messages.map((m) => m.rcptTo[0]), ['ann@local.test']);
});

test('LMTP session lost after some recipients answered: those keep their reply, the rest are deferred', async () => {
  lmtp.setBehaviour({ data: (_msg, rcpt) => (rcpt?.startsWith('second') ? { code: 421, text: '4.3.2 shutting down' } : undefined) });
  const job = makeJob(bodies, ['first@local.test', 'second@local.test', 'third@local.test'], {
    route: { domain: 'local.test', kind: RouteKind.ROUTE_KIND_LMTP, target: `${lmtp.host}:${lmtp.port}` } as never,
  });
  const r = await deliver(deps(), job);
  assert.deepEqual(summary(r), ['250 2.0.0', '421 4.3.2', '421 4.3.2']);
  assert.deepEqual(r!.recipients.map((x) => x.outcome), [DELIVERED, DEFERRED, DEFERRED]);
  assert.equal(r!.destinationFailure, true);
  assert.deepEqual(lmtp.messages.map((m) => m.rcptTo[0]), ['first@local.test'], 'delivered once, and it will not be sent again');
});

test('an LMTP route whose server is down defers (4.4.1) as a destination failure', async () => {
  const job = makeJob(bodies, ['ann@local.test'], { route: { domain: 'local.test', kind: RouteKind.ROUTE_KIND_LMTP, target: `unix:${fwd.path}.missing` } as never });
  const r = await deliver(deps(), job);
  assert.deepEqual(summary(r), ['451 4.4.1']);
  assert.equal(r!.destinationFailure, true);
});

test('a route with an unusable target defers with 4.3.5 (an operator error never bounces mail)', async () => {
  const job = makeJob(bodies, ['ann@local.test'], { route: { domain: 'local.test', kind: RouteKind.ROUTE_KIND_LMTP, target: 'host:99999' } as never });
  const r = await deliver(deps(), job);
  assert.deepEqual(summary(r), ['451 4.3.5']);
  assert.equal(r!.recipients[0]!.outcome, DEFERRED);
});
