// Issue 6, the suppression list end to end: a hard failure (550 at the
// recipient's MX) reaches policy's list through bounce; authenticated
// submission to that address is then refused at RCPT (and from a trusted
// network); an operator removes the entry with the CLI and mail flows again.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { Harness, startPlatform, submissionListener, type Platform } from '@tern/devkit';
import { queueIdOf, send, tern, ternJson, ternRaw, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-suppression' });
let platform: Platform;
let submissionPort: number;
const PASSWORD = 'a long and unguessable passphrase';

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.80');
  await harness.startSink({ host: '127.0.0.80', port, hostname: 'mx.dest.test' });
  await harness.startSink({ host: '127.0.0.81', port, hostname: 'mx.sub.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.80');
  dns.mx('sub.test', 'mx.sub.test').a('mx.sub.test', '127.0.0.81');
  const submission = await submissionListener(harness);
  submissionPort = submission.port;
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      ingress: submission.env,
    },
  });
  const r = await ternRaw(platform, ['user', 'add', 'alice@sub.test', '--may-relay', '--allowed-sender', '@sub.test', '--password-stdin'], { stdin: `${PASSWORD}\n` });
  assert.equal(r.code, 0, r.stderr);
});

after(() => harness.close());

function submit(to: string, subject: string) {
  const transport = nodemailer.createTransport({
    host: '127.0.0.1',
    port: submissionPort,
    secure: false,
    requireTLS: true,
    tls: { rejectUnauthorized: false },
    localAddress: '127.0.0.2',
    name: 'laptop.example',
    auth: { user: 'alice@sub.test', pass: PASSWORD },
  } as Parameters<typeof nodemailer.createTransport>[0]);
  return transport
    .sendMail({ envelope: { from: 'alice@sub.test', to: [to] }, raw: `From: alice@sub.test\r\nTo: ${to}\r\nSubject: ${subject}\r\n\r\n${subject}\r\n` })
    .finally(() => transport.close());
}

interface Listed {
  suppressions?: { address: string; reason?: string; queueId?: string }[];
  nextPageToken?: string;
}

test('a hard failure is suppressed: submission to it gets 550 5.1.1 at RCPT until an operator removes it', async () => {
  const first = queueIdOf((await submit('permfail-gone@dest.test', 'first try')).response);
  const listed = await waitFor(
    'the hard failure on the suppression list',
    async () => (await ternJson<Listed>(platform, 'suppression', 'ls')).suppressions?.find((s) => s.address === 'permfail-gone@dest.test'),
    30_000,
  );
  assert.equal(listed.queueId, first, 'the entry names the message that failed');
  assert.match(listed.reason ?? '', /^550 5\.1\.1 /, 'and the remote reply');
  // Ingress may reuse the first try's accept for TERN_POLICY_DECISION_CACHE_MS (1 s): a listing takes effect that much later.
  await new Promise((r) => setTimeout(r, 1_100));

  await assert.rejects(submit('permfail-gone@dest.test', 'second try'), (err: { responseCode?: number; response?: string }) => {
    assert.equal(err.responseCode, 550, err.response);
    assert.match(err.response ?? '', /5\.1\.1 <permfail-gone@dest\.test>: Recipient address rejected: delivery failed permanently/);
    return true;
  });
  // The case of the local part or domain does not get around it.
  await assert.rejects(submit('PERMFAIL-GONE@Dest.Test', 'third try'), (err: { responseCode?: number }) => err.responseCode === 550);

  // A trusted-network client (send() comes from 127.0.0.1) is refused too: TERN_SUPPRESSION_ENFORCE's
  // default covers every sender that may relay (tests/e2e/suppression-feed.test.ts has the MX listener).
  await assert.rejects(send(platform, 'someone@elsewhere.test', ['permfail-gone@dest.test'], 'trusted'), (err: { responseCode?: number }) => err.responseCode === 550);

  // The operator clears it; the next submission is accepted at once.
  const human = await tern(platform, 'suppression', 'ls', '--domain', 'dest.test');
  assert.match(human, /permfail-gone@dest\.test/);
  await tern(platform, 'suppression', 'rm', 'permfail-gone@dest.test');
  queueIdOf((await submit('permfail-gone@dest.test', 'after removal')).response);
  const gone = await ternRaw(platform, ['suppression', 'rm', 'nobody@dest.test']);
  assert.notEqual(gone.code, 0, 'removing an address that is not listed fails');
  assert.match(gone.stderr, /nothing deleted/);
});

test('an operator can suppress by hand; a bad address names the field', async () => {
  await tern(platform, 'suppression', 'add', 'complainer@dest.test', '--reason', 'asked us to stop');
  await assert.rejects(submit('complainer@dest.test', 'hello'), (err: { responseCode?: number; response?: string }) => {
    assert.equal(err.responseCode, 550, err.response);
    assert.match(err.response ?? '', /asked us to stop/);
    return true;
  });
  const bad = await ternRaw(platform, ['suppression', 'add', 'not an address']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /suppressions\[0\]\.address/);
  // Keyset paging: one per page, every entry once.
  const seen: string[] = [];
  let token = '';
  for (let i = 0; i < 10; i++) {
    const page = await ternJson<Listed>(platform, 'suppression', 'ls', '--limit', '1', ...(token ? ['--page-token', token] : []));
    seen.push(...(page.suppressions ?? []).map((s) => s.address));
    token = page.nextPageToken ?? '';
    if (!token) break;
  }
  assert.deepEqual(seen, [...new Set(seen)].sort());
  assert.ok(seen.includes('complainer@dest.test'));
});
