// An 8-bit message (BODY=8BITMIME) to next hops with and without 8BITMIME
// (RFC 6152): converted to 7 bit for the one without (QP/base64, SIZE
// counting the converted message, DKIM signed after conversion), untouched
// for the one with; 554 5.6.3, nothing sent, where it cannot be converted.
// Devkit sinks on 127.0.4.15x, a test DNS server.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';
import { dkimVerify } from 'mailauth';
import { Harness, type DnsServer, type SmtpSink } from '@tern/devkit';
import { AttemptOutcome, BodyType, type DeliveryJob, type DeliveryResult } from '@tern/proto';
import { DkimSigner, parseDkimKeys } from '../src/dkim';
import { convert, scan } from '../src/downgrade';
import { deliver } from '../src/worker';
import { makeDeps, makeJob } from './helpers';

const harness = new Harness({ name: 'delivery-8bit' });
const bodies = new Map<string, Buffer>();
let dns: DnsServer;
let legacy: SmtpSink; // no 8BITMIME
let modern: SmtpSink; // 8BITMIME

before(async () => {
  dns = await harness.startDns({ host: '127.0.4.1' });
  const port = await harness.freePort('127.0.4.150');
  legacy = await harness.startSink({ host: '127.0.4.150', port, hostname: 'mx.legacy.test', eightBitMime: false });
  modern = await harness.startSink({ host: '127.0.4.151', port, hostname: 'mx.modern.test' });
  dns.mx('legacy.test', 'mx.legacy.test').a('mx.legacy.test', '127.0.4.150');
  dns.mx('modern.test', 'mx.modern.test').a('mx.modern.test', '127.0.4.151');
});
after(() => harness.close());

const deps = () => makeDeps({ dns: dns.address, port: legacy.port, bodies });
const summary = (r: DeliveryResult | undefined) => r!.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);
const eightBit = (rcpt: string, body: string, o: { inline?: boolean } = {}): DeliveryJob =>
  makeJob(bodies, [rcpt], { body: Buffer.from(body, 'utf8'), envelope: { bodyType: BodyType.BODY_TYPE_8BITMIME } as never, ...o });

const MESSAGE = [
  'From: a@sender.test',
  'To: u@legacy.test',
  'Subject: 8-bit',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="b1"',
  '',
  '--b1',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: 8bit',
  '',
  'Grüße aus Köln, und ein Gruß an alle, die das lesen.',
  '.a line that starts with a dot',
  '--b1',
  'Content-Type: application/octet-stream',
  'Content-Transfer-Encoding: 8bit',
  '',
  '\u00ff\u00fe binary-ish',
  '--b1--',
  '',
].join('\r\n');

async function converted(body: Buffer): Promise<Buffer> {
  async function* one(): AsyncGenerator<Buffer> {
    yield body;
  }
  const parts: Buffer[] = [];
  for await (const c of convert(one(), await scan(one()))) parts.push(c);
  return Buffer.concat(parts);
}

for (const inline of [true, false]) {
  test(`to a next hop without 8BITMIME the message goes converted to 7 bit, without BODY=, SIZE exact (${inline ? 'inline body' : 'body streamed from the queue'})`, async () => {
    const r = await deliver(deps(), eightBit('u@legacy.test', MESSAGE, { inline }));
    assert.deepEqual(summary(r), ['250 2.0.0']);
    const got = legacy.messages.at(-1)!;
    assert.equal(got.mailParams.BODY, undefined);
    assert.ok(got.raw.every((b) => b < 128), 'no byte above 127 on the wire');
    assert.deepEqual(got.raw, await converted(Buffer.from(MESSAGE, 'utf8')));
    const raw = got.raw.toString('latin1');
    assert.match(raw, /Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln, und ein Gru=C3=9F an alle, die das lesen\.\r\n\.a line/);
    assert.match(raw, /Content-Type: application\/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nw7\/DviBiaW5hcnktaXNo\r\n--b1--/);
    assert.equal(Number(got.mailParams.SIZE), got.raw.length, 'SIZE is the size of what was sent');
  });
}

test('to a next hop with 8BITMIME the message goes as it is, with BODY=8BITMIME', async () => {
  const r = await deliver(deps(), eightBit('u@modern.test', MESSAGE));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  const got = modern.messages.at(-1)!;
  assert.equal(got.mailParams.BODY, '8BITMIME');
  assert.equal(got.raw.toString('utf8'), MESSAGE);
});

test('an 8BITMIME message that is 7-bit after all goes as it is to a next hop without 8BITMIME', async () => {
  const body = 'From: a@sender.test\r\nSubject: ascii\r\nContent-Transfer-Encoding: 8bit\r\n\r\nplain ASCII\r\n';
  const r = await deliver(deps(), eightBit('u@legacy.test', body));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(legacy.messages.at(-1)!.raw.toString('latin1'), body);
});

test('an 8-bit message that cannot be converted (8-bit header) fails 554 5.6.3 at a next hop without 8BITMIME, nothing sent', async () => {
  const body = 'From: Jürgen <a@sender.test>\r\nSubject: x\r\n\r\nGrüße\r\n';
  const n = legacy.messages.length;
  const conns = legacy.connectionCount;
  const r = await deliver(deps(), eightBit('u@legacy.test', body));
  assert.deepEqual(summary(r), ['554 5.6.3']);
  assert.equal(r!.recipients[0]!.outcome, AttemptOutcome.ATTEMPT_OUTCOME_FAILED, 'permanent: the sender gets a report');
  assert.match(r!.recipients[0]!.reply!.text, /does not support 8BITMIME, and this message cannot be converted to 7 bit: 8-bit data in a header field \(from\)/);
  assert.equal(legacy.messages.length, n);
  assert.ok(legacy.connections.slice(conns).every((c) => !c.commands.includes('MAIL')), 'no MAIL sent');
  // The same message to a next hop with 8BITMIME is delivered.
  const ok = await deliver(deps(), eightBit('u@modern.test', body));
  assert.deepEqual(summary(ok), ['250 2.0.0']);
});

test('DKIM: the signature is made over the converted message and verifies', async () => {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const signer = new DkimSigner(parseDkimKeys(['sender.test:s1:/k.pem'], () => privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()));
  const record = `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`;
  const resolver = async (name: string, type: string) => {
    if (type === 'TXT' && name === 's1._domainkey.sender.test') return [[record]];
    throw Object.assign(new Error(`${name} ${type}: not found`), { code: 'ENOTFOUND' });
  };
  const r = await deliver({ ...deps(), dkim: signer }, eightBit('u@legacy.test', MESSAGE));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  const got = legacy.messages.at(-1)!;
  assert.match(got.raw.toString('latin1'), /^DKIM-Signature: /);
  assert.ok(got.raw.every((b) => b < 128));
  assert.equal(Number(got.mailParams.SIZE), got.raw.length, 'SIZE counts the signature and the conversion');
  const v = await dkimVerify(got.raw, { resolver });
  assert.equal(v.results[0]?.status.result, 'pass', JSON.stringify(v.results[0]?.status));
});
