// A message that ingress stores as two (SRS on: a local recipient and one
// an alias forwards to a remote domain, so two envelope senders) whose
// second part fails after the first was committed: the client gets 451 and
// sends the same message again. The part already stored must not be stored
// (and delivered) a second time. The failure is a real storage failure of
// one part: Postgres refuses the insert of the SRS part's message row (a
// trigger this test adds to the queue's table, and drops for the resend),
// and the queue commits each message on its own (TERN_QUEUE_COMMIT_BATCH=1),
// so the local part is committed while the SRS part fails. Both ways a
// message goes to the queue are covered: a small one (held whole, parts in
// one EnqueueBatch request) and a big one (one Enqueue stream per part).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { Harness, startPlatform, type Platform, type SinkMessage, type SmtpSink } from '@tern/devkit';
import { RawSmtp, tern, waitFor, type SmtpReply } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-split-resend' });
let platform: Platform;
let db: pg.Pool;
/** The mailbox server of example.test. */
let lmtp: SmtpSink;
/** The MX of remote.test, where the alias forwards to. */
let remoteMx: SmtpSink;
const UNTRUSTED = '127.0.0.2';

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  db = new pg.Pool({ connectionString: database.url, max: 2 });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.6.31');
  remoteMx = await harness.startSink({ host: '127.0.6.31', port, hostname: 'mx.remote.test' });
  lmtp = await harness.startSink({ host: '127.0.6.30', lmtp: true, hostname: 'mailstore.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('remote.test', 'mx.remote.test').a('mx.remote.test', '127.0.6.31');
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      policy: { TERN_SRS_DOMAIN: 'forward.test', TERN_SRS_SECRETS: 'e2e-srs-secret-0123456789' },
      // One message per group commit: a failure of one part's commit is its own.
      queue: { TERN_QUEUE_COMMIT_BATCH: '1' },
    },
  });
  await tern(platform, 'domain', 'add', 'example.test', '--kind', 'local');
  await tern(platform, 'route', 'set', 'example.test', '--kind', 'lmtp', '--target', `${lmtp.host}:${lmtp.port}`, '--tls-policy', 'none');
  for (const m of ['alice@example.test', 'bob@example.test']) await tern(platform, 'mailbox', 'add', m);
  await tern(platform, 'alias', 'add', 'fwd1@example.test', 'carol@remote.test');
  await tern(platform, 'alias', 'add', 'fwd2@example.test', 'dan@remote.test');
});

after(async () => {
  await db?.end();
  await harness.close();
});

/** Postgres refuses (or again takes) the message rows of SRS senders: a storage failure of the forwarded part only. */
async function refuseSrsParts(on: boolean): Promise<void> {
  if (on) {
    await db.query(`CREATE OR REPLACE FUNCTION public.e2e_refuse_srs() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'e2e: storage of % refused', NEW.sender; END $$`);
    await db.query(`CREATE TRIGGER e2e_refuse_srs BEFORE INSERT ON queue.messages FOR EACH ROW
      WHEN (NEW.sender LIKE 'SRS0=%') EXECUTE FUNCTION public.e2e_refuse_srs()`);
  } else {
    await db.query('DROP TRIGGER IF EXISTS e2e_refuse_srs ON queue.messages');
  }
}

/** One SMTP transaction from an internet client: the reply to its end of data. */
async function sendMessage(from: string, rcpts: string[], message: string): Promise<SmtpReply> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, UNTRUSTED);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    assert.equal((await client.command(`MAIL FROM:<${from}>`)).code, 250);
    for (const r of rcpts) {
      const reply = await client.command(`RCPT TO:<${r}>`);
      assert.equal(reply.code, 250, `RCPT TO:<${r}>: ${reply.lines.join(' | ')}`);
    }
    assert.equal((await client.command('DATA')).code, 354);
    return await client.command(`${message}\r\n.`, 30_000);
  } finally {
    client.close();
  }
}

/** The queue ids of the messages stored for `address`. */
async function storedFor(address: string): Promise<string[]> {
  const { rows } = await db.query<{ message_id: string }>('SELECT DISTINCT message_id FROM queue.recipients WHERE address = $1 ORDER BY 1', [address]);
  return rows.map((r) => r.message_id);
}

/** The transactions `sink` received of the message with this subject, once `n` recipients are in (and a moment more: a duplicate would show). */
async function received(sink: SmtpSink, subject: string, n: number): Promise<SinkMessage[]> {
  const of = () => sink.messages.filter((m) => m.raw.toString('utf8').includes(`\r\nSubject: ${subject}\r\n`));
  await waitFor(`${n} recipient(s) of "${subject}" at ${sink.host}`, async () => (of().flatMap((m) => m.rcptTo).length >= n ? true : undefined), 30_000, 100);
  await new Promise((r) => setTimeout(r, 500));
  return of();
}

const queuedIds = (r: SmtpReply) => /queued as ([A-Za-z0-9 ]+)$/.exec(r.text)?.[1]?.split(' ') ?? [];

const cases = [
  { name: 'small, parts in one EnqueueBatch', local: 'alice@example.test', alias: 'fwd1@example.test', remote: 'carol@remote.test', bodyLines: 3 },
  // Past TERN_ENQUEUE_BATCH_BODY_MAX (128 KiB): each part its own Enqueue stream.
  { name: 'big, one Enqueue stream per part', local: 'bob@example.test', alias: 'fwd2@example.test', remote: 'dan@remote.test', bodyLines: 3000 },
];

for (const c of cases) {
  test(`a split message sent again after one part failed is stored once: every recipient gets one copy (${c.name})`, async () => {
    const subject = `split resend ${c.local}`;
    const line = 'All work and no play makes Jack a dull boy. '.repeat(2).trimEnd();
    const message =
      `From: <someone@sender.test>\r\nTo: <${c.local}>, <${c.alias}>\r\nSubject: ${subject}\r\n` +
      `Message-ID: <split-resend.${c.local}@sender.test>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n` +
      Array.from({ length: c.bodyLines }, () => line).join('\r\n');
    await refuseSrsParts(true);
    let first: SmtpReply;
    try {
      first = await sendMessage('someone@sender.test', [c.local, c.alias], message);
    } finally {
      await refuseSrsParts(false);
    }
    assert.equal(`${first.code} ${first.enhanced}`, '451 4.3.0', `one part refused: the client keeps its copy (${first.text})`);
    // The local part was committed (its commit and the failed one ran side by side).
    const [storedFirst, ...more] = await waitFor(`the local part stored for ${c.local}`, async () => {
      const ids = await storedFor(c.local);
      return ids.length ? ids : undefined;
    });
    assert.deepEqual(more, []);

    // The client sends the same message again: both parts stored now, the local one not a second time.
    const again = await sendMessage('someone@sender.test', [c.local, c.alias], message);
    assert.equal(again.code, 250, again.text);
    const ids = queuedIds(again);
    assert.equal(ids.length, 2, `a queue id per part: ${again.text}`);
    assert.equal(ids[0], storedFirst, 'the local part is the one stored at the first try');
    assert.deepEqual(await storedFor(c.local), [storedFirst], `one message stored for ${c.local}`);
    assert.deepEqual(await storedFor(c.remote), [ids[1]], `one message stored for ${c.remote}`);

    // A client that lost the 250 and sends once more gets the same ids; nothing new is stored.
    const third = await sendMessage('someone@sender.test', [c.local, c.alias], message);
    assert.equal(third.code, 250, third.text);
    assert.deepEqual(queuedIds(third), ids);
    assert.deepEqual(await storedFor(c.local), [storedFirst]);
    assert.deepEqual(await storedFor(c.remote), [ids[1]]);

    const local = await received(lmtp, subject, 1);
    assert.deepEqual(local.flatMap((m) => m.rcptTo), [c.local], 'one copy for the local recipient');
    const remote = await received(remoteMx, subject, 1);
    assert.deepEqual(remote.flatMap((m) => m.rcptTo), [c.remote], 'one copy for the forwarded recipient');
    assert.match(remote[0]!.mailFrom, /^SRS0=.*@forward\.test$/);
  });
}

test('a message that is not split is stored again when sent again, as before: no idempotency key on the common path', async () => {
  const message = 'From: <someone@sender.test>\r\nSubject: not split\r\nMessage-ID: <not-split@sender.test>\r\n\r\nHello.';
  const a = await sendMessage('someone@sender.test', ['alice@example.test'], message);
  const b = await sendMessage('someone@sender.test', ['alice@example.test'], message);
  assert.equal(a.code, 250, a.text);
  assert.equal(b.code, 250, b.text);
  assert.notDeepEqual(queuedIds(a), queuedIds(b));
  const { rows } = await db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM queue.messages WHERE id = ANY($1::text[]) AND idempotency_key IS NULL',
    [[...queuedIds(a), ...queuedIds(b)]],
  );
  assert.equal(rows[0]!.n, 2);
});
