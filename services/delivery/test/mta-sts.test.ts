// MTA-STS (RFC 8461) against a local HTTPS policy server: enforce mode limits
// delivery to the MX hosts the policy names, over TLS verified for the MX
// name, and waits (4.7.x) rather than send otherwise; the policy is cached
// and fetched again when the TXT id changes; testing mode changes nothing.
import assert from 'node:assert/strict';
import https from 'node:https';
import { after, before, beforeEach, test } from 'node:test';
import { Harness, selfSignedCert, type DnsServer, type SmtpSink } from '@tern/devkit';
import { AttemptOutcome, RouteKind, TlsPolicy, type DeliveryResult } from '@tern/proto';
import { MtaStsPolicies } from '../src/mta-sts';
import { deliver, type WorkerDeps } from '../src/worker';
import { logger, makeDeps, makeJob } from './helpers';

const harness = new Harness({ name: 'delivery-mta-sts' });
const bodies = new Map<string, Buffer>();
// One certificate for the policy host and the good MX: the test's CA (TERN_SMTP_TLS_CA_FILE).
const cert = selfSignedCert({ names: ['mta-sts.sts.test', 'mx.sts.test', 'plain.sts.test'] });
let dns: DnsServer;
let port: number;
let goodMx: SmtpSink; // mx.sts.test: STARTTLS, valid certificate
let rogueMx: SmtpSink; // rogue.sts.test: not in the policy
let plainMx: SmtpSink; // plain.sts.test: in the policy, no STARTTLS
let policyServer: https.Server;
let policyPort: number;
let policyText = '';
let requests = 0;
let serverBroken = false;

before(async () => {
  dns = await harness.startDns({ host: '127.0.4.1' });
  port = await harness.freePort('127.0.4.101');
  goodMx = await harness.startSink({ host: '127.0.4.101', port, hostname: 'mx.sts.test', starttls: true, tlsCert: cert });
  rogueMx = await harness.startSink({ host: '127.0.4.102', port, hostname: 'rogue.sts.test', starttls: true });
  plainMx = await harness.startSink({ host: '127.0.4.103', port, hostname: 'plain.sts.test' });
  policyServer = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
    requests++;
    if (serverBroken || req.url !== '/.well-known/mta-sts.txt' || req.headers.host !== 'mta-sts.sts.test') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain' }).end(policyText);
  });
  await new Promise<void>((resolve) => policyServer.listen(0, '127.0.4.100', () => resolve()));
  policyPort = (policyServer.address() as { port: number }).port;
  harness.defer(() => new Promise<void>((resolve) => policyServer.close(() => resolve())), 'close policy server');
  dns.a('mta-sts.sts.test', '127.0.4.100').a('mx.sts.test', '127.0.4.101').a('rogue.sts.test', '127.0.4.102').a('plain.sts.test', '127.0.4.103');
});
after(() => harness.close());
beforeEach(() => {
  for (const s of [goodMx, rogueMx, plainMx]) s.reset();
});

function setup(mx: [string, number][], mode: string, id: string): void {
  dns.remove('sts.test', 'MX').remove('_mta-sts.sts.test');
  for (const [host, pref] of mx) dns.mx('sts.test', host, pref);
  dns.txt('_mta-sts.sts.test', `v=STSv1; id=${id}`);
  policyText = `version: STSv1\nmode: ${mode}\nmx: mx.sts.test\nmx: *.sts.test.example\nmax_age: 86400\n`;
}

function deps(sts: MtaStsPolicies, o: { ca?: string } = { ca: cert.cert }): WorkerDeps {
  return { ...makeDeps({ dns: dns.address, port, bodies, tlsCa: o.ca }), mtaSts: sts };
}
const policies = (o: { ca?: string } = { ca: cert.cert }) => {
  const d = makeDeps({ dns: dns.address, port, bodies });
  return new MtaStsPolicies({ resolver: d.resolver, logger, port: policyPort, ca: o.ca, timeoutMs: 5_000, txtRecheckMs: 0 });
};
const summary = (r: DeliveryResult | undefined) => r!.recipients.map((x) => `${x.reply?.code} ${x.reply?.enhanced}`);

// First in this file (a fresh process): nothing before has loaded mailauth.
test('mailauth is loaded at the first policy lookup, not with the module, and that first lookup finds the policy', async () => {
  const loaded = () => Object.keys(require.cache).some((file) => /[\\/]node_modules[\\/]mailauth[\\/]/.test(file));
  const sts = policies();
  assert.equal(loaded(), false);
  setup([['mx.sts.test', 10]], 'enforce', 'a0');
  const policy = await sts.policyFor('sts.test');
  assert.equal(policy?.mode, 'enforce');
  assert.deepEqual(policy?.mx, ['mx.sts.test', '*.sts.test.example']);
  assert.equal(loaded(), true);
});

test('enforce: an MX the policy does not name is skipped, even when more preferred', async () => {
  setup([['rogue.sts.test', 5], ['mx.sts.test', 10]], 'enforce', 'a1');
  const r = await deliver(deps(policies()), makeJob(bodies, ['u@sts.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(r!.remoteHost, 'mx.sts.test');
  assert.equal(r!.tls?.verified, true);
  assert.equal(rogueMx.connectionCount, 0);
  assert.equal(goodMx.messages.length, 1);
});

test('enforce: no MX named by the policy: deferred 4.7.5, nothing sent', async () => {
  setup([['rogue.sts.test', 10]], 'enforce', 'a2');
  const r = await deliver(deps(policies()), makeJob(bodies, ['u@sts.test']));
  assert.deepEqual(summary(r), ['451 4.7.5']);
  assert.equal(r!.recipients[0]!.outcome, AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED);
  assert.equal(rogueMx.connectionCount, 0);
});

test('enforce: an allowed MX without STARTTLS, or with a certificate that does not verify, gets nothing in clear', async () => {
  setup([['plain.sts.test', 10]], 'enforce', 'a3');
  dns.mx('sts.test', 'plain.sts.test');
  policyText = 'version: STSv1\nmode: enforce\nmx: plain.sts.test\nmx: mx.sts.test\nmax_age: 86400\n';
  let r = await deliver(deps(policies()), makeJob(bodies, ['u@sts.test']));
  assert.deepEqual(summary(r), ['451 4.7.4']);
  assert.equal(plainMx.messages.length, 0);
  assert.ok(!plainMx.connections[0]!.commands.includes('MAIL'));
  // The good MX, but its certificate is not trusted by us (the policy host is): deferred 4.7.5.
  setup([['mx.sts.test', 10]], 'enforce', 'a4');
  const p = policies();
  r = await deliver({ ...deps(p, { ca: undefined }), mtaSts: p }, makeJob(bodies, ['u@sts.test']));
  assert.deepEqual(summary(r), ['451 4.7.5']);
  assert.equal(goodMx.messages.length, 0);
});

test('testing mode: delivery as usual (opportunistic), to any MX', async () => {
  setup([['rogue.sts.test', 10]], 'testing', 'b1');
  const r = await deliver(deps(policies()), makeJob(bodies, ['u@sts.test']));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(rogueMx.messages.length, 1);
});

test('a route with its own TLS policy is not overridden by MTA-STS', async () => {
  setup([['rogue.sts.test', 10]], 'enforce', 'b2');
  const route = { domain: 'sts.test', kind: RouteKind.ROUTE_KIND_MX, target: '', tls: TlsPolicy.TLS_POLICY_MAY, authUser: '', authSecret: '' };
  const r = await deliver(deps(policies()), makeJob(bodies, ['u@sts.test'], { route }));
  assert.deepEqual(summary(r), ['250 2.0.0']);
  assert.equal(rogueMx.messages.length, 1);
});

test('the policy is cached, fetched again when the TXT id changes, and kept when the policy host is unreachable', async () => {
  setup([['rogue.sts.test', 5], ['mx.sts.test', 10]], 'enforce', 'c1');
  const p = policies();
  const before = requests;
  for (let i = 0; i < 3; i++) assert.deepEqual(summary(await deliver(deps(p), makeJob(bodies, ['u@sts.test']))), ['250 2.0.0']);
  assert.equal(requests - before, 1, 'one fetch for three deliveries');
  assert.equal(p.fetches, 1);
  // New id, new policy (testing): fetched again, and now the rogue MX is allowed.
  setup([['rogue.sts.test', 5], ['mx.sts.test', 10]], 'testing', 'c2');
  assert.deepEqual(summary(await deliver(deps(p), makeJob(bodies, ['u@sts.test']))), ['250 2.0.0']);
  assert.equal(requests - before, 2);
  assert.equal(rogueMx.messages.length, 1);
  // New id again but the policy host fails (404): the cached (testing) policy stays in force.
  setup([['rogue.sts.test', 5], ['mx.sts.test', 10]], 'enforce', 'c3');
  serverBroken = true;
  try {
    assert.deepEqual(summary(await deliver(deps(p), makeJob(bodies, ['u@sts.test']))), ['250 2.0.0']);
    assert.equal(requests - before, 3, 'it tried');
    assert.equal(rogueMx.messages.length, 2);
  } finally {
    serverBroken = false;
  }
});

test('a policy host whose certificate does not verify gives no policy', async () => {
  setup([['rogue.sts.test', 10]], 'enforce', 'd1');
  const p = policies({ ca: undefined });
  assert.equal(await p.policyFor('sts.test'), undefined);
  const r = await deliver(deps(p), makeJob(bodies, ['u@sts.test']));
  assert.deepEqual(summary(r), ['250 2.0.0'], 'no policy: opportunistic delivery to the MX');
});
