// What an operator sees when a `tern` command fails, against the real admin,
// queue, policy and webhooks services (processes on real Postgres and NATS):
// one line on stderr that names the argument or setting at fault and the next
// step, the exit code cli/README.md documents, never a stack trace, a raw
// gRPC or OpenSSL dump, or the token.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { send, tern, ternJson, ternRaw, type AdminTarget, type TernResult } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-operator-errors' });
let platform: Platform;
let viewer: AdminTarget;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-operator-errors-'));

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const dns = await harness.startDns({ host: '127.0.0.1' });
  // Nothing listens there: mail for nowhere.test is deferred and stays in the queue.
  dns.mx('nowhere.test', 'mx.nowhere.test').a('mx.nowhere.test', '127.0.0.10');
  const adminToken = 'root-token-0123456789';
  const kek = crypto.randomBytes(32).toString('base64');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: await harness.freePort('127.0.0.10'),
    adminToken,
    env: {
      admin: { TERN_ADMIN_TOKENS: `root:${adminToken},ro:ro-token-0123456789:viewer` },
      queue: { TERN_QUEUE_BACKOFF_MIN_S: '600' },
      policy: { TERN_DKIM_KEK: kek },
      delivery: { TERN_DKIM_KEK: kek },
    },
  });
  viewer = { adminAddr: platform.adminAddr, adminToken: 'ro-token-0123456789' };
});

after(async () => {
  await harness.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Runs a command that must fail; checks the exit code, that stderr is one clean line, and that it matches every pattern. */
async function fails(args: string[], code: number, patterns: RegExp[], opts: { target?: AdminTarget; env?: Record<string, string> } = {}): Promise<TernResult> {
  const r = await ternRaw(opts.target ?? platform, args, { env: opts.env });
  const line = r.stderr;
  assert.equal(r.code, code, `tern ${args.join(' ')}: exit ${code} expected, got ${r.code}: ${line}`);
  assert.equal(line.trim().split('\n').length, 1, `one line: ${line}`);
  assert.match(line, /^tern: /, line);
  assert.doesNotMatch(line, /\n\s+at |\.[jt]s:\d+|undefined|\[object Object\]|Resolution note|:error:[0-9A-F]+:|DeprecationWarning|^\d+ [A-Z_]+:/, line);
  for (const p of patterns) assert.match(line, p, line);
  return r;
}

test('dkim import and rotate take --key-file after the command as the private key; before it, --key-file stays the mTLS client key', async () => {
  const pem = path.join(dir, 'ed.pem');
  fs.writeFileSync(pem, crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const imported = await ternRaw(platform, ['dkim', 'import', 'keys.test', 'imp1', '--key-file', pem]);
  assert.equal(imported.code, 0, imported.stderr);
  assert.match(imported.stdout, /^DKIM key imp1 of keys\.test \(ed25519\) signs now/);
  assert.match(imported.stdout, /imp1\._domainkey\.keys\.test IN TXT "v=DKIM1; k=ed25519; p=/);

  const next = path.join(dir, 'ed2.pem');
  fs.writeFileSync(next, crypto.generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const rotated = await ternRaw(platform, ['dkim', 'rotate', 'keys.test', 'imp2', `--key-file=${next}`, '--after', '0']);
  assert.equal(rotated.code, 0, rotated.stderr);
  const keys = await ternJson<{ keys?: { selector: string; state?: string }[] }>(platform, 'dkim', 'ls', 'keys.test');
  assert.deepEqual(keys.keys?.map((k) => [k.selector, k.state]), [['imp2', 'DKIM_KEY_STATE_ACTIVE']]);

  await fails(['dkim', 'import', 'keys.test', 'imp3'], 2, [/--key-file is required: the private key in PEM/, /tern dkim import example\.com s2026 --key-file key\.pem/]);
  await fails(['dkim', 'import', 'keys.test', 'imp3', '--key-file', path.join(dir, 'missing.pem')], 2, [/--key-file: cannot read .*missing\.pem \(it does not exist\): give the private key's PEM file/]);
  // Before the command it is the global option of the client key, which needs --cert-file.
  await fails(['--key-file', pem, 'dkim', 'ls'], 2, [/a client certificate needs both --cert-file and --key-file/]);
});

test('a token that cannot be sent is refused naming where it came from, never echoed', async () => {
  const r = await fails(['domain', 'ls'], 4, [/the token from TERN_ADMIN_TOKEN has a line break at position 5/, /Check TERN_ADMIN_TOKEN/], {
    env: { TERN_ADMIN_TOKEN: 'root\n-token-0123456789' },
  });
  assert.doesNotMatch(r.stderr, /token-0123456789|Metadata/);
  await fails(['--token', 'root token', 'domain', 'ls'], 4, [/the token from --token has a space at position 5/]);
  await fails(['--token-file', path.join(dir, 'no-token'), 'domain', 'ls'], 2, [/cannot read the token file .*no-token \(--token-file\): it does not exist\. Check --token-file/], {
    env: { TERN_ADMIN_TOKEN: '' },
  });
});

test('a malformed --server or TERN_ADMIN_ADDR is named with the form expected; the wrong port or protocol says what answered', async () => {
  await fails(['--server', '127.0.0.1:99999', 'domain', 'ls'], 2, [/--server: port 99999 of "127\.0\.0\.1:99999" is out of range \(1-65535\); expected host:port, e\.g\. 127\.0\.0\.1:7000/]);
  await fails(['domain', 'ls'], 2, [/TERN_ADMIN_ADDR: "127\.0\.0\.1" has no port; expected host:port/], { env: { TERN_ADMIN_ADDR: '127.0.0.1' } });
  await fails(['--server', 'http://127.0.0.1:7000/', 'domain', 'ls'], 2, [/--server: "http:\/\/127\.0\.0\.1:7000\/" is not host:port/]);
  await fails(['--server', '', 'domain', 'ls'], 2, [/--server: empty; expected host:port/]);
  await fails(['--ca-file', path.join(dir, 'no-ca.pem'), 'domain', 'ls'], 2, [/the CA file \(--ca-file, TERN_ADMIN_CA_FILE\) .*no-ca\.pem does not exist: check the path/]);
  // The SMTP listener is no gRPC server: a port mixed up.
  await fails(['--timeout', '5', '--server', `127.0.0.1:${platform.smtpPort}`, 'domain', 'ls'], 3, [
    new RegExp(`cannot reach the admin API at 127\\.0\\.0\\.1:${platform.smtpPort} \\(the server there does not answer gRPC\\)`),
    /admin API's gRPC port/,
  ]);
  // TLS towards the plaintext admin API: the cause in words, no OpenSSL error string, no Node deprecation notice.
  await fails(['--tls', '--timeout', '5', 'domain', 'ls'], 3, [/\(the server does not speak TLS\)\. Try without --tls/]);
});

test('queue actions and download by id: a malformed id names the format, an unknown one is not found, either case finds the message', async () => {
  const id = await send(platform, 'app@sender.test', ['someone@nowhere.test'], 'operator errors 1');
  await fails(['queue', 'hold', 'NOTANID'], 1, [/queue_id: "NOTANID" is not a queue id \(16 letters and digits/, /tern queue ls/]);
  await fails(['queue', 'hold', '0000000000000000', '--dry-run'], 5, [/no message with queue id "0000000000000000" \(tern queue ls --state all lists them\)/]);
  await fails(['queue', 'retry', '0000000000000000'], 5, [/no message with queue id "0000000000000000"/]);
  await fails(['queue', 'hold', id, '--all'], 2, [/give either a queue ID or --all, not both/]);

  const held = await ternJson<{ messages?: number }>(platform, 'queue', 'hold', id.toLowerCase(), '--reason', 'lower case');
  assert.equal(held.messages, 1, 'the id in lower case holds the message');
  const shown = await ternJson<{ recipients?: { state?: string }[] }>(platform, 'message', 'show', id);
  assert.equal(shown.recipients?.[0]?.state, 'RECIPIENT_STATE_HELD');

  await fails(['message', 'download', 'NOTANID'], 1, [/queue_id: "NOTANID" is not a queue id/]);
  const body = await ternRaw(platform, ['message', 'download', id.toLowerCase(), '--headers-only']);
  assert.equal(body.code, 0, body.stderr);
  assert.match(body.stdout, /Subject: operator errors 1/);
  await fails(['message', 'download', id, '-o', path.join(dir, 'no-such-dir', 'm.eml')], 2, [/-o .*no-such-dir\/m\.eml: cannot write it \(its directory does not exist\); give a file/]);
});

test('a rate above what the API can hold is refused naming N and its range, not a serialization failure', async () => {
  await fails(['limit', 'set', 'messages-per-ip', '99999999999/1m'], 2, [/rate: N in "99999999999\/1m" must be from 1 to 4294967295 \(off for no limit\)/]);
  await fails(['limit', 'set', 'messages-per-ip', '0/1m'], 2, [/rate: N in "0\/1m" must be from 1/]);
  await fails(['limit', 'rm', 'messages-per-ip', '--for', '192.0.2.1'], 5, [/no messages-per-ip rule for 192\.0\.2\.1: nothing removed \(tern limit ls lists the rules\)/]);
});

test('rm of something that is not there names the ls to run', async () => {
  await fails(['domain', 'rm', 'nosuch.test'], 5, [/no domain nosuch\.test: nothing deleted \(tern domain ls lists them\)/]);
  await fails(['route', 'rm', 'nosuch.test'], 5, [/\(tern route ls lists them\)/]);
  await fails(['mailbox', 'rm', 'a@nosuch.test'], 5, [/\(tern mailbox ls lists them\)/]);
  await fails(['user', 'rm', 'nosuch'], 5, [/\(tern user ls lists them\)/]);
  await fails(['suppression', 'rm', 'a@nosuch.test'], 5, [/\(tern suppression ls lists them\)/]);
});

test('service messages: the role a viewer lacks, a bounce rule without a condition', async () => {
  await fails(['domain', 'add', 'viewer.test'], 4, [/putDomain needs the admin role; ro has viewer \(give ro a token with role admin: name:token:admin in TERN_ADMIN_TOKENS_FILE\)/], { target: viewer });
  await fails(['bounce-rule', 'set', 'r1', 'policy'], 1, [/rule\.code_prefix, rule\.pattern: give one or both \(tern bounce-rule set NAME CLASS --code 5\.7\.1 or --text REGEX\)/]);
});

test('a number past what the API carries is named with its option and range, not a serialization failure', async () => {
  await fails(['milter', 'set', 'big', '127.0.0.1:11332', '--connect-timeout', '99999999999'], 2, [/--connect-timeout: "99999999999" is more than 10m \(at most 10m; 0 for the default\)/]);
  await fails(['milter', 'set', 'big', '127.0.0.1:11332', '--total-timeout', '10h'], 2, [/--total-timeout: "10h" is not a time in ms, s or m/]);
  await fails(['dkim', 'generate', 'keys.test', 'big', '--bits', '99999999999'], 2, [/--bits: "99999999999" is not 2048, 3072 or 4096/]);
  await fails(['suppression', 'ls', '--limit', '99999999999'], 2, [/--limit: expected a whole number from 1 to 1000 \(got "99999999999"\)/]);
  await fails(['domain', 'add', 'big.test', '--max-size', '99999999999G'], 2, [/--max-size: "99999999999G" is more than 1024G/]);
  await fails(['queue', 'ls', '--older-than', '99999999999999d'], 2, [/--older-than: "99999999999999d" is more than 3650d/]);
  await fails(['queue', 'ls', '--older-than', '99999999999999'], 2, [/--older-than: "99999999999999" is more than 3650d/]);
});

test('a webhook URL of another scheme names the scheme and the one to use', async () => {
  await fails(['webhook', 'add', 'ftp://hooks.example.com/'], 1, [/the webhooks service refused the request: url: ftp:\/\/ is refused: use https:\/\/ \(e\.g\. https:\/\/app\.example\.com\/tern\)/]);
});

test('a route target names what is wrong with it: the port range, the unix: form for LMTP', async () => {
  await fails(['route', 'set', 'target.test', '--kind', 'smarthost', '--target', 'relay.test:99999'], 1, [/route\.target: port 99999 of "relay\.test:99999" is out of range \(1-65535\)/]);
  await fails(['route', 'set', 'target.test', '--kind', 'lmtp', '--target', 'unix:relative'], 1, [/route\.target: "unix:relative" is not host:port \(e\.g\. .*, or unix:\/absolute\/path\)/]);
});

test('a mailbox or alias of a domain that is not ours, or not local, names the domain and the command; a domain in use names what to list', async () => {
  await fails(['mailbox', 'add', 'a@unknown.test'], 1, [/mailbox\.address: domain "unknown\.test" is not one of ours: add it first \(tern domain add unknown\.test\)/]);
  await tern(platform, 'domain', 'add', 'relayed.test', '--kind', 'relay');
  await fails(['alias', 'add', 'a@relayed.test', 'b@elsewhere.test'], 1, [/alias\.address: domain "relayed\.test" is a relay domain: mailboxes and aliases belong to local domains/]);
  await tern(platform, 'domain', 'add', 'inuse.test');
  await tern(platform, 'mailbox', 'add', 'a@inuse.test');
  await fails(['domain', 'rm', 'inuse.test'], 1, [/domain inuse\.test still has 1 mailboxes and 0 aliases; delete them first \(tern mailbox ls --domain inuse\.test, tern alias ls --domain inuse\.test\)/]);
});

test('user add --keep-password of a user that does not exist is refused naming the password, not saved without one', async () => {
  await fails(['user', 'add', 'newbie@keys.test', '--keep-password'], 1, [/password: required for a new user \("newbie@keys\.test" does not exist yet\): give one \(tern user add newbie@keys\.test --password-stdin/]);
  const users = await ternJson<{ users?: { username: string }[] }>(platform, 'user', 'ls');
  assert.equal(users.users?.some((u) => u.username === 'newbie@keys.test') ?? false, false, 'nothing was saved');
  const added = await ternRaw(platform, ['user', 'add', 'newbie@keys.test', '--password-stdin'], { stdin: 'a-long-password-1\n' });
  assert.equal(added.code, 0, added.stderr);
  const kept = await ternRaw(platform, ['user', 'add', 'newbie@keys.test', '--keep-password', '--may-relay']);
  assert.equal(kept.code, 0, kept.stderr);
  assert.match(kept.stdout, /User newbie@keys\.test saved \(password unchanged\)/);
});

test('a domain size limit above the global one is refused naming both, not saved to never apply', async () => {
  await fails(['domain', 'add', 'sized.test', '--max-size', '100M'], 1, [
    /domain\.max_message_size: 104857600 bytes \(100\.0 MiB\) is above policy's TERN_MAX_MESSAGE_SIZE, 52428800 bytes \(50\.0 MiB\), which applies first: give at most that, or raise TERN_MAX_MESSAGE_SIZE/,
  ]);
  const saved = await ternRaw(platform, ['domain', 'add', 'sized.test', '--max-size', '10M']);
  assert.equal(saved.code, 0, saved.stderr);
});

test('relay recipients and verification: an unreadable import file, a listing of a domain without a list, a flush of nothing', async () => {
  await fails(['relay-recipient', 'import', path.join(dir, 'missing.txt')], 2, [/FILE: cannot read .*missing\.txt \(it does not exist\): give the file to import, or - for standard input/]);
  await fails(['relay-recipient', 'ls', '--domain', 'nolist.test'], 1, [/domain: nolist\.test is not a relay domain; add it first: tern domain add nolist\.test --kind relay --recipients list/]);
  const r = await fails(['verify', 'flush', 'nosuch@nolist.test'], 5, [/no cached verification for nosuch@nolist\.test: nothing forgotten \(see tern verify ls\)/]);
  assert.equal(r.stdout, '', 'nothing on stdout when nothing was forgotten');
});

test('--tls-server-name without TLS is refused, not ignored', async () => {
  await fails(['--tls-server-name', 'admin.tern.test', 'domain', 'ls'], 2, [/--tls-server-name names the server certificate, so it needs TLS: add --tls \(or --ca-file\)/]);
});
