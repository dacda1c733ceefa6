// Issue 3 conformance against the running processes: ingress, policy and
// queue started as they are deployed (separate processes, real Postgres and
// NATS), driven over TCP with raw bytes. What counts as stored is what the
// queue committed in Postgres, read back through the queue's ReadBody.
// (The engine's own tests in libs/smtp/test cover the same rules in-process,
// with hooks; this suite proves the deployed configuration keeps them.)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import * as grpc from '@grpc/grpc-js';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { QueueServiceClient, ReadBodyRequest } from '@tern/proto';
import { RawClient } from '../../libs/smtp/test/helpers';

const harness = new Harness({ name: 'conformance-running' });
let platform: Platform;
let db: pg.Pool;

const LIMITS = { recipients: 3, errors: 4, size: 20_000, perClient: 4 };

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: 25,
    only: ['policy', 'queue', 'ingress'],
    env: {
      ingress: {
        TERN_MAX_RECIPIENTS: String(LIMITS.recipients),
        TERN_MAX_ERRORS: String(LIMITS.errors),
        TERN_MAX_MESSAGE_SIZE: String(LIMITS.size),
        TERN_MAX_SESSIONS_PER_CLIENT: String(LIMITS.perClient),
      },
    },
  });
  db = new pg.Pool({ connectionString: database.url, max: 2 });
  harness.defer(() => db.end(), 'end pool');
});

after(() => harness.close());

async function storedCount(): Promise<number> {
  const r = await db.query<{ n: string }>('SELECT count(*) AS n FROM queue.messages');
  return Number(r.rows[0]!.n);
}

/** The body the queue committed, through the queue's own ReadBody. */
async function storedBody(queueId: string): Promise<Buffer> {
  const client = new QueueServiceClient(platform.queueAddr, grpc.credentials.createInsecure());
  try {
    const parts: Buffer[] = [];
    const stream = client.readBody(ReadBodyRequest.fromPartial({ queueId }), new grpc.Metadata(), { deadline: Date.now() + 10_000 });
    for await (const part of stream as AsyncIterable<{ chunk: Buffer }>) parts.push(Buffer.from(part.chunk));
    return Buffer.concat(parts);
  } finally {
    client.close();
  }
}

/** Drops the Received header ingress prepends (folded over several lines). */
function withoutReceived(body: Buffer): Buffer {
  const m = /^Received: (?:.*\r\n[ \t])*.*\r\n/.exec(body.toString('latin1'));
  assert.ok(m, 'the stored message starts with a Received header');
  return body.subarray(Buffer.byteLength(m[0], 'latin1'));
}

function queueIdOf(raw: string): string {
  const m = /^250 2\.0\.0 Ok: queued as (\S+)\r\n$/.exec(raw);
  assert.ok(m, `a queue id in "${raw.trim()}"`);
  return m[1]!;
}

async function session(localAddress?: string): Promise<RawClient> {
  const c = await RawClient.connect(platform.smtpPort, platform.smtpHost, localAddress);
  const greeting = await c.read();
  assert.equal(greeting.code, 220, greeting.raw);
  assert.equal((await c.cmd('EHLO conformance.test')).code, 250);
  return c;
}

async function envelope(c: RawClient, rcpts = ['someone@dest.test']): Promise<void> {
  assert.equal((await c.cmd('MAIL FROM:<sender@sender.test>')).code, 250);
  for (const r of rcpts) assert.equal((await c.cmd(`RCPT TO:<${r}>`)).code, 250);
}

const SMUGGLING: Array<[string, string]> = [
  ['\\n.\\n', '\n.\n'],
  ['\\n.\\r\\n', '\n.\r\n'],
  ['\\r\\n.\\n', '\r\n.\n'],
  ['\\r.\\r', '\r.\r'],
  ['\\r.\\r\\n', '\r.\r\n'],
  ['\\r\\n.\\r', '\r\n.\r'],
  ['NUL before the dot', '\r\n\x00.\r\n'],
  ['NUL after the dot', '\r\n.\x00\r\n'],
];

for (const [name, seq] of SMUGGLING) {
  test(`smuggling ${name}: 554 5.6.0 after the real end of data, nothing stored, session in sync`, async () => {
    const before = await storedCount();
    const c = await session();
    await envelope(c);
    assert.equal((await c.cmd('DATA')).code, 354);
    c.send(`Subject: first\r\n\r\nhello${seq}MAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n`);
    assert.match((await c.read()).raw, /^554 5\.6\.0 /);
    // Nothing of the smuggled text was taken as a command.
    assert.equal((await c.cmd('NOOP')).raw, '250 2.0.0 Ok\r\n');
    assert.equal(c.pending(), '');
    assert.equal((await c.cmd('QUIT')).code, 221);
    assert.equal(await storedCount(), before, 'nothing stored');
  });
}

test('BDAT in three chunks is stored octet for octet', async () => {
  const msg = Buffer.from('Subject: chunks\r\n\r\none\r\n.two\r\nthree\r\n');
  const c = await session();
  await envelope(c);
  c.send(Buffer.concat([Buffer.from('BDAT 10\r\n'), msg.subarray(0, 10), Buffer.from('BDAT 12\r\n'), msg.subarray(10, 22)]));
  assert.equal((await c.read()).raw, '250 2.0.0 Ok: 10 octets received\r\n');
  // Octets received so far in the transaction, as in RFC 3030's examples.
  assert.equal((await c.read()).raw, '250 2.0.0 Ok: 22 octets received\r\n');
  c.send(Buffer.concat([Buffer.from(`BDAT ${msg.length - 22} LAST\r\n`), msg.subarray(22)]));
  const id = queueIdOf((await c.read()).raw);
  c.close();
  assert.deepEqual(withoutReceived(await storedBody(id)), msg);
});

test('BDAT beyond the size limit: 552 5.3.4, nothing stored, the session stays in sync', async () => {
  const before = await storedCount();
  const c = await session();
  await envelope(c);
  const big = Buffer.alloc(LIMITS.size + 10, 'x');
  c.send(Buffer.concat([Buffer.from(`BDAT ${big.length} LAST\r\n`), big]));
  assert.match((await c.read()).raw, /^552 5\.3\.4 /);
  assert.equal((await c.cmd('NOOP')).code, 250);
  assert.equal((await c.cmd('QUIT')).code, 221);
  assert.equal(await storedCount(), before);
});

test('a pipelined batch with an error in the middle answers in order; the good recipients are stored', async () => {
  const c = await session();
  c.send('MAIL FROM:<a@sender.test>\r\nRCPT TO:<one@dest.test>\r\nRCPT TO:<bad address>\r\nRCPT TO:<two@dest.test>\r\nDATA\r\n');
  const codes: string[] = [];
  for (let i = 0; i < 5; i++) codes.push((await c.read()).raw.slice(0, 9));
  assert.deepEqual(codes, ['250 2.1.0', '250 2.1.5', '501 5.1.3', '250 2.1.5', '354 End d']);
  c.send('Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n');
  const id = queueIdOf((await c.read()).raw);
  assert.equal((await c.read()).code, 221);
  const r = await db.query<{ address: string }>('SELECT address FROM queue.recipients WHERE message_id = $1 ORDER BY address', [id]);
  assert.deepEqual(
    r.rows.map((x) => x.address),
    ['one@dest.test', 'two@dest.test'],
  );
});

test('every octet written separately: the transaction still works and the body is dot-unstuffed', async () => {
  const c = await RawClient.connect(platform.smtpPort, platform.smtpHost);
  assert.equal((await c.read()).code, 220);
  for (const line of ['EHLO slow.test', 'MAIL FROM:<a@sender.test>', 'RCPT TO:<b@dest.test>', 'DATA']) {
    await c.sendSlowly(`${line}\r\n`);
    assert.ok([250, 354].includes((await c.read()).code), line);
  }
  await c.sendSlowly('Subject: slow\r\n\r\na\r\n..b\r\n\r\n.\r\n');
  const id = queueIdOf((await c.read()).raw);
  c.close();
  assert.equal(withoutReceived(await storedBody(id)).toString(), 'Subject: slow\r\n\r\na\r\n.b\r\n\r\n');
});

test('overlong lines: a 513-octet command gets 500 5.5.2; a 1001-octet text line refuses the message (554 5.6.0)', async () => {
  const before = await storedCount();
  const c = await session();
  assert.equal((await c.cmd(`NOOP ${'x'.repeat(505)}`)).code, 250, '512 octets with CRLF is allowed');
  assert.equal((await c.cmd(`NOOP ${'x'.repeat(506)}`)).raw, '500 5.5.2 Error: line too long\r\n');
  await envelope(c);
  assert.equal((await c.cmd('DATA')).code, 354);
  c.send(`Subject: long\r\n\r\n${'a'.repeat(999)}\r\n.\r\n`);
  assert.match((await c.read()).raw, /^554 5\.6\.0 /);
  assert.equal((await c.cmd('QUIT')).code, 221);
  assert.equal(await storedCount(), before);
});

test('limits: recipients (452 4.5.3), message size (552 5.3.4), errors (421 4.7.0), sessions per client (421 4.7.0)', async () => {
  const before = await storedCount();
  const c = await session();
  assert.match((await c.cmd('EHLO again.test')).raw, new RegExp(`250[- ]SIZE ${LIMITS.size}\\r\\n`));
  assert.equal((await c.cmd('MAIL FROM:<a@sender.test>')).code, 250);
  for (let i = 0; i < LIMITS.recipients; i++) assert.equal((await c.cmd(`RCPT TO:<r${i}@dest.test>`)).code, 250);
  assert.match((await c.cmd('RCPT TO:<one-too-many@dest.test>')).raw, /^452 4\.5\.3 /);
  assert.equal((await c.cmd('DATA')).code, 354);
  c.send(`Subject: big\r\n\r\n${`${'y'.repeat(998)}\r\n`.repeat(Math.ceil(LIMITS.size / 1000) + 1)}.\r\n`);
  assert.match((await c.read()).raw, /^552 5\.3\.4 /);
  assert.equal(await storedCount(), before, 'nothing stored of the oversized message');
  // MAIL with a declared SIZE over the limit is refused up front.
  assert.match((await c.cmd(`MAIL FROM:<a@sender.test> SIZE=${LIMITS.size + 1}`)).raw, /^552 5\.3\.4 /);
  c.close();

  const e = await session();
  for (let i = 0; i < LIMITS.errors - 1; i++) assert.equal((await e.cmd('BOGUS')).code, 500);
  e.send('BOGUS\r\n');
  assert.equal((await e.read()).code, 500);
  assert.match((await e.read()).raw, /^421 4\.7\.0 .*too many errors/);
  await e.waitClosed();

  // A client address of its own, so sessions of other tests do not count.
  const open: RawClient[] = [];
  for (let i = 0; i < LIMITS.perClient; i++) open.push(await session('127.0.0.5'));
  // The gauge the chart's autoscaler can use counts them.
  const metrics = await (await fetch(`http://${platform.services.ingress.metricsAddr}/metrics`)).text();
  // Every ingress metric names the MX listener alike ("mx", as in tern_ingress_sessions_total).
  const active = /^tern_ingress_active_sessions\{[^}]*listener="mx"[^}]*\} (\d+)/m.exec(metrics);
  assert.ok(active, `tern_ingress_active_sessions{listener="mx"} is exported:\n${metrics.split('\n').filter((l) => l.includes('session')).join('\n')}`);
  assert.match(metrics, /^tern_ingress_sessions_total\{[^}]*listener="mx"[^}]*\} \d+/m, 'sessions_total names the same listener');
  assert.ok(Number(active[1]) >= LIMITS.perClient, `active sessions ${active[1]}`);
  const over = await RawClient.connect(platform.smtpPort, platform.smtpHost, '127.0.0.5');
  assert.match((await over.read()).raw, /^421 4\.7\.0 .*too many connections from 127\.0\.0\.5/);
  await over.waitClosed();
  for (const o of open) o.close();
});

test('sequence, syntax, parameters and obsolete commands carry the right enhanced codes', async () => {
  const c = await RawClient.connect(platform.smtpPort, platform.smtpHost);
  assert.equal((await c.read()).code, 220);
  // Pipelining is only for clients that said EHLO and saw PIPELINING.
  const early = await RawClient.connect(platform.smtpPort, platform.smtpHost);
  await early.read();
  early.send('HELO x.test\r\nMAIL FROM:<a@sender.test>\r\n');
  assert.match((await early.read()).raw, /^554 5\.5\.0 /);
  await early.waitClosed();

  assert.equal((await c.cmd('EHLO conformance.test')).code, 250);
  const cases: Array<[string, RegExp]> = [
    ['RCPT TO:<b@dest.test>', /^503 5\.5\.1 /],
    ['DATA', /^503 5\.5\.1 /],
    ['MAIL FROM:<a@sender.test> FROBNICATE=1', /^555 5\.5\.4 /],
    ['MAIL FROM:a@sender.test', /^501 5\.1\.7 /],
    ['TURN', /^502 5\.5\.1 /],
    ['SEND FROM:<a@sender.test>', /^502 5\.5\.1 /],
    ['SOML FROM:<a@sender.test>', /^502 5\.5\.1 /],
    ['SAML FROM:<a@sender.test>', /^502 5\.5\.1 /],
    ['VRFY postmaster', /^252 2\.\d\.\d /],
    ['HELP', /^214 2\.0\.0 /],
    ['NOOP', /^250 2\.0\.0 /],
  ];
  // A session per case: the error limit (LIMITS.errors) would end a shared one.
  for (const [line, want] of cases) {
    const one = await session();
    assert.match((await one.cmd(line)).raw, want, line);
    one.close();
  }
  assert.equal((await c.cmd('MAIL FROM:<>')).code, 250, 'the null sender');
  assert.equal((await c.cmd('RCPT TO:<postmaster>')).code, 250, 'postmaster without a domain');
  assert.equal((await c.cmd('RSET')).code, 250);
  assert.equal((await c.cmd('QUIT')).code, 221);
});
