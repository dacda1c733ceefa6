// REQUIRETLS (RFC 8689) and the TLS-Required: No header field, through a
// validating resolver: a DNSSEC-signed zone (knotd) and an unsigned one (the
// devkit's DNS server) behind unbound, an MTA-STS policy server over HTTPS,
// and SMTP servers on 127.0.4.13x. A REQUIRETLS message goes only to an MX
// whose lookup is authenticated (DNSSEC, or MTA-STS in enforce mode), over
// verified TLS, to a server offering REQUIRETLS; otherwise it fails 5.7.10.
// "TLS-Required: No" lets a message through TLS policies (route, MTA-STS,
// DANE) that would stop it, opportunistic TLS instead.
// Skipped with a message when knot or unbound is not installed.
import assert from 'node:assert/strict';
import https from 'node:https';
import { after, before, test } from 'node:test';
import { dnssecToolsAvailable, Harness, selfSignedCert, startSignedZone, startValidatingResolver, type DnsServer, type SmtpSink } from '@tern/devkit';
import { AttemptOutcome, RouteKind, TlsPolicy, type DeliveryJob, type DeliveryResult, type Route } from '@tern/proto';
import { DaneResolver } from '../src/dane';
import { MtaStsPolicies } from '../src/mta-sts';
import { deliver, tlsOptional, type WorkerDeps } from '../src/worker';
import { ehloReply, logger, makeDeps, makeJob, MiniSmtp, plainHandler } from './helpers';

const skip = dnssecToolsAvailable() ? false : 'knot and unbound are not installed (apt-get install knot unbound)';
const harness = new Harness({ name: 'delivery-requiretls' });
const bodies = new Map<string, Buffer>();
// One certificate (and trust anchor) for every TLS server here: the MX hosts and the MTA-STS policy hosts.
const cert = selfSignedCert({
  names: ['mx.sec.test', 'mx-nortls.sec.test', 'mx.open.test', 'mx.enforce.open.test', 'mx.testing.open.test', 'mx.strict.open.test', 'mta-sts.enforce.open.test', 'mta-sts.testing.open.test', 'mta-sts.strict.open.test'],
});
const stranger = selfSignedCert({ names: ['mx-dane.sec.test'] });
let port: number;
let resolverAddress: string;
let plain: DnsServer;
let policyPort: number;
let rtlsSigned: MiniSmtp; // mx.sec.test (signed zone): verified TLS + REQUIRETLS
let rtlsOpen: MiniSmtp; // the MX hosts of open.test and its subdomains (unsigned): verified TLS + REQUIRETLS
let noRtls: SmtpSink; // mx-nortls.sec.test: verified TLS, no REQUIRETLS
let clear: SmtpSink; // no STARTTLS at all
let daneMx: SmtpSink; // mx-dane.sec.test: a certificate its TLSA record does not match
const minis: MiniSmtp[] = [];

/** A server offering STARTTLS, and REQUIRETLS once under TLS (RFC 8689 2). */
async function requireTlsServer(host: string): Promise<MiniSmtp> {
  const m = await new MiniSmtp(host, plainHandler([], (line, s) => {
    if (line.startsWith('EHLO')) return s.tls ? ehloReply('PIPELINING', 'REQUIRETLS') : ehloReply('PIPELINING', 'STARTTLS');
    if (line === 'STARTTLS') {
      s.startTls();
      return undefined;
    }
    return null;
  }), { cert }).start(port);
  minis.push(m);
  return m;
}

const POLICIES: Record<string, string> = {
  'mta-sts.enforce.open.test': 'version: STSv1\nmode: enforce\nmx: mx.enforce.open.test\nmax_age: 86400\n',
  'mta-sts.testing.open.test': 'version: STSv1\nmode: testing\nmx: mx.testing.open.test\nmax_age: 86400\n',
  // Names none of strict.open.test's MX hosts.
  'mta-sts.strict.open.test': 'version: STSv1\nmode: enforce\nmx: mx.elsewhere.example\nmax_age: 86400\n',
};

before(async () => {
  if (skip) return;
  port = await harness.freePort('127.0.4.132');
  rtlsSigned = await requireTlsServer('127.0.4.132');
  rtlsOpen = await requireTlsServer('127.0.4.133');
  noRtls = await harness.startSink({ host: '127.0.4.134', port, hostname: 'mx-nortls.sec.test', starttls: true, tlsCert: cert });
  clear = await harness.startSink({ host: '127.0.4.135', port, hostname: 'mx.clear.test' });
  daneMx = await harness.startSink({ host: '127.0.4.136', port, hostname: 'mx-dane.sec.test', starttls: true, tlsCert: stranger });

  const policyServer = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    const policy = POLICIES[String(req.headers.host)];
    if (req.url !== '/.well-known/mta-sts.txt' || !policy) res.writeHead(404).end();
    else res.writeHead(200, { 'content-type': 'text/plain' }).end(policy);
  });
  await new Promise<void>((resolve) => policyServer.listen(0, '127.0.4.131', () => resolve()));
  policyPort = (policyServer.address() as { port: number }).port;
  harness.defer(() => new Promise<void>((resolve) => policyServer.close(() => resolve())), 'close policy server');

  const zone = await startSignedZone({
    zone: 'sec.test',
    host: '127.0.4.130',
    port: await harness.freePort('127.0.4.130'),
    records: [
      { name: '@', type: 'MX', data: '10 mx.sec.test.' },
      { name: 'nortls', type: 'MX', data: '10 mx-nortls.sec.test.' },
      { name: 'clear', type: 'MX', data: '10 mx-clear.sec.test.' },
      { name: 'dane', type: 'MX', data: '10 mx-dane.sec.test.' },
      { name: 'mx', type: 'A', data: '127.0.4.132' },
      { name: 'mx-nortls', type: 'A', data: '127.0.4.134' },
      { name: 'mx-clear', type: 'A', data: '127.0.4.135' },
      { name: 'mx-dane', type: 'A', data: '127.0.4.136' },
      // mx-dane presents `stranger`; its TLSA names `cert`.
      { name: `_${port}._tcp.mx-dane`, type: 'TLSA', data: `3 1 1 ${cert.spkiSha256}` },
    ],
  });
  harness.defer(() => zone.stop(), 'stop knotd');
  plain = await harness.startDns({ host: '127.0.4.1' });
  plain.mx('open.test', 'mx.open.test').a('mx.open.test', '127.0.4.133');
  for (const d of ['enforce', 'testing', 'strict']) {
    plain.mx(`${d}.open.test`, `mx.${d}.open.test`).a(`mx.${d}.open.test`, d === 'strict' ? '127.0.4.135' : '127.0.4.133');
    plain.txt(`_mta-sts.${d}.open.test`, `v=STSv1; id=${d}1`).a(`mta-sts.${d}.open.test`, '127.0.4.131');
  }
  plain.mx('clear.open.test', 'mx.clear.open.test').a('mx.clear.open.test', '127.0.4.135');
  const resolver = await startValidatingResolver({ host: '127.0.4.137', port: await harness.freePort('127.0.4.137'), signed: [zone], insecure: [{ zone: 'open.test', address: plain.address }] });
  harness.defer(() => resolver.stop(), 'stop unbound');
  resolverAddress = resolver.address;
});
after(async () => {
  for (const m of minis) await m.close();
  await harness.close();
});

function deps(): WorkerDeps {
  const d = makeDeps({ dns: resolverAddress, port, bodies, tlsCa: cert.cert, dnsTimeoutMs: 2_000 });
  return {
    ...d,
    dane: new DaneResolver({ servers: [resolverAddress], timeoutMs: 2_000 }),
    mtaSts: new MtaStsPolicies({ resolver: d.resolver, logger, port: policyPort, ca: cert.cert, timeoutMs: 5_000, txtRecheckMs: 0 }),
  };
}
const summary = (r: DeliveryResult | undefined) => r!.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);
const requireTls = (rcpt: string, o: Parameters<typeof makeJob>[2] = {}): DeliveryJob => makeJob(bodies, [rcpt], { ...o, envelope: { requiretls: true } as never });
const mailLines = (m: MiniSmtp) => m.sessions.flatMap((s) => s.lines.filter((l) => l.startsWith('MAIL')));
const optionalBody = (rcpt: string) => `From: a@sender.test\r\nTo: ${rcpt}\r\nSubject: not secret\r\nTLS-Required: No\r\n\r\nDeliver this even without TLS.\r\n`;

test('REQUIRETLS: a DNSSEC-validated MX with verified TLS and REQUIRETLS gets the message, REQUIRETLS on MAIL', { skip }, async () => {
  const r = await deliver(deps(), requireTls('u@sec.test'));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.remoteHost, 'mx.sec.test');
  assert.equal(r!.tls?.verified, true);
  const s = rtlsSigned.sessions.at(-1)!;
  assert.equal(s.tls, true);
  assert.ok(s.lines.some((l) => /^MAIL FROM:<a@sender\.test> .*REQUIRETLS/.test(l)), s.lines.join(' | '));
});

test('REQUIRETLS: an MX from an unsigned zone is not trusted, even with verified TLS and REQUIRETLS: 550 5.7.10, nothing sent', { skip }, async () => {
  const before = mailLines(rtlsOpen).length;
  const r = await deliver(deps(), requireTls('u@open.test'));
  assert.deepEqual(summary(r), ['550 5.7.10']);
  assert.equal(r!.recipients[0]!.outcome, AttemptOutcome.ATTEMPT_OUTCOME_FAILED, 'permanent: the sender gets a report');
  assert.equal(r!.destinationFailure, false);
  assert.match(r!.recipients[0]!.reply!.text, /MX hosts of open\.test cannot be authenticated/);
  assert.equal(mailLines(rtlsOpen).length, before, 'no MAIL was sent');
});

test('REQUIRETLS: an MTA-STS policy in enforce mode authenticates an unsigned MX; testing mode does not', { skip }, async () => {
  let r = await deliver(deps(), requireTls('u@enforce.open.test'));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.remoteHost, 'mx.enforce.open.test');
  assert.equal(r!.tls?.verified, true);
  assert.match(mailLines(rtlsOpen).at(-1)!, /REQUIRETLS/);
  const before = mailLines(rtlsOpen).length;
  r = await deliver(deps(), requireTls('u@testing.open.test'));
  assert.deepEqual(summary(r), ['550 5.7.10']);
  assert.equal(mailLines(rtlsOpen).length, before);
  // An enforce policy that names none of the MX hosts: nothing to authenticate them either.
  r = await deliver(deps(), requireTls('u@strict.open.test'));
  assert.deepEqual(summary(r), ['550 5.7.10']);
  assert.equal(clear.messages.length, 0);
});

test('REQUIRETLS: under a signed MX, never in clear and never to a server without REQUIRETLS, whatever the route says', { skip }, async () => {
  for (const rcpt of ['u@nortls.sec.test', 'u@clear.sec.test']) {
    const r = await deliver(deps(), requireTls(rcpt));
    assert.deepEqual(summary(r), ['550 5.7.10'], rcpt);
    assert.equal(r!.recipients[0]!.outcome, AttemptOutcome.ATTEMPT_OUTCOME_FAILED);
  }
  const route: Route = { domain: 'clear.sec.test', kind: RouteKind.ROUTE_KIND_MX, target: '', tls: TlsPolicy.TLS_POLICY_NONE, authUser: '', authSecret: '' };
  const r = await deliver(deps(), requireTls('u@clear.sec.test', { route }));
  assert.deepEqual(summary(r), ['550 5.7.10']);
  assert.equal(noRtls.messages.length + clear.messages.length, 0, 'nothing delivered');
});

test('TLS-Required: No: a route that requires verified TLS delivers in clear to a server without STARTTLS, the message unchanged', { skip }, async () => {
  const route: Route = { domain: 'clear.open.test', kind: RouteKind.ROUTE_KIND_MX, target: '', tls: TlsPolicy.TLS_POLICY_VERIFY, authUser: '', authSecret: '' };
  // Without the field: the route's policy holds.
  let r = await deliver(deps(), makeJob(bodies, ['u@clear.open.test'], { route }));
  assert.deepEqual(summary(r), ['451 4.7.4']);
  const body = optionalBody('u@clear.open.test');
  r = await deliver(deps(), makeJob(bodies, ['u@clear.open.test'], { route, body }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.used, false);
  assert.equal(clear.messages.at(-1)!.raw.toString('latin1'), body, 'delivered as it was, TLS-Required field included');
});

test('TLS-Required: No: an MTA-STS policy (enforce) that names no MX host does not stop the message', { skip }, async () => {
  let r = await deliver(deps(), makeJob(bodies, ['u@strict.open.test']));
  assert.deepEqual(summary(r), ['451 4.7.5']);
  const n = clear.messages.length;
  r = await deliver(deps(), makeJob(bodies, ['u@strict.open.test'], { body: optionalBody('u@strict.open.test') }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.remoteHost, 'mx.strict.open.test');
  assert.equal(clear.messages.length, n + 1);
});

test('TLS-Required: No: a DANE mismatch does not stop the message (opportunistic TLS, not verified)', { skip }, async () => {
  let r = await deliver(deps(), makeJob(bodies, ['u@dane.sec.test']));
  assert.deepEqual(summary(r), ['451 4.7.5']);
  assert.equal(daneMx.messages.length, 0);
  r = await deliver(deps(), makeJob(bodies, ['u@dane.sec.test'], { body: optionalBody('u@dane.sec.test'), inline: true }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.tls?.used, true);
  assert.equal(r!.tls?.verified, false);
  assert.equal(daneMx.messages.length, 1);
});

test('TLS-Required: No is ignored on a REQUIRETLS message (RFC 8689 3): still 5.7.10 for an unauthenticated MX', { skip }, async () => {
  const r = await deliver(deps(), requireTls('u@open.test', { body: optionalBody('u@open.test') }));
  assert.deepEqual(summary(r), ['550 5.7.10']);
});

test('tlsOptional reads the header section only: any case, folded or not', () => {
  assert.equal(tlsOptional('From: a@b.test\r\nTLS-Required: No\r\n'), true);
  assert.equal(tlsOptional('tls-required:no\r\nFrom: a@b.test\r'), true);
  assert.equal(tlsOptional('TLS-Required:\r\n No \r\nFrom: a@b.test\r\n'), true);
  assert.equal(tlsOptional('TLS-Required: Yes\r\n'), false);
  assert.equal(tlsOptional('X-TLS-Required: No\r\n'), false);
  assert.equal(tlsOptional('Subject: TLS-Required: No\r\n'), false);
});
