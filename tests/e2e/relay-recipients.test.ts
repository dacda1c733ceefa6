// Issue 24, relay recipients, through every service: relay domains that know
// their recipients refuse unknown ones at RCPT with 550 5.1.1 instead of
// accepting mail the next hop will bounce (backscatter). With a recipient
// list (`tern relay-recipient add|import`), and with verification by a
// callout to the next hop (policy asks delivery's VerifyRecipient, which
// speaks to the route's next hop: here a loopback sink that knows some users),
// its answers cached in policy, a next hop that is down answered 450 4.1.1
// and not cached, and callouts bounded per domain.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { RawSmtp, tern, ternJson, ternRaw, type SmtpReply } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-relay-recipients' });
let platform: Platform;
/** The next hop of the relay domains (a smart host route), like the mailbox servers behind a Postfix relay. */
let nextHop: SmtpSink;
const NEXT_HOP = '127.0.6.31';
let nextHopPort: number;
/** Users the next hop knows; it refuses everyone else with 550 5.1.1. */
const KNOWN = new Set(['alice@callout.test', 'carol@callout.test', 'dave@callout.test']);
/** Every RCPT the next hop was asked, in order (callouts: nothing is delivered in these tests). */
const asked: string[] = [];
/** An internet client: not in the trusted networks. */
const UNTRUSTED = '127.0.0.2';
/** Callouts per domain across the policy pods (TERN_VERIFY_RATE_PER_DOMAIN). */
const RATE = 5;

before(async () => {
  const database = await harness.createTestDatabase();
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  nextHopPort = await harness.freePort(NEXT_HOP);
  nextHop = await harness.startSink({
    host: NEXT_HOP,
    port: nextHopPort,
    hostname: 'mailstore.callout.test',
    behaviour: {
      rcpt: (to) => {
        asked.push(to.toLowerCase());
        return KNOWN.has(to.toLowerCase()) ? 'accept' : { code: 550, text: `5.1.1 <${to}>: Recipient address rejected: User unknown in virtual mailbox table` };
      },
    },
  });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: nextHopPort,
    env: {
      delivery: { TERN_VERIFY_ROUTES_REFRESH_MS: '200' },
      policy: { TERN_VERIFY_RATE_PER_DOMAIN: `${RATE}/1h` },
    },
  });
  await tern(platform, 'domain', 'add', 'list.test', '--kind', 'relay', '--recipients', 'list');
  await tern(platform, 'domain', 'add', 'open.test', '--kind', 'relay');
  for (const d of ['callout.test', 'flood.test']) {
    await tern(platform, 'domain', 'add', d, '--kind', 'relay', '--recipients', 'callout');
    await tern(platform, 'route', 'set', d, '--kind', 'smarthost', '--target', `${NEXT_HOP}:${nextHopPort}`, '--tls-policy', 'none');
  }
});

after(() => harness.close());

/** One session from an internet client: MAIL, then each RCPT; the replies to the RCPTs. */
async function rcpts(...addresses: string[]): Promise<SmtpReply[]> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, UNTRUSTED);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    const mail = await client.command('MAIL FROM:<sender@outside.test>');
    assert.equal(mail.code, 250, mail.text);
    const out: SmtpReply[] = [];
    for (const a of addresses) out.push(await client.command(`RCPT TO:<${a}>`, 30_000));
    return out;
  } finally {
    client.close();
  }
}

const rcpt = async (address: string) => (await rcpts(address))[0]!;

function assertReply(r: SmtpReply, code: number, enhanced: string, what: string): void {
  assert.equal(`${r.code} ${r.enhanced}`, `${code} ${enhanced}`, `${what}: "${r.lines.join(' | ')}"`);
}

const timesAsked = (address: string) => asked.filter((a) => a === address).length;

test('domain ls shows each relay domain\'s recipient check; --recipients on a local domain is refused naming the option', async () => {
  const domains = await ternJson<{ domains: { name: string; recipientCheck?: string }[] }>(platform, 'domain', 'ls');
  const check = new Map(domains.domains.map((d) => [d.name, d.recipientCheck]));
  assert.equal(check.get('list.test'), 'RECIPIENT_CHECK_LIST');
  assert.equal(check.get('callout.test'), 'RECIPIENT_CHECK_CALLOUT');
  assert.equal(check.get('open.test'), 'RECIPIENT_CHECK_NONE');
  const bad = await ternRaw(platform, ['domain', 'add', 'local.test', '--kind', 'local', '--recipients', 'list']);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /--recipients applies to relay domains only/);
  // A later put without --recipients keeps the mode (changing the size limit does not turn the check off).
  await tern(platform, 'domain', 'add', 'list.test', '--kind', 'relay', '--max-size', '10M');
  const again = await ternJson<{ domains: { name: string; recipientCheck?: string }[] }>(platform, 'domain', 'ls');
  assert.equal(again.domains.find((d) => d.name === 'list.test')?.recipientCheck, 'RECIPIENT_CHECK_LIST');
});

test('list: an unknown user of the relay domain is refused at RCPT with 550 5.1.1, a listed one (or a listed @domain) accepted; a domain without a check accepts all', async () => {
  await tern(platform, 'relay-recipient', 'add', 'alice@list.test');
  assertReply(await rcpt('alice@list.test'), 250, '2.1.5', 'listed');
  const unknown = await rcpt('mallory@list.test');
  assertReply(unknown, 550, '5.1.1', 'unlisted');
  assert.match(unknown.text, /<mallory@list\.test>: Recipient address rejected: User unknown in relay recipient table/);
  assertReply(await rcpt('anyone@open.test'), 250, '2.1.5', 'relay domain without a check');

  // import: every line checked first (a bad one names file:line and writes nothing), --dry-run counts only.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-rr-'));
  const bad = path.join(dir, 'bad.txt');
  fs.writeFileSync(bad, '# mailboxes behind the relay\nbob@list.test OK\nnot an address\n');
  const refused = await ternRaw(platform, ['relay-recipient', 'import', bad]);
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3: "not": .*nothing was imported`));
  const good = path.join(dir, 'good.txt');
  fs.writeFileSync(good, '# mailboxes behind the relay\nbob@list.test OK\nalice@list.test\n\n@team.list.test\n');
  await tern(platform, 'domain', 'add', 'team.list.test', '--kind', 'relay', '--recipients', 'list');
  const dry = await ternJson<{ added: number; unchanged: number; dryRun: boolean }>(platform, 'relay-recipient', 'import', good, '--dry-run');
  assert.deepEqual({ added: dry.added, unchanged: dry.unchanged, dryRun: dry.dryRun }, { added: 2, unchanged: 1, dryRun: true });
  assertReply(await rcpt('bob@list.test'), 550, '5.1.1', 'not imported by a dry run');
  const done = await ternJson<{ added: number }>(platform, 'relay-recipient', 'import', good);
  assert.equal(done.added, 2);
  assertReply(await rcpt('bob@list.test'), 250, '2.1.5', 'imported');
  assertReply(await rcpt('whoever@team.list.test'), 250, '2.1.5', 'the @domain entry');
  const listed = await ternJson<{ recipients: { address: string }[] }>(platform, 'relay-recipient', 'ls', '--domain', 'list.test');
  assert.deepEqual(listed.recipients.map((r) => r.address), ['alice@list.test', 'bob@list.test']);

  // An entry at a domain that is not a relay domain is refused naming the next step.
  const notRelay = await ternRaw(platform, ['relay-recipient', 'add', 'x@nowhere.test']);
  assert.equal(notRelay.code, 1);
  assert.match(notRelay.stderr, /addresses\[0\]: nowhere\.test is not a relay domain; add it first: tern domain add nowhere\.test --kind relay/);
  await tern(platform, 'relay-recipient', 'rm', 'bob@list.test');
  assertReply(await rcpt('bob@list.test'), 550, '5.1.1', 'removed');
});

test('callout: a user the next hop accepts is accepted, one it refuses gets 550 5.1.1 with its reply; the second RCPT is answered from the cache', async () => {
  assertReply(await rcpt('alice@callout.test'), 250, '2.1.5', 'known at the next hop');
  const refused = await rcpt('nobody@callout.test');
  assertReply(refused, 550, '5.1.1', 'unknown at the next hop');
  assert.match(
    refused.text,
    /<nobody@callout\.test>: Recipient address rejected: undeliverable address: host .*127\.0\.6\.31.* said: 550 5\.1\.1 <nobody@callout\.test>: Recipient address rejected: User unknown in virtual mailbox table \(in reply to RCPT TO command\)/,
  );
  assert.equal(timesAsked('alice@callout.test'), 1);
  assert.equal(timesAsked('nobody@callout.test'), 1);

  // Again, in new sessions: the cache answers, the next hop is not asked.
  assertReply(await rcpt('alice@callout.test'), 250, '2.1.5', 'cached ok');
  assertReply(await rcpt('nobody@callout.test'), 550, '5.1.1', 'cached reject');
  assert.equal(timesAsked('alice@callout.test'), 1, 'no second callout for alice');
  assert.equal(timesAsked('nobody@callout.test'), 1, 'no second callout for nobody');

  const cached = await ternJson<{ recipients: { address: string; result: string }[] }>(platform, 'verify', 'ls', '--domain', 'callout.test');
  assert.deepEqual(
    cached.recipients.map((r) => [r.address, r.result]),
    [
      ['alice@callout.test', 'VERIFY_RESULT_OK'],
      ['nobody@callout.test', 'VERIFY_RESULT_REJECT'],
    ],
  );
  // Flushed, the next RCPT asks again.
  await tern(platform, 'verify', 'flush', 'nobody@callout.test');
  assertReply(await rcpt('nobody@callout.test'), 550, '5.1.1', 'asked again');
  assert.equal(timesAsked('nobody@callout.test'), 2);
  const none = await ternRaw(platform, ['verify', 'flush', 'never@callout.test']);
  assert.equal(none.code, 5);
  assert.match(none.stderr, /tern verify ls/);
});

test('callout: while the next hop is down RCPT gets 450 4.1.1, not cached: once it is back the address is verified', async () => {
  await nextHop.close();
  try {
    const r = await rcpt('carol@callout.test');
    assertReply(r, 450, '4.1.1', 'next hop down');
    assert.match(r.text, /<carol@callout\.test>: Recipient address rejected: unverified address: connect to .*Connection refused/);
  } finally {
    await nextHop.start();
  }
  const cached = await ternJson<{ recipients?: { address: string }[] }>(platform, 'verify', 'ls', '--domain', 'callout.test');
  assert.ok(!(cached.recipients ?? []).some((x) => x.address === 'carol@callout.test'), 'a temporary failure is not cached');
  assertReply(await rcpt('carol@callout.test'), 250, '2.1.5', 'next hop back');
  assert.equal(timesAsked('carol@callout.test'), 1);
});

test(`callout: many unknown RCPTs make at most ${RATE} callouts per domain (TERN_VERIFY_RATE_PER_DOMAIN), the rest 450 4.1.1`, async () => {
  const n = RATE * 3;
  const addresses = Array.from({ length: n }, (_, i) => `guess${i}@flood.test`);
  const replies = await rcpts(...addresses);
  const refused = replies.filter((r) => r.code === 550);
  const deferred = replies.filter((r) => r.code === 450);
  assert.equal(refused.length, RATE, replies.map((r) => r.lines.join(' ')).join('\n'));
  assert.equal(deferred.length, n - RATE);
  for (const r of deferred) {
    assertReply(r, 450, '4.1.1', 'past the rate');
    assert.match(r.text, /unverified address: verification rate for flood\.test exceeded/);
  }
  assert.equal(asked.filter((a) => a.endsWith('@flood.test')).length, RATE, 'the next hop saw only the bounded callouts');
  // The deferred ones were not cached: they are not refused for good.
  const cached = await ternJson<{ recipients?: unknown[] }>(platform, 'verify', 'ls', '--domain', 'flood.test');
  assert.equal((cached.recipients ?? []).length, RATE);
});
