// Phase 2 rules over real gRPC, Postgres and a test DNS server: rate limits
// shared by two policy instances, DNSBL, greylisting, SPF at MAIL,
// DKIM/DMARC/ARC at end of data with Authentication-Results, and a Postfix
// policy delegation server on loopback.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { dkimSign, sealMessage } from 'mailauth';
import { grpc } from '@tern/grpc';
import { CheckMessageRequest, CheckMessageResponse, CheckStage, DomainKind, Listener, PolicyAction } from '@tern/proto';
import type { App } from '../src/app';
import { TestDns } from './dns-server';
import { createDatabase, policyClient, session, startPolicy, type PolicyClient } from './helpers';

const { CHECK_STAGE_CONNECT: CONNECT, CHECK_STAGE_MAIL: MAIL, CHECK_STAGE_RCPT: RCPT } = CheckStage;
const { POLICY_ACTION_ACCEPT: ACCEPT, POLICY_ACTION_REJECT: REJECT, POLICY_ACTION_DEFER: DEFER } = PolicyAction;

const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const publicB64 = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');

function checkMessage(client: PolicyClient, header: Partial<CheckMessageRequest['header']>, message: Buffer, chunkSize = 100): Promise<CheckMessageResponse> {
  return new Promise((resolve, reject) => {
    const call = (client.raw.checkMessage as (cb: (e: grpc.ServiceError | null, r: CheckMessageResponse) => void) => grpc.ClientWritableStream<CheckMessageRequest>).call(
      client.raw,
      (err, res) => (err ? reject(err) : resolve(res)),
    );
    call.write(CheckMessageRequest.fromPartial({ header: header as never }));
    for (let i = 0; i < message.length; i += chunkSize) call.write(CheckMessageRequest.fromPartial({ chunk: message.subarray(i, i + chunkSize) }));
    call.end();
  });
}

// dkimSign takes its keys in signatureData (the top-level fields only name defaults).
const sign = (message: Buffer) =>
  dkimSign(message, {
    signingDomain: 'signed.test',
    selector: 's1',
    privateKey: privatePem,
    signatureData: [{ signingDomain: 'signed.test', selector: 's1', privateKey: privatePem, canonicalization: 'relaxed/relaxed' }],
  });

const crlf = (s: string) => Buffer.from(s.replace(/\r?\n/g, '\r\n'));

describe('policy checks', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let dns: TestDns;
  let dnsAddr: string;
  const apps: App[] = [];
  const clients: PolicyClient[] = [];

  async function start(env: Record<string, string>): Promise<PolicyClient> {
    const app = await startPolicy(db.url, { TERN_DNS_SERVERS: dnsAddr, TERN_DNS_TIMEOUT_MS: '1000', TERN_HOSTNAME: 'mx.local.test', ...env });
    apps.push(app);
    const c = policyClient(app.grpcPort);
    clients.push(c);
    return c;
  }

  before(async () => {
    db = await createDatabase();
    dns = new TestDns();
    dns
      .add('2.0.0.127.bl.test', 'A', '127.0.0.2')
      .txt('2.0.0.127.bl.test', 'Listed: see https://bl.test/lookup?ip=$addr')
      .txt('spf-pass.test', 'v=spf1 ip4:127.0.0.2 -all')
      .txt('spf-fail.test', 'v=spf1 ip4:192.0.2.1 -all')
      .txt('spf-soft.test', 'v=spf1 ~all')
      .txt('signed.test', 'v=spf1 ip4:127.0.0.2 -all')
      .txt('s1._domainkey.signed.test', `v=DKIM1; k=rsa; p=${publicB64}`)
      .txt('_dmarc.signed.test', 'v=DMARC1; p=reject')
      .txt('_dmarc.lax.test', 'v=DMARC1; p=none')
      .txt('arc1._domainkey.list.test', `v=DKIM1; k=rsa; p=${publicB64}`);
    dnsAddr = await dns.start();
    const c = await start({});
    await c.putDomain({ domain: { name: 'local.test', kind: DomainKind.DOMAIN_KIND_LOCAL }, operator: 't' });
    await c.putDomain({ domain: { name: 'relay.test', kind: DomainKind.DOMAIN_KIND_RELAY }, operator: 't' });
    await c.putDomain({ domain: { name: 'small.test', kind: DomainKind.DOMAIN_KIND_RELAY, maxMessageSize: 500 }, operator: 't' });
    await c.putMailbox({ mailbox: { address: 'alice@local.test', enabled: true }, operator: 't' });
    await c.putUser({ user: { username: 'sub', allowedSenders: ['@local.test'], mayRelay: true, enabled: true }, password: 'pw', operator: 't' });
  });

  after(async () => {
    for (const c of clients) c.close();
    for (const a of apps.reverse()) await a.stop();
    dns?.close();
    await db?.drop();
  });

  describe('rate limits across two instances', () => {
    let a: PolicyClient;
    let b: PolicyClient;
    before(async () => {
      const env = {
        TERN_LIMIT_CONNECTIONS_PER_IP: '4/1m',
        TERN_LIMIT_MESSAGES_PER_IP: '3/1m',
        TERN_LIMIT_RECIPIENTS_PER_USER: '2/1h',
        TERN_LIMIT_MESSAGES_PER_SENDER_DOMAIN: '2/1m',
        TERN_SPF_FAIL_ACTION: 'none',
      };
      a = await start(env);
      b = await start(env);
    });

    it('limits connections per client IP with 421 4.7.0', async () => {
      const s = session({ clientAddress: '127.0.0.20' });
      const results = [];
      for (let i = 0; i < 5; i++) results.push(await (i % 2 ? b : a).check({ stage: CONNECT, session: s }));
      assert.deepEqual(results.slice(0, 4).map((r) => r.action), [ACCEPT, ACCEPT, ACCEPT, ACCEPT]);
      assert.equal(results[4]?.action, DEFER);
      assert.deepEqual(results[4]?.reply, { code: 421, enhanced: '4.7.0', text: 'Error: too many connections from 127.0.0.20' });
      assert.equal(results[4]?.reason, 'rate_limit_connections_ip');
      // trusted networks are exempt
      for (let i = 0; i < 6; i++) assert.equal((await a.check({ stage: CONNECT, session: session({ clientAddress: '127.0.0.1' }) })).action, ACCEPT);
    });

    it('limits messages per client IP with 450 4.7.1, counted on both instances', async () => {
      const s = session({ clientAddress: '127.0.0.21' });
      const senders = ['x@one.test', 'x@two.test', 'x@three.test', 'x@four.test'];
      const results = [];
      for (const [i, sender] of senders.entries()) results.push(await (i % 2 ? b : a).check({ stage: MAIL, session: s, sender }));
      assert.deepEqual(results.map((r) => r.action), [ACCEPT, ACCEPT, ACCEPT, DEFER]);
      assert.deepEqual(results[3]?.reply, { code: 450, enhanced: '4.7.1', text: 'Error: too much mail from 127.0.0.21' });
    });

    it('limits messages per sender domain', async () => {
      const results = [];
      for (let i = 0; i < 3; i++) {
        results.push(await (i % 2 ? b : a).check({ stage: MAIL, session: session({ clientAddress: `127.0.1.${i + 1}` }), sender: 'bulk@sender-domain.test' }));
      }
      assert.deepEqual(results.map((r) => r.action), [ACCEPT, ACCEPT, DEFER]);
      assert.equal(results[2]?.reason, 'rate_limit_messages_sender_domain');
    });

    it('limits recipients per authenticated user', async () => {
      const s = session({ authUser: 'sub', listener: Listener.LISTENER_SUBMISSION, clientAddress: '127.0.0.22' });
      const results = [];
      for (let i = 0; i < 3; i++) results.push(await (i % 2 ? b : a).check({ stage: RCPT, session: s, sender: 'me@local.test', recipient: `r${i}@far.test` }));
      assert.deepEqual(results.map((r) => r.action), [ACCEPT, ACCEPT, DEFER]);
      assert.equal(results[2]?.reply?.code, 450);
      assert.equal(results[2]?.reply?.enhanced, '4.7.1');
      assert.equal(results[2]?.reason, 'rate_limit_recipients_user');
    });
  });

  describe('DNS blocklists', () => {
    let c: PolicyClient;
    before(async () => {
      c = await start({ TERN_DNSBL_ZONES: 'bl.test' });
    });

    it('refuses a listed client at CONNECT with the list text', async () => {
      const r = await c.check({ stage: CONNECT, session: session({ clientAddress: '127.0.0.2' }) });
      assert.equal(r.action, REJECT);
      assert.deepEqual(r.reply, {
        code: 554,
        enhanced: '5.7.1',
        text: 'Service unavailable; Client host [127.0.0.2] blocked using bl.test; Listed: see https://bl.test/lookup?ip=127.0.0.2',
      });
      assert.equal(r.reason, 'dnsbl');
    });

    it('accepts an unlisted client and never checks trusted networks', async () => {
      assert.equal((await c.check({ stage: CONNECT, session: session({ clientAddress: '127.0.0.3' }) })).action, ACCEPT);
      assert.equal((await c.check({ stage: CONNECT, session: session({ clientAddress: '127.0.0.1' }) })).action, ACCEPT);
    });
  });

  describe('greylisting', () => {
    let c: PolicyClient;
    before(async () => {
      c = await start({ TERN_GREYLIST: 'true', TERN_GREYLIST_DELAY_S: '1', TERN_GREYLIST_AUTO_WHITELIST: '1', TERN_SPF_FAIL_ACTION: 'none' });
    });

    it('defers the first attempt, passes a retry after the delay, then whitelists the client network', async () => {
      const req = { stage: RCPT, session: session({ clientAddress: '127.0.5.9' }), sender: 'a@grey.test', recipient: 'alice@local.test' };
      const first = await c.check(req);
      assert.equal(first.action, DEFER);
      assert.equal(first.reply?.code, 450);
      assert.equal(first.reply?.enhanced, '4.2.0');
      assert.match(first.reply?.text ?? '', /^<alice@local\.test>: Recipient address rejected: Greylisted/);
      assert.equal(first.reason, 'greylisted');
      assert.equal((await c.check(req)).action, DEFER, 'a retry before the delay is still deferred');
      await new Promise((r) => setTimeout(r, 1100));
      const retry = await c.check(req);
      assert.equal(retry.action, ACCEPT);
      assert.equal(retry.localRecipient, true);
      // auto-whitelisted: another sender from the same /24 passes at once
      const other = await c.check({ ...req, session: session({ clientAddress: '127.0.5.77' }), sender: 'b@grey.test' });
      assert.equal(other.action, ACCEPT);
    });

    it('does not greylist trusted or authenticated clients, nor refused recipients', async () => {
      assert.equal((await c.check({ stage: RCPT, session: session({ clientAddress: '127.0.0.1' }), sender: 'a@x.test', recipient: 'alice@local.test' })).action, ACCEPT);
      const unknown = await c.check({ stage: RCPT, session: session({ clientAddress: '127.0.6.1' }), sender: 'a@x.test', recipient: 'nobody@local.test' });
      assert.equal(unknown.reply?.code, 550);
    });
  });

  describe('SPF, DKIM, DMARC', () => {
    let c: PolicyClient;
    let lax: PolicyClient;
    before(async () => {
      c = await start({});
      lax = await start({ TERN_DMARC_ENFORCE: 'false', TERN_SPF_FAIL_ACTION: 'none' });
    });

    it('refuses an SPF hard fail at MAIL with 550 5.7.23', async () => {
      const r = await c.check({ stage: MAIL, session: session(), sender: 'x@spf-fail.test' });
      assert.equal(r.action, REJECT);
      assert.equal(r.reply?.code, 550);
      assert.equal(r.reply?.enhanced, '5.7.23');
      assert.match(r.reply?.text ?? '', /^<x@spf-fail\.test>: Sender address rejected: SPF fail/);
      assert.equal(r.reason, 'spf_fail');
    });

    it('accepts SPF pass, softfail and none at MAIL, and a fail when configured not to refuse', async () => {
      for (const sender of ['x@spf-pass.test', 'x@spf-soft.test', 'x@no-spf.test', '']) {
        assert.equal((await c.check({ stage: MAIL, session: session(), sender })).action, ACCEPT, sender);
      }
      assert.equal((await lax.check({ stage: MAIL, session: session(), sender: 'x@spf-fail.test' })).action, ACCEPT);
    });

    const body = (from: string) =>
      crlf(
        `From: ${from}\nTo: alice@local.test\nSubject: hello\nDate: Mon, 23 Nov 2026 06:00:00 +0000\nMessage-ID: <${crypto.randomUUID()}@test>\n\n` +
          'Hello there.\n'.repeat(40),
      );

    it('writes Authentication-Results for a signed message: dkim, spf and dmarc pass', async () => {
      const message = body('ceo@signed.test');
      const signed = await sign(message);
      assert.deepEqual(signed.errors, []);
      const full = Buffer.concat([Buffer.from(signed.signatures), message]);
      const r = await checkMessage(c, { session: session(), sender: 'bounce@signed.test', recipients: ['alice@local.test'] }, full, 77);
      assert.equal(r.action, ACCEPT, JSON.stringify(r));
      const ar = r.addHeaders.find((h) => h.name === 'Authentication-Results');
      assert.ok(ar, JSON.stringify(r.addHeaders));
      assert.match(ar.value, /^mx\.local\.test;/);
      assert.match(ar.value, /dkim=pass[^;]*header\.i=@signed\.test/);
      assert.match(ar.value, /spf=pass/);
      assert.match(ar.value, /dmarc=pass/);
      assert.equal(r.reason, 'dmarc_pass');
    });

    it('refuses a forged message from a p=reject domain, and only annotates it when enforcement is off', async () => {
      const forged = body('ceo@signed.test');
      const header = { session: session(), sender: 'x@spf-pass.test', recipients: ['alice@local.test'] };
      const r = await checkMessage(c, header, forged);
      assert.equal(r.action, REJECT);
      assert.deepEqual(r.reply, { code: 550, enhanced: '5.7.1', text: 'Email rejected per DMARC policy for signed.test' });
      assert.equal(r.reason, 'dmarc_reject');
      const trusted = await checkMessage(c, { ...header, session: session({ clientAddress: '127.0.0.1' }) }, forged);
      assert.deepEqual([trusted.action, trusted.reason, trusted.addHeaders], [ACCEPT, 'trusted', []], 'trusted networks are not checked');
      const annotated = await checkMessage(lax, header, forged);
      assert.equal(annotated.action, ACCEPT);
      const ar = annotated.addHeaders.find((h) => h.name === 'Authentication-Results');
      assert.match(ar?.value ?? '', /dmarc=fail/);
      assert.match(ar?.value ?? '', /dkim=none/);
    });

    it('honours a valid ARC chain from a trusted sealer over a DMARC reject', async () => {
      // A mailing list got a signed message, rewrote its subject (breaking DKIM) and sealed it.
      const original = body('ceo@signed.test');
      const signed = await sign(original);
      const modified = Buffer.concat([
        Buffer.from(signed.signatures),
        Buffer.from(original.toString().replace('Subject: hello', 'Subject: [list] hello')),
      ]);
      const seal = await sealMessage(modified, {
        signingDomain: 'list.test',
        selector: 'arc1',
        privateKey: privatePem,
        authResults: 'list.test; dkim=pass header.i=@signed.test; spf=pass smtp.mailfrom=signed.test; dmarc=pass header.from=signed.test',
        cv: 'none',
      });
      const sealed = Buffer.concat([seal, modified]);
      const header = { session: session(), sender: 'list-bounce@spf-pass.test', recipients: ['alice@local.test'] };
      const trusting = await start({ TERN_ARC_TRUSTED_SEALERS: 'list.test' });
      const r = await checkMessage(trusting, header, sealed);
      const ar = r.addHeaders.find((h) => h.name === 'Authentication-Results')?.value ?? '';
      assert.match(ar, /arc=pass/);
      assert.match(ar, /dmarc=fail/);
      assert.equal(r.action, ACCEPT, JSON.stringify(r));
      assert.equal(r.reason, 'dmarc_fail_arc_override');
      const strict = await checkMessage(c, header, sealed);
      assert.equal(strict.action, REJECT);
    });

    it('detects a tampered signature', async () => {
      const message = body('ceo@lax.test');
      const signed = await sign(message);
      const tampered = Buffer.concat([Buffer.from(signed.signatures), message.subarray(0, message.length - 10), Buffer.from('tampered\r\n')]);
      const r = await checkMessage(c, { session: session(), sender: '', recipients: ['alice@local.test'] }, tampered);
      const ar = r.addHeaders.find((h) => h.name === 'Authentication-Results');
      assert.match(ar?.value ?? '', /dkim=(fail|neutral)/);
    });

    it('refuses a message larger than its domain allows with 552 5.3.4', async () => {
      const r = await checkMessage(c, { session: session(), sender: 'x@spf-pass.test', recipients: ['someone@small.test'] }, body('x@spf-pass.test'));
      assert.equal(r.action, REJECT);
      assert.equal(r.reply?.code, 552);
      assert.equal(r.reply?.enhanced, '5.3.4');
    });

    it('adds no results for authenticated submission', async () => {
      const r = await checkMessage(
        c,
        { session: session({ authUser: 'sub', listener: Listener.LISTENER_SUBMISSION }), sender: 'me@local.test', recipients: ['x@far.test'] },
        body('me@local.test'),
      );
      assert.equal(r.action, ACCEPT);
      assert.deepEqual(r.addHeaders, []);
    });
  });

  describe('Postfix policy delegation', () => {
    let server: net.Server;
    const seen: Array<Record<string, string>> = [];
    const sockets = new Set<net.Socket>();
    let c: PolicyClient;
    let down: PolicyClient;

    before(async () => {
      server = net.createServer((socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
        let buf = '';
        socket.setEncoding('utf8');
        socket.on('data', (d: string) => {
          buf += d;
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const attrs: Record<string, string> = {};
            for (const line of buf.slice(0, end).split('\n')) attrs[line.slice(0, line.indexOf('='))] = line.slice(line.indexOf('=') + 1);
            buf = buf.slice(end + 2);
            seen.push(attrs);
            const local = (attrs.recipient ?? '').split('@')[0];
            const action =
              local === 'block'
                ? 'REJECT Go away'
                : local === 'later'
                  ? 'DEFER_IF_PERMIT Service is unavailable'
                  : local === 'code'
                    ? '521 5.7.2 Not here'
                    : local === 'ok'
                      ? 'OK'
                      : 'DUNNO';
            socket.write(`action=${action}\n\n`);
          }
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as net.AddressInfo).port;
      c = await start({ TERN_POLICY_SERVERS: `127.0.0.1:${port}`, TERN_SPF_FAIL_ACTION: 'none' });
      // a server that is not there: Postfix's default_action
      const probe = net.createServer();
      await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
      const closedPort = (probe.address() as net.AddressInfo).port;
      await new Promise<void>((r) => probe.close(() => r()));
      down = await start({ TERN_POLICY_SERVERS: `127.0.0.1:${closedPort}`, TERN_SPF_FAIL_ACTION: 'none', TERN_POLICY_SERVER_TIMEOUT_MS: '500' });
    });

    after(() => {
      server?.close();
    });

    const ask = (client: PolicyClient, recipient: string) =>
      client.check({ stage: RCPT, session: session({ clientAddress: '127.0.0.2', heloName: 'helo.test' }), sender: 's@x.test', recipient, recipients: [] });

    it('allows what the server allows, with the full attribute set', async () => {
      const r = await ask(c, 'allow@relay.test');
      assert.equal(r.action, ACCEPT);
      assert.equal(r.reason, 'relay_domain');
      const attrs = seen.at(-1)!;
      assert.equal(attrs.request, 'smtpd_access_policy');
      assert.equal(attrs.protocol_state, 'RCPT');
      assert.equal(attrs.client_address, '127.0.0.2');
      assert.equal(attrs.helo_name, 'helo.test');
      assert.equal(attrs.sender, 's@x.test');
      assert.equal(attrs.recipient, 'allow@relay.test');
      assert.equal((await ask(c, 'ok@relay.test')).action, ACCEPT);
    });

    it('maps REJECT, DEFER_IF_PERMIT and a numeric reply', async () => {
      const rej = await ask(c, 'block@relay.test');
      assert.equal(rej.action, REJECT);
      assert.deepEqual(rej.reply, { code: 554, enhanced: '5.7.1', text: '<block@relay.test>: Recipient address rejected: Go away' });
      assert.equal(rej.reason, 'policy_server');
      const later = await ask(c, 'later@relay.test');
      assert.equal(later.action, DEFER);
      assert.deepEqual(later.reply, { code: 450, enhanced: '4.7.1', text: '<later@relay.test>: Recipient address rejected: Service is unavailable' });
      const code = await ask(c, 'code@relay.test');
      assert.deepEqual(code.reply, { code: 521, enhanced: '5.7.2', text: '<code@relay.test>: Recipient address rejected: Not here' });
    });

    it('is not asked about recipients the built-in rules refuse, nor for trusted clients', async () => {
      const before = seen.length;
      assert.equal((await ask(c, 'block@foreign.test')).reply?.code, 554);
      assert.equal((await c.check({ stage: RCPT, session: session({ clientAddress: '127.0.0.1' }), sender: 's@x.test', recipient: 'block@relay.test' })).action, ACCEPT);
      assert.equal(seen.length, before);
    });

    it('reconnects when the server closed the kept-alive connection', async () => {
      await ask(c, 'allow@relay.test');
      await new Promise<void>((resolve) => {
        server.getConnections(() => resolve());
        for (const s of sockets) s.destroy();
      });
      await new Promise((r) => setTimeout(r, 50));
      const r = await ask(c, 'block@relay.test');
      assert.equal(r.reply?.code, 554);
    });

    it('answers 451 4.3.5 when the server cannot be reached', async () => {
      const r = await ask(down, 'allow@relay.test');
      assert.equal(r.action, DEFER);
      assert.equal(r.reply?.code, 451);
      assert.equal(r.reply?.enhanced, '4.3.5');
      assert.equal(r.reason, 'delegation_error');
    });
  });
});
