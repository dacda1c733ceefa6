// SIGTERM with transfers in progress (issue 26 item 7): the real ingress,
// policy and queue as processes. Ingress stops accepting, idle sessions get
// 421 4.3.2 at once, each client in the middle of a body may finish it
// within TERN_SHUTDOWN_GRACE_MS and gets 250 with its message committed in
// Postgres; what it says after that gets 421 4.3.2.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import pg from 'pg';
import { Harness, startPlatform, type Platform, type TestDatabase } from '@tern/devkit';
import { RawClient } from '../../../libs/smtp/test/helpers';

const harness = new Harness({ name: 'ingress-shutdown' });
let platform: Platform;
let db: TestDatabase;
const CLIENTS = 10;
/** Ingress' grace; the clients finish their bodies half-way through it. */
const GRACE_MS = 4_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: 25,
    only: ['policy', 'queue', 'ingress'],
    env: { ingress: { TERN_SHUTDOWN_GRACE_MS: String(GRACE_MS) } },
  });
});

after(() => harness.close());

async function session(): Promise<RawClient> {
  const c = await RawClient.connect(platform.smtpPort, platform.smtpHost);
  assert.equal((await c.read()).code, 220);
  assert.equal((await c.cmd('EHLO client.example')).code, 250);
  return c;
}

/** Resolves once a new connection to `port` is refused: the listener is closed. */
async function refused(port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await new Promise<'refused' | 'accepted'>((resolve, reject) => {
      const sock = net.connect({ port, host: '127.0.0.1' });
      sock.once('connect', () => {
        sock.destroy();
        resolve('accepted');
      });
      sock.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' ? resolve('refused') : reject(err)));
    });
    if (r === 'refused') return;
    assert.ok(Date.now() < deadline, 'ingress still accepts connections 10 s after SIGTERM');
    await sleep(50);
  }
}

test('SIGTERM with 10 clients mid-body (DATA, streamed DATA, BDAT): each may finish within the grace, gets 250 and is stored; new connections refused; idle sessions and later commands get 421 4.3.2', async () => {
  const idle = await session();
  const clients: RawClient[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const c = await session();
    assert.equal((await c.cmd(`MAIL FROM:<sender${i}@example.org>`)).code, 250);
    assert.equal((await c.cmd(`RCPT TO:<rcpt${i}@example.net>`)).code, 250);
    if (i % 3 === 2) {
      const head = `Subject: shutdown ${i}\r\n\r\nfirst chunk ${i}\r\n`;
      c.send(`BDAT ${head.length}\r\n${head}`);
      assert.equal((await c.read()).code, 250);
    } else {
      assert.equal((await c.cmd('DATA')).code, 354);
      // Over TERN_ENQUEUE_BATCH_BODY_MAX: streamed to the queue as it comes.
      const big = i % 3 === 1 ? ('x'.repeat(998) + '\r\n').repeat(200) : '';
      c.send(`Subject: shutdown ${i}\r\n\r\nfirst half of body ${i}\r\n${big}`);
    }
    clients.push(c);
  }

  const signalled = Date.now();
  platform.services.ingress.signal('SIGTERM');
  await refused(platform.smtpPort);

  // An idle session is told at once.
  const bye = await idle.read();
  assert.match(bye.raw, /^421 4\.3\.2 /, bye.raw);
  await idle.waitClosed();

  // Clients that take a while: half the grace (ingress gave them 1 s of 4).
  await sleep(Math.max(0, signalled + GRACE_MS / 2 - Date.now()));
  for (const [i, c] of clients.entries()) {
    if (i % 3 === 2) {
      const tail = `last chunk ${i}\r\n`;
      c.send(`BDAT ${tail.length} LAST\r\n${tail}`);
    } else c.send(`second half of body ${i}\r\n.\r\n`);
  }
  const ids = await Promise.all(
    clients.map(async (c, i) => {
      const r = await c.read(GRACE_MS);
      const m = /^250 2\.0\.0 Ok: queued as (\S+)\r\n$/.exec(r.raw);
      assert.ok(m, `client ${i} at the end of its body: ${r.raw}`);
      const next = await c.cmd(`MAIL FROM:<again${i}@example.org>`);
      assert.match(next.raw, /^421 4\.3\.2 /, `client ${i} after its transaction: ${next.raw}`);
      await c.waitClosed();
      return m[1]!;
    }),
  );

  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    const rows = await client.query<{ id: string; sender: string }>('SELECT id, sender FROM queue.messages WHERE id = ANY($1)', [ids]);
    const stored = new Map(rows.rows.map((r) => [r.id, r.sender]));
    ids.forEach((id, i) => assert.equal(stored.get(id), `sender${i}@example.org`, `message ${id} of client ${i} in Postgres`));
  } finally {
    await client.end();
  }
  // With every session gone, ingress exits on its own, cleanly.
  const exit = await platform.services.ingress.stop();
  assert.equal(exit.code, 0);
});
