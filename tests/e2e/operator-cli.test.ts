// Issue 26 items 8, 9 and 11: the `tern` CLI as an operator runs it, against
// the real admin service in front of queue and policy (all six services as
// processes). Mail is kept in the queue by suspending its destination.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { send, tern, ternJson, ternRaw, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-operator-cli' });
let platform: Platform;
let mx: SmtpSink;

interface Listing {
  messages?: { queueId: string; sender?: string; recipients?: { address: string; state?: string }[] }[];
  nextPageToken?: string;
}
interface Destination {
  name: string;
  suspended?: boolean;
  suspendedReason?: string;
}

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.90');
  mx = await harness.startSink({ host: '127.0.0.90', port, hostname: 'mx.known.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  for (const d of ['known.test', 'sent.test', 'waiting.test', 'listing.test', 'everything.test']) dns.mx(d, 'mx.known.test');
  dns.a('mx.known.test', '127.0.0.90');
  platform = await startPlatform(harness, { databaseUrl: db.url, natsUrl: nats.url, dnsServer: dns.address, remoteSmtpPort: port });
});

after(() => harness.close());

const destinations = async () => new Map(((await ternJson<{ destinations?: Destination[] }>(platform, 'destination', 'ls')).destinations ?? []).map((d) => [d.name, d]));

test('item 11: destination suspend refuses a name the queue never had mail for, naming it and --force; --force suspends ahead of the mail', async () => {
  const typo = await ternRaw(platform, ['destination', 'suspend', 'nosuch.test', '--reason', 'maintenance']);
  assert.equal(typo.code, 5, `exit 5, not found: ${typo.stderr}`);
  assert.match(typo.stderr, /^tern: destination "nosuch\.test": the queue has never had mail for it/);
  assert.match(typo.stderr, /tern destination ls/);
  assert.match(typo.stderr, /--force/);
  assert.equal(typo.stdout, '');
  assert.equal((await destinations()).has('nosuch.test'), false, 'nothing was suspended');

  const resume = await ternRaw(platform, ['destination', 'resume', 'nosuch.test']);
  assert.equal(resume.code, 5, `resume of an unknown name: exit 5 (${resume.stderr})`);
  assert.match(resume.stderr, /destination "nosuch\.test": the queue has never had mail for it/);

  const forced = await ternJson<Destination>(platform, 'destination', 'suspend', 'Waiting.Test.', '--force', '--reason', 'receiver migrating');
  assert.deepEqual([forced.name, forced.suspended, forced.suspendedReason], ['waiting.test', true, 'receiver migrating']);
  const id = await send(platform, 'ops@sender.test', ['someone@waiting.test'], 'waits for resume');
  assert.equal((await destinations()).get('waiting.test')?.suspended, true);

  // A destination with mail needs no --force.
  await send(platform, 'ops@sender.test', ['first@known.test'], 'known first');
  await waitFor('the first known.test message delivered', async () => (mx.messagesFor('first@known.test').length ? true : undefined), 30_000);
  const known = await ternRaw(platform, ['destination', 'suspend', 'known.test', '--reason', 'checking']);
  assert.equal(known.code, 0, known.stderr);
  assert.equal(known.stdout, 'Suspended known.test.\n');
  await tern(platform, 'destination', 'resume', 'known.test');

  const shown = await ternJson<{ recipients?: { state?: string }[] }>(platform, 'message', 'show', id);
  assert.equal(shown.recipients?.[0]?.state, 'RECIPIENT_STATE_QUEUED', 'the forced suspension holds the mail that came after it');
});

test('item 11: message show names the queue id format for a malformed id; an unknown well-formed id is not found; the size is said once', async () => {
  const bad = await ternRaw(platform, ['message', 'show', 'NOTANID']);
  assert.equal(bad.code, 1, bad.stderr);
  assert.match(bad.stderr, /queue_id: "NOTANID" is not a queue id \(16 letters and digits, as in "250 2\.0\.0 Ok: queued as [0-9A-Z]{16}"/);
  assert.doesNotMatch(bad.stderr, /no message/);

  const unknown = await ternRaw(platform, ['message', 'show', '0000000000000000']);
  assert.equal(unknown.code, 5, unknown.stderr);
  assert.match(unknown.stderr, /no message with queue id "0000000000000000"/);

  const id = await send(platform, 'ops@sender.test', ['size@known.test'], 'size line');
  const human = await tern(platform, 'message', 'show', id.toLowerCase());
  const size = /^Size: +(.*)$/m.exec(human)?.[1];
  assert.ok(size, human);
  assert.match(size, /^\d+ bytes$/, `a small message's size once, in bytes: "${size}"`);
  const json = await ternJson<{ size?: string | number }>(platform, 'message', 'show', id);
  assert.equal(size, `${json.size} bytes`);
});

const PENDING = ['RECIPIENT_STATE_QUEUED', 'RECIPIENT_STATE_INFLIGHT', 'RECIPIENT_STATE_DEFERRED', 'RECIPIENT_STATE_HELD'];
const ids = (l: Listing) => (l.messages ?? []).map((m) => m.queueId);
const descending = (list: string[]) => list.every((id, i) => i === 0 || list[i - 1]! > id);

test('item 9: queue ls lists the messages with recipients not yet final, newest first; --state chooses; pages go older', async () => {
  const delivered = await send(platform, 'lister@sender.test', ['done@sent.test'], 'delivered history');
  await waitFor('the history message delivered', async () => (mx.messagesFor('done@sent.test').length ? true : undefined), 30_000);
  await tern(platform, 'destination', 'suspend', 'listing.test', '--force', '--reason', 'keep the listing still');
  const queued: string[] = [];
  for (let i = 1; i <= 3; i++) queued.push(await send(platform, 'lister@sender.test', [`user${i}@listing.test`], `listing ${i}`));

  const byDefault = await ternJson<Listing>(platform, 'queue', 'ls');
  const listed = ids(byDefault);
  assert.deepEqual(listed.slice(0, 3), [...queued].reverse(), `newest first: ${listed.join(' ')}`);
  assert.ok(descending(listed), `in descending queue-id order: ${listed.join(' ')}`);
  assert.ok(!listed.includes(delivered), 'delivered history is not listed by default');
  for (const m of byDefault.messages ?? []) {
    for (const r of m.recipients ?? []) assert.ok(PENDING.includes(r.state ?? ''), `${m.queueId}: ${r.address} is ${r.state}`);
  }
  const bySender = ids(await ternJson<Listing>(platform, 'queue', 'ls', '--sender', 'lister@sender.test'));
  assert.deepEqual(bySender, [...queued].reverse(), 'a filter keeps the default state and the order');

  const history = ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'all', '--sender', 'lister@sender.test'));
  assert.deepEqual(history, [...queued].reverse().concat(delivered), '--state all adds the delivered one, still newest first');
  assert.deepEqual(ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'final')), ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'delivered,relayed,failed,expired,deleted')));
  assert.ok(ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'delivered')).includes(delivered));
  assert.deepEqual(ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'queued', '--domain', 'listing.test')), [...queued].reverse());

  // Pages of one: newest to oldest, each message once, the same as one page.
  const seen: string[] = [];
  let token = '';
  for (let pages = 0; ; pages++) {
    assert.ok(pages <= listed.length, 'paging ends');
    const page = await ternJson<Listing>(platform, 'queue', 'ls', '--limit', '1', ...(token ? ['--page-token', token] : []));
    seen.push(...ids(page));
    token = page.nextPageToken ?? '';
    if (!token) break;
  }
  assert.deepEqual(seen, listed);

  const human = await tern(platform, 'queue', 'ls');
  assert.match(human, /with recipients still to do, newest first/);
  assert.ok(human.indexOf(queued[2]!) < human.indexOf(queued[0]!), 'the newest is printed first');
  const help = await ternRaw(platform, ['queue', 'ls', '--help']);
  assert.match(help.stdout.replace(/\s+/g, ' '), /newest first.*recipients not yet final/);
  const bad = await ternRaw(platform, ['queue', 'ls', '--state', 'lost']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--state: "lost" is not a state \(one of queued, .*, or pending, final, all\)/);
});

interface ActionResult {
  action: string;
  all?: boolean;
  messages?: number | string;
  recipients?: number | string;
  dryRun?: boolean;
}

test('item 8: queue hold/release --all act on every message: dry run first, then recorded with operator and reason', async () => {
  // Mail waiting at suspended destinations (earlier tests' too): queued recipients, held by nothing yet.
  await tern(platform, 'destination', 'suspend', 'everything.test', '--force');
  const mine = [await send(platform, 'all@sender.test', ['a@everything.test', 'b@everything.test'], 'all 1'), await send(platform, 'all@sender.test', ['c@everything.test'], 'all 2')];
  const queued = await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'queued,deferred', '--limit', '1000');
  const messages = (queued.messages ?? []).length;
  const recipients = (queued.messages ?? []).reduce((n, m) => n + (m.recipients ?? []).length, 0);
  assert.ok(messages >= 2 && recipients >= 3, `mail to act on: ${messages} messages, ${recipients} recipients`);

  const dry = await ternJson<ActionResult>(platform, 'queue', 'hold', '--all', '--dry-run');
  assert.deepEqual([Number(dry.messages), Number(dry.recipients), dry.dryRun, dry.all], [messages, recipients, true, true]);
  assert.equal(ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'held')).length, 0, 'a dry run changes nothing');

  const held = await ternJson<ActionResult>(platform, 'queue', 'hold', '--all', '--reason', 'incident 42');
  assert.deepEqual([Number(held.messages), Number(held.recipients), held.dryRun ?? false], [messages, recipients, false]);
  assert.deepEqual(ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'queued,deferred')), [], 'nothing left to hold');
  const shown = await ternJson<{ operatorEvents?: { operator?: string; action?: string; reason?: string }[] }>(platform, 'message', 'show', mine[0]!);
  assert.deepEqual(
    (shown.operatorEvents ?? []).map((e) => [e.operator, e.action, e.reason]),
    [['operator', 'hold', 'incident 42']],
  );

  const human = await tern(platform, 'queue', 'release', '--all', '--dry-run');
  assert.match(human, new RegExp(`${messages} messages?.*${recipients} recipients?`));
  const released = await ternJson<ActionResult>(platform, 'queue', 'release', '--all', '--reason', 'incident over');
  assert.deepEqual([Number(released.messages), Number(released.recipients)], [messages, recipients]);
  assert.deepEqual(ids(await ternJson<Listing>(platform, 'queue', 'ls', '--state', 'held')), []);

  const both = await ternRaw(platform, ['queue', 'delete', '--all', '--domain', 'everything.test']);
  assert.equal(both.code, 2, both.stderr);
  assert.match(both.stderr, /--all selects every message/);
  const help = await ternRaw(platform, ['queue', 'delete', '--help']);
  assert.match(help.stdout.replace(/\s+/g, ' '), /--all +every message in the queue/);
});
