// Issue 24, address rewriting, over real gRPC and a real Postgres: SRS
// addresses as libsrs2/Mail::SRS write them (vectors from pysrs 1.0.3),
// the rewrite rules as policy data (validated naming the field), what Check
// answers at MAIL and RCPT (sender canonical, masquerade, bcc, recipient
// canonical, +ext propagation through aliases, SRS forward and reverse), the
// header addresses of RewriteAddresses, and a change reaching a second pod.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AddressRole, CheckStage, DomainKind, PolicyAction, RewriteKind } from '@tern/proto';
import type { App } from '../src/app';
import { Srs } from '../src/srs';
import { createDatabase, eventually, policyClient, session, startPolicy, type PolicyClient } from './helpers';

const MAIL = CheckStage.CHECK_STAGE_MAIL;
const RCPT = CheckStage.CHECK_STAGE_RCPT;
const SECRET = 'tern-test-secret';
/** The instant pysrs made the vectors at (day 1019 of its 1024-day cycle). */
const AT = 1796662273 * 1000;

describe('SRS addresses', () => {
  const a = new Srs({ domain: 'forward.test', secrets: [SECRET], maxAgeDays: 21 });
  const b = new Srs({ domain: 'second.test', secrets: [SECRET], maxAgeDays: 21 });

  it('writes SRS0 and SRS1 as libsrs2 and pysrs do', () => {
    assert.equal(a.forward('alice', 'sender.test', AT), 'SRS0=tJhk=J2=sender.test=alice@forward.test');
    assert.equal(b.forward('SRS0=tJhk=J2=sender.test=alice', 'forward.test', AT), 'SRS1=GG4o=forward.test==tJhk=J2=sender.test=alice@second.test');
    // An SRS1 met again keeps its first forwarder and is signed anew.
    assert.equal(a.forward('SRS1=GG4o=forward.test==tJhk=J2=sender.test=alice', 'second.test', AT), 'SRS1=GG4o=forward.test==tJhk=J2=sender.test=alice@forward.test');
  });

  it('reverses them, refusing a bad hash and an SRS0 past the maximum age', () => {
    assert.deepEqual(a.reverse('SRS0=tJhk=J2=sender.test=alice', AT), { ok: true, address: 'alice@sender.test' });
    assert.deepEqual(a.reverse('srs0=TJHK=j2=sender.test=alice', AT), { ok: true, address: 'alice@sender.test' });
    assert.deepEqual(b.reverse('SRS1=GG4o=forward.test==tJhk=J2=sender.test=alice', AT), { ok: true, address: 'SRS0=tJhk=J2=sender.test=alice@forward.test' });
    assert.deepEqual(a.reverse('SRS0=tJhz=J2=sender.test=alice', AT), { ok: false, why: 'hash' });
    assert.deepEqual(a.reverse('SRS0=tJhk=J2=sender.test=mallory', AT), { ok: false, why: 'hash' });
    assert.deepEqual(a.reverse('SRS0=tJhk=J2=sender.test=alice', AT + 21 * 86_400_000), { ok: true, address: 'alice@sender.test' });
    assert.deepEqual(a.reverse('SRS0=tJhk=J2=sender.test=alice', AT + 22 * 86_400_000), { ok: false, why: 'expired' });
    assert.deepEqual(a.reverse('SRS0=tJhk', AT), { ok: false, why: 'syntax' });
  });

  it('signs with the first secret and verifies with every one (rotation)', () => {
    const rotated = new Srs({ domain: 'forward.test', secrets: ['a-brand-new-secret', SECRET], maxAgeDays: 21 });
    assert.deepEqual(rotated.reverse('SRS0=tJhk=J2=sender.test=alice', AT), { ok: true, address: 'alice@sender.test' });
    const fresh = rotated.forward('alice', 'sender.test', AT)!;
    assert.notEqual(fresh, 'SRS0=tJhk=J2=sender.test=alice@forward.test');
    assert.equal(a.reverse(fresh.split('@')[0]!, AT).ok, false);
  });
});

describe('rewrite rules', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let app: App;
  let app2: App;
  let c: PolicyClient;
  let c2: PolicyClient;
  const operator = 'test-operator';

  before(async () => {
    db = await createDatabase();
    const env = { TERN_SRS_DOMAIN: 'forward.test', TERN_SRS_SECRETS: `${SECRET},an-older-secret-xyz` };
    app = await startPolicy(db.url, env);
    app2 = await startPolicy(db.url, { ...env, TERN_POLICY_RELOAD_MS: '3600000' });
    c = policyClient(app.grpcPort);
    c2 = policyClient(app2.grpcPort);
    await c.putDomain({ domain: { name: 'local.test', kind: DomainKind.DOMAIN_KIND_LOCAL, catchAll: '', maxMessageSize: 0 }, operator });
    for (const m of ['alice@local.test', 'bob@local.test', 'archive@local.test']) await c.putMailbox({ mailbox: { address: m, enabled: true }, operator });
    await c.putAlias({ alias: { address: 'fwd@local.test', targets: ['bob@local.test', 'carol@remote.test'] }, operator });
  });

  after(async () => {
    c?.close();
    c2?.close();
    await app2?.stop();
    await app?.stop();
    await db?.drop();
  });

  const put = (kind: RewriteKind, match: string, target: string, headers = false) => c.putRewrite({ rewrite: { kind, match, target, headers }, operator });
  const mail = (sender: string, client = c) => client.check({ stage: MAIL, session: session(), sender });
  const rcpt = (recipient: string, sender = 'someone@sender.test', client = c) => client.check({ stage: RCPT, session: session(), sender, recipient, recipients: [] });

  it('refuses bad rules naming the field', async () => {
    const cases: Array<[() => Promise<unknown>, RegExp]> = [
      [() => put(RewriteKind.REWRITE_KIND_UNSPECIFIED, 'a@b.test', 'c@d.test'), /rewrite\.kind: required: one of sender_canonical/],
      [() => put(RewriteKind.REWRITE_KIND_SENDER_CANONICAL, 'not an address', 'c@d.test'), /rewrite\.match: /],
      [() => put(RewriteKind.REWRITE_KIND_SENDER_CANONICAL, 'a@b.test', '@d.test'), /rewrite\.target: an @domain target keeps the local part/],
      [() => put(RewriteKind.REWRITE_KIND_MASQUERADE, 'example.test', 'x@y.test'), /rewrite\.target: a masquerade rule has no target/],
      [() => put(RewriteKind.REWRITE_KIND_RECIPIENT_BCC, '@local.test', ''), /rewrite\.target: "" is not an archive address/],
      [() => put(RewriteKind.REWRITE_KIND_RECIPIENT_BCC, '@local.test', 'archive@local.test', true), /rewrite\.headers: a bcc rule/],
    ];
    for (const [call, message] of cases) await assert.rejects(call(), (err: Error) => message.test(err.message));
  });

  it('applies aliases with +ext propagation: user+tag@d goes to each target with +tag', async () => {
    const r = await rcpt('fwd+tag@local.test', '');
    assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
    assert.deepEqual(r.aliasTargets, ['bob+tag@local.test', 'carol+tag@remote.test']);
  });

  it('forwards remote alias targets with an SRS sender, never for the null sender or a local sender', async () => {
    const r = await rcpt('fwd@local.test', 'Someone@Sender.test');
    assert.deepEqual(r.aliasTargets, ['bob@local.test', 'carol@remote.test']);
    assert.deepEqual(r.srsTargets, ['carol@remote.test']);
    assert.match(r.srsSender, /^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=sender\.test=Someone@forward\.test$/);
    assert.equal((await rcpt('fwd@local.test', '')).srsSender, '');
    assert.equal((await rcpt('fwd@local.test', 'alice@local.test')).srsSender, '');
    // Mail to the SRS address comes back to the original sender; a forged one is refused.
    const back = await rcpt(r.srsSender, '');
    assert.equal(back.action, PolicyAction.POLICY_ACTION_ACCEPT);
    assert.equal(back.reason, 'srs_reverse');
    assert.deepEqual(back.aliasTargets, ['Someone@sender.test']);
    const forged = await rcpt(r.srsSender.replace(/^SRS0=..../, 'SRS0=AAAA'), '');
    assert.equal(forged.action, PolicyAction.POLICY_ACTION_REJECT);
    assert.equal(forged.reply?.code, 550);
    assert.equal(forged.reply?.enhanced, '5.1.1');
    assert.match(forged.reply?.text ?? '', /invalid hash/);
    const status = await c.srsStatus({});
    assert.deepEqual({ ...status, example: '' }, { enabled: true, domain: 'forward.test', secrets: 2, maxAgeDays: 21, hashLength: 4, example: '' });
  });

  it('rewrites the sender (canonical, then masquerade) and adds a sender bcc, on every pod', async () => {
    await put(RewriteKind.REWRITE_KIND_SENDER_CANONICAL, 'old@local.test', 'alice@local.test');
    await put(RewriteKind.REWRITE_KIND_MASQUERADE, 'corp.test', '', true);
    await put(RewriteKind.REWRITE_KIND_SENDER_BCC, 'alice@local.test', 'archive@local.test');
    const r = await mail('Old@local.test');
    assert.equal(r.senderRewrite, 'alice@local.test');
    assert.deepEqual(r.bcc, ['archive@local.test']);
    assert.equal(r.rewriteHeaders, true);
    assert.equal((await mail('joe@host.eu.corp.test')).senderRewrite, 'joe@corp.test');
    assert.equal((await mail('joe@corp.test')).senderRewrite, '');
    assert.equal((await mail('')).senderRewrite, '');
    // The other pod heard of the changes (NOTIFY) without being asked.
    const r2 = await eventually(() => mail('old@local.test', c2), (x) => x.senderRewrite === 'alice@local.test');
    assert.equal(r2.senderRewrite, 'alice@local.test');
  });

  it('rewrites recipients (the rewritten address is expanded) and adds a recipient bcc', async () => {
    await put(RewriteKind.REWRITE_KIND_RECIPIENT_CANONICAL, '@old.local.test', '@local.test');
    await put(RewriteKind.REWRITE_KIND_RECIPIENT_CANONICAL, 'sales@local.test', 'fwd@local.test');
    await put(RewriteKind.REWRITE_KIND_RECIPIENT_BCC, '@local.test', 'archive@local.test');
    const r = await rcpt('sales@local.test', '');
    assert.equal(r.action, PolicyAction.POLICY_ACTION_ACCEPT);
    assert.equal(r.reason, 'recipient_canonical');
    assert.deepEqual(r.aliasTargets, ['bob@local.test', 'carol@remote.test']);
    assert.deepEqual(r.bcc, ['archive@local.test']);
    // old.local.test is no domain of ours: relay control goes by the address given.
    assert.equal((await rcpt('bob@old.local.test', '')).action, PolicyAction.POLICY_ACTION_REJECT);
    assert.equal((await c.deleteRewrite({ kind: RewriteKind.REWRITE_KIND_RECIPIENT_BCC, match: '@LOCAL.test', operator })).deleted, true);
    assert.deepEqual((await rcpt('alice@local.test', '')).bcc, []);
    // Listed by kind name, then match.
    const listed = await c.listRewrites({});
    assert.deepEqual(
      listed.rewrites.map((x) => [x.kind, x.match, x.target, x.headers, x.updatedBy]),
      [
        [RewriteKind.REWRITE_KIND_MASQUERADE, 'corp.test', '', true, operator],
        [RewriteKind.REWRITE_KIND_RECIPIENT_CANONICAL, '@old.local.test', '@local.test', false, operator],
        [RewriteKind.REWRITE_KIND_RECIPIENT_CANONICAL, 'sales@local.test', 'fwd@local.test', false, operator],
        [RewriteKind.REWRITE_KIND_SENDER_BCC, 'alice@local.test', 'archive@local.test', false, operator],
        [RewriteKind.REWRITE_KIND_SENDER_CANONICAL, 'old@local.test', 'alice@local.test', false, operator],
      ],
    );
  });

  it('rewrites header addresses only with the rules that ask for headers', async () => {
    await put(RewriteKind.REWRITE_KIND_SENDER_CANONICAL, 'hdr@local.test', 'alice@local.test', true);
    const r = await c.rewriteAddresses({
      addresses: [
        { address: 'hdr@local.test', role: AddressRole.ADDRESS_ROLE_SENDER },
        { address: 'old@local.test', role: AddressRole.ADDRESS_ROLE_SENDER },
        { address: 'joe@eu.corp.test', role: AddressRole.ADDRESS_ROLE_RECIPIENT },
        { address: 'not an address', role: AddressRole.ADDRESS_ROLE_SENDER },
      ],
    });
    assert.deepEqual(r.addresses, ['alice@local.test', 'old@local.test', 'joe@corp.test', 'not an address']);
  });

  it('masquerade exceptions: root@host.corp.test stays as it is while joe@host.corp.test is masqueraded, envelope and headers, on every pod', async () => {
    const except = (match: string, target = '', headers = false) => put(RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION, match, target, headers);
    for (const [call, message] of [
      [() => except('root@corp.test'), /rewrite\.match: "root@corp\.test": give the local part alone/],
      [() => except('not a user'), /rewrite\.match: "not a user" is not a local part/],
      [() => except(''), /rewrite\.match: required \(a local part/],
      [() => except('root', 'x@y.test'), /rewrite\.target: a masquerade exception has no target/],
      [() => except('root', '', true), /rewrite\.headers: a masquerade exception holds wherever masquerading applies/],
    ] as Array<[() => Promise<unknown>, RegExp]>) {
      await assert.rejects(call(), (err: Error) => message.test(err.message), String(message));
    }
    assert.equal((await mail('root@host.corp.test')).senderRewrite, 'root@corp.test', 'masqueraded before the exception');
    await except('Root');
    await except('mailer-daemon');
    assert.equal((await mail('joe@host.corp.test')).senderRewrite, 'joe@corp.test');
    assert.equal((await mail('root@host.corp.test')).senderRewrite, '');
    assert.equal((await mail('MAILER-DAEMON@host.corp.test')).senderRewrite, '');
    // The whole local part is compared, as Postfix does.
    assert.equal((await mail('root+cron@host.corp.test')).senderRewrite, 'root+cron@corp.test');
    const h = await c.rewriteAddresses({
      addresses: [
        { address: 'root@host.corp.test', role: AddressRole.ADDRESS_ROLE_SENDER },
        { address: 'joe@host.corp.test', role: AddressRole.ADDRESS_ROLE_SENDER },
      ],
    });
    assert.deepEqual(h.addresses, ['root@host.corp.test', 'joe@corp.test']);
    const r2 = await eventually(() => mail('root@host.corp.test', c2), (x) => x.senderRewrite === '');
    assert.equal(r2.senderRewrite, '', 'the other pod reloaded the exception');
    const listed = (await c.listRewrites({})).rewrites.filter((x) => x.kind === RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION);
    assert.deepEqual(listed.map((x) => [x.match, x.target, x.headers, x.updatedBy]), [
      ['mailer-daemon', '', false, operator],
      ['root', '', false, operator],
    ]);
    assert.equal((await c.deleteRewrite({ kind: RewriteKind.REWRITE_KIND_MASQUERADE_EXCEPTION, match: 'ROOT', operator })).deleted, true);
    assert.equal((await mail('root@host.corp.test')).senderRewrite, 'root@corp.test', 'masqueraded again once the exception is removed');
  });
});
