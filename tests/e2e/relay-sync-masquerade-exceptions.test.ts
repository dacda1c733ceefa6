// Two Postfix operator habits through the `tern` CLI, the admin service,
// policy, queue and ingress as processes (no delivery: what policy made of
// an envelope is read back from the queue):
// - a relay domain's recipient list synced from an export by cron
//   (`tern relay-recipient import --replace FILE --domain D`): a dry run
//   counts, the real run swaps the list in one transaction (RCPT refuses a
//   removed user with 550 5.1.1 and takes a new one at once), an empty export
//   or a bad line changes nothing, each change leaves one audit row;
// - masquerade exceptions (Postfix masquerade_exceptions,
//   `tern canonical masquerade-except root`): joe@host.corp.test is stored as
//   joe@corp.test, root@host.corp.test as it is.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { RawSmtp, send, tern, ternJson, ternRaw, type SmtpReply } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-relay-sync-masquerade' });
let platform: Platform;
let databaseUrl: string;
let dir: string;
/** An internet client: not in the trusted networks. */
const UNTRUSTED = '127.0.0.2';

before(async () => {
  const database = await harness.createTestDatabase();
  databaseUrl = database.url;
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: '127.0.0.1:53',
    remoteSmtpPort: 25,
    only: ['policy', 'queue', 'admin', 'ingress'],
  });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-relay-sync-'));
  harness.defer(() => fs.rmSync(dir, { recursive: true, force: true }), 'remove the export files');
  await tern(platform, 'domain', 'add', 'list.test', '--kind', 'relay', '--recipients', 'list');
  await tern(platform, 'domain', 'add', 'open.test', '--kind', 'relay');
});

after(() => harness.close());

function file(name: string, text: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
}

async function rcpt(address: string): Promise<SmtpReply> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, UNTRUSTED);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    assert.equal((await client.command('MAIL FROM:<sender@outside.test>')).code, 250);
    return await client.command(`RCPT TO:<${address}>`);
  } finally {
    client.close();
  }
}

const listed = async () => ((await ternJson<{ recipients?: { address: string }[] }>(platform, 'relay-recipient', 'ls', '--domain', 'list.test')).recipients ?? []).map((r) => r.address);

async function audits(): Promise<{ action: string; key: string; operator: string; detail: Record<string, unknown> }[]> {
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    return (await c.query("SELECT action, key, operator, detail FROM policy.audit WHERE entity = 'relay_recipient' AND action = 'replace' ORDER BY id")).rows;
  } finally {
    await c.end();
  }
}

test('relay-recipient import --replace: a dry run counts, the real run makes the export the whole list (removed users refused at RCPT), one audit row', async () => {
  await tern(platform, 'relay-recipient', 'add', 'alice@list.test', 'bob@list.test', 'carol@list.test');
  // A Postfix relay_recipients source as the mailbox server exports it.
  const exported = file('export.txt', '# export of the mailbox server\nbob@list.test OK\ncarol@list.test OK\n\ndave@list.test OK\n');

  const dry = await tern(platform, 'relay-recipient', 'import', '--replace', exported, '--domain', 'list.test', '--dry-run');
  assert.equal(dry, `Would replace the relay recipients of list.test with ${exported} (3 entries): 1 added, 1 removed, 2 kept.\n`);
  assert.deepEqual(await listed(), ['alice@list.test', 'bob@list.test', 'carol@list.test'], 'a dry run changes nothing');
  assert.equal((await rcpt('alice@list.test')).code, 250);
  assert.equal((await rcpt('dave@list.test')).code, 550);
  assert.deepEqual(await audits(), []);

  const done = await ternJson<{ added: number; removed: number; kept: number; dryRun: boolean; lines: number }>(
    platform,
    'relay-recipient',
    'import',
    '--replace',
    exported,
    '--domain',
    'list.test',
  );
  assert.deepEqual({ ...done }, { file: exported, domain: 'list.test', lines: 3, added: 1, removed: 1, kept: 2, dryRun: false });
  assert.deepEqual(await listed(), ['bob@list.test', 'carol@list.test', 'dave@list.test']);
  const gone = await rcpt('alice@list.test');
  assert.deepEqual([gone.code, gone.enhanced], [550, '5.1.1'], gone.lines.join(' | '));
  assert.equal((await rcpt('dave@list.test')).code, 250);
  const rows = await audits();
  assert.equal(rows.length, 1);
  assert.deepEqual([rows[0]!.key, rows[0]!.detail.added, rows[0]!.detail.removed, rows[0]!.detail.kept, rows[0]!.detail.removedSample], ['@list.test (all entries)', 1, 1, 2, ['alice@list.test']]);
  assert.notEqual(rows[0]!.operator, '', 'the operator admin authenticated');

  // The same export again (the next cron run): nothing to do, no audit row.
  assert.match(await tern(platform, 'relay-recipient', 'import', '--replace', exported, '--domain', 'list.test'), /: 0 added, 0 removed, 3 kept\.$/m);
  assert.equal((await audits()).length, 1);
});

test('relay-recipient import --replace: an empty export, a bad line or an entry of another domain changes nothing; --allow-empty empties the list', async () => {
  const before = await listed();
  assert.equal(before.length, 3);

  const empty = file('empty.txt', '# the LDAP query failed\n\n');
  const refused = await ternRaw(platform, ['relay-recipient', 'import', '--replace', empty, '--domain', 'list.test']);
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, /no entries; with --replace that would remove every relay recipient of list\.test\. Nothing was changed \(add --allow-empty/);
  // Through stdin as well (an export piped in by cron).
  const piped = await ternRaw(platform, ['relay-recipient', 'import', '--replace', '-', '--domain', 'list.test'], { stdin: '' });
  assert.equal(piped.code, 2, piped.stderr);

  const bad = file('bad.txt', 'bob@list.test\ncarol@list.test\nmallory@open.test\n');
  const other = await ternRaw(platform, ['relay-recipient', 'import', '--replace', bad, '--domain', 'list.test']);
  assert.equal(other.code, 1, other.stderr);
  assert.ok(other.stderr.includes(`${bad}:3: "mallory@open.test": mallory@open.test is not of list.test (a replace covers one domain; run one per domain); nothing was changed (fix the line and run it again)`), other.stderr);

  const syntax = file('syntax.txt', 'bob@list.test\nnot an address\n');
  const broken = await ternRaw(platform, ['relay-recipient', 'import', '--replace', syntax, '--domain', 'list.test']);
  assert.equal(broken.code, 1, broken.stderr);
  assert.ok(broken.stderr.includes(`${syntax}:2: "not": `), broken.stderr);

  const noDomain = await ternRaw(platform, ['relay-recipient', 'import', '--replace', bad]);
  assert.equal(noDomain.code, 2);
  assert.match(noDomain.stderr, /--replace needs --domain D/);
  const domainOnly = await ternRaw(platform, ['relay-recipient', 'import', bad, '--domain', 'list.test']);
  assert.equal(domainOnly.code, 2);
  assert.match(domainOnly.stderr, /--domain goes with --replace/);
  const notRelay = await ternRaw(platform, ['relay-recipient', 'import', '--replace', bad, '--domain', 'nowhere.test']);
  assert.equal(notRelay.code, 1);
  assert.match(notRelay.stderr, /nowhere\.test is not a relay domain; add it first: tern domain add nowhere\.test --kind relay/);

  assert.deepEqual(await listed(), before, 'nothing was changed by the refused runs');
  assert.equal((await audits()).length, 1);

  assert.match(await tern(platform, 'relay-recipient', 'import', '--replace', empty, '--domain', 'list.test', '--allow-empty'), /\(0 entries\): 0 added, 3 removed, 0 kept\./);
  assert.deepEqual(await listed(), []);
  assert.equal((await rcpt('bob@list.test')).code, 550);
});

test('masquerade exceptions: joe@host.corp.test is stored as joe@corp.test, root@host.corp.test as it is; removing the exception masquerades root again', async () => {
  await tern(platform, 'canonical', 'masquerade', 'corp.test');
  assert.match(await tern(platform, 'canonical', 'masquerade-except', 'root', 'MAILER-DAEMON'), /Masquerade exceptions saved: root, mailer-daemon never masqueraded/);
  const sender = async (from: string) => {
    const id = await send(platform, from, ['someone@open.test'], `from ${from}`);
    return (await ternJson<{ envelope?: { sender?: string } }>(platform, 'message', 'show', id)).envelope?.sender;
  };
  assert.equal(await sender('joe@host.corp.test'), 'joe@corp.test');
  assert.equal(await sender('root@host.corp.test'), 'root@host.corp.test');
  assert.equal(await sender('mailer-daemon@eu.host.corp.test'), 'mailer-daemon@eu.host.corp.test');

  const ls = await tern(platform, 'canonical', 'ls');
  assert.match(ls, /masquerade-except\s+root\s+\(root@\* never masqueraded\)/);
  const rules = await ternJson<{ rewrites: { kind: string; match: string }[] }>(platform, 'canonical', 'ls');
  assert.deepEqual(
    rules.rewrites.filter((r) => r.kind === 'REWRITE_KIND_MASQUERADE_EXCEPTION').map((r) => r.match),
    ['mailer-daemon', 'root'],
  );
  const bad = await ternRaw(platform, ['canonical', 'masquerade-except', 'root@corp.test']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /rewrite\.match: "root@corp\.test": give the local part alone/);

  await tern(platform, 'canonical', 'rm', 'root', '--kind', 'masquerade-except');
  assert.equal(await sender('root@other.corp.test'), 'root@corp.test');
  const again = await ternRaw(platform, ['canonical', 'rm', 'root', '--kind', 'masquerade-except']);
  assert.equal(again.code, 5);
});
