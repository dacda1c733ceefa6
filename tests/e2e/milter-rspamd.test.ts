// Issue 25 (milters), through the running platform: a real rspamd (Debian's
// package, its proxy worker in milter mode, tests/e2e/rspamd.ts) set up as a
// milter of the MX listener with the CLI against the real admin service.
// GTUBE is refused at end of data with rspamd's own reply and nothing is
// queued; a clean message is delivered with the headers rspamd added; a
// second milter that does not answer gets its default action (tempfail:
// 451 4.7.1, nothing queued; accept: delivered); the per-milter metrics
// count it all; the CLI lists, replaces and removes milters.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { RawSmtp, tern, ternJson, ternRaw, waitFor } from '../ops/helpers';
import { rspamdAvailable, startRspamd, type RspamdHandle } from './rspamd';

const harness = new Harness({ name: 'e2e-milter-rspamd' });
let platform: Platform;
let destMx: SmtpSink;
let rspamd: RspamdHandle;
/** A port on which something accepts connections and never says a word: a milter that hangs. */
let silent: net.Server;
let silentAddress: string;
const silentSockets = new Set<net.Socket>();

const CLIENT = '127.0.0.94';
const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

before(async () => {
  assert.ok(rspamdAvailable(), 'rspamd is not installed: apt-get install -y rspamd (scripts/system-deps.sh does)');
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.95');
  destMx = await harness.startSink({ host: '127.0.0.95', port, hostname: 'mx.dest.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.95');
  rspamd = await startRspamd({ host: '127.0.0.96', port: await harness.freePort('127.0.0.96') });
  harness.defer(() => rspamd.stop(), 'rspamd');
  silent = net.createServer((s) => {
    silentSockets.add(s);
    s.on('close', () => silentSockets.delete(s));
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => silent.listen(0, '127.0.0.97', r));
  silentAddress = `127.0.0.97:${(silent.address() as net.AddressInfo).port}`;
  harness.defer(
    () =>
      new Promise<void>((r) => {
        for (const s of silentSockets) s.destroy();
        silent.close(() => r());
      }),
    'silent milter',
  );
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: { ingress: { TERN_MILTER_REFRESH_MS: '300' } },
  });
  await tern(platform, 'domain', 'add', 'dest.test', '--kind', 'relay');
});

after(() => harness.close());

/** Waits until ingress has read a chain of exactly these milters (its log line milters_loaded). */
async function chainLoaded(names: string[]): Promise<void> {
  const want = names.join(',');
  await waitFor(`ingress' milter chain ${want}`, async () => {
    const lines = fs.readFileSync(platform.services.ingress.logFile, 'utf8').split('\n').filter((l) => l.includes('"milters_loaded"'));
    const last = lines.length ? (JSON.parse(lines[lines.length - 1]!) as { milters: string[] }) : undefined;
    return last && last.milters.map((m) => m.split('=')[0]).join(',') === want ? true : undefined;
  });
}

const message = (subject: string, body: string) =>
  `From: alice@sender.test\r\nTo: bob@dest.test\r\nSubject: ${subject}\r\nDate: Mon, 07 Dec 2026 16:00:00 +0000\r\nMessage-ID: <${crypto.randomUUID()}@sender.test>\r\n\r\n${body}\r\n`;

/** One message from CLIENT to bob@dest.test; the end-of-data reply. */
async function send(sender: string, text: string) {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, platform.smtpPort, CLIENT);
  try {
    assert.equal(greeting.code, 220);
    assert.equal((await client.command('EHLO client.example')).code, 250);
    assert.equal((await client.command(`MAIL FROM:<${sender}>`)).code, 250);
    const rcpt = await client.command('RCPT TO:<bob@dest.test>');
    assert.equal(rcpt.code, 250, rcpt.text);
    assert.equal((await client.command('DATA')).code, 354);
    return await client.command(`${text.replace(/^\./gm, '..')}.`);
  } finally {
    client.close();
  }
}

async function queued(sender: string): Promise<number> {
  const res = await ternJson<{ messages?: unknown[] }>(platform, 'queue', 'ls', '--sender', sender, '--state', 'all');
  return res.messages?.length ?? 0;
}

/** The sum of a metric's series that carry these labels (in any order, among others). */
function metricSum(text: string, name: string, labels: Record<string, string>): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

async function milterCalls(): Promise<string> {
  return (await fetch(`http://${platform.services.ingress.metricsAddr}/metrics`)).text();
}

test('rspamd as a milter: GTUBE refused with its reply and nothing queued; a clean message delivered with its headers', async () => {
  const out = await tern(platform, 'milter', 'set', 'rspamd', rspamd.address, '--listeners', 'mx', '--command-timeout', '30s');
  assert.match(out, /^Milter rspamd \(127\.0\.0\.96:\d+\) saved: runs at order 0 on mx; if it fails: tempfail\./);
  await chainLoaded(['rspamd']);

  const spam = await send('spammer@sender.test', message('buy now', GTUBE));
  assert.equal(`${spam.code} ${spam.enhanced}`, '554 5.7.1', spam.text);
  assert.match(spam.text, /Gtube pattern/);
  assert.equal(await queued('spammer@sender.test'), 0, 'nothing queued');

  const clean = await send('alice@sender.test', message('lunch', 'Shall we meet at noon?'));
  assert.equal(clean.code, 250, clean.text);
  const [delivered] = await destMx.waitForMessages(1, 20_000);
  const raw = delivered!.raw.toString('latin1');
  const head = raw.slice(0, raw.indexOf('\r\n\r\n'));
  assert.match(head, /\r\nX-Spam-Status: No, score=/);
  assert.match(head, /\r\nX-Rspamd-Server: /);
  assert.match(head, /\r\nX-Spamd-Result: default: False/);
  assert.match(head, /^Received: from client\.example /m);
  assert.ok(raw.endsWith('\r\n\r\nShall we meet at noon?\r\n'), 'the body as sent');
  assert.ok(rspamd.logTail(200).includes('GTUBE') || rspamd.logTail(200).includes('Gtube'), 'rspamd itself saw GTUBE');

  const metrics = await milterCalls();
  assert.equal(metricSum(metrics, 'tern_ingress_milter_calls_total', { milter: 'rspamd', result: 'reject' }), 1);
  assert.equal(metricSum(metrics, 'tern_ingress_milter_calls_total', { milter: 'rspamd', result: 'accept' }), 1);
  assert.ok(metricSum(metrics, 'tern_ingress_milter_seconds_count', { milter: 'rspamd' }) >= 2);
});

test('a second milter that does not answer: default tempfail gives 451 4.7.1 and nothing queued; default accept delivers', async () => {
  await tern(platform, 'milter', 'set', 'silent', silentAddress, '--order', '10', '--command-timeout', '500ms', '--default-action', 'tempfail');
  await chainLoaded(['rspamd', 'silent']);
  const r = await send('tempfail@sender.test', message('silent tempfail', 'Hello.'));
  assert.equal(`${r.code} ${r.enhanced}`, '451 4.7.1', r.text);
  assert.match(r.text, /Service unavailable - try again later/);
  assert.equal(await queued('tempfail@sender.test'), 0, 'nothing queued');

  await tern(platform, 'milter', 'set', 'silent', silentAddress, '--order', '10', '--command-timeout', '500ms', '--default-action', 'accept');
  await waitFor('the accept default in effect', async () => {
    const lines = fs.readFileSync(platform.services.ingress.logFile, 'utf8').split('\n').filter((l) => l.includes('"milters_loaded"'));
    return lines[lines.length - 1]?.includes('silent=') && lines[lines.length - 1]?.includes('/accept') ? true : undefined;
  });
  const before = destMx.messages.length;
  const ok = await send('accept@sender.test', message('silent accept', 'Hello again.'));
  assert.equal(ok.code, 250, ok.text);
  const all = await destMx.waitForMessages(before + 1, 20_000);
  assert.match(all[all.length - 1]!.raw.toString('latin1'), /\r\nX-Spam-Status: No/, 'rspamd, before the silent one, still added its headers');

  const metrics = await milterCalls();
  assert.equal(metricSum(metrics, 'tern_ingress_milter_calls_total', { milter: 'silent', result: 'error' }), 2);
});

test('tern milter ls, set errors naming the field, rm; then messages go unfiltered', async () => {
  const list = await ternJson<{ milters: Array<{ name: string; order?: number; defaultAction: string; listeners: string[]; commandTimeoutMs: number }> }>(platform, 'milter', 'ls');
  assert.deepEqual(list.milters.map((m) => m.name), ['rspamd', 'silent']);
  assert.equal(list.milters[1]!.defaultAction, 'MILTER_DEFAULT_ACTION_ACCEPT');
  assert.deepEqual(list.milters[1]!.listeners, ['LISTENER_MX']);
  assert.equal(list.milters[1]!.commandTimeoutMs, 500);
  const table = await tern(platform, 'milter', 'ls');
  assert.match(table, /ORDER\s+NAME\s+ADDRESS\s+LISTENERS\s+DEFAULT/);
  assert.match(table, /\n10\s+silent\s+127\.0\.0\.97:\d+\s+mx\s+accept\s+10s\s+500ms\s+300s/);

  const bad = await ternRaw(platform, ['milter', 'set', 'x', '127.0.0.1']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /milter\.address: "127\.0\.0\.1" is not host:port/);
  const badListener = await ternRaw(platform, ['milter', 'set', 'x', '127.0.0.1:1', '--listeners', 'smtp']);
  assert.match(badListener.stderr, /--listeners: "smtp" is not mx, submission or submissions/);

  assert.match(await tern(platform, 'milter', 'rm', 'silent'), /^Deleted milter silent\./);
  const again = await ternRaw(platform, ['milter', 'rm', 'silent']);
  assert.equal(again.code, 5);
  assert.match(again.stderr, /no milter silent: nothing deleted \(tern milter ls lists them\)/);
  await tern(platform, 'milter', 'rm', 'rspamd');
  await chainLoaded([]);
  assert.match(await tern(platform, 'milter', 'ls'), /^No milters/);
  // No filter any more: GTUBE is stored like any message.
  const r = await send('nofilter@sender.test', message('unfiltered', GTUBE));
  assert.equal(r.code, 250, r.text);
});
