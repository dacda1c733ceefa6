// Issue 7 end to end: policy rules proven through a running ingress, with the
// data managed by an operator through the `tern` CLI. A client bound to
// 127.0.0.2 plays an untrusted internet host (the trusted network is
// 127.0.0.1/32); raw SMTP is used where a library would refuse the address.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import { Harness, startPlatform, submissionListener, type Platform } from '@tern/devkit';
import { policyDecisions, queueIdOf, rcptReply, smtp, tern, ternJson, ternRaw, waitFor, type SmtpReply } from './helpers';

const harness = new Harness({ name: 'ops-policy' });
let platform: Platform;
let submissionPort: number;
const UNTRUSTED = '127.0.0.2';

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  // Submission (587-style, STARTTLS then AUTH) needs a certificate.
  const submission = await submissionListener(harness);
  submissionPort = submission.port;
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: await harness.freePort(),
    // Policy and acceptance only: nothing here needs delivery or bounce.
    only: ['policy', 'queue', 'admin', 'ingress'],
    env: {
      ingress: submission.env,
    },
  });
  // The operator sets up the mail domains.
  await tern(platform, 'domain', 'add', 'dest.test', '--kind', 'local');
  await tern(platform, 'domain', 'add', 'relay.test', '--kind', 'relay');
  await tern(platform, 'mailbox', 'add', 'bob@dest.test');
});

after(() => harness.close());

const rcpt = (to: string, localAddress = UNTRUSTED) => rcptReply(platform, { from: 'someone@outside.test', rcpt: to, localAddress });

function assertReply(r: SmtpReply, code: number, enhanced: string, what: string): void {
  assert.equal(r.code, code, `${what}: expected ${code} ${enhanced}, got "${r.lines.join(' | ')}"`);
  assert.equal(r.enhanced, enhanced, `${what}: expected ${code} ${enhanced}, got "${r.lines.join(' | ')}"`);
}

test('the operator sees the domains and mailboxes created through the CLI', async () => {
  const domains = await ternJson<{ domains: { name: string; kind: string }[] }>(platform, 'domain', 'ls');
  assert.deepEqual(
    domains.domains.map((d) => [d.name, d.kind]).sort(),
    [
      ['dest.test', 'DOMAIN_KIND_LOCAL'],
      ['relay.test', 'DOMAIN_KIND_RELAY'],
    ],
  );
  const mailboxes = await ternJson<{ mailboxes: { address: string; enabled?: boolean }[] }>(platform, 'mailbox', 'ls', '--domain', 'dest.test');
  assert.deepEqual(mailboxes.mailboxes, [{ address: 'bob@dest.test', enabled: true }]);
});

test('an untrusted client is accepted for local and relay domains, and refused for any other (554 5.7.1)', async () => {
  assertReply(await rcpt('<bob@dest.test>'), 250, '2.1.5', 'local mailbox');
  assertReply(await rcpt('<anyone@relay.test>'), 250, '2.1.5', 'relay domain');
  const denied = await rcpt('<victim@foreign.test>');
  assertReply(denied, 554, '5.7.1', 'foreign domain');
  assert.match(denied.text, /Relay access denied/);
  // The trusted network may relay.
  assertReply(await rcpt('<victim@foreign.test>', '127.0.0.1'), 250, '2.1.5', 'foreign domain from the trusted network');
});

// Each trick names an accepted domain last, so a naive relay would take it
// and route it on to victim.test. Every one must be refused in the dialogue.
const TRICKS: { name: string; reason: string; rcpt: (domain: string) => string }[] = [
  { name: 'percent hack', reason: 'routing_trick_percent_hack', rcpt: (d) => `<user%victim.test@${d}>` },
  { name: 'bang path', reason: 'routing_trick_bang_path', rcpt: (d) => `<victim.test!user@${d}>` },
  { name: 'quoted local part holding @', reason: 'routing_trick_quoted_at', rcpt: (d) => `<"user@victim.test"@${d}>` },
];

for (const trick of TRICKS) {
  test(`relay denied for the ${trick.name} (554 5.7.1, reason ${trick.reason}), to a local and to a relay domain`, async () => {
    const before = (await policyDecisions(platform)).get(trick.reason) ?? 0;
    for (const domain of ['dest.test', 'relay.test']) {
      const r = await rcpt(trick.rcpt(domain));
      assertReply(r, 554, '5.7.1', `${trick.name} via ${domain}`);
      assert.match(r.text, /Relay access denied/, `${trick.name} via ${domain}`);
    }
    const now = (await policyDecisions(platform)).get(trick.reason) ?? 0;
    assert.ok(now >= before + 2, `tern_policy_decisions_total{reason="${trick.reason}"} counted both refusals (${before} -> ${now})`);
  });
}

test('relay denied for user@a@b: refused by ingress as bad syntax before policy sees it (501 5.1.3)', async () => {
  for (const domain of ['dest.test', 'relay.test']) {
    const r = await rcpt(`<user@victim.test@${domain}>`);
    assertReply(r, 501, '5.1.3', `user@a@b via ${domain}`);
    assert.match(r.text, /bad recipient address syntax/);
  }
});

test('relay denied for a source route: the route is stripped and the final foreign address refused (554 5.7.1)', async () => {
  // "@relay:user@victim" asks us to pass the mail on; RFC 5321 says to ignore the route,
  // which leaves a foreign address, so no relaying through an accepted domain.
  for (const hop of ['dest.test', 'relay.test']) {
    const r = await rcpt(`<@${hop}:user@victim.test>`);
    assertReply(r, 554, '5.7.1', `source route via ${hop}`);
    assert.match(r.text, /Relay access denied/);
  }
  // A route ending at a local mailbox is delivered there, never to the route's hop.
  assertReply(await rcpt('<@victim.test:bob@dest.test>'), 250, '2.1.5', 'source route ending at a local mailbox');
});

test('an unknown local user is refused at RCPT (550 5.1.1), from untrusted and trusted clients alike', async () => {
  for (const client of [UNTRUSTED, '127.0.0.1']) {
    const r = await rcpt('<nobody@dest.test>', client);
    assertReply(r, 550, '5.1.1', `unknown user from ${client}`);
    assert.match(r.text, /User unknown in local recipient table/);
  }
  // And the end of a whole transaction: nothing is queued, so nothing can bounce later.
  await assert.rejects(
    smtp(platform, UNTRUSTED).sendMail({ envelope: { from: 'someone@outside.test', to: ['nobody@dest.test'] }, raw: 'Subject: x\r\n\r\nx\r\n' }),
    (err: { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 550, err.response);
      return true;
    },
  );
});

test('a mailbox created with `tern mailbox add` is accepted within seconds; removed or disabled, it is refused again', async () => {
  assertReply(await rcpt('<carol@dest.test>'), 550, '5.1.1', 'before the mailbox exists');
  const created = await ternJson<{ address: string }>(platform, 'mailbox', 'add', 'Carol@Dest.Test');
  assert.equal(created.address, 'carol@dest.test', 'the address is canonicalised');
  const t0 = Date.now();
  await waitFor('carol@dest.test to be accepted', async () => ((await rcpt('<carol@dest.test>')).code === 250 ? true : undefined), 5_000, 100);
  const tookMs = Date.now() - t0;
  assert.ok(tookMs < 5_000, `accepted ${tookMs} ms after the CLI returned`);

  // A whole message from the internet is queued for her.
  const info = await smtp(platform, UNTRUSTED).sendMail({
    envelope: { from: 'someone@outside.test', to: ['carol@dest.test'] },
    raw: 'From: someone@outside.test\r\nTo: carol@dest.test\r\nSubject: welcome\r\n\r\nHi Carol.\r\n',
  });
  const id = queueIdOf(info.response);
  const shown = await ternJson<{ recipients: { address: string }[] }>(platform, 'message', 'show', id);
  assert.deepEqual(
    shown.recipients.map((r) => r.address),
    ['carol@dest.test'],
  );

  await tern(platform, 'mailbox', 'add', 'carol@dest.test', '--disabled');
  await waitFor('the disabled mailbox to be refused', async () => ((await rcpt('<carol@dest.test>')).code === 550 ? true : undefined), 5_000, 100);
  assertReply(await rcpt('<carol@dest.test>'), 550, '5.2.1', 'disabled mailbox');

  await tern(platform, 'mailbox', 'rm', 'carol@dest.test');
  await waitFor('the removed mailbox to be unknown', async () => ((await rcpt('<carol@dest.test>')).enhanced === '5.1.1' ? true : undefined), 5_000, 100);
  const again = await ternRaw(platform, ['mailbox', 'rm', 'carol@dest.test']);
  assert.equal(again.code, 5, `removing it twice is "not found" (exit 5): ${again.stderr}`);
});

test('an alias created with `tern alias add` is accepted; user+ext of a mailbox too; a catch-all takes unknown users', async () => {
  assertReply(await rcpt('<sales@dest.test>'), 550, '5.1.1', 'before the alias exists');
  const alias = await ternJson<{ address: string; targets: string[] }>(platform, 'alias', 'add', 'sales@dest.test', 'bob@dest.test', 'boss@elsewhere.test');
  assert.deepEqual(alias, { address: 'sales@dest.test', targets: ['bob@dest.test', 'boss@elsewhere.test'] });
  await waitFor('the alias to be accepted', async () => ((await rcpt('<sales@dest.test>')).code === 250 ? true : undefined), 5_000, 100);
  const listed = await ternJson<{ aliases: { address: string }[] }>(platform, 'alias', 'ls', '--domain', 'dest.test');
  assert.ok(listed.aliases.some((a) => a.address === 'sales@dest.test'));

  assertReply(await rcpt('<bob+lists@dest.test>'), 250, '2.1.5', 'sub-address of a mailbox');

  await tern(platform, 'domain', 'add', 'catch.test', '--kind', 'local', '--catch-all', 'bob@dest.test');
  await waitFor('the catch-all domain to accept anyone', async () => ((await rcpt('<whoever@catch.test>')).code === 250 ? true : undefined), 5_000, 100);

  await tern(platform, 'alias', 'rm', 'sales@dest.test');
  await waitFor('the removed alias to be refused', async () => ((await rcpt('<sales@dest.test>')).code === 550 ? true : undefined), 5_000, 100);
});

test('a domain with mailboxes cannot be removed; the error names the reason and the CLI exits non-zero', async () => {
  const r = await ternRaw(platform, ['domain', 'rm', 'dest.test']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /^tern: /);
  assert.match(r.stderr, /FAILED_PRECONDITION|mailbox|alias/i);
  const bad = await ternRaw(platform, ['mailbox', 'add', 'someone@nowhere.test']);
  assert.notEqual(bad.code, 0, 'a mailbox needs an existing local domain');
  assert.match(bad.stderr, /^tern: .*mailbox/im);
});

function submission(auth?: { user: string; pass: string }) {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port: submissionPort,
    secure: false,
    requireTLS: true,
    tls: { rejectUnauthorized: false },
    localAddress: UNTRUSTED,
    name: 'laptop.example',
    auth,
  } as Parameters<typeof nodemailer.createTransport>[0]);
}

test('a submission user created with `tern user add --password-stdin` may relay after AUTH; a wrong password or no AUTH may not', async () => {
  const password = 'correct horse battery staple';
  const r = await ternRaw(platform, ['--json', 'user', 'add', 'alice@sub.test', '--may-relay', '--allowed-sender', '@sub.test', '--password-stdin'], {
    stdin: `${password}\n`,
  });
  assert.equal(r.code, 0, r.stderr);
  const user = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.equal(user.username, 'alice@sub.test');
  assert.equal(user.mayRelay, true);
  const users = await tern(platform, '--json', 'user', 'ls');
  assert.ok(!users.includes('scrypt') && !users.includes(password), 'neither the password nor its hash is ever shown');

  const info = await waitFor(
    'alice to be able to submit',
    async () => {
      try {
        return await submission({ user: 'alice@sub.test', pass: password }).sendMail({
          envelope: { from: 'alice@sub.test', to: ['friend@foreign.test'] },
          raw: 'From: alice@sub.test\r\nTo: friend@foreign.test\r\nSubject: from my laptop\r\n\r\nHi.\r\n',
        });
      } catch {
        return undefined;
      }
    },
    5_000,
    200,
  );
  const id = queueIdOf(info.response);
  const shown = await ternJson<{ envelope: { sender: string; authUser?: string } }>(platform, 'message', 'show', id);
  assert.equal(shown.envelope.sender, 'alice@sub.test');

  // Wrong password: 535 5.7.8.
  await assert.rejects(
    submission({ user: 'alice@sub.test', pass: 'wrong' }).sendMail({ envelope: { from: 'alice@sub.test', to: ['friend@foreign.test'] }, raw: 'Subject: x\r\n\r\nx\r\n' }),
    (err: { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 535, err.response);
      assert.match(err.response ?? '', /5\.7\.8/);
      return true;
    },
  );
  // No AUTH on the submission port, from an untrusted client: 530 5.7.0.
  await assert.rejects(
    submission().sendMail({ envelope: { from: 'alice@sub.test', to: ['friend@foreign.test'] }, raw: 'Subject: x\r\n\r\nx\r\n' }),
    (err: { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 530, err.response);
      assert.match(err.response ?? '', /5\.7\.0/);
      return true;
    },
  );
  // Authenticated, but as a sender it does not own: 553 5.7.1.
  await assert.rejects(
    submission({ user: 'alice@sub.test', pass: password }).sendMail({
      envelope: { from: 'ceo@bank.test', to: ['friend@foreign.test'] },
      raw: 'Subject: x\r\n\r\nx\r\n',
    }),
    (err: { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 553, err.response);
      assert.match(err.response ?? '', /5\.7\.1/);
      return true;
    },
  );

  // A user without may_relay may send to local domains only.
  const r2 = await ternRaw(platform, ['user', 'add', 'dave@dest.test', '--password-stdin'], { stdin: 'dave-secret\n' });
  assert.equal(r2.code, 0, r2.stderr);
  await assert.rejects(
    submission({ user: 'dave@dest.test', pass: 'dave-secret' }).sendMail({
      envelope: { from: 'dave@dest.test', to: ['friend@foreign.test'] },
      raw: 'Subject: x\r\n\r\nx\r\n',
    }),
    (err: { responseCode?: number; response?: string }) => {
      assert.equal(err.responseCode, 554, err.response);
      assert.match(err.response ?? '', /5\.7\.1/);
      return true;
    },
  );

  // Removed: the login fails within seconds.
  await tern(platform, 'user', 'rm', 'alice@sub.test');
  await waitFor(
    'the removed user to be refused',
    async () => {
      try {
        await submission({ user: 'alice@sub.test', pass: password }).sendMail({
          envelope: { from: 'alice@sub.test', to: ['friend@foreign.test'] },
          raw: 'Subject: x\r\n\r\nx\r\n',
        });
        return undefined;
      } catch (err) {
        return (err as { responseCode?: number }).responseCode === 535 ? true : undefined;
      }
    },
    5_000,
    200,
  );
});
