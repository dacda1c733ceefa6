// DKIM signing: a message whose From: domain has a key leaves signed, and
// mailauth's verifier (with the public key served by a test resolver) says
// pass; a changed body fails; other domains are not signed. The signer's
// canonicalization is checked against mailauth on random bodies, Ed25519 and
// dual signatures verify, From is oversigned, and the admin API's keys win
// over TERN_DKIM_KEYS at the same domain.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';
import { dkimVerify } from 'mailauth';
import { Harness, type DnsServer, type SmtpSink } from '@tern/devkit';
import { DkimSigner, fromDomain, parseDkimKeys } from '../src/dkim';
import { deliver } from '../src/worker';
import { makeDeps, makeJob } from './helpers';

const harness = new Harness({ name: 'delivery-dkim' });
const bodies = new Map<string, Buffer>();
let dns: DnsServer;
let sink: SmtpSink;
const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const dnsRecord = `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`;
const signer = new DkimSigner(parseDkimKeys(['Signed.test:s2026:/keys/signed.pem'], () => keyPem));

before(async () => {
  dns = await harness.startDns({ host: '127.0.4.1' });
  sink = await harness.startSink({ host: '127.0.4.90', hostname: 'mx.dest.test' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', sink.host);
});
after(() => harness.close());

// The verifier's DNS: the selector record of signed.test, nothing else.
const resolver = async (name: string, type: string) => {
  if (type === 'TXT' && name === 's2026._domainkey.signed.test') return [[dnsRecord]];
  throw Object.assign(new Error(`${name} ${type}: not found`), { code: 'ENOTFOUND' });
};

test('a message from a domain with a key is signed; mailauth verifies the signature; a changed body fails', async () => {
  const deps = { ...makeDeps({ dns: dns.address, port: sink.port, bodies }), dkim: signer };
  const body =
    'From: "Alice (sales)" <alice@news.signed.test>\r\nTo: bob@dest.test\r\nSubject: signed\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <dkim-1@signed.test>\r\n\r\nHello Bob.\r\n.dot line\r\n';
  const job = makeJob(bodies, ['bob@dest.test'], { body });
  const r = await deliver(deps, job);
  assert.equal(r!.recipients[0]!.reply?.code, 250);
  const got = sink.messages.at(-1)!;
  const raw = got.raw.toString('latin1');
  assert.match(raw, /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=signed\.test;(.|\r\n\s)*s=s2026/);
  assert.ok(raw.endsWith(body), 'the message itself is unchanged after the signature');
  assert.equal(Number(got.mailParams.SIZE), got.raw.length, 'SIZE counts the signature');

  const ok = await dkimVerify(got.raw, { resolver });
  assert.equal(ok.results[0]?.status.result, 'pass', JSON.stringify(ok.results[0]?.status));
  assert.equal(ok.results[0]?.signingDomain, 'signed.test');

  const tampered = Buffer.from(raw.replace('Hello Bob.', 'Hello Eve.'), 'latin1');
  const bad = await dkimVerify(tampered, { resolver });
  // mailauth reports a body hash mismatch as "neutral" with that reason (RFC 6376 6.3).
  assert.notEqual(bad.results[0]?.status.result, 'pass');
  assert.match(JSON.stringify(bad.results[0]?.status), /body hash did not verify/);
});

test('a body streamed from the queue (not inline) is signed the same way', async () => {
  const deps = { ...makeDeps({ dns: dns.address, port: sink.port, bodies }), dkim: signer };
  const body = `From: alice@signed.test\r\nTo: bob@dest.test\r\nSubject: big\r\n\r\n${'line of text\r\n'.repeat(2000)}`;
  await deliver(deps, makeJob(bodies, ['bob@dest.test'], { body }));
  const res = await dkimVerify(sink.messages.at(-1)!.raw, { resolver });
  assert.equal(res.results[0]?.status.result, 'pass');
});

test('a message from a domain without a key is not signed', async () => {
  const deps = { ...makeDeps({ dns: dns.address, port: sink.port, bodies }), dkim: signer };
  await deliver(deps, makeJob(bodies, ['bob@dest.test'], { body: 'From: carol@other.test\r\nSubject: x\r\n\r\nhi\r\n', inline: true }));
  assert.doesNotMatch(sink.messages.at(-1)!.raw.toString(), /DKIM-Signature/i);
});

test('From: domain parsing, and bad key entries are refused at start', () => {
  assert.equal(fromDomain('Subject: a\r\nFrom: Bob <BOB@Example.ORG>\r\n'), 'example.org');
  assert.equal(fromDomain('From: (comment) a@b.example,\r\n c@d.example\r\n'), 'b.example');
  assert.equal(fromDomain('From:\r\n "x@y" <z@w.example>\r\n'), 'w.example');
  assert.equal(fromDomain('Subject: none\r\n'), undefined);
  assert.equal(signer.keysFor('deep.news.signed.test')[0]?.domain, 'signed.test');
  assert.deepEqual(signer.keysFor('unsigned.test'), []);
  assert.throws(() => parseDkimKeys(['signed.test:/no/selector'], () => keyPem), /expected domain:selector/);
  assert.throws(() => parseDkimKeys(['signed.test:s1:/k.pem'], () => 'not a key'), /cannot use \/k\.pem as a private key/);
});

// ---- the signer itself

const ed = crypto.generateKeyPairSync('ed25519');
const edRecord = `v=DKIM1; k=ed25519; p=${Buffer.from(ed.publicKey.export({ format: 'jwk' }).x!, 'base64url').toString('base64')}`;
const records = new Map<string, string>([
  ['s2026._domainkey.signed.test', dnsRecord],
  ['ed1._domainkey.signed.test', edRecord],
]);
const resolve2 = async (name: string, type: string) => {
  const r = type === 'TXT' ? records.get(name) : undefined;
  if (r) return [[r]];
  throw Object.assign(new Error(`${name} ${type}: not found`), { code: 'ENOTFOUND' });
};
const rsaKey = { domain: 'signed.test', selector: 's2026', algorithm: 'rsa' as const, privateKey, source: 'api' as const };
const edKey = { domain: 'signed.test', selector: 'ed1', algorithm: 'ed25519' as const, privateKey: ed.privateKey, source: 'api' as const };

async function* chunked(buf: Buffer, sizes: () => number): AsyncIterable<Buffer> {
  for (let i = 0; i < buf.length; ) {
    const n = Math.max(1, sizes());
    yield buf.subarray(i, i + n);
    i += n;
  }
}

/** h= of the first DKIM-Signature field of a signed message. */
function hTag(signed: string): string[] {
  const field = /^DKIM-Signature:((?:.|\r\n[ \t])*)/m.exec(signed)![1]!.replace(/\r\n/g, '');
  return /[; \t]h=([^;]*)/.exec(field)![1]!.replace(/\s+/g, '').split(':');
}

test('h= lists every signed header field present, the MIME ones included, and From once more than it occurs (oversigned)', async () => {
  const msg = Buffer.from(
    'Received: from x by y; Mon, 23 Nov 2026 09:00:00 +0000\r\nFrom: a@signed.test\r\nTo: b@dest.test\r\nCc: c@dest.test\r\nSubject: s\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <h@signed.test>\r\n' +
      'MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nList-Unsubscribe: <https://signed.test/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nX-Other: not signed\r\n\r\nbody\r\n',
  );
  const sig = await new DkimSigner().sign([rsaKey], msg);
  const h = hTag(sig);
  assert.deepEqual(h.filter((n) => n === 'from'), ['from', 'from']);
  for (const name of ['to', 'cc', 'subject', 'date', 'message-id', 'mime-version', 'content-type', 'content-transfer-encoding', 'list-unsubscribe', 'list-unsubscribe-post']) {
    assert.ok(h.includes(name), `${name} is signed: ${h.join(':')}`);
  }
  assert.ok(!h.includes('received') && !h.includes('x-other'));
  const signed = Buffer.concat([Buffer.from(sig, 'latin1'), msg]);
  const ok = await dkimVerify(signed, { resolver: resolve2 });
  assert.equal(ok.results[0]?.status.result, 'pass', JSON.stringify(ok.results[0]?.status));
  // Oversigning at work: a second From: added on the way breaks the signature.
  const added = Buffer.from(signed.toString('latin1').replace('\r\n\r\nbody', '\r\nFrom: evil@attacker.test\r\n\r\nbody'), 'latin1');
  const bad = await dkimVerify(added, { resolver: resolve2 });
  assert.notEqual(bad.results[0]?.status.result, 'pass');
});

test('Ed25519 (RFC 8463) and RSA signatures of one domain are both made and both verify', async () => {
  const msg = Buffer.from('From: Alice <alice@signed.test>\r\nTo: bob@dest.test\r\nSubject: dual\r\n\r\nHi.\r\n');
  const sig = await new DkimSigner().sign([rsaKey, edKey], msg);
  assert.equal((sig.match(/^DKIM-Signature:/gm) ?? []).length, 2);
  assert.match(sig, /a=ed25519-sha256; c=relaxed\/relaxed; d=signed\.test; s=ed1;/);
  const res = await dkimVerify(Buffer.concat([Buffer.from(sig, 'latin1'), msg]), { resolver: resolve2 });
  assert.deepEqual(
    res.results.map((r) => [r.status.result, r.selector]).sort(),
    [
      ['pass', 'ed1'],
      ['pass', 's2026'],
    ],
  );
});

test('relaxed canonicalization matches mailauth on random bodies and headers, whole or in random chunks', async () => {
  let seed = 7;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed % n);
  const pieces = ['word', ' ', '\t', '  \t ', '', 'x', '\r\n', '\r\n', '\r\n\r\n', 'é', '.', 'a\rb'];
  const signer = new DkimSigner();
  for (let i = 0; i < 60; i++) {
    let body = '';
    for (let k = rnd(40); k > 0; k--) body += pieces[rnd(pieces.length)];
    const subject = `  folded \t value ${i}\r\n\t continued  `;
    const msg = Buffer.from(`From:  a@signed.test \r\nSubject:${subject}\r\nTo: b@dest.test\r\n\r\n${body}`, 'latin1');
    const whole = rnd(2) === 0;
    const sig = await signer.sign([whole ? rsaKey : edKey], whole ? msg : chunked(msg, () => rnd(9)));
    const res = await dkimVerify(Buffer.concat([Buffer.from(sig, 'latin1'), msg]), { resolver: resolve2 });
    assert.equal(res.results[0]?.status.result, 'pass', `body ${JSON.stringify(body)}: ${JSON.stringify(res.results[0]?.status)}`);
  }
});

test("at one domain the admin API's keys win over TERN_DKIM_KEYS; a closer domain's file key still wins over a parent's API key", () => {
  const fileSigner = new DkimSigner(parseDkimKeys(['signed.test:file1:/k.pem', 'sub.other.test:file2:/k.pem'], () => keyPem));
  assert.equal(fileSigner.keysFor('signed.test')[0]?.selector, 'file1');
  fileSigner.setApiKeys([rsaKey, edKey, { ...rsaKey, domain: 'other.test', selector: 'api3' }]);
  assert.deepEqual(fileSigner.keysFor('news.signed.test').map((k) => k.selector), ['s2026', 'ed1']);
  assert.deepEqual(fileSigner.keysFor('x.sub.other.test').map((k) => k.selector), ['file2']);
  assert.deepEqual(fileSigner.keysFor('other.test').map((k) => k.selector), ['api3']);
  fileSigner.setApiKeys([]);
  assert.equal(fileSigner.keysFor('signed.test')[0]?.selector, 'file1', 'the file key again once the API has none');
});

test('a message without From: is not signed (RFC 6376 5.4): the signer refuses', async () => {
  await assert.rejects(new DkimSigner().sign([rsaKey], Buffer.from('Subject: x\r\n\r\nhi\r\n')), /no From: field/);
});
