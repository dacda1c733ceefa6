// Phase 1 rules over real gRPC and a real Postgres: relay control, local
// recipients, management RPCs with validation, authentication, and changes
// reaching a second policy instance through LISTEN/NOTIFY.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { grpc } from '@tern/grpc';
import { CheckStage, DomainKind, Listener, PolicyAction } from '@tern/proto';
import type { App } from '../src/app';
import { createDatabase, eventually, policyClient, session, startPolicy, type PolicyClient } from './helpers';

const RCPT = CheckStage.CHECK_STAGE_RCPT;
const MAIL = CheckStage.CHECK_STAGE_MAIL;

describe('policy service', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let app: App;
  let app2: App;
  let c: PolicyClient;
  let c2: PolicyClient;

  before(async () => {
    db = await createDatabase();
    app = await startPolicy(db.url);
    app2 = await startPolicy(db.url, { TERN_POLICY_RELOAD_MS: '3600000' });
    c = policyClient(app.grpcPort);
    c2 = policyClient(app2.grpcPort);
    const operator = 'test-operator';
    await c.putDomain({ domain: { name: 'local.test', kind: DomainKind.DOMAIN_KIND_LOCAL, catchAll: '', maxMessageSize: 0 }, operator });
    await c.putDomain({ domain: { name: 'catch.test', kind: DomainKind.DOMAIN_KIND_LOCAL, catchAll: 'bucket@local.test', maxMessageSize: 0 }, operator });
    await c.putDomain({ domain: { name: 'relay.test', kind: DomainKind.DOMAIN_KIND_RELAY, catchAll: '', maxMessageSize: 0 }, operator });
    await c.putMailbox({ mailbox: { address: 'alice@local.test', enabled: true }, operator });
    await c.putMailbox({ mailbox: { address: 'bucket@local.test', enabled: true }, operator });
    await c.putAlias({ alias: { address: 'sales@local.test', targets: ['alice@local.test', 'bob@elsewhere.test'] }, operator });
  });

  after(async () => {
    c?.close();
    c2?.close();
    await app2?.stop();
    await app?.stop();
    await db?.drop();
  });

  const rcpt = (recipient: string, s: Record<string, unknown> = {}, client = c) =>
    client.check({ stage: RCPT, session: session(s), sender: 'someone@sender.test', recipient, recipients: [] });

  describe('relay control', () => {
    it('denies an untrusted client relaying to a foreign domain', async () => {
      const r = await rcpt('victim@foreign.test');
      assert.equal(r.action, PolicyAction.POLICY_ACTION_REJECT);
      assert.deepEqual(r.reply, { code: 554, enhanced: '5.7.1', text: '<victim@foreign.test>: Relay access denied' });
      assert.equal(r.reason, 'relay_denied');
      assert.equal(r.localRecipient, false);
    });

    for (const [trick, address] of [
      ['percent_hack', 'victim%foreign.test@local.test'],
      ['bang_path', 'foreign.test!victim@local.test'],
      ['quoted_at', '"victim@foreign.test"@local.test'],
      ['multiple_at', 'victim@foreign.test@local.test'],
      ['source_route', '@local.test:victim@foreign.test'],
      ['source_route', '@a.test,@local.test:victim@foreign.test'],
    ] as const) {
      it(`denies the routing trick ${trick}: ${address}`, async () => {
        const r = await rcpt(address);
        assert.equal(r.action, PolicyAction.POLICY_ACTION_REJECT);
        assert.equal(r.reply?.code, 554);
        assert.equal(r.reply?.enhanced, '5.7.1');
        assert.equal(r.reply?.text, `<${address}>: Relay access denied`);
        assert.equal(r.reason, `routing_trick_${trick}`);
      });
    }

    it('accepts a trusted network relaying anywhere', async () => {
      const r = await rcpt('victim@foreign.test', { clientAddress: '127.0.0.1' });
      assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
      assert.equal(r.reason, 'trusted_network');
    });

    it('accepts IPv4-mapped IPv6 from the trusted network', async () => {
      const r = await rcpt('victim@foreign.test', { clientAddress: '::ffff:127.0.0.1' });
      assert.equal(r.reason, 'trusted_network');
    });

    it('accepts a relay domain from anyone', async () => {
      const r = await rcpt('someone@relay.test');
      assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
      assert.equal(r.reason, 'relay_domain');
      assert.equal(r.localRecipient, false);
    });

    it('accepts postmaster without a domain', async () => {
      const r = await rcpt('Postmaster');
      assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
      assert.equal(r.localRecipient, true);
    });

    it('accepts connect and helo', async () => {
      for (const stage of [CheckStage.CHECK_STAGE_CONNECT, CheckStage.CHECK_STAGE_HELO]) {
        const r = await c.check({ stage, session: session() });
        assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
      }
    });
  });

  describe('local recipients', () => {
    it('refuses an unknown user of a local domain with 550 5.1.1', async () => {
      const r = await rcpt('nobody@local.test');
      assert.equal(r.action, PolicyAction.POLICY_ACTION_REJECT);
      assert.deepEqual(r.reply, {
        code: 550,
        enhanced: '5.1.1',
        text: '<nobody@local.test>: Recipient address rejected: User unknown in local recipient table',
      });
      assert.equal(r.reason, 'unknown_user');
    });

    it('refuses an unknown local user even from a trusted network', async () => {
      const r = await rcpt('nobody@local.test', { clientAddress: '127.0.0.1' });
      assert.equal(r.reply?.code, 550);
    });

    it('accepts a mailbox (case-insensitive, with a +extension)', async () => {
      for (const address of ['alice@local.test', 'Alice@LOCAL.test', 'alice+news@local.test']) {
        const r = await rcpt(address);
        assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT, address);
        assert.equal(r.reason, 'local_mailbox');
        assert.equal(r.localRecipient, true);
      }
    });

    it('accepts an alias', async () => {
      const r = await rcpt('sales@local.test');
      assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
      assert.equal(r.reason, 'local_alias');
      assert.equal(r.localRecipient, true);
    });

    it('accepts any local part of a domain with a catch-all', async () => {
      const r = await rcpt('whatever@catch.test');
      assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
      assert.equal(r.reason, 'catch_all');
      assert.equal(r.localRecipient, true);
    });

    it('LookupRecipient (VRFY, EXPN, ETRN): mailboxes, aliases with their targets, catch-all, unknown users, domains', async () => {
      const look = (address: string, expand = false) => c.lookupRecipient({ session: session(), address, expand });
      const { DOMAIN_KIND_LOCAL: LOCAL, DOMAIN_KIND_RELAY: RELAY, DOMAIN_KIND_UNSPECIFIED: NONE } = DomainKind;
      assert.deepEqual(await look('Alice+news@LOCAL.test'), { domainKind: LOCAL, exists: true, address: 'alice@local.test', targets: [] });
      assert.deepEqual(await look('<sales@local.test>'), { domainKind: LOCAL, exists: true, address: 'sales@local.test', targets: [] });
      assert.deepEqual(await look('sales@local.test', true), { domainKind: LOCAL, exists: true, address: 'sales@local.test', targets: ['alice@local.test', 'bob@elsewhere.test'] });
      assert.deepEqual(await look('nobody@local.test'), { domainKind: LOCAL, exists: false, address: 'nobody@local.test', targets: [] });
      assert.equal((await look('whatever@catch.test')).exists, true);
      assert.deepEqual(await look('x@relay.test'), { domainKind: RELAY, exists: false, address: 'x@relay.test', targets: [] });
      assert.deepEqual(await look('relay.test'), { domainKind: RELAY, exists: false, address: 'relay.test', targets: [] });
      assert.deepEqual(await look('elsewhere.test'), { domainKind: NONE, exists: false, address: 'elsewhere.test', targets: [] });
      assert.equal((await look('alice%local.test@local.test')).exists, false, 'a routing trick finds nothing');
      await assert.rejects(look(''), /address: required/);
    });

    it('makes a new mailbox visible on a second instance within seconds (LISTEN/NOTIFY)', async () => {
      const before = await rcpt('carol@local.test', {}, c2);
      assert.equal(before.reply?.code, 550);
      await c.putMailbox({ mailbox: { address: 'carol@local.test', enabled: true }, operator: 'test' });
      const t0 = Date.now();
      const r = await eventually(
        () => rcpt('carol@local.test', {}, c2),
        (x) => x.action === PolicyAction.POLICY_ACTION_ACCEPT,
        5000,
      );
      assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT, 'second instance never saw the new mailbox');
      assert.ok(Date.now() - t0 < 5000);
      // and a deletion too
      await c.deleteMailbox({ address: 'carol@local.test', operator: 'test' });
      const gone = await eventually(() => rcpt('carol@local.test', {}, c2), (x) => x.reply?.code === 550, 5000);
      assert.equal(gone.reply?.code, 550);
    });
  });

  describe('management', () => {
    it('answers INVALID_ARGUMENT naming the field', async () => {
      const cases: Array<[() => Promise<unknown>, RegExp]> = [
        [
          () => c.putDomain({ domain: { name: 'ex ample', kind: DomainKind.DOMAIN_KIND_LOCAL, catchAll: '', maxMessageSize: 0 } }),
          /^domain\.name: "ex ample" is not a valid domain name$/,
        ],
        [() => c.putDomain({ domain: { name: 'ok.test', kind: 0, catchAll: '', maxMessageSize: 0 } }), /^domain\.kind: /],
        [() => c.putMailbox({ mailbox: { address: 'not an address', enabled: true } }), /^mailbox\.address: /],
        [() => c.putMailbox({ mailbox: { address: 'x@unknown-domain.test', enabled: true } }), /^mailbox\.address: domain "unknown-domain.test" is not one of ours: add it first \(tern domain add unknown-domain\.test\)/],
        [() => c.putAlias({ alias: { address: 'a@local.test', targets: ['ok@x.test', 'bad@@x'] } }), /^alias\.targets\[1\]: /],
        [() => c.putUser({ user: { username: 'u1', allowedSenders: ['@bad domain'], mayRelay: false, enabled: true } }), /^user\.allowed_senders\[0\]: /],
        [() => c.putUser({ user: { username: 'has space', allowedSenders: [], mayRelay: false, enabled: true } }), /^user\.username: /],
      ];
      for (const [call, message] of cases) {
        await assert.rejects(call, (err: grpc.ServiceError) => {
          assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.details);
          assert.match(err.details, message);
          return true;
        });
      }
    });

    it('lists, updates and deletes, and records the operator', async () => {
      await c.putDomain({ domain: { name: 'Temp.Test.', kind: DomainKind.DOMAIN_KIND_LOCAL, catchAll: '', maxMessageSize: 1000 }, operator: 'ops@x' });
      const domains = (await c.listDomains({})).domains.map((d) => d.name);
      assert.deepEqual(domains, ['catch.test', 'local.test', 'relay.test', 'temp.test']);
      await c.putMailbox({ mailbox: { address: 'm@temp.test', enabled: true }, operator: 'ops@x' });
      await assert.rejects(c.deleteDomain({ name: 'temp.test', operator: 'ops@x' }), (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION);
      assert.deepEqual((await c.listMailboxes({ domain: 'temp.test' })).mailboxes, [{ address: 'm@temp.test', enabled: true }]);
      assert.equal((await c.deleteMailbox({ address: 'm@temp.test', operator: 'ops@x' })).deleted, true);
      assert.equal((await c.deleteMailbox({ address: 'm@temp.test', operator: 'ops@x' })).deleted, false);
      assert.equal((await c.deleteDomain({ name: 'temp.test', operator: 'ops@x' })).deleted, true);
      const { pg } = await import('@tern/db');
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      const rows = (await client.query("SELECT operator, action, entity, key FROM policy.audit WHERE operator = 'ops@x' ORDER BY id")).rows;
      await client.end();
      assert.deepEqual(rows, [
        { operator: 'ops@x', action: 'put', entity: 'domain', key: 'temp.test' },
        { operator: 'ops@x', action: 'put', entity: 'mailbox', key: 'm@temp.test' },
        { operator: 'ops@x', action: 'delete', entity: 'mailbox', key: 'm@temp.test' },
        { operator: 'ops@x', action: 'delete', entity: 'domain', key: 'temp.test' },
      ]);
    });

    it('refuses a disabled mailbox', async () => {
      await c.putMailbox({ mailbox: { address: 'off@local.test', enabled: false }, operator: 'test' });
      const r = await rcpt('off@local.test');
      assert.equal(r.reply?.code, 550);
      assert.equal(r.reason, 'mailbox_disabled');
    });
  });

  describe('submission users', () => {
    before(async () => {
      await c.putUser({
        user: { username: 'Sub@Local.test', allowedSenders: ['alias@other.test', '@brand.test'], mayRelay: true, enabled: true },
        password: 'correct horse',
        operator: 'test',
      });
      await c.putUser({ user: { username: 'norelay', allowedSenders: [], mayRelay: false, enabled: true }, password: 'pw', operator: 'test' });
    });

    it('authenticates the right password and refuses a wrong one', async () => {
      const ok = await c.authenticate({ username: 'sub@local.test', password: 'correct horse', session: session() });
      assert.equal(ok.ok, true);
      assert.equal(ok.user, 'sub@local.test');
      const bad = await c.authenticate({ username: 'sub@local.test', password: 'wrong', session: session() });
      assert.equal(bad.ok, false);
      assert.deepEqual(bad.reply, { code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid' });
      const unknown = await c.authenticate({ username: 'ghost', password: 'x', session: session() });
      assert.equal(unknown.ok, false);
    });

    it('refuses logins unverified after too many failures from one client (454 4.7.0)', async () => {
      const s = session({ clientAddress: '127.0.0.9' });
      for (let i = 0; i < 10; i++) assert.equal((await c.authenticate({ username: 'sub@local.test', password: `guess${i}`, session: s })).ok, false);
      const r = await c.authenticate({ username: 'sub@local.test', password: 'correct horse', session: s });
      assert.equal(r.ok, false);
      assert.deepEqual(r.reply, { code: 454, enhanced: '4.7.0', text: 'Too many authentication failures; try again later' });
      // counted per client, so another client is unaffected
      assert.equal((await c.authenticate({ username: 'sub@local.test', password: 'correct horse', session: session({ clientAddress: '127.0.0.10' }) })).ok, true);
    });

    it('never returns password hashes', async () => {
      const users = (await c.listUsers({})).users;
      assert.ok(users.length >= 2);
      for (const u of users) assert.deepEqual(Object.keys(u).sort(), ['allowedSenders', 'enabled', 'mayRelay', 'username']);
    });

    it('keeps the password when PutUser gives none, and disabling refuses logins', async () => {
      await c.putUser({ user: { username: 'norelay', allowedSenders: [], mayRelay: false, enabled: true }, operator: 'test' });
      assert.equal((await c.authenticate({ username: 'norelay', password: 'pw' })).ok, true);
      await c.putUser({ user: { username: 'norelay', allowedSenders: [], mayRelay: false, enabled: false }, operator: 'test' });
      assert.equal((await c.authenticate({ username: 'norelay', password: 'pw' })).ok, false);
      await c.putUser({ user: { username: 'norelay', allowedSenders: [], mayRelay: false, enabled: true }, operator: 'test' });
    });

    const sub = { authUser: 'sub@local.test', listener: Listener.LISTENER_SUBMISSION };

    it('checks the sender an authenticated user may use', async () => {
      for (const sender of ['sub@local.test', 'alias@other.test', 'anyone@brand.test', '']) {
        const r = await c.check({ stage: MAIL, session: session(sub), sender });
        assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT, sender);
      }
      const r = await c.check({ stage: MAIL, session: session(sub), sender: 'ceo@victim.test' });
      assert.equal(r.action, PolicyAction.POLICY_ACTION_REJECT);
      assert.deepEqual(r.reply, { code: 553, enhanced: '5.7.1', text: '<ceo@victim.test>: Sender address rejected: not owned by user sub@local.test' });
      assert.equal(r.reason, 'sender_not_owned');
    });

    it('lets a user with may_relay relay, and not one without', async () => {
      const r = await rcpt('x@foreign.test', sub);
      assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
      assert.equal(r.reason, 'authenticated_relay');
      const trick = await rcpt('x%foreign.test@local.test', sub);
      assert.notEqual(trick.reply?.text, '<x%foreign.test@local.test>: Relay access denied');
      const denied = await rcpt('x@foreign.test', { authUser: 'norelay', listener: Listener.LISTENER_SUBMISSION });
      assert.equal(denied.reply?.code, 554);
    });

    it('requires authentication on the submission listener', async () => {
      const r = await c.check({ stage: MAIL, session: session({ listener: Listener.LISTENER_SUBMISSION }), sender: 'a@b.test' });
      assert.equal(r.reply?.code, 530);
    });
  });
});
