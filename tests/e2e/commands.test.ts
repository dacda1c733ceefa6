// VRFY, EXPN and ETRN through the running platform. Off by default (252
// 2.5.0, 502 5.5.1, 502 5.5.1); enabled on ingress (TERN_VRFY, TERN_EXPN,
// TERN_ETRN): VRFY answers from policy's mailboxes, EXPN lists an alias's
// targets to authenticated users, ETRN makes the queue retry now the
// deferred mail of a relay domain (RFC 1985).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import { Harness, startPlatform, submissionListener, type Platform, type SmtpSink } from '@tern/devkit';
import { queueIdOf, RawSmtp, smtp, tern, ternJson, ternRaw, waitFor, type SmtpReply } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-commands' });
let platform: Platform;
let submissionPort: number;
let backupMx: SmtpSink;
let deferAll = true;
const PASSWORD = 'correct horse battery staple, twice';

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.100');
  backupMx = await harness.startSink({
    host: '127.0.0.100',
    port,
    hostname: 'mx.backup.test',
    behaviour: { rcpt: () => (deferAll ? { code: 451, text: '4.3.0 Try again later' } : undefined) },
  });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('backup.test', 'mx.backup.test').a('mx.backup.test', '127.0.0.100');
  const submission = await submissionListener(harness);
  submissionPort = submission.port;
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: { ingress: submission.env },
  });
  await tern(platform, 'domain', 'add', 'local.test');
  await tern(platform, 'domain', 'add', 'backup.test', '--kind', 'relay');
  await tern(platform, 'mailbox', 'add', 'alice@local.test');
  await tern(platform, 'alias', 'add', 'team@local.test', 'alice@local.test', 'bob@elsewhere.test');
  const r = await ternRaw(platform, ['user', 'add', 'alice@local.test', '--password-stdin'], { stdin: `${PASSWORD}\n` });
  assert.equal(r.code, 0, r.stderr);
});

after(() => harness.close());

/** A session on the MX listener from an untrusted client, after EHLO. */
async function mx(): Promise<RawSmtp> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, '127.0.0.101');
  assert.equal(greeting.code, 220);
  assert.equal((await client.command('EHLO client.example')).code, 250);
  return client;
}

const line = (r: SmtpReply) => r.lines.join('\n');

/** EXPN over the submission listener (STARTTLS, then AUTH PLAIN unless `anonymous`). */
async function expn(args: string[], anonymous = false): Promise<SmtpReply[]> {
  const { client, greeting } = await RawSmtp.connect('127.0.0.1', submissionPort, '127.0.0.102');
  assert.equal(greeting.code, 220);
  assert.equal((await client.command('EHLO laptop.example')).code, 250);
  assert.equal((await client.command('STARTTLS')).code, 220);
  const secure = await upgrade(client);
  try {
    assert.equal((await secure.command('EHLO laptop.example')).code, 250);
    if (!anonymous) {
      const auth = await secure.command(`AUTH PLAIN ${Buffer.from(`\0alice@local.test\0${PASSWORD}`).toString('base64')}`);
      assert.equal(auth.code, 235, auth.text);
    }
    const out: SmtpReply[] = [];
    for (const a of args) out.push(await secure.command(`EXPN ${a}`));
    return out;
  } finally {
    secure.close();
  }
}

/** RawSmtp has no STARTTLS: take its socket over TLS with a minimal line client. */
async function upgrade(client: RawSmtp): Promise<{ command(l: string): Promise<SmtpReply>; close(): void }> {
  const raw = (client as unknown as { sock: import('node:net').Socket }).sock;
  raw.removeAllListeners('data');
  raw.removeAllListeners('close');
  const sock = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'mx.tern.test' });
  await new Promise<void>((resolve, reject) => {
    sock.once('secureConnect', resolve);
    sock.once('error', reject);
  });
  let buf = '';
  let wake: (() => void) | undefined;
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    wake?.();
  });
  const replyOf = async (): Promise<SmtpReply> => {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const lines = buf.split('\r\n');
      const end = lines.findIndex((l, i) => i < lines.length - 1 && /^\d{3}( |$)/.test(l));
      if (end >= 0) {
        const got = lines.slice(0, end + 1);
        buf = lines.slice(end + 1).join('\r\n');
        const enh = /^([245]\.\d{1,3}\.\d{1,3})\b/.exec(got[0]!.slice(4));
        return { code: Number(got[0]!.slice(0, 3)), enhanced: enh ? enh[1]! : '', text: got.map((l) => l.slice(4)).join('\n'), lines: got };
      }
      if (Date.now() > deadline) throw new Error(`no reply (buffer ${JSON.stringify(buf)})`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 200);
      });
    }
  };
  return {
    command: (l) => {
      sock.write(`${l}\r\n`);
      return replyOf();
    },
    close: () => sock.end('QUIT\r\n'),
  };
}

test('off by default: VRFY 252 2.5.0, EXPN and ETRN 502 5.5.1, ETRN not advertised', async () => {
  const c = await mx();
  try {
    const ehlo = await c.command('EHLO client.example');
    assert.ok(!ehlo.lines.some((l) => /ETRN/.test(l)));
    assert.match(line(await c.command('VRFY alice@local.test')), /^252 2\.5\.0 /);
    assert.equal(line(await c.command('EXPN team@local.test')), '502 5.5.1 Error: EXPN command is disabled');
    assert.equal(line(await c.command('ETRN backup.test')), '502 5.5.1 Error: ETRN command is disabled');
  } finally {
    c.close();
  }
  const [sub] = await expn(['team@local.test']);
  assert.equal(line(sub!), '502 5.5.1 Error: EXPN command is disabled');
});

test('enabled: VRFY answers from the local recipient data, EXPN expands aliases for authenticated users, ETRN retries a relay domain now', async () => {
  // A message for the relay domain is deferred by its MX (backoff: minutes).
  const info = await smtp(platform).sendMail({
    envelope: { from: 'sender@elsewhere.test', to: ['carol@backup.test'] },
    raw: 'From: sender@elsewhere.test\r\nTo: carol@backup.test\r\nSubject: held at the backup MX\r\n\r\nhello\r\n',
  });
  const queueId = queueIdOf(info.response);
  await waitFor('the recipient to be deferred', async () => {
    const m = await ternJson<{ recipients?: { state?: string }[] }>(platform, 'message', 'show', queueId);
    return m.recipients?.[0]?.state === 'RECIPIENT_STATE_DEFERRED' ? true : undefined;
  });

  await platform.services.ingress.restart({ TERN_VRFY: 'on', TERN_EXPN: 'on', TERN_ETRN: 'on' });

  const c = await mx();
  try {
    assert.equal(line(await c.command('VRFY alice@local.test')), '250 2.1.5 <alice@local.test>');
    assert.equal(line(await c.command('VRFY <Alice+news@LOCAL.test>')), '250 2.1.5 <alice@local.test>');
    assert.equal(line(await c.command('VRFY team@local.test')), '250 2.1.5 <team@local.test>');
    assert.equal(line(await c.command('VRFY nobody@local.test')), '550 5.1.1 <nobody@local.test>: Recipient address rejected: User unknown in local recipient table');
    assert.match(line(await c.command('VRFY someone@elsewhere.test')), /^252 2\.5\.0 /, 'not ours: cannot verify');
    assert.equal(line(await c.command('VRFY')), '501 5.5.4 Syntax: VRFY address');
    // EXPN is for authenticated users: never on the MX listener.
    assert.equal(line(await c.command('EXPN team@local.test')), '502 5.5.1 Error: EXPN command is disabled');

    const ehlo = await c.command('EHLO client.example');
    assert.ok(ehlo.lines.some((l) => /^250[- ]ETRN$/.test(l)), 'ETRN advertised');
    assert.equal(line(await c.command('ETRN local.test')), '459 4.7.1 <local.test>: service unavailable', 'only relay domains');
    assert.equal(line(await c.command('ETRN elsewhere.test')), '459 4.7.1 <elsewhere.test>: service unavailable');
    assert.equal((await c.command('ETRN bad_domain!')).code, 501);
    deferAll = false;
    assert.equal(line(await c.command('ETRN backup.test')), '250 2.0.0 Queuing started');
  } finally {
    c.close();
  }
  // Delivered now, not after the 5-minute backoff.
  const [delivered] = await backupMx.waitForMessages(1, 15_000);
  assert.deepEqual(delivered!.rcptTo, ['carol@backup.test']);

  const [team, alice, nobody, foreign] = await expn(['team@local.test', '<alice@local.test>', 'nobody@local.test', 'x@elsewhere.test']);
  assert.deepEqual(team!.lines, ['250-2.1.5 <alice@local.test>', '250 2.1.5 <bob@elsewhere.test>']);
  assert.equal(line(alice!), '250 2.1.5 <alice@local.test>');
  assert.equal(line(nobody!), '550 5.1.1 <nobody@local.test>: Recipient address rejected: User unknown in local recipient table');
  assert.equal(line(foreign!), '550 5.1.1 <x@elsewhere.test>: not a local mailbox or alias');
  const [anonymous] = await expn(['team@local.test'], true);
  assert.equal(line(anonymous!), '530 5.7.0 Authentication required');
});

test('enabled, policy down: VRFY 451 4.3.0, ETRN 458 4.3.0', async () => {
  const c = await mx();
  await platform.services.policy.stop();
  try {
    assert.equal(line(await c.command('VRFY alice@local.test')), '451 4.3.0 Error: temporary policy failure, try again later');
    assert.equal(line(await c.command('ETRN backup.test')), '458 4.3.0 Unable to queue messages');
  } finally {
    c.close();
    await platform.services.policy.restart();
  }
});
