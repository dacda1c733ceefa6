// Two delivery processes share the job stream (one durable consumer), and a
// SIGKILL of one in the middle of a job loses nothing: the whole platform as
// processes (startPlatform), a second delivery process beside the first,
// each with its own source address so that the sink can tell them apart.
//
// A second test sets an LMTP route at run time through the admin API and
// sees the next message for that domain go to the LMTP server.
//
// The recipients' MX holds the first transaction at end of data without an
// answer (the body is in, the 250 never comes): the process holding that
// job is then SIGKILLed. The job's lease (6 s here) brings its recipients
// back and the surviving process delivers them, once.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import nodemailer from 'nodemailer';
import * as grpc from '@grpc/grpc-js';
import { Harness, startPlatform, type DnsServer, type Platform, type ServiceHandle, type SmtpSink } from '@tern/devkit';
import { AdminServiceClient, PutRouteRequest, RouteKind, TlsPolicy } from '@tern/proto';

const harness = new Harness({ name: 'delivery-replicas' });
const SOURCE = { d1: '127.0.4.51', d2: '127.0.4.52' };
let platform: Platform;
let dns: DnsServer;
let sink: SmtpSink;
let d1: ServiceHandle;
let d2: ServiceHandle;
let holdFirst = true;
let held: { from: string; messageId: string } | undefined;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url);
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.4.50');
  sink = await harness.startSink({
    host: '127.0.4.50',
    port,
    hostname: 'mx.dest.test',
    behaviour: {
      data: (msg) => {
        if (!holdFirst) return undefined;
        holdFirst = false;
        held = { from: msg.remoteAddress, messageId: /^Message-ID: (\S+)/im.exec(msg.raw.toString())?.[1] ?? '' };
        return 'hang'; // body received, no reply ever: the job is mid-flight
      },
    },
  });
  dns = await harness.startDns({ host: '127.0.4.49' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.4.50');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      queue: {
        TERN_QUEUE_LEASE_S: '6',
        TERN_QUEUE_BACKOFF_MIN_S: '1',
        TERN_QUEUE_BACKOFF_MAX_S: '2',
        TERN_QUEUE_SCHEDULE_INTERVAL_MS: '250',
      },
      delivery: { TERN_SOURCE_ADDRESS: SOURCE.d1, TERN_SMTP_IDLE_MS: '200' },
    },
  });
  d1 = platform.services.delivery;
  d2 = await harness.startService('delivery', {
    ...d1.env,
    TERN_SOURCE_ADDRESS: SOURCE.d2,
    TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`,
    TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}`,
  });
});

after(() => harness.close());

async function send(n: number, domain = 'dest.test'): Promise<string> {
  const transport = nodemailer.createTransport({ host: platform.smtpHost, port: platform.smtpPort, secure: false, ignoreTLS: true, name: 'client.example' } as Parameters<typeof nodemailer.createTransport>[0]);
  try {
    const messageId = `<two-${n}@sender.test>`;
    const info = await transport.sendMail({
      envelope: { from: 'alice@sender.test', to: [`u${n}@${domain}`] },
      raw: `From: alice@sender.test\r\nTo: u${n}@${domain}\r\nSubject: two ${n}\r\nMessage-ID: ${messageId}\r\n\r\nMessage ${n}.\r\n`,
    });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
    return messageId;
  } finally {
    transport.close();
  }
}

test('two delivery processes share the jobs; SIGKILL of one mid-job loses nothing and delivers nothing twice', async () => {
  const ids: string[] = [];
  for (let i = 0; i < 20; i++) ids.push(await send(i));
  const h = await waitFor('a transaction held at end of data', () => held);
  const victim = h.from === SOURCE.d1 ? d1 : h.from === SOURCE.d2 ? d2 : undefined;
  assert.ok(victim, `the held transaction came from a delivery process (${h.from})`);
  const survivor = victim === d1 ? d2 : d1;
  // Once every other job is delivered and its result published (results wait
  // up to TERN_RESULT_BATCH_DELAY_MS, 10 ms, to travel together), the held
  // job is the only one in flight: body sent, no reply, lease still running.
  // (A job whose remote 250 came within that window before a SIGKILL is
  // delivered again, at least once; that is not what this test is about.)
  await waitFor('the other 19 delivered', () => sink.messages.length >= 19 || undefined);
  await sleep(300);
  await victim.kill();

  for (let i = 20; i < 30; i++) ids.push(await send(i));
  await waitFor('every message delivered', () => sink.messages.length >= ids.length || undefined, 60_000);
  await sleep(1_500); // a late duplicate would show here

  const byId = new Map<string, number>();
  for (const m of sink.messages) {
    const id = /^Message-ID: (\S+)/im.exec(m.raw.toString())?.[1] ?? '';
    byId.set(id, (byId.get(id) ?? 0) + 1);
  }
  for (const id of ids) assert.equal(byId.get(id), 1, `${id} delivered exactly once`);
  const heldCopy = sink.messages.find((m) => m.raw.toString().includes(`Message-ID: ${h.messageId}`))!;
  const survivorAddress = survivor === d1 ? SOURCE.d1 : SOURCE.d2;
  assert.equal(heldCopy.remoteAddress, survivorAddress, 'the killed process\'s job was delivered by the other one');
  const sources = new Set(sink.connections.map((c) => c.remoteAddress));
  assert.deepEqual([...sources].sort(), [SOURCE.d1, SOURCE.d2].sort(), 'both processes took jobs from the shared stream');
  assert.ok(survivor.running, 'the surviving process kept running');
});

test('an LMTP route set through the admin API at run time takes the next message for its domain', async () => {
  const lmtp = await harness.startSink({ host: '127.0.4.53', lmtp: true, hostname: 'mailstore.test' });
  const admin = new AdminServiceClient(platform.adminAddr, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${platform.adminToken}`);
  try {
    await new Promise<void>((resolve, reject) =>
      admin.putRoute(
        PutRouteRequest.fromPartial({ route: { domain: 'local.test', kind: RouteKind.ROUTE_KIND_LMTP, target: `${lmtp.host}:${lmtp.port}`, tls: TlsPolicy.TLS_POLICY_NONE }, operator: 'delivery-test' }),
        md,
        (err) => (err ? reject(err) : resolve()),
      ),
    );
  } finally {
    admin.close();
  }
  const id = await send(100, 'local.test');
  const [m] = await lmtp.waitForMessages(1, 30_000);
  assert.ok(m!.raw.toString().includes(`Message-ID: ${id}`));
  assert.deepEqual(m!.rcptTo, ['u100@local.test']);
  assert.equal(lmtp.connections[0]!.commands[0], 'LHLO');
});
