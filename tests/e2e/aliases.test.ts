// Issue 24, virtual aliases, through every service: the operator adds aliases
// with the `tern` CLI; a message to an alias, sent over real SMTP from an
// internet client, is stored for the alias's targets (expanded recursively,
// duplicates once, the alias as ORCPT) and delivered to them: local mailboxes
// over LMTP (the route of the local domains), a remote target by MX. Loops,
// aliases nested too deep and expansions past the recipients-per-message limit
// are refused at RCPT.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { RawSmtp, tern, ternJson, waitFor, type SmtpReply } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-aliases' });
let platform: Platform;
/** The mailbox server of example.test and catch.test (an LMTP route, like Dovecot). */
let lmtp: SmtpSink;
/** The MX of remote.test. */
let remoteMx: SmtpSink;
/** An internet client: not in the trusted networks, so it may not relay. */
const UNTRUSTED = '127.0.0.2';
const MAX_RECIPIENTS = 5;
const MAX_DEPTH = 4;

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.6.11');
  remoteMx = await harness.startSink({ host: '127.0.6.11', port, hostname: 'mx.remote.test' });
  lmtp = await harness.startSink({ host: '127.0.6.10', lmtp: true, hostname: 'mailstore.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('remote.test', 'mx.remote.test').a('mx.remote.test', '127.0.6.11');
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      ingress: { TERN_MAX_RECIPIENTS: String(MAX_RECIPIENTS) },
      policy: { TERN_ALIAS_MAX_DEPTH: String(MAX_DEPTH) },
    },
  });
  for (const d of ['example.test', 'catch.test']) {
    await tern(platform, 'domain', 'add', d, '--kind', 'local');
    await tern(platform, 'route', 'set', d, '--kind', 'lmtp', '--target', `${lmtp.host}:${lmtp.port}`, '--tls-policy', 'none');
  }
  for (const m of ['alice@example.test', 'bob@example.test', 'dave@example.test']) await tern(platform, 'mailbox', 'add', m);
});

after(() => harness.close());

/**
 * One SMTP transaction from an internet client: the reply to each RCPT and,
 * with a subject and at least one RCPT accepted, the message sent and its queue id.
 */
async function transaction(rcpts: string[], subject?: string): Promise<{ rcpt: SmtpReply[]; queueId?: string }> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, UNTRUSTED);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    const mail = await client.command('MAIL FROM:<sender@outside.test>');
    assert.equal(mail.code, 250, mail.text);
    const rcpt: SmtpReply[] = [];
    for (const r of rcpts) rcpt.push(await client.command(`RCPT TO:${r}`));
    if (subject === undefined || !rcpt.some((r) => r.code === 250)) return { rcpt };
    assert.equal((await client.command('DATA')).code, 354);
    const end = await client.command(`From: sender@outside.test\r\nTo: undisclosed-recipients:;\r\nSubject: ${subject}\r\n\r\nHello.\r\n.`);
    assert.equal(end.code, 250, `end of data: ${end.text}`);
    return { rcpt, queueId: /queued as (\S+)/.exec(end.text)?.[1] };
  } finally {
    client.close();
  }
}

/** Sends and asserts every RCPT was accepted with 250 2.1.5 (for the address the client gave); the queue id. */
async function send(rcpts: string[], subject: string): Promise<string> {
  const r = await transaction(rcpts, subject);
  r.rcpt.forEach((x, i) => assert.equal(`${x.code} ${x.enhanced}`, '250 2.1.5', `RCPT TO:${rcpts[i]}: ${x.lines.join(' | ')}`));
  assert.ok(r.queueId);
  return r.queueId;
}

interface Arrival {
  rcpt: string;
  orcpt: string | undefined;
  notify: string | undefined;
}

/** What `sink` received of the message with this subject: one entry per recipient. */
function arrivals(sink: SmtpSink, subject: string): Arrival[] {
  return sink.messages
    .filter((m) => m.raw.toString('utf8').includes(`\r\nSubject: ${subject}\r\n`))
    .flatMap((m) => m.rcptTo.map((rcpt, i) => ({ rcpt, orcpt: m.rcptParams[i]?.ORCPT as string | undefined, notify: m.rcptParams[i]?.NOTIFY as string | undefined })))
    .sort((a, b) => a.rcpt.localeCompare(b.rcpt));
}

/** Waits until `sink` holds `n` recipients of the message, then a moment more (a duplicate would show), and returns them. */
async function delivered(sink: SmtpSink, subject: string, n: number): Promise<Arrival[]> {
  await waitFor(`${n} recipient(s) of "${subject}" at ${sink.host}`, async () => (arrivals(sink, subject).length >= n ? true : undefined), 30_000, 100);
  await new Promise((r) => setTimeout(r, 500));
  return arrivals(sink, subject);
}

/** The recipients the queue stored for a message (`tern message show`). */
async function stored(queueId: string): Promise<string[]> {
  const shown = await ternJson<{ recipients: { address: string }[] }>(platform, 'message', 'show', queueId);
  return shown.recipients.map((r) => r.address).sort();
}

/** Adds an alias and waits until RCPT to it is no longer "User unknown" (policy's copy has it). */
async function alias(address: string, ...targets: string[]): Promise<void> {
  await tern(platform, 'alias', 'add', address, ...targets);
  const probe = address.startsWith('@') ? `probe-${Date.now()}${address}` : address;
  await waitFor(`alias ${address} in policy`, async () => ((await transaction([`<${probe}>`])).rcpt[0]!.enhanced !== '5.1.1' ? true : undefined), 5_000, 100);
}

function assertReply(r: SmtpReply, code: number, enhanced: string, what: string): void {
  assert.equal(`${r.code} ${r.enhanced}`, `${code} ${enhanced}`, `${what}: "${r.lines.join(' | ')}"`);
}

test('an alias to one local mailbox: stored and delivered over LMTP to the target, with the alias as ORCPT', async () => {
  await alias('postmaster@example.test', 'alice@example.test');
  const id = await send(['<postmaster@example.test>'], 'to postmaster');
  assert.deepEqual(await stored(id), ['alice@example.test'], 'the stored recipient is the target, not the alias');
  assert.deepEqual(await delivered(lmtp, 'to postmaster', 1), [{ rcpt: 'alice@example.test', orcpt: 'rfc822;postmaster@example.test', notify: undefined }]);
});

test('an alias to a local mailbox and a remote address: the local one over LMTP, the remote one relayed to its MX (an internet client)', async () => {
  await alias('team@example.test', 'bob@example.test', 'carol@remote.test');
  const id = await send(['<team@example.test>'], 'to team');
  assert.deepEqual(await stored(id), ['bob@example.test', 'carol@remote.test']);
  assert.deepEqual(await delivered(lmtp, 'to team', 1), [{ rcpt: 'bob@example.test', orcpt: 'rfc822;team@example.test', notify: undefined }]);
  assert.deepEqual(await delivered(remoteMx, 'to team', 1), [{ rcpt: 'carol@remote.test', orcpt: 'rfc822;team@example.test', notify: undefined }]);
});

test('a nested alias is expanded recursively; the client\'s ORCPT and NOTIFY are carried to every target', async () => {
  await alias('team@example.test', 'bob@example.test', 'carol@remote.test');
  await alias('all@example.test', 'team@example.test', 'dave@example.test');
  const id = await send(['<all@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;everyone@example.test'], 'to all');
  assert.deepEqual(await stored(id), ['bob@example.test', 'carol@remote.test', 'dave@example.test']);
  const local = await delivered(lmtp, 'to all', 2);
  // Over LMTP (a final delivery) Tern reports the success itself, so SUCCESS is not passed on there.
  assert.deepEqual(local, [
    { rcpt: 'bob@example.test', orcpt: 'rfc822;everyone@example.test', notify: 'FAILURE' },
    { rcpt: 'dave@example.test', orcpt: 'rfc822;everyone@example.test', notify: 'FAILURE' },
  ]);
  assert.deepEqual(await delivered(remoteMx, 'to all', 1), [{ rcpt: 'carol@remote.test', orcpt: 'rfc822;everyone@example.test', notify: 'SUCCESS,FAILURE' }]);
});

test('an alias with three targets (a local mailbox over LMTP, a remote address, a nested alias) reaches each target once, with the original recipient as ORCPT', async () => {
  await alias('crew@example.test', 'dave@example.test');
  await alias('trio@example.test', 'alice@example.test', 'zed@remote.test', 'crew@example.test');
  const id = await send(['<trio@example.test>'], 'to trio');
  assert.deepEqual(await stored(id), ['alice@example.test', 'dave@example.test', 'zed@remote.test']);
  assert.deepEqual(await delivered(lmtp, 'to trio', 2), [
    { rcpt: 'alice@example.test', orcpt: 'rfc822;trio@example.test', notify: undefined },
    { rcpt: 'dave@example.test', orcpt: 'rfc822;trio@example.test', notify: undefined },
  ]);
  assert.deepEqual(await delivered(remoteMx, 'to trio', 1), [{ rcpt: 'zed@remote.test', orcpt: 'rfc822;trio@example.test', notify: undefined }]);
});

test('an alias that names itself keeps its own address besides the others (a -> a, b), for a mailbox too', async () => {
  await alias('keep@example.test', 'keep@example.test', 'alice@example.test');
  const id = await send(['<keep@example.test>'], 'to keep');
  assert.deepEqual(await stored(id), ['alice@example.test', 'keep@example.test']);
  assert.deepEqual(
    (await delivered(lmtp, 'to keep', 2)).map((a) => [a.rcpt, a.orcpt]),
    [
      ['alice@example.test', 'rfc822;keep@example.test'],
      ['keep@example.test', 'rfc822;keep@example.test'],
    ],
  );
  // A mailbox that is also an alias: the alias applies (Postfix aliases first), and the mailbox keeps its copy.
  await tern(platform, 'mailbox', 'add', 'erin@example.test');
  await alias('erin@example.test', 'erin@example.test', 'dave@example.test');
  const copied = await waitFor('the alias over the mailbox in policy', async () => {
    const qid = await send(['<erin@example.test>'], `to erin ${Date.now()}`);
    const rcpts = await stored(qid);
    return rcpts.length === 2 ? rcpts : undefined;
  }, 5_000, 200);
  assert.deepEqual(copied, ['dave@example.test', 'erin@example.test']);
});

test('a loop of aliases with no final address is refused at RCPT (550 5.4.6, naming the loop); nested too deep is refused (451 4.3.5)', async () => {
  await tern(platform, 'alias', 'add', 'ping@example.test', 'pong@example.test');
  await tern(platform, 'alias', 'add', 'pong@example.test', 'ping@example.test');
  const loop = await waitFor('the loop refused', async () => {
    const r = (await transaction(['<ping@example.test>'])).rcpt[0]!;
    return r.code === 250 ? undefined : r;
  }, 5_000, 100);
  assertReply(loop, 550, '5.4.6', 'alias loop');
  assert.match(loop.text, /alias loop with no final address \(ping@example\.test -> pong@example\.test -> ping@example\.test\)/);

  // A chain of MAX_DEPTH aliases is followed; one more is refused.
  for (let i = 1; i <= MAX_DEPTH; i++) await tern(platform, 'alias', 'add', `hop${i}@example.test`, `hop${i + 1}@example.test`);
  await alias(`hop${MAX_DEPTH + 1}@example.test`, 'alice@example.test');
  const id = await send(['<hop2@example.test>'], 'deep but not too deep');
  assert.deepEqual(await stored(id), ['alice@example.test'], `${MAX_DEPTH} nested aliases are expanded`);
  const deep = (await transaction(['<hop1@example.test>'])).rcpt[0]!;
  assertReply(deep, 451, '4.3.5', `${MAX_DEPTH + 1} nested aliases`);
  assert.match(deep.text, new RegExp(`nested more than ${MAX_DEPTH} deep`));
});

test('a catch-all alias (@domain) takes unknown users; an exact alias or a mailbox wins over it', async () => {
  await alias('@catch.test', 'alice@example.test', 'carol@remote.test');
  await alias('sales@catch.test', 'bob@example.test');
  const unknown = await send(['<whoever@catch.test>'], 'to whoever');
  assert.deepEqual(await stored(unknown), ['alice@example.test', 'carol@remote.test']);
  assert.deepEqual(await delivered(lmtp, 'to whoever', 1), [{ rcpt: 'alice@example.test', orcpt: 'rfc822;whoever@catch.test', notify: undefined }]);
  assert.deepEqual(await delivered(remoteMx, 'to whoever', 1), [{ rcpt: 'carol@remote.test', orcpt: 'rfc822;whoever@catch.test', notify: undefined }]);
  await tern(platform, 'mailbox', 'add', 'real@catch.test');
  const real = await send(['<real@catch.test>'], 'to real');
  assert.deepEqual(await stored(real), ['real@catch.test'], 'the mailbox, not the catch-all');
  assert.deepEqual(await delivered(lmtp, 'to real', 1), [{ rcpt: 'real@catch.test', orcpt: undefined, notify: undefined }]);
  const sales = await send(['<sales@catch.test>'], 'to sales');
  assert.deepEqual(await stored(sales), ['bob@example.test'], 'the exact alias, not the catch-all');
  assert.deepEqual(await delivered(lmtp, 'to sales', 1), [{ rcpt: 'bob@example.test', orcpt: 'rfc822;sales@catch.test', notify: undefined }]);
});

test('a recipient met twice after expansion is stored and delivered once', async () => {
  await alias('team@example.test', 'bob@example.test', 'carol@remote.test');
  await alias('all@example.test', 'team@example.test', 'dave@example.test');
  await alias('friends@example.test', 'bob@example.test', 'dave@example.test', 'carol@remote.test');
  const id = await send(['<bob@example.test>', '<all@example.test>', '<friends@example.test>', '<team@example.test>'], 'duplicates');
  assert.deepEqual(await stored(id), ['bob@example.test', 'carol@remote.test', 'dave@example.test']);
  const local = await delivered(lmtp, 'duplicates', 2);
  assert.deepEqual(local, [
    { rcpt: 'bob@example.test', orcpt: undefined, notify: undefined },
    { rcpt: 'dave@example.test', orcpt: 'rfc822;all@example.test', notify: undefined },
  ]);
  assert.deepEqual(await delivered(remoteMx, 'duplicates', 1), [{ rcpt: 'carol@remote.test', orcpt: 'rfc822;all@example.test', notify: undefined }]);
});

test(`the recipients-per-message limit (${MAX_RECIPIENTS}) holds after expansion: the RCPT that would pass it gets 452 4.5.3`, async () => {
  await alias('four@example.test', 'w1@remote.test', 'w2@remote.test', 'w3@remote.test', 'dave@example.test');
  await alias('six@example.test', 'x1@remote.test', 'x2@remote.test', 'x3@remote.test', 'x4@remote.test', 'x5@remote.test', 'x6@remote.test');
  const alone = await transaction(['<six@example.test>']);
  assertReply(alone.rcpt[0]!, 452, '4.5.3', 'an alias of six targets');

  // 1 + 4 = 5 fit; a further new address does not, but one already among them does.
  const r = await transaction(['<alice@example.test>', '<four@example.test>', '<bob@example.test>', '<dave@example.test>'], 'four and one');
  assert.deepEqual(
    r.rcpt.map((x) => `${x.code} ${x.enhanced}`),
    ['250 2.1.5', '250 2.1.5', '452 4.5.3', '250 2.1.5'],
  );
  assert.ok(r.queueId);
  assert.deepEqual(await stored(r.queueId), ['alice@example.test', 'dave@example.test', 'w1@remote.test', 'w2@remote.test', 'w3@remote.test']);
});
