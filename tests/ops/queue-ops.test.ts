// Issue 4's queue operations, each through the `tern` CLI the way an operator
// runs it, against the platform running as separate processes. Messages are
// kept in the queue by suspending their destination (or, with delivery, by a
// recipient MX that answers 451 4.3.0).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Harness, startPlatform, type Platform, type SmtpSink, type DnsServer } from '@tern/devkit';
import { send, tern, ternBytes, ternJson, ternRaw, waitFor } from './helpers';

const harness = new Harness({ name: 'ops-queue' });
let platform: Platform;
let recipientMx: SmtpSink; // MX of dest.test and held.test / paused.test
let senderMx: SmtpSink; // MX of sender.test, where reports arrive
let smarthost: SmtpSink; // target of a route
let dns: DnsServer;
let tmp: string;

// ---- the JSON the CLI prints (proto3 JSON: default values omitted)
interface Reply {
  code?: number;
  enhanced?: string;
  text?: string;
}
interface Recipient {
  address: string;
  state?: string;
  destination?: string;
  attemptCount?: number;
  lastReply?: Reply;
  attempts?: { remoteIp?: string; reply?: Reply; outcome?: string }[];
}
interface OperatorEvent {
  operator?: string;
  action?: string;
  reason?: string;
}
interface Message {
  queueId: string;
  envelope?: { sender?: string; clientAddress?: string; heloName?: string };
  size?: number | string;
  origin?: string;
  recipients?: Recipient[];
  operatorEvents?: OperatorEvent[];
  headers?: string;
}
interface Summary {
  queueId: string;
  sender?: string;
  recipientCount?: number;
  recipients?: Recipient[];
}
interface Listing {
  messages?: Summary[];
  nextPageToken?: string;
}
interface ActionResult {
  action: string;
  messages?: number | string;
  recipients?: number | string;
  dryRun?: boolean;
}
interface SummaryRow {
  destination: string;
  state: string;
  count?: number | string;
  oldest?: string;
  lastError?: string;
}
interface Destination {
  name: string;
  suspended?: boolean;
  suspendedReason?: string;
}

const show = (id: string) => ternJson<Message>(platform, 'message', 'show', id);
const ls = (...args: string[]) => ternJson<Listing>(platform, 'queue', 'ls', ...args);
const act = async (...args: string[]) => {
  const r = await ternJson<ActionResult>(platform, 'queue', ...args);
  return { ...r, messages: Number(r.messages ?? 0), recipients: Number(r.recipients ?? 0), dryRun: Boolean(r.dryRun) };
};
const ids = (l: Listing) => (l.messages ?? []).map((m) => m.queueId);
const states = (m: Message) => (m.recipients ?? []).map((r) => r.state);

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.10');
  recipientMx = await harness.startSink({ host: '127.0.0.10', port, hostname: 'mx.dest.test' });
  senderMx = await harness.startSink({ host: '127.0.0.11', port, hostname: 'mx.sender.test' });
  smarthost = await harness.startSink({ host: '127.0.0.12', port: await harness.freePort('127.0.0.12'), hostname: 'smarthost.test' });
  dns = await harness.startDns({ host: '127.0.0.1' });
  for (const d of ['dest.test', 'held.test', 'paused.test']) dns.mx(d, 'mx.dest.test');
  dns.a('mx.dest.test', '127.0.0.10');
  dns.mx('sender.test', 'mx.sender.test').a('mx.sender.test', '127.0.0.11');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-ops-queue-'));
  harness.defer(() => fs.rmSync(tmp, { recursive: true, force: true }), 'remove tmp');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    // A deferred recipient waits (the first retry is far away) until an operator says retry.
    env: { queue: { TERN_QUEUE_BACKOFF_MIN_S: '600', TERN_QUEUE_BACKOFF_MAX_S: '3600' } },
  });
});

after(() => harness.close());

// Shared by the tests below, in order.
const heldIds: string[] = []; // alice@sender.test -> userN@held.test
const carolIds: string[] = []; // carol@sender.test -> held.test and paused.test
const RAW_BODY = 'Line one of the body.\r\nLine two, with trailing spaces   \r\n\r\n.leading dot\r\n';

test('tern destination suspend keeps new mail queued; destination ls shows it suspended with the reason', async () => {
  // --force: the queue has had no mail for them yet (a name it never saw is refused otherwise).
  const suspended = await ternJson<Destination>(platform, 'destination', 'suspend', 'held.test', '--force', '--reason', 'receiver maintenance');
  assert.equal(suspended.name, 'held.test');
  assert.equal(suspended.suspended, true);
  assert.equal(suspended.suspendedReason, 'receiver maintenance');
  await tern(platform, 'destination', 'suspend', 'Paused.Test.', '--force', '--reason', 'second one');

  for (let i = 1; i <= 5; i++) heldIds.push(await send(platform, 'alice@sender.test', [`user${i}@held.test`], `held ${i}`, RAW_BODY));
  carolIds.push(await send(platform, 'carol@sender.test', ['user6@held.test'], 'carol 1'));
  carolIds.push(await send(platform, 'carol@sender.test', ['user7@held.test', 'user8@paused.test'], 'carol 2'));

  const listed = await ternJson<{ destinations?: Destination[] }>(platform, 'destination', 'ls');
  const byName = new Map((listed.destinations ?? []).map((d) => [d.name, d]));
  assert.equal(byName.get('held.test')?.suspended, true);
  assert.equal(byName.get('held.test')?.suspendedReason, 'receiver maintenance');
  assert.equal(byName.get('paused.test')?.suspended, true, 'the name was normalised (lower case, no trailing dot)');

  // Give the scheduler a few passes: nothing for a suspended destination leaves the queue.
  await new Promise((r) => setTimeout(r, 2_000));
  for (const sender of ['alice@sender.test', 'carol@sender.test']) {
    for (const m of (await ls('--sender', sender)).messages ?? []) {
      assert.deepEqual([...new Set((m.recipients ?? []).map((r) => r.state))], ['RECIPIENT_STATE_QUEUED'], m.queueId);
    }
  }
  assert.equal(recipientMx.messages.length, 0);
  const human = await tern(platform, 'destination', 'ls');
  assert.match(human, /held\.test/);
});

test('tern queue ls filters by sender, recipient, domain and state', async () => {
  assert.deepEqual(ids(await ls('--sender', 'carol@sender.test')).sort(), [...carolIds].sort());
  assert.deepEqual(ids(await ls('--recipient', 'user3@held.test')), [heldIds[2]]);
  assert.deepEqual(ids(await ls('--domain', 'paused.test')), [carolIds[1]]);
  const byDomain = await ls('--domain', 'held.test');
  assert.deepEqual(ids(byDomain).sort(), [...heldIds, ...carolIds].sort());
  // The recipients shown are those the filter selected.
  const carol2 = (byDomain.messages ?? []).find((m) => m.queueId === carolIds[1])!;
  assert.equal(carol2.recipientCount, 2);
  assert.deepEqual(
    (carol2.recipients ?? []).map((r) => r.address),
    ['user7@held.test'],
  );
  assert.deepEqual(ids(await ls('--domain', 'held.test', '--state', 'queued')).sort(), [...heldIds, ...carolIds].sort());
  assert.deepEqual(ids(await ls('--domain', 'held.test', '--state', 'deferred,held')), []);
  assert.deepEqual(ids(await ls('--sender', 'alice@sender.test', '--state', 'queued', '--domain', 'held.test')).sort(), [...heldIds].sort());
  assert.deepEqual(ids(await ls('--sender', 'alice@sender.test', '--older-than', '1h')), []);
  assert.deepEqual(ids(await ls('--sender', 'alice@sender.test', '--newer-than', '1h')).sort(), [...heldIds].sort());

  const bad = await ternRaw(platform, ['queue', 'ls', '--state', 'lost']);
  assert.equal(bad.code, 2, 'a bad state is a usage error');
  assert.match(bad.stderr, /^tern: --state: "lost" is not a state/);
});

test('tern queue ls pages with --limit and --page-token (keyset: every message once, newest first)', async () => {
  const all = [...heldIds, ...carolIds];
  for (const filter of [['--domain', 'held.test'], ['--sender', 'alice@sender.test']]) {
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await ls(...filter, '--limit', '2', ...(token ? ['--page-token', token] : []));
      const got = ids(page);
      assert.ok(got.length <= 2, `a page holds at most --limit messages (${filter.join(' ')})`);
      seen.push(...got);
      token = page.nextPageToken ?? '';
      pages++;
      assert.ok(pages < 10, 'paging ends');
    } while (token);
    const expected = filter[0] === '--sender' ? heldIds : all;
    assert.deepEqual(seen, [...expected].sort().reverse(), `every message once, newest first (${filter.join(' ')})`);
    assert.equal(new Set(seen).size, seen.length, `no message twice (${filter.join(' ')})`);
  }
  const bad = await ternRaw(platform, ['queue', 'ls', '--page-token', 'not-a-token']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /page_token/);
  assert.match(bad.stderr, /INVALID_ARGUMENT/);
});

test('tern queue summary counts by destination and state, with the oldest', async () => {
  const res = await ternJson<{ rows?: SummaryRow[] }>(platform, 'queue', 'summary');
  const row = (d: string, s: string) => (res.rows ?? []).find((r) => r.destination === d && r.state === s);
  const held = row('held.test', 'RECIPIENT_STATE_QUEUED');
  assert.ok(held, `a held.test/queued row: ${JSON.stringify(res.rows)}`);
  assert.equal(Number(held.count), 7);
  assert.ok(held.oldest && Date.now() - Date.parse(held.oldest) < 120_000 && Date.parse(held.oldest) <= Date.now() + 1000, `oldest: ${held.oldest}`);
  assert.equal(Number(row('paused.test', 'RECIPIENT_STATE_QUEUED')?.count), 1);
  const human = await tern(platform, 'queue', 'summary');
  assert.match(human, /held\.test/);
});

test('tern message show prints the envelope and recipients; tern message download gives the stored bytes, Received header first', async () => {
  const id = heldIds[0]!;
  const m = await show(id);
  assert.equal(m.queueId, id);
  assert.equal(m.envelope?.sender, 'alice@sender.test');
  assert.equal(m.envelope?.clientAddress, '127.0.0.1');
  assert.equal(m.envelope?.heloName, 'client.example');
  assert.deepEqual(
    (m.recipients ?? []).map((r) => [r.address, r.state, r.destination]),
    [['user1@held.test', 'RECIPIENT_STATE_QUEUED', 'held.test']],
  );
  const withHeaders = await ternJson<Message>(platform, 'message', 'show', id, '--headers');
  assert.match(withHeaders.headers ?? '', /^Subject: held 1$/m);

  const sent = Buffer.from(`From: alice@sender.test\r\nTo: user1@held.test\r\nSubject: held 1\r\nMessage-ID: <held-1@ops.test>\r\n\r\n${RAW_BODY}`);
  const raw = await ternBytes(platform, 'message', 'download', id);
  const text = raw.toString('utf8');
  assert.match(text, /^Received: from client\.example \(/, 'ingress prepended a Received header');
  // (Its "id" is ingress's transaction id: the header is written before the queue assigns the queue id.)
  assert.match(text, /^Received: [^]*\bby mx\.tern\.test \(Tern\) with ESMTP id \S+\r\n\tfor <user1@held\.test>; /, 'Received names us, the protocol and the recipient');
  const received = text.slice(0, text.indexOf('From: alice@sender.test\r\n'));
  assert.ok(/^Received: [^]*\r\n$/.test(received) && !/\r\n(?![ \t])[^\r]/.test(received.slice(0, -2)), 'exactly one (folded) header before the original');
  assert.ok(raw.subarray(Buffer.byteLength(received)).equals(sent), 'after the Received header, the bytes are exactly those sent (dots unstuffed, spaces kept)');
  assert.equal(Number(m.size), raw.length, 'the size shown is the stored size');

  const file = path.join(tmp, `${id}.eml`);
  const r = await ternRaw(platform, ['message', 'download', id, '-o', file]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(fs.readFileSync(file).equals(raw), 'download -o writes the same bytes');
  const headers = await ternBytes(platform, 'message', 'download', id, '--headers-only');
  assert.ok(raw.subarray(0, headers.length).equals(headers), '--headers-only is a prefix of the message');
  assert.ok(!headers.toString().includes('Line one'), '--headers-only stops before the body');

  const missing = await ternRaw(platform, ['message', 'show', '0000000000000000']);
  assert.equal(missing.code, 5, `unknown message: exit 5 (${missing.stderr})`);
  assert.match(missing.stderr, /^tern: /);
});

test('hold and release one message, recorded with operator and reason', async () => {
  const id = heldIds[1]!;
  const held = await act('hold', id, '--reason', 'looks like spam');
  assert.deepEqual([held.action, held.messages, held.recipients, held.dryRun], ['hold', 1, 1, false]);
  let m = await show(id);
  assert.deepEqual(states(m), ['RECIPIENT_STATE_HELD']);
  assert.deepEqual(
    (m.operatorEvents ?? []).map((e) => [e.operator, e.action, e.reason]),
    [['operator', 'hold', 'looks like spam']],
  );
  assert.deepEqual(ids(await ls('--state', 'held')), [id]);

  const released = await act('release', id, '--reason', 'checked, fine');
  assert.equal(released.messages, 1);
  m = await show(id);
  assert.deepEqual(states(m), ['RECIPIENT_STATE_QUEUED']);
  assert.deepEqual(
    (m.operatorEvents ?? []).map((e) => [e.operator, e.action, e.reason]),
    [
      ['operator', 'hold', 'looks like spam'],
      ['operator', 'release', 'checked, fine'],
    ],
  );
  // Releasing it again changes nothing, and says so.
  const again = await ternRaw(platform, ['--json', 'queue', 'release', id]);
  assert.equal(again.code, 0);
  assert.equal(Number((JSON.parse(again.stdout) as ActionResult).messages ?? 0), 0);
  assert.match(again.stderr, /had no recipients to release/);
  const human = await show(id);
  assert.match(JSON.stringify(human), /checked, fine/);
});

test('hold and release by filter: --dry-run counts first and changes nothing', async () => {
  const dry = await act('hold', '--sender', 'alice@sender.test', '--dry-run');
  assert.deepEqual([dry.messages, dry.recipients, dry.dryRun], [5, 5, true]);
  assert.deepEqual(ids(await ls('--state', 'held')), [], 'a dry run changes nothing');

  const held = await act('hold', '--sender', 'alice@sender.test', '--reason', 'bulk review');
  assert.deepEqual([held.messages, held.recipients, held.dryRun], [5, 5, false]);
  assert.deepEqual(ids(await ls('--state', 'held')).sort(), [...heldIds].sort());
  const events = (await show(heldIds[2]!)).operatorEvents ?? [];
  assert.deepEqual(
    events.map((e) => [e.operator, e.action, e.reason]),
    [['operator', 'hold', 'bulk review']],
    'a bulk action is recorded on every message it changed',
  );
  // A filter on state narrows the action: carol's queued recipients are untouched.
  const dryRelease = await act('release', '--domain', 'held.test', '--state', 'held', '--dry-run');
  assert.deepEqual([dryRelease.messages, dryRelease.recipients], [5, 5]);
  const released = await act('release', '--domain', 'held.test', '--reason', 'review done');
  assert.deepEqual([released.messages, released.recipients], [5, 5]);
  assert.deepEqual(ids(await ls('--state', 'held')), []);

  const noFilter = await ternRaw(platform, ['queue', 'hold']);
  assert.equal(noFilter.code, 2, 'a bulk action needs an ID, a filter or --all');
  assert.match(noFilter.stderr, /^tern: which messages\?/);
  const both = await ternRaw(platform, ['queue', 'delete', heldIds[0]!, '--sender', 'alice@sender.test']);
  assert.equal(both.code, 2);
});

test('delete one message and by filter: recorded, no report, gone from the pending queue', async () => {
  const id = heldIds[4]!;
  const dry = await act('delete', id, '--dry-run');
  assert.deepEqual([dry.messages, dry.recipients, dry.dryRun], [1, 1, true]);
  assert.deepEqual(states(await show(id)), ['RECIPIENT_STATE_QUEUED']);
  const done = await act('delete', id, '--reason', 'customer asked');
  assert.equal(done.messages, 1);
  const m = await show(id);
  assert.deepEqual(states(m), ['RECIPIENT_STATE_DELETED']);
  assert.deepEqual(
    [m.operatorEvents?.at(-1)?.operator, m.operatorEvents?.at(-1)?.action, m.operatorEvents?.at(-1)?.reason],
    ['operator', 'delete', 'customer asked'],
  );
  assert.ok(!ids(await ls('--domain', 'held.test', '--state', 'queued')).includes(id));
  assert.deepEqual(ids(await ls('--state', 'deleted')), [id]);

  // By filter: carol's message to paused.test loses that recipient only.
  const dryF = await act('delete', '--domain', 'paused.test', '--dry-run');
  assert.deepEqual([dryF.messages, dryF.recipients], [1, 1]);
  const f = await act('delete', '--domain', 'paused.test', '--reason', 'domain gone');
  assert.deepEqual([f.messages, f.recipients], [1, 1]);
  const carol2 = await show(carolIds[1]!);
  assert.deepEqual(
    (carol2.recipients ?? []).map((r) => [r.address, r.state]),
    [
      ['user7@held.test', 'RECIPIENT_STATE_QUEUED'],
      ['user8@paused.test', 'RECIPIENT_STATE_DELETED'],
    ],
  );
  // A delete sends no report to the sender.
  await new Promise((r) => setTimeout(r, 1_500));
  assert.deepEqual(ids(await ls('--recipient', 'carol@sender.test', '--state', 'all')), []);
});

/** The reports (null sender) queued to `sender`, found through the CLI once there are `n`, with their text. */
async function reportsTo(sender: string, n: number): Promise<{ id: string; text: string }[]> {
  const found = await waitFor(`${n} report(s) to ${sender}`, async () => {
    const l = ((await ls('--recipient', sender, '--state', 'all')).messages ?? []).filter((m) => !m.sender);
    return l.length >= n ? l : undefined;
  });
  return Promise.all(found.map(async (m) => ({ id: m.queueId, text: (await ternBytes(platform, 'message', 'download', m.queueId)).toString('utf8') })));
}

test('bounce one message: failed with the operator named, and an RFC 3464 report from the null sender at the sender MX', async () => {
  const id = heldIds[3]!;
  const dry = await act('bounce', id, '--dry-run');
  assert.deepEqual([dry.messages, dry.recipients, dry.dryRun], [1, 1, true]);
  const done = await act('bounce', id, '--reason', 'illegal content');
  assert.equal(done.messages, 1);
  const m = await show(id);
  assert.deepEqual(states(m), ['RECIPIENT_STATE_FAILED']);
  const r = m.recipients![0]!;
  assert.equal(r.lastReply?.code, 550);
  assert.match(r.lastReply?.text ?? '', /operator.*illegal content/);
  assert.deepEqual(
    [m.operatorEvents?.at(-1)?.operator, m.operatorEvents?.at(-1)?.action, m.operatorEvents?.at(-1)?.reason],
    ['operator', 'bounce', 'illegal content'],
  );

  // bounce built the report and queued it like any other message, from <>.
  const [report, ...more] = await reportsTo('alice@sender.test', 1);
  assert.equal(more.length, 0, 'one report');
  const rm = await show(report!.id);
  assert.equal(rm.origin, 'MESSAGE_ORIGIN_REPORT');
  assert.equal(rm.envelope?.sender ?? '', '', 'reports come from the null sender');
  assert.match(report!.text, /^Final-Recipient: rfc822; ?user4@held\.test/im);
  assert.match(report!.text, /multipart\/report/i);
  assert.match(report!.text, /report-type="?delivery-status"?/i);
  assert.match(report!.text, /^Action: failed/im);
  assert.match(report!.text, /^Status: 5\.0\.0/im);
  assert.match(report!.text, /Message-ID: <held-4@ops\.test>/i, 'the report carries the original (or its headers)');

  const arrived = await waitFor('the report at the sender MX', async () => senderMx.messagesFor('alice@sender.test').find((x) => /user4@held\.test/.test(x.raw.toString())), 30_000);
  assert.equal(arrived.mailFrom, '');
  assert.match(arrived.raw.toString(), /^Final-Recipient: rfc822; ?user4@held\.test/im);
});

test('tern queue bounce by filter: dry run, then one report per message', async () => {
  const dry = await act('bounce', '--sender', 'carol@sender.test', '--dry-run');
  assert.deepEqual([dry.messages, dry.recipients, dry.dryRun], [2, 2, true]);
  const done = await act('bounce', '--sender', 'carol@sender.test', '--reason', 'sender account closed');
  assert.deepEqual([done.messages, done.recipients], [2, 2]);
  for (const id of carolIds) {
    const m = await show(id);
    assert.ok(states(m).includes('RECIPIENT_STATE_FAILED'), `${id}: ${states(m).join(',')}`);
    assert.equal(m.operatorEvents?.at(-1)?.reason, 'sender account closed');
  }
  const reports = await reportsTo('carol@sender.test', 2);
  assert.equal(reports.length, 2, 'one report per message');
  const all = reports.map((r) => r.text).join('\n');
  assert.match(all, /^Final-Recipient: rfc822; ?user6@held\.test/im);
  assert.match(all, /^Final-Recipient: rfc822; ?user7@held\.test/im);
  // The recipient deleted earlier is not reported as failed.
  assert.doesNotMatch(all, /^Final-Recipient: rfc822; ?user8@paused\.test/im);
  await waitFor('both reports at the sender MX', async () => (senderMx.messagesFor('carol@sender.test').length >= 2 ? true : undefined), 30_000);
});

test('tern destination resume lets the queued mail go', async () => {
  const resumed = await ternJson<Destination>(platform, 'destination', 'resume', 'held.test');
  assert.equal(resumed.suspended ?? false, false);
  const listed = await ternJson<{ destinations?: Destination[] }>(platform, 'destination', 'ls');
  assert.notEqual(listed.destinations?.find((d) => d.name === 'held.test')?.suspended, true);
  // Dispatch resumes: nothing for held.test stays queued.
  await waitFor('held.test to be dispatched', async () => ((await ls('--domain', 'held.test', '--state', 'queued')).messages?.length ? undefined : true), 10_000);
  // user1, user2, user3 (alice; user4 bounced, user5 deleted).
  await waitFor('held.test mail at its MX', async () => (['user1', 'user2', 'user3'].every((u) => recipientMx.messagesFor(`${u}@held.test`).length) ? true : undefined), 30_000);
  const delivered = recipientMx.messagesFor('user1@held.test')[0]!;
  const stored = await ternBytes(platform, 'message', 'download', heldIds[0]!);
  assert.ok(delivered.raw.equals(stored), 'the MX received exactly the bytes the queue stored');
});

test('a 451 defers the recipient; message show has the attempt with the reply; summary the last error; retry tries again now', async () => {
  // The sink answers 451 4.3.0 to local parts starting with "tempfail"; "flaky" while `failing` holds.
  let failing = true;
  recipientMx.setBehaviour({ rcpt: (to) => (failing && to.startsWith('flaky@') ? { code: 451, text: '4.3.0 flaky: try again later' } : undefined) });
  const stuck = await send(platform, 'alice@sender.test', ['tempfail-1@dest.test'], 'tempfail 1');
  const flaky = await send(platform, 'alice@sender.test', ['flaky@dest.test'], 'flaky 1');
  for (const id of [stuck, flaky]) {
    await waitFor(`${id} deferred`, async () => (states(await show(id))[0] === 'RECIPIENT_STATE_DEFERRED' ? true : undefined), 30_000);
  }
  const m = await show(stuck);
  const r = m.recipients![0]!;
  assert.equal(r.attemptCount, 1);
  assert.equal(r.attempts?.length, 1);
  assert.equal(r.attempts![0]!.reply?.code, 451);
  assert.equal(r.attempts![0]!.reply?.enhanced, '4.3.0');
  assert.match(r.attempts![0]!.reply?.text ?? '', /tempfail/);
  assert.equal(r.attempts![0]!.remoteIp, '127.0.0.10');
  assert.equal(r.attempts![0]!.outcome, 'ATTEMPT_OUTCOME_DEFERRED');
  assert.equal(r.lastReply?.code, 451);

  assert.deepEqual(ids(await ls('--state', 'deferred', '--domain', 'dest.test')).sort(), [stuck, flaky].sort());
  const summary = await ternJson<{ rows?: SummaryRow[] }>(platform, 'queue', 'summary');
  const row = (summary.rows ?? []).find((x) => x.destination === 'dest.test' && x.state === 'RECIPIENT_STATE_DEFERRED');
  assert.equal(Number(row?.count), 2, JSON.stringify(summary.rows));
  assert.match(row?.lastError ?? '', /451/, `the last error of dest.test: ${JSON.stringify(row)}`);

  // Retry by filter (dry run first): both get another attempt now, not in ten minutes.
  failing = false;
  const dry = await act('retry', '--domain', 'dest.test', '--state', 'deferred', '--dry-run');
  assert.deepEqual([dry.messages, dry.recipients], [2, 2]);
  const done = await act('retry', '--domain', 'dest.test', '--state', 'deferred', '--reason', 'receiver fixed');
  assert.deepEqual([done.messages, done.recipients], [2, 2]);
  await waitFor('flaky delivered', async () => (states(await show(flaky))[0] === 'RECIPIENT_STATE_DELIVERED' ? true : undefined), 30_000);
  await waitFor('a second attempt for the stuck one', async () => ((await show(stuck)).recipients![0]!.attemptCount === 2 ? true : undefined), 30_000);
  const again = await show(stuck);
  assert.equal(again.recipients![0]!.state, 'RECIPIENT_STATE_DEFERRED');
  assert.equal(again.operatorEvents?.at(-1)?.action, 'retry');
  assert.equal(again.operatorEvents?.at(-1)?.reason, 'receiver fixed');
  // One message retried by id.
  const one = await act('retry', stuck, '--reason', 'once more');
  assert.equal(one.messages, 1);
  await waitFor('a third attempt', async () => ((await show(stuck)).recipients![0]!.attemptCount === 3 ? true : undefined), 30_000);
});

test('tern route set/ls/rm: a smart host route sends a domain elsewhere; a bad route is refused naming the field', async () => {
  const set = await ternJson<{ domain: string; kind: string; target: string }>(platform, 'route', 'set', 'Routed.Test', '--kind', 'smarthost', '--target', smarthost.address, '--tls-policy', 'none');
  assert.deepEqual([set.domain, set.kind, set.target], ['routed.test', 'ROUTE_KIND_SMARTHOST', smarthost.address]);
  const listed = await ternJson<{ routes?: { domain: string; kind: string; target?: string }[] }>(platform, 'route', 'ls');
  assert.deepEqual(
    (listed.routes ?? []).map((r) => [r.domain, r.kind, r.target]),
    [['routed.test', 'ROUTE_KIND_SMARTHOST', smarthost.address]],
  );
  assert.match(await tern(platform, 'route', 'ls'), /routed\.test/);

  // Operator errors: the queue refuses, naming the field; non-zero exit, one clear line on stderr.
  const cases: [string[], RegExp][] = [
    [['route', 'set', 'not a domain', '--kind', 'smarthost', '--target', 'relay.test:25'], /route\.domain: "not a domain" is not a domain/],
    [['route', 'set', 'x.test', '--kind', 'smarthost', '--target', 'relay.test'], /route\.target: "relay\.test" is not host:port/],
    [['route', 'set', 'x.test', '--kind', 'smarthost', '--target', 'unix:/run/lmtp.sock'], /route\.target: "unix:" targets are only for LMTP/],
  ];
  for (const [args, message] of cases) {
    const r = await ternRaw(platform, args);
    assert.equal(r.code, 1, `${args.join(' ')}: exit 1 (${r.stderr})`);
    assert.match(r.stderr, /^tern: the queue service refused the request: /);
    assert.match(r.stderr, message);
    assert.match(r.stderr, /\(INVALID_ARGUMENT\)\n$/);
    assert.equal(r.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(r.stdout, '');
  }
  const usage = await ternRaw(platform, ['route', 'set', 'x.test', '--kind', 'smarthost']);
  assert.equal(usage.code, 2, 'missing --target is caught before sending');
  assert.match(usage.stderr, /--target is required/);
  const unchanged = await ternJson<{ routes?: { domain: string }[] }>(platform, 'route', 'ls');
  assert.deepEqual(
    (unchanged.routes ?? []).map((r) => r.domain),
    ['routed.test'],
  );

  // routed.test has no MX at all: only the route can get it there.
  await send(platform, 'alice@sender.test', ['someone@routed.test'], 'via smarthost');
  const [got] = await smarthost.waitForMessages(1, 30_000);
  assert.deepEqual(got!.rcptTo, ['someone@routed.test']);

  const rm = await ternJson<{ deleted?: boolean }>(platform, 'route', 'rm', 'routed.test');
  assert.equal(rm.deleted, true);
  assert.deepEqual((await ternJson<{ routes?: unknown[] }>(platform, 'route', 'ls')).routes ?? [], []);
  const again = await ternRaw(platform, ['route', 'rm', 'routed.test']);
  assert.equal(again.code, 5, `removing it twice is "not found" (exit 5): ${again.stderr}`);
});
