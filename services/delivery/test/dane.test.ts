// DANE (RFC 7672) against a DNSSEC-signed test zone (knotd signs dane.test)
// behind a local validating resolver (unbound, with the zone's DS as trust
// anchor): TLSA records that match and that do not, DANE-EE and DANE-TA, TLS
// required when TLSA exists, and an insecure zone where TLSA is ignored.
// Skipped with a message when knot or unbound is not installed.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { dnssecToolsAvailable, Harness, selfSignedCert, startSignedZone, startValidatingResolver, type SmtpSink } from '@tern/devkit';
import { AttemptOutcome, type DeliveryResult } from '@tern/proto';
import { DaneResolver } from '../src/dane';
import { deliver, type WorkerDeps } from '../src/worker';
import { makeDeps, makeJob } from './helpers';

const skip = dnssecToolsAvailable() ? false : 'knot and unbound are not installed (apt-get install knot unbound)';
const harness = new Harness({ name: 'delivery-dane' });
const bodies = new Map<string, Buffer>();
const good = selfSignedCert({ names: ['mx-good.dane.test'] });
const other = selfSignedCert({ names: ['mx-bad.dane.test'] });
const taCert = selfSignedCert({ names: ['mx-ta.dane.test'] });
let port: number;
let resolverAddress: string;
const sinks: Record<string, SmtpSink> = {};

before(async () => {
  if (skip) return;
  port = await harness.freePort('127.0.4.122');
  sinks.good = await harness.startSink({ host: '127.0.4.122', port, hostname: 'mx-good.dane.test', starttls: true, tlsCert: good });
  sinks.bad = await harness.startSink({ host: '127.0.4.123', port, hostname: 'mx-bad.dane.test', starttls: true, tlsCert: other });
  sinks.notls = await harness.startSink({ host: '127.0.4.124', port, hostname: 'mx-notls.dane.test' });
  sinks.ta = await harness.startSink({ host: '127.0.4.125', port, hostname: 'mx-ta.dane.test', starttls: true, tlsCert: taCert });
  sinks.nodane = await harness.startSink({ host: '127.0.4.126', port, hostname: 'mx-nodane.dane.test', starttls: true });
  const tlsa = (host: string, data: string) => ({ name: `_${port}._tcp.${host}`, type: 'TLSA' as const, data });
  const zone = await startSignedZone({
    zone: 'dane.test',
    host: '127.0.4.120',
    port: await harness.freePort('127.0.4.120'),
    records: [
      { name: 'good', type: 'MX', data: '10 mx-good.dane.test.' },
      { name: 'bad', type: 'MX', data: '10 mx-bad.dane.test.' },
      { name: 'notls', type: 'MX', data: '10 mx-notls.dane.test.' },
      { name: 'ta', type: 'MX', data: '10 mx-ta.dane.test.' },
      { name: 'nodane', type: 'MX', data: '10 mx-nodane.dane.test.' },
      { name: 'multi', type: 'MX', data: '10 mx-bad.dane.test.' },
      { name: 'multi', type: 'MX', data: '20 mx-good.dane.test.' },
      { name: 'mx-good', type: 'A', data: '127.0.4.122' },
      { name: 'mx-bad', type: 'A', data: '127.0.4.123' },
      { name: 'mx-notls', type: 'A', data: '127.0.4.124' },
      { name: 'mx-ta', type: 'A', data: '127.0.4.125' },
      { name: 'mx-nodane', type: 'A', data: '127.0.4.126' },
      tlsa('mx-good', `3 1 1 ${good.spkiSha256}`),
      tlsa('mx-bad', `3 1 1 ${good.spkiSha256}`), // mx-bad presents another certificate
      tlsa('mx-notls', `3 1 1 ${good.spkiSha256}`),
      tlsa('mx-ta', `2 0 1 ${taCert.certSha256}`),
    ],
  });
  harness.defer(() => zone.stop(), 'stop knotd');
  // An unsigned zone beside it: TLSA there must be ignored.
  const plain = await harness.startDns({ host: '127.0.4.1' });
  plain.mx('plain.test', 'mx.plain.test').a('mx.plain.test', '127.0.4.123');
  plain.tlsa(`_${port}._tcp.mx.plain.test`, { usage: 3, selector: 1, matchingType: 1, data: good.spkiSha256 });
  const resolver = await startValidatingResolver({ host: '127.0.4.121', port: await harness.freePort('127.0.4.121'), signed: [zone], insecure: [{ zone: 'plain.test', address: plain.address }] });
  harness.defer(() => resolver.stop(), 'stop unbound');
  resolverAddress = resolver.address;
});
after(() => harness.close());

const deps = (): WorkerDeps => ({ ...makeDeps({ dns: resolverAddress, port, bodies, dnsTimeoutMs: 2_000 }), dane: new DaneResolver({ servers: [resolverAddress], timeoutMs: 2_000 }) });
const summary = (r: DeliveryResult | undefined) => r!.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);

test('DANE-EE: a certificate matching the secure TLSA record is accepted (verified, without any CA)', { skip }, async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@good.dane.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.used, true);
  assert.equal(r!.tls?.verified, true);
  assert.equal(sinks.good!.messages.length, 1);
});

test('DANE: a certificate that matches no TLSA record is refused (4.7.5), nothing sent, never in clear', { skip }, async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@bad.dane.test']));
  assert.deepEqual(summary(r), ['451 4.7.5']);
  assert.equal(r!.recipients[0]!.outcome, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED);
  assert.match(r!.recipients[0]!.reply!.text, /DANE: no TLSA record of mx-bad\.dane\.test matches/);
  assert.equal(sinks.bad!.messages.length, 0);
  assert.ok(sinks.bad!.connections.every((c) => !c.commands.includes('MAIL')), 'no second pass in clear text');
});

test('DANE: a mismatching MX is passed over for the next one that matches', { skip }, async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@multi.dane.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.remoteHost, 'mx-good.dane.test');
});

test('DANE: TLSA published but no STARTTLS offered: deferred 4.7.4', { skip }, async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@notls.dane.test']));
  assert.deepEqual(summary(r), ['451 4.7.4']);
  assert.equal(sinks.notls!.messages.length, 0);
});

test('DANE-TA: the trust anchor named by TLSA, with the host name checked', { skip }, async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@ta.dane.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.verified, true);
});

test('a signed zone without TLSA for the host: opportunistic TLS as usual', { skip }, async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@nodane.dane.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.used, true);
  assert.equal(r!.tls?.verified, false);
});

test('an unsigned zone: its TLSA records are ignored (no AD), so a non-matching certificate is fine', { skip }, async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@plain.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(sinks.bad!.messages.length, 1);
});
