// Issue 24, DKIM keys through the admin API, through every service: the
// operator generates an Ed25519 and an RSA key with the `tern` CLI (which
// prints the TXT records to publish), and the next messages leave delivery
// signed with both, verifying with mailauth against exactly the printed
// records, From oversigned. A rotation publishes the new selector without
// signing with it; once activated, messages are signed with it and the old
// key is retired (its sealed private key erased). The API never returns a
// private key; Postgres holds it sealed (AES-256-GCM under TERN_DKIM_KEK),
// not as PEM; policy and delivery refuse to start without the KEK, or with
// another one, naming TERN_DKIM_KEK.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { dkimVerify } from 'mailauth';
import pg from 'pg';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { send, tern, ternJson, ternRaw, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-dkim-keys' });
let platform: Platform;
let sink: SmtpSink;
let databaseUrl: string;
const KEK = crypto.randomBytes(32);

before(async () => {
  const database = await harness.createTestDatabase();
  databaseUrl = database.url;
  await harness.runMigrate(database.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.7.10');
  sink = await harness.startSink({ host: '127.0.7.10', port, hostname: 'mx.dest.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', sink.host);
  platform = await startPlatform(harness, {
    databaseUrl: database.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      policy: { TERN_DKIM_KEK: KEK.toString('base64'), TERN_SPF_FAIL_ACTION: 'none' },
      delivery: { TERN_DKIM_KEK: KEK.toString('base64') },
    },
  });
});

after(() => harness.close());

interface KeyJson {
  domain: string;
  selector: string;
  algorithm: string;
  state: string;
  dnsName: string;
  dnsValue: string;
}

/** TXT records as the CLI printed them: name -> the quoted strings of the line. */
const published = new Map<string, string[]>();

/** Parses `name IN TXT "a" "b"` lines, checks each string is at most 255 characters, and publishes them to the verifier's DNS. */
function publish(output: string): string[] {
  const names: string[] = [];
  for (const line of output.split('\n')) {
    const m = /^(\S+\._domainkey\.\S+) IN TXT ((?:"[^"]*" ?)+)$/.exec(line);
    if (!m) continue;
    const strings = [...m[2]!.matchAll(/"([^"]*)"/g)].map((x) => x[1]!);
    for (const s of strings) assert.ok(s.length <= 255, `a TXT string of ${s.length} characters`);
    published.set(m[1]!, strings);
    names.push(m[1]!);
  }
  return names;
}

/** The verifier's DNS: only the records the CLI printed. */
const resolver = async (name: string, type: string) => {
  const r = type === 'TXT' ? published.get(name) : undefined;
  if (r) return [r];
  throw Object.assign(new Error(`${name} ${type}: not found`), { code: 'ENOTFOUND' });
};

let sent = 0;
/** Sends one message from alice@sign.test and returns it as the sink received it. */
async function sendOne(): Promise<Buffer> {
  const subject = `dkim-${++sent}-${Date.now()}`;
  await send(platform, 'alice@sign.test', ['bob@dest.test'], subject);
  const got = await waitFor(`delivery of ${subject}`, async () => sink.messages.find((m) => m.raw.toString('latin1').includes(`Subject: ${subject}`)));
  return got.raw;
}

/** The selectors of the message's DKIM signatures that verify (mailauth), and the h= of each. */
async function verified(raw: Buffer): Promise<{ pass: string[]; results: { selector: string; result: string }[]; h: Map<string, string[]> }> {
  const res = await dkimVerify(raw, { resolver });
  const h = new Map<string, string[]>();
  const head = raw.toString('latin1').split('\r\n\r\n')[0]!.replace(/\r\n[ \t]/g, ' ');
  for (const line of head.split('\r\n').filter((l) => /^DKIM-Signature:/i.test(l))) {
    const s = /[; ]s=([^;\s]+)/.exec(line)![1]!;
    h.set(s, /[; ]h=([^;]*)/.exec(line)![1]!.replace(/\s+/g, '').toLowerCase().split(':'));
  }
  const results = res.results.map((r) => ({ selector: r.selector ?? '', result: r.status.result }));
  return { pass: results.filter((r) => r.result === 'pass').map((r) => r.selector).sort(), results, h };
}

/** Sends until a delivered message's passing signatures are `want`; returns how long that took and the message's verification. */
async function signedWith(want: string[], what: string) {
  const t0 = Date.now();
  let v: Awaited<ReturnType<typeof verified>> | undefined;
  await waitFor(what, async () => {
    v = await verified(await sendOne());
    return JSON.stringify(v.pass) === JSON.stringify([...want].sort()) ? true : undefined;
  }, 30_000, 100);
  return { ms: Date.now() - t0, ...v! };
}

/** The KEK's AES-256-GCM layout (libs/config seal): version, IV, tag, ciphertext; AAD dkim:<domain>:<selector>. */
function unseal(sealed: Buffer, aad: string): string {
  assert.equal(sealed[0], 1);
  const d = crypto.createDecipheriv('aes-256-gcm', KEK, sealed.subarray(1, 13));
  d.setAAD(Buffer.from(aad));
  d.setAuthTag(sealed.subarray(13, 29));
  return Buffer.concat([d.update(sealed.subarray(29)), d.final()]).toString();
}

async function rows(): Promise<Array<{ domain: string; selector: string; state: string; sealed_key: Buffer | null; public_key: string }>> {
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    return (await c.query('SELECT domain, selector, state, sealed_key, public_key FROM policy.dkim_keys ORDER BY selector')).rows;
  } finally {
    await c.end();
  }
}

test('before any key, mail from sign.test leaves unsigned', async () => {
  assert.doesNotMatch((await sendOne()).toString('latin1'), /DKIM-Signature/i);
});

test('tern dkim generate (Ed25519, then RSA 2048) prints the TXT records; the next messages are signed with both, verifying against them, From oversigned', async () => {
  const ed = await tern(platform, 'dkim', 'generate', 'sign.test', 'ed1', '--algorithm', 'ed25519');
  assert.match(ed, /DKIM key ed1 of sign\.test \(ed25519\) signs now/);
  assert.deepEqual(publish(ed), ['ed1._domainkey.sign.test']);
  assert.match(published.get('ed1._domainkey.sign.test')!.join(''), /^v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=$/);
  const t0 = Date.now();
  const rsa = await tern(platform, 'dkim', 'generate', 'sign.test', 'rsa1');
  assert.match(rsa, /DKIM key rsa1 of sign\.test \(rsa 2048\) signs now/);
  assert.deepEqual(publish(rsa), ['rsa1._domainkey.sign.test']);
  const strings = published.get('rsa1._domainkey.sign.test')!;
  assert.equal(strings.length, 2, 'a 2048-bit key does not fit one 255-character string');
  assert.match(strings.join(''), /^v=DKIM1; k=rsa; p=MII[A-Za-z0-9+/=]+$/);

  const signed = await signedWith(['ed1', 'rsa1'], 'a message signed with ed1 and rsa1');
  console.log(`# signed with both new keys ${signed.ms} ms after the second generate (${Date.now() - t0} ms including its own call)`);
  for (const s of ['ed1', 'rsa1']) {
    const h = signed.h.get(s)!;
    assert.deepEqual(h.filter((n) => n === 'from'), ['from', 'from'], `${s}: From oversigned in h=${h.join(':')}`);
    for (const name of ['to', 'subject', 'message-id']) assert.ok(h.includes(name), `${s} signs ${name}`);
  }
});

test('the API never returns a private key; Postgres holds it sealed under the KEK, not as PEM', async () => {
  const list = await ternJson<{ keys: Array<Record<string, unknown>> }>(platform, 'dkim', 'ls');
  const allowed = new Set(['domain', 'selector', 'algorithm', 'bits', 'state', 'dnsName', 'dnsValue', 'createdAt', 'createdBy', 'activateAt', 'retiredAt']);
  assert.equal(list.keys.length, 2);
  for (const k of list.keys) {
    for (const field of Object.keys(k)) assert.ok(allowed.has(field), `ListDkimKeys returns ${field}`);
    assert.doesNotMatch(JSON.stringify(k), /PRIVATE|sealed/i);
  }
  const byName = new Map(list.keys.map((k) => [k.dnsName as string, k as unknown as KeyJson]));
  for (const [name, strings] of published) assert.equal(byName.get(name)?.dnsValue, strings.join(''), 'ls shows the record generate printed');
  assert.deepEqual(list.keys.map((k) => k.state).sort(), ['DKIM_KEY_STATE_ACTIVE', 'DKIM_KEY_STATE_ACTIVE']);

  for (const r of await rows()) {
    assert.ok(r.sealed_key && r.sealed_key.length > 29);
    assert.ok(!r.sealed_key.includes(Buffer.from('-----BEGIN')) && !r.sealed_key.includes(Buffer.from('PRIVATE KEY')), `${r.selector}: the stored column is not the PEM`);
    // It opens with the KEK (and its label) into the private key of the published public key.
    const pem = unseal(r.sealed_key, `dkim:${r.domain}:${r.selector}`);
    const pub = crypto.createPublicKey(crypto.createPrivateKey(pem));
    const p = r.selector === 'ed1' ? Buffer.from(pub.export({ format: 'jwk' }).x!, 'base64url').toString('base64') : pub.export({ type: 'spki', format: 'der' }).toString('base64');
    assert.equal(p, r.public_key);
    assert.throws(() => unseal(r.sealed_key!, `dkim:${r.domain}:other`), 'bound to its domain and selector');
  }
});

test('rotate publishes the new selector without signing with it; activate switches within seconds and retires the old key', async () => {
  const both = await ternRaw(platform, ['dkim', 'rotate', 'sign.test', 'rsa2']);
  assert.equal(both.code, 1, `two active keys: the algorithm must be named (exit ${both.code}: ${both.stderr})`);
  assert.match(both.stderr, /algorithm: sign\.test signs with .*say which to rotate/);

  const out = await tern(platform, 'dkim', 'rotate', 'sign.test', 'rsa2', '--algorithm', 'rsa');
  assert.match(out, /DKIM key rsa2 of sign\.test \(rsa 2048\) is published, not signing yet: it signs from \S+ \(in 48h\)/);
  assert.match(out, /It replaces rsa1, retired when the new key signs/);
  assert.deepEqual(publish(out), ['rsa2._domainkey.sign.test']);
  const waiting = await ternJson<{ keys: KeyJson[] }>(platform, 'dkim', 'ls', 'sign.test');
  assert.deepEqual(waiting.keys.map((k) => `${k.selector}:${k.state}`).sort(), ['ed1:DKIM_KEY_STATE_ACTIVE', 'rsa1:DKIM_KEY_STATE_ACTIVE', 'rsa2:DKIM_KEY_STATE_PUBLISHED']);
  // Published is not signing: the next message is still signed with rsa1.
  assert.deepEqual((await verified(await sendOne())).pass, ['ed1', 'rsa1']);

  const t0 = Date.now();
  const act = await tern(platform, 'dkim', 'activate', 'sign.test', 'rsa2');
  assert.match(act, /DKIM key rsa2 of sign\.test signs now; rsa1 is retired/);
  const signed = await signedWith(['ed1', 'rsa2'], 'a message signed with rsa2');
  console.log(`# signed with the rotated key ${signed.ms} ms after activate (${Date.now() - t0} ms including the CLI call)`);
  assert.ok(!signed.h.has('rsa1'), 'the old key signs no more');

  const all = await ternJson<{ keys: KeyJson[] }>(platform, 'dkim', 'ls', '--all');
  assert.deepEqual(all.keys.map((k) => `${k.selector}:${k.state}`).sort(), ['ed1:DKIM_KEY_STATE_ACTIVE', 'rsa1:DKIM_KEY_STATE_RETIRED', 'rsa2:DKIM_KEY_STATE_ACTIVE']);
  const old = (await rows()).find((r) => r.selector === 'rsa1')!;
  assert.equal(old.state, 'retired');
  assert.equal(old.sealed_key, null, "a retired key's private key is erased");
});

test('retire stops a key signing; a reused selector and a first key where one signs are refused with the next step', async () => {
  await tern(platform, 'dkim', 'retire', 'sign.test', 'ed1');
  await signedWith(['rsa2'], 'a message signed with rsa2 only');
  const reuse = await ternRaw(platform, ['dkim', 'generate', 'sign.test', 'ed1', '--algorithm', 'ed25519']);
  assert.notEqual(reuse.code, 0);
  assert.match(reuse.stderr, /selector ed1 of sign\.test exists \(retired\); choose a new selector/);
  const second = await ternRaw(platform, ['dkim', 'generate', 'sign.test', 'rsa9']);
  assert.notEqual(second.code, 0);
  assert.match(second.stderr, /sign\.test already signs with the rsa key of selector rsa2; to replace it, rotate: tern dkim rotate sign\.test rsa9/);
});

test('a key generated with --after is published first and signs by itself once that time has passed', async () => {
  const out = await tern(platform, 'dkim', 'generate', 'sign.test', 'ed2', '--algorithm', 'ed25519', '--after', '2s');
  assert.match(out, /DKIM key ed2 of sign\.test \(ed25519\) is published, not signing yet/);
  publish(out);
  const signed = await signedWith(['ed2', 'rsa2'], 'a message signed with ed2 after its delay');
  console.log(`# the delayed key signed ${signed.ms} ms after generate --after 2s`);
  const ls = await ternJson<{ keys: KeyJson[] }>(platform, 'dkim', 'ls', 'sign.test');
  assert.deepEqual(ls.keys.map((k) => `${k.selector}:${k.state}`).sort(), ['ed2:DKIM_KEY_STATE_ACTIVE', 'rsa2:DKIM_KEY_STATE_ACTIVE']);
});

test('policy and delivery refuse to start without TERN_DKIM_KEK, or with another one, once keys are stored', async () => {
  const p = platform.services.policy;
  const d = platform.services.delivery;
  const other = crypto.randomBytes(32).toString('base64');
  const cases: Array<[typeof p, Record<string, string | undefined>, RegExp]> = [
    [p, { TERN_DKIM_KEK: undefined }, /TERN_DKIM_KEK: not set, but 2 DKIM keys are stored sealed/],
    [p, { TERN_DKIM_KEK: other }, /TERN_DKIM_KEK: does not open the stored DKIM key of sign\.test/],
    [d, { TERN_DKIM_KEK: undefined }, /TERN_DKIM_KEK: not set, but policy has the DKIM key of sign\.test/],
    [d, { TERN_DKIM_KEK: other }, /TERN_DKIM_KEK: does not open the DKIM key of sign\.test/],
  ];
  for (const [svc, env, message] of cases) {
    const proc = await harness.startService(
      svc.name,
      { ...svc.env, ...env, TERN_GRPC_LISTEN: `127.0.0.1:${await harness.freePort()}`, TERN_METRICS_LISTEN: `127.0.0.1:${await harness.freePort()}` },
      { readiness: 'none' },
    );
    const exit = await proc.exited;
    assert.notEqual(exit.code, 0, `${svc.name} ${JSON.stringify(env)} exits`);
    assert.match(proc.log(), message);
    assert.ok(!proc.log().includes(other), 'the key is never logged');
  }
});
