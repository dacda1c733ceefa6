// Issue 7, end-of-data checks through the running platform: ingress tees the
// body to policy's CheckMessage (mailauth: DKIM, SPF, DMARC) with DNS records
// the test serves. A signed message with SPF pass is delivered with its
// Authentication-Results on top; a forged one from a p=reject domain is
// refused at end of data and nothing is queued; without policy, 451 4.3.0
// and nothing queued.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { dkimSign } from 'mailauth';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { queueIdOf, RawSmtp, smtp, tern, ternJson, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-message-auth' });
let platform: Platform;
let destMx: SmtpSink;

const key = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const privatePem = key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const publicB64 = key.publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
// A key that signed.test never published: its signatures do not verify.
const forgerPem = crypto.generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

// Clients (none in TERN_TRUSTED_NETWORKS, 127.0.0.1/32): the sender's own
// outbound host, a forger, and a client that meets a policy outage.
const SENDER_HOST = '127.0.0.91';
const FORGER_HOST = '127.0.0.92';
const OTHER_HOST = '127.0.0.93';

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.90');
  destMx = await harness.startSink({ host: '127.0.0.90', port, hostname: 'mx.dest.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.90');
  dns.txt('signed.test', `v=spf1 ip4:${SENDER_HOST} -all`);
  dns.txt('s1._domainkey.signed.test', `v=DKIM1; k=rsa; p=${publicB64}`);
  dns.txt('_dmarc.signed.test', 'v=DMARC1; p=reject; adkim=r; aspf=r');
  // The forger's envelope domain does not list it either, but says neutral
  // (a hard fail would be refused at MAIL, before any data).
  dns.txt('other.test', 'v=spf1 ip4:10.9.9.9 ?all');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: { policy: { TERN_DNS_TIMEOUT_MS: '1000' } },
  });
  // Mail for dest.test is accepted from anyone and forwarded to its MX.
  await tern(platform, 'domain', 'add', 'dest.test', '--kind', 'relay');
  await waitFor('the relay domain at RCPT', async () => {
    const { client } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, OTHER_HOST);
    try {
      await client.command('EHLO probe.example');
      await client.command('MAIL FROM:<>');
      return (await client.command('RCPT TO:<probe@dest.test>')).code === 250 ? true : undefined;
    } finally {
      client.close();
    }
  });
});

after(() => harness.close());

const message = (subject: string) =>
  Buffer.from(
    `From: CEO <ceo@signed.test>\r\nTo: bob@dest.test\r\nSubject: ${subject}\r\nDate: Mon, 23 Nov 2026 06:00:00 +0000\r\nMessage-ID: <${crypto.randomUUID()}@signed.test>\r\n\r\n` +
      'Quarterly numbers attached.\r\n'.repeat(20),
  );

async function sign(body: Buffer, privateKey: string): Promise<Buffer> {
  const signed = await dkimSign(body, {
    signingDomain: 'signed.test',
    selector: 's1',
    privateKey,
    signatureData: [{ signingDomain: 'signed.test', selector: 's1', privateKey, canonicalization: 'relaxed/relaxed' }],
  });
  assert.deepEqual(signed.errors, []);
  return Buffer.concat([Buffer.from(signed.signatures), body]);
}

async function queued(sender: string): Promise<number> {
  const res = await ternJson<{ messages?: unknown[] }>(platform, 'queue', 'ls', '--sender', sender);
  return res.messages?.length ?? 0;
}

/** EHLO, MAIL, RCPT, DATA from `host`; `beforeData` runs after RCPT. Returns the end-of-data reply. */
async function dialogue(host: string, sender: string, body: Buffer, beforeData?: () => Promise<void>) {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, host);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    const mail = await client.command(`MAIL FROM:<${sender}>`);
    assert.equal(mail.code, 250, mail.text);
    const rcpt = await client.command('RCPT TO:<bob@dest.test>');
    assert.equal(rcpt.code, 250, rcpt.text);
    await beforeData?.();
    assert.equal((await client.command('DATA')).code, 354);
    return await client.command(`${body.toString('latin1').replace(/^\./gm, '..')}.`);
  } finally {
    client.close();
  }
}

test('a DKIM-signed message with SPF pass is delivered with Authentication-Results on top: spf, dkim and dmarc pass', async () => {
  const signed = await sign(message('signed'), privatePem);
  const info = await smtp(platform, SENDER_HOST).sendMail({ envelope: { from: 'bounce@signed.test', to: ['bob@dest.test'] }, raw: signed });
  const queueId = queueIdOf(info.response);

  // Stored: Authentication-Results first, then Received, then the message as sent.
  const stored = (await tern(platform, 'message', 'download', queueId, '--headers-only')).toString();
  assert.match(stored, /^Authentication-Results: mx\.tern\.test;/, stored.slice(0, 400));
  assert.match(stored, /^Authentication-Results: [^]*?\r\nReceived: from client\.example /);

  const [delivered] = await destMx.waitForMessages(1, 20_000);
  const raw = delivered!.raw.toString('latin1');
  const top = /^Authentication-Results: (?:.*\r\n[ \t])*.*\r\n/.exec(raw);
  assert.ok(top, `the delivered message starts with Authentication-Results:\n${raw.slice(0, 600)}`);
  const ar = top[0].replace(/\r\n[ \t]+/g, ' ');
  assert.match(ar, /^Authentication-Results: mx\.tern\.test;/);
  assert.match(ar, /\bspf=pass\b[^;]*smtp\.mailfrom=(?:bounce@)?signed\.test/);
  assert.match(ar, /\bdkim=pass\b[^;]*header\.[id]=@?signed\.test/);
  assert.match(ar, /\bdmarc=pass\b[^;]*header\.from=signed\.test/);
  assert.ok(raw.endsWith(signed.toString('latin1')), 'the message as signed follows the added headers');
});

test('a forged message from a p=reject domain is refused at end of data with 550 5.7.1, and nothing is queued', async () => {
  const before = destMx.messages.length;
  // A signature by a key signed.test never published, envelope from a domain
  // whose SPF does not list the client: DMARC fails, and signed.test says reject.
  const forged = await sign(message('forged'), forgerPem);
  const reply = await dialogue(FORGER_HOST, 'payroll@other.test', forged);
  // (spf=neutral for other.test; dkim=fail; no aligned pass for signed.test.)
  assert.equal(reply.code, 550, reply.text);
  assert.equal(reply.enhanced, '5.7.1');
  assert.match(reply.text, /Email rejected per DMARC policy for signed\.test/);
  assert.equal(await queued('payroll@other.test'), 0, 'nothing queued');

  // The same forgery without any signature.
  const unsigned = await dialogue(FORGER_HOST, 'payroll@other.test', message('unsigned forgery'));
  assert.equal(`${unsigned.code} ${unsigned.enhanced}`, '550 5.7.1', unsigned.text);
  assert.equal(await queued('payroll@other.test'), 0);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(destMx.messages.length, before, 'nothing reached the recipient');
});

test('policy down at end of data: 451 4.3.0 and nothing is queued', async () => {
  const body = Buffer.from('From: someone@nospf.test\r\nTo: bob@dest.test\r\nSubject: outage\r\n\r\nkeep your copy\r\n');
  let stopped = false;
  try {
    const reply = await dialogue(OTHER_HOST, 'outage@nospf.test', body, async () => {
      await platform.services.policy.stop();
      stopped = true;
    });
    assert.equal(reply.code, 451, reply.text);
    assert.equal(reply.enhanced, '4.3.0');
  } finally {
    if (stopped) await platform.services.policy.restart();
  }
  assert.equal(await queued('outage@nospf.test'), 0, 'nothing queued');
});
