// Issue 24, address rewriting, through every service: the operator sets
// the rules with the `tern` CLI (canonical, masquerade, bcc; SRS from the
// policy's TERN_SRS_* variables), messages come in over real SMTP from an
// internet client, and the sinks show what left: the SRS sender for a
// remote alias target and the original one for a local target, a bounce to
// the SRS address back at the original sender (a forged one refused), +ext
// carried to alias targets, the sender rewritten in the envelope and in
// From (display name kept), masquerading, and an archive copy no header names.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform, type SinkMessage, type SmtpSink } from '@tern/devkit';
import { RawSmtp, tern, ternJson, ternRaw, waitFor, type SmtpReply } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-address-rewriting' });
let platform: Platform;
/** The mailbox server of example.test (an LMTP route, like Dovecot). */
let lmtp: SmtpSink;
/** The MX of remote.test (where an alias forwards to). */
let remoteMx: SmtpSink;
/** The MX of sender.test (the original sender's domain, where bounces go back to). */
let senderMx: SmtpSink;
/** An internet client: not in the trusted networks. */
const UNTRUSTED = '127.0.0.2';
const SRS_DOMAIN = 'forward.test';

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.6.21');
  remoteMx = await harness.startSink({ host: '127.0.6.21', port, hostname: 'mx.remote.test' });
  senderMx = await harness.startSink({ host: '127.0.6.22', port, hostname: 'mx.sender.test' });
  lmtp = await harness.startSink({ host: '127.0.6.20', lmtp: true, hostname: 'mailstore.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('remote.test', 'mx.remote.test').a('mx.remote.test', '127.0.6.21');
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.6.22');
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: { policy: { TERN_SRS_DOMAIN: SRS_DOMAIN, TERN_SRS_SECRETS: 'e2e-srs-secret-0123456789' } },
  });
  await tern(platform, 'domain', 'add', 'example.test', '--kind', 'local');
  await tern(platform, 'route', 'set', 'example.test', '--kind', 'lmtp', '--target', `${lmtp.host}:${lmtp.port}`, '--tls-policy', 'none');
  for (const m of ['alice@example.test', 'bob@example.test', 'dave@example.test', 'archive@example.test']) await tern(platform, 'mailbox', 'add', m);
  await tern(platform, 'alias', 'add', 'fwd@example.test', 'alice@example.test', 'carol@remote.test');
});

after(() => harness.close());

/** One SMTP transaction from an internet client; with `body`, the message sent and the reply to its end. */
async function transaction(from: string, rcpts: string[], body?: string): Promise<{ mail: SmtpReply; rcpt: SmtpReply[]; end?: SmtpReply }> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, UNTRUSTED);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    const mail = await client.command(`MAIL FROM:<${from}>`);
    const rcpt: SmtpReply[] = [];
    if (mail.code !== 250) return { mail, rcpt };
    for (const r of rcpts) rcpt.push(await client.command(`RCPT TO:<${r}>`));
    if (body === undefined || !rcpt.some((r) => r.code === 250)) return { mail, rcpt };
    assert.equal((await client.command('DATA')).code, 354);
    return { mail, rcpt, end: await client.command(`${body}\r\n.`) };
  } finally {
    client.close();
  }
}

async function send(from: string, rcpts: string[], subject: string, headers = `From: <${from}>\r\nTo: undisclosed-recipients:;`): Promise<void> {
  const r = await transaction(from, rcpts, `${headers}\r\nSubject: ${subject}\r\n\r\nHello.\r\n`);
  assert.equal(r.mail.code, 250, r.mail.lines.join(' | '));
  r.rcpt.forEach((x, i) => assert.equal(x.code, 250, `RCPT TO:<${rcpts[i]}>: ${x.lines.join(' | ')}`));
  assert.equal(r.end?.code, 250, r.end?.lines.join(' | '));
}

/** The transactions `sink` received of the message with this subject, once `n` recipients are in (and a moment more: a duplicate would show). */
async function received(sink: SmtpSink, subject: string, n: number): Promise<SinkMessage[]> {
  const of = () => sink.messages.filter((m) => m.raw.toString('utf8').includes(`\r\nSubject: ${subject}\r\n`));
  await waitFor(`${n} recipient(s) of "${subject}" at ${sink.host}`, async () => (of().flatMap((m) => m.rcptTo).length >= n ? true : undefined), 30_000, 100);
  await new Promise((r) => setTimeout(r, 500));
  return of();
}

/** Runs `probe` until it gives a value: policy pods apply a rule within moments of the CLI's answer. */
const applied = <T>(what: string, probe: () => Promise<T | undefined>) => waitFor(what, probe, 5_000, 100);

test('SRS forward: a remote alias target gets MAIL FROM:<SRS0=...@forward.test>, the local one the original sender', async () => {
  const status = await ternJson<{ enabled: boolean; domain: string }>(platform, 'srs', 'status');
  assert.equal(status.enabled, true);
  assert.equal(status.domain, SRS_DOMAIN);
  await send('someone@sender.test', ['fwd@example.test'], 'srs forward');
  const [remote] = await received(remoteMx, 'srs forward', 1);
  assert.deepEqual(remote!.rcptTo, ['carol@remote.test']);
  assert.match(remote!.mailFrom, /^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=sender\.test=someone@forward\.test$/);
  const [local] = await received(lmtp, 'srs forward', 1);
  assert.deepEqual(local!.rcptTo, ['alice@example.test']);
  assert.equal(local!.mailFrom, 'someone@sender.test');
});

test('SRS reverse: a bounce to the SRS address reaches the original sender; a forged SRS address is refused with 550 5.1.1', async () => {
  await send('someone@sender.test', ['fwd@example.test'], 'srs to bounce');
  const [remote] = await received(remoteMx, 'srs to bounce', 1);
  const srs = remote!.mailFrom;
  // The remote side bounces: null sender, to the SRS address, at our MX.
  await send('', [srs], 'bounce of srs', 'From: MAILER-DAEMON@mx.remote.test\r\nTo: <' + srs + '>');
  const [back] = await received(senderMx, 'bounce of srs', 1);
  assert.deepEqual(back!.rcptTo, ['someone@sender.test']);
  assert.equal(back!.mailFrom, '');
  const forged = srs.replace(/^SRS0=[^=]{4}/, 'SRS0=AAAA');
  const r = await transaction('', [forged]);
  assert.equal(`${r.rcpt[0]!.code} ${r.rcpt[0]!.enhanced}`, '550 5.1.1', r.rcpt[0]!.lines.join(' | '));
  assert.match(r.rcpt[0]!.text, /invalid hash/);
});

test('+ext propagation: mail to fwd+tag@ goes to each alias target with +tag', async () => {
  await send('someone@sender.test', ['fwd+tag@example.test'], 'plus ext');
  assert.deepEqual((await received(remoteMx, 'plus ext', 1)).flatMap((m) => m.rcptTo), ['carol+tag@remote.test']);
  assert.deepEqual((await received(lmtp, 'plus ext', 1)).flatMap((m) => m.rcptTo), ['alice+tag@example.test']);
});

test('sender canonical with headers: the envelope sender and the From address are rewritten, the display name kept', async () => {
  await tern(platform, 'canonical', 'set', 'old@example.test', 'alice@example.test', '--kind', 'sender', '--headers');
  const listed = await ternJson<{ rewrites: Array<{ match: string; target: string; headers: boolean }> }>(platform, 'canonical', 'ls');
  assert.deepEqual(listed.rewrites.map((r) => [r.match, r.target, r.headers]), [['old@example.test', 'alice@example.test', true]]);
  const subject = await applied('the sender rule in policy', async () => {
    const s = `canonical ${Date.now()}`;
    await send('old@example.test', ['dave@example.test'], s, 'From: "Old Name" <old@example.test>\r\nReply-To: other@sender.test\r\nTo: Dave <dave@example.test>');
    const [m] = await received(lmtp, s, 1);
    return m!.mailFrom === 'alice@example.test' ? m : undefined;
  });
  const raw = subject.raw.toString('utf8');
  assert.match(raw, /\r\nFrom: "Old Name" <alice@example\.test>\r\n/);
  assert.match(raw, /\r\nReply-To: other@sender\.test\r\n/, 'no rule for it: left as it was');
  assert.match(raw, /\r\nTo: Dave <dave@example\.test>\r\n/);
  // Only Authentication-Results and Received-SPF (the checks of what the client sent) still name it.
  assert.doesNotMatch(raw.replace(/^(Authentication-Results|Received-SPF):.*(\r\n[ \t].*)*/gm, ''), /old@example\.test/);
});

test('masquerade: a sender at a subdomain is stored as at the domain', async () => {
  await tern(platform, 'canonical', 'masquerade', 'sender.test');
  const m = await applied('masquerading in policy', async () => {
    const s = `masquerade ${Date.now()}`;
    await send('joe@host.eu.sender.test', ['dave@example.test'], s);
    const [got] = await received(lmtp, s, 1);
    return got!.mailFrom === 'joe@sender.test' ? got : undefined;
  });
  // Without --headers the header keeps the address.
  assert.match(m.raw.toString('utf8'), /\r\nFrom: <joe@host\.eu\.sender\.test>\r\n/);
});

test('recipient bcc: the archive gets a copy (NOTIFY=NEVER); the visible headers do not name it', async () => {
  await tern(platform, 'bcc', 'set', 'bob@example.test', 'archive@example.test', '--kind', 'recipient');
  const rcpts = await applied('the bcc rule in policy', async () => {
    const s = `bcc ${Date.now()}`;
    await send('someone@sender.test', ['bob@example.test'], s, 'From: <someone@sender.test>\r\nTo: <bob@example.test>');
    const got = await received(lmtp, s, 1);
    const all = got.flatMap((m) => m.rcptTo.map((r, i) => ({ r, notify: m.rcptParams[i]?.NOTIFY, raw: m.raw.toString('utf8') })));
    return all.length === 2 ? all.sort((a, b) => a.r.localeCompare(b.r)) : undefined;
  });
  assert.deepEqual(rcpts.map((x) => x.r), ['archive@example.test', 'bob@example.test']);
  for (const x of rcpts) {
    const head = x.raw.slice(0, x.raw.indexOf('\r\n\r\n'));
    assert.doesNotMatch(head.replace(/^Received:.*(\r\n[ \t].*)*/gm, ''), /archive/i, 'no visible header names the archive');
  }
  const bcc = await ternJson<{ rewrites: Array<{ match: string; target: string }> }>(platform, 'bcc', 'ls');
  assert.deepEqual(bcc.rewrites.map((r) => [r.match, r.target]), [['bob@example.test', 'archive@example.test']]);
  await tern(platform, 'bcc', 'rm', 'bob@example.test');
  const again = await ternRaw(platform, ['bcc', 'rm', 'bob@example.test']);
  assert.equal(again.code, 5, 'removing it again: not found');
  assert.match(again.stderr, /tern bcc ls/);
});
