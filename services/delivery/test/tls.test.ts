// TLS policy per route (none, may, encrypt, verify), REQUIRETLS (RFC 8689)
// through smart hosts, and smart host AUTH, against sinks with self-signed
// certificates on 127.0.4.x.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Harness, selfSignedCert, type DnsServer, type SmtpSink } from '@tern/devkit';
import { AttemptOutcome, RouteKind, TlsPolicy, type DeliveryResult, type Route } from '@tern/proto';
import { deliver } from '../src/worker';
import { ehloReply, makeDeps, makeJob, MiniSmtp, plainHandler, type DepsOptions } from './helpers';

const harness = new Harness({ name: 'delivery-tls' });
const bodies = new Map<string, Buffer>();
const cert = selfSignedCert({ names: ['mx.secure.test'] });
let dns: DnsServer;
let port: number;
let secure: SmtpSink; // STARTTLS, certificate for mx.secure.test
let clear: SmtpSink; // no STARTTLS
const minis: MiniSmtp[] = [];

before(async () => {
  dns = await harness.startDns({ host: '127.0.4.1' });
  port = await harness.freePort('127.0.4.80');
  secure = await harness.startSink({ host: '127.0.4.80', port, hostname: 'mx.secure.test', starttls: true, tlsCert: cert });
  clear = await harness.startSink({ host: '127.0.4.81', port, hostname: 'mx.clear.test' });
  dns.mx('secure.test', 'mx.secure.test').a('mx.secure.test', '127.0.4.80');
  dns.a('alias.secure.test', '127.0.4.80'); // same server, a name its certificate does not carry
  dns.mx('clear.test', 'mx.clear.test').a('mx.clear.test', '127.0.4.81');
});
after(async () => {
  for (const m of minis) await m.close();
  await harness.close();
});

const deps = (o: Partial<DepsOptions> & { secretsDir?: string } = {}) => ({ ...makeDeps({ dns: dns.address, port, bodies, tlsCa: cert.cert, ...o }), secretsDir: o.secretsDir });
const summary = (r: DeliveryResult | undefined) => r!.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);
const route = (domain: string, kind: RouteKind, tls: TlsPolicy, target = ''): Route => ({ domain, kind, target, tls, authUser: '', authSecret: '' });

test('default (may): STARTTLS when offered, the certificate recorded as verified when it is', async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@secure.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.used, true);
  assert.equal(r!.tls?.verified, true, 'the chain is trusted (TERN_SMTP_TLS_CA_FILE) and names the MX');
  assert.equal(secure.messages.at(-1)!.tls, true);
  // Without the CA the same session is unverified but still encrypted.
  const r2 = await deliver(deps({ tlsCa: undefined }), makeJob(bodies, ['u@secure.test']));
  assert.equal(r2!.tls?.used, true);
  assert.equal(r2!.tls?.verified, false);
});

test('none: no STARTTLS even when offered', async () => {
  const n = secure.connectionCount;
  const r = await deliver(deps(), makeJob(bodies, ['u@secure.test'], { route: route('secure.test', RouteKind.ROUTE_KIND_MX, TlsPolicy.TLS_POLICY_NONE) }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.used, false);
  assert.ok(!secure.connections[n]!.commands.includes('STARTTLS'));
});

test('encrypt to a server without STARTTLS: deferred 4.7.4, nothing sent in clear', async () => {
  const r = await deliver(deps(), makeJob(bodies, ['u@clear.test'], { route: route('clear.test', RouteKind.ROUTE_KIND_MX, TlsPolicy.TLS_POLICY_ENCRYPT) }));
  assert.deepEqual(summary(r), ['451 4.7.4']);
  assert.equal(r!.recipients[0]!.outcome, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED);
  assert.equal(r!.destinationFailure, true);
  assert.match(r!.recipients[0]!.reply!.text, /TLS is required, but was not offered/);
  assert.ok(!clear.connections.at(-1)!.commands.includes('MAIL'));
});

test('encrypt: an untrusted certificate is fine (encryption, no authentication)', async () => {
  const r = await deliver(deps({ tlsCa: undefined }), makeJob(bodies, ['u@secure.test'], { route: route('secure.test', RouteKind.ROUTE_KIND_MX, TlsPolicy.TLS_POLICY_ENCRYPT) }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.used, true);
});

test('verify: a trusted certificate naming the host is required', async () => {
  const smarthost = (target: string) => route('x.test', RouteKind.ROUTE_KIND_SMARTHOST, TlsPolicy.TLS_POLICY_VERIFY, target);
  let r = await deliver(deps(), makeJob(bodies, ['u@x.test'], { route: smarthost(`mx.secure.test:${port}`) }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.verified, true);
  // Untrusted chain.
  r = await deliver(deps({ tlsCa: undefined }), makeJob(bodies, ['u@x.test'], { route: smarthost(`mx.secure.test:${port}`) }));
  assert.deepEqual(summary(r), ['451 4.7.5']);
  assert.match(r!.recipients[0]!.reply!.text, /certificate not verified/i);
  // Trusted chain, wrong name.
  r = await deliver(deps(), makeJob(bodies, ['u@x.test'], { route: smarthost(`alias.secure.test:${port}`) }));
  assert.deepEqual(summary(r), ['451 4.7.5']);
  assert.match(r!.recipients[0]!.reply!.text, /does not name alias\.secure\.test/);
  // No STARTTLS at all.
  r = await deliver(deps(), makeJob(bodies, ['u@x.test'], { route: smarthost(`mx.clear.test:${port}`) }));
  assert.deepEqual(summary(r), ['451 4.7.4']);
});

/** A server offering STARTTLS, and REQUIRETLS once under TLS (RFC 8689 2). */
async function requireTlsServer(host: string, serverCert: { key: string; cert: string }): Promise<MiniSmtp> {
  const m = await new MiniSmtp(host, plainHandler([], (line, s) => {
    if (line.startsWith('EHLO')) return s.tls ? ehloReply('PIPELINING', 'REQUIRETLS') : ehloReply('PIPELINING', 'STARTTLS');
    if (line === 'STARTTLS') {
      s.startTls();
      return undefined;
    }
    return null;
  }), { cert: serverCert }).start(port);
  minis.push(m);
  return m;
}

// REQUIRETLS through MX hosts (which must be authenticated: DNSSEC or
// MTA-STS) is in requiretls.test.ts; here through smart hosts, whose name
// comes from the route, not from DNS.
test('REQUIRETLS via a smart host: never in clear and never to a relay without REQUIRETLS: 550 5.7.10', async () => {
  const smarthost = (target: string, tls = TlsPolicy.TLS_POLICY_UNSPECIFIED) => route('x.test', RouteKind.ROUTE_KIND_SMARTHOST, tls, target);
  // mx.secure.test does verified TLS but does not offer REQUIRETLS; mx.clear.test does no TLS (even when the route says "none").
  for (const target of [smarthost(`mx.secure.test:${port}`), smarthost(`mx.clear.test:${port}`), smarthost(`mx.clear.test:${port}`, TlsPolicy.TLS_POLICY_NONE)]) {
    const before = [secure, clear].map((s) => s.messages.length);
    const r = await deliver(deps(), makeJob(bodies, ['u@x.test'], { envelope: { requiretls: true } as never, route: target }));
    assert.deepEqual(summary(r), ['550 5.7.10'], target.target);
    assert.equal(r!.recipients[0]!.outcome, AttemptOutcome.ATTEMPT_OUTCOME_FAILED);
    assert.deepEqual([secure, clear].map((s) => s.messages.length), before, 'nothing delivered');
  }
});

test('REQUIRETLS via a smart host that offers verified TLS and REQUIRETLS: sent, with REQUIRETLS on MAIL', async () => {
  const rtlsCert = selfSignedCert({ names: ['relay.rtls.test'] });
  const good = await requireTlsServer('127.0.4.83', rtlsCert);
  dns.a('relay.rtls.test', '127.0.4.83');
  const r = await deliver(deps({ tlsCa: rtlsCert.cert }), makeJob(bodies, ['u@x.test'], { envelope: { requiretls: true } as never, route: route('x.test', RouteKind.ROUTE_KIND_SMARTHOST, TlsPolicy.TLS_POLICY_UNSPECIFIED, `relay.rtls.test:${port}`) }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.remoteHost, 'relay.rtls.test');
  assert.equal(r!.tls?.verified, true);
  const s = good.sessions.at(-1)!;
  assert.equal(s.tls, true);
  assert.ok(s.lines.some((l) => /^MAIL FROM:<a@sender\.test> .*REQUIRETLS/.test(l)), s.lines.join(' | '));
});

describe('smart host AUTH', () => {
  let relay: MiniSmtp;
  let secretsDir: string;
  const authLines: string[] = [];

  before(async () => {
    secretsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-secrets-'));
    harness.defer(() => fs.rmSync(secretsDir, { recursive: true, force: true }), 'remove secrets');
    fs.writeFileSync(path.join(secretsDir, 'relay-pass'), 'sekret\n');
    fs.writeFileSync(path.join(secretsDir, 'wrong-pass'), 'nope\n');
    // A submission-style relay: STARTTLS, then AUTH PLAIN/LOGIN, mail only after a good login.
    relay = await new MiniSmtp('127.0.4.84', plainHandler([], (line, s) => {
      const authed = (s as { authed?: boolean }).authed;
      if (line.startsWith('EHLO')) return s.tls ? ehloReply('PIPELINING', 'AUTH LOGIN PLAIN') : ehloReply('STARTTLS');
      if (line === 'STARTTLS') {
        s.startTls();
        return undefined;
      }
      if (line.startsWith('AUTH')) {
        authLines.push(`${s.tls ? 'tls' : 'CLEAR'} ${line}`);
        const ok = line === `AUTH PLAIN ${Buffer.from('\0relayuser\0sekret').toString('base64')}`;
        (s as { authed?: boolean }).authed = ok;
        return ok ? '235 2.7.0 Authentication successful' : '535 5.7.8 Authentication credentials invalid';
      }
      if (line.startsWith('MAIL') && !authed) return '530 5.7.0 Authentication required';
      return null;
    }), { cert }).start(port);
    minis.push(relay);
  });

  const viaRelay = (authUser: string, authSecret: string, tls = TlsPolicy.TLS_POLICY_UNSPECIFIED): Route => ({ domain: 'x.test', kind: RouteKind.ROUTE_KIND_SMARTHOST, target: `[127.0.4.84]:${port}`, tls, authUser, authSecret });

  test('AUTH PLAIN after STARTTLS with the password from the secrets directory', async () => {
    const r = await deliver(deps({ secretsDir }), makeJob(bodies, ['u@x.test'], { route: viaRelay('relayuser', 'relay-pass') }));
    assert.deepEqual(summary(r), ['250 2.0.0']);
    assert.equal(authLines.at(-1)!.split(' ')[0], 'tls');
    assert.equal(r!.tls?.used, true);
  });

  test('a refused login defers 4.7.8 (the route is wrong, not the message)', async () => {
    const r = await deliver(deps({ secretsDir }), makeJob(bodies, ['u@x.test'], { route: viaRelay('relayuser', 'wrong-pass') }));
    assert.deepEqual(summary(r), ['451 4.7.8']);
    assert.match(r!.recipients[0]!.reply!.text, /535 5\.7\.8/);
    assert.equal(r!.destinationFailure, true);
  });

  test('credentials are never sent without TLS; a missing secret defers 4.3.5 without a connection', async () => {
    const n = authLines.length;
    let r = await deliver(deps({ secretsDir }), makeJob(bodies, ['u@x.test'], { route: viaRelay('relayuser', 'relay-pass', TlsPolicy.TLS_POLICY_NONE) }));
    assert.deepEqual(summary(r), ['451 4.7.0']);
    // A relay that does not offer STARTTLS.
    r = await deliver(deps({ secretsDir }), makeJob(bodies, ['u@x.test'], { route: { ...viaRelay('relayuser', 'relay-pass'), target: `mx.clear.test:${port}` } }));
    assert.deepEqual(summary(r), ['451 4.7.0']);
    assert.ok(!clear.connections.at(-1)!.commands.some((c) => c === 'AUTH'));
    assert.equal(authLines.length, n, 'no AUTH line was sent');
    const sessions = relay.sessions.length;
    r = await deliver(deps({ secretsDir }), makeJob(bodies, ['u@x.test'], { route: viaRelay('relayuser', 'no-such-secret') }));
    assert.deepEqual(summary(r), ['451 4.3.5']);
    assert.equal(relay.sessions.length, sessions);
  });
});
