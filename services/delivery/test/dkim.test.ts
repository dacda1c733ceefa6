// DKIM signing with mailauth: a message whose From: domain has a key leaves
// signed, and mailauth's verifier (with the public key served by a test
// resolver) says pass; a changed body fails; other domains are not signed.
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
  assert.equal(signer.keyFor('deep.news.signed.test')?.domain, 'signed.test');
  assert.equal(signer.keyFor('unsigned.test'), undefined);
  assert.throws(() => parseDkimKeys(['signed.test:/no/selector'], () => keyPem), /expected domain:selector/);
  assert.throws(() => parseDkimKeys(['signed.test:s1:/k.pem'], () => 'not a key'), /cannot use \/k\.pem as a private key/);
});
