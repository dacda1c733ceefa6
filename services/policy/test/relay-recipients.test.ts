// Replacing a relay domain's recipient list (ReplaceRelayRecipients: a sync
// from an export by cron), over real gRPC and a real Postgres: the counts of
// a dry run, one transaction that removes what the new list lacks and adds
// what it has, RCPT answered from the new list at once, an audit row, an
// empty list refused unless allow_empty, and bad entries refused naming
// addresses[i] with nothing changed.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pg } from '@tern/db';
import { CheckStage, DomainKind, PolicyAction, RecipientCheck } from '@tern/proto';
import type { App } from '../src/app';
import { createDatabase, policyClient, session, startPolicy, type PolicyClient } from './helpers';

const RCPT = CheckStage.CHECK_STAGE_RCPT;

describe('relay recipients: replace', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let app: App;
  let c: PolicyClient;
  let sql: pg.Client;
  const operator = 'sync-cron';

  before(async () => {
    db = await createDatabase();
    app = await startPolicy(db.url);
    c = policyClient(app.grpcPort);
    sql = new pg.Client({ connectionString: db.url });
    await sql.connect();
    for (const name of ['list.test', 'other.test']) {
      await c.putDomain({ domain: { name, kind: DomainKind.DOMAIN_KIND_RELAY, recipientCheck: RecipientCheck.RECIPIENT_CHECK_LIST }, operator: 'setup' });
    }
    await c.putDomain({ domain: { name: 'local.test', kind: DomainKind.DOMAIN_KIND_LOCAL }, operator: 'setup' });
  });

  after(async () => {
    await sql?.end();
    c?.close();
    await app?.stop();
    await db?.drop();
  });

  const rcpt = (recipient: string) => c.check({ stage: RCPT, session: session(), sender: 's@outside.test', recipient, recipients: [] });
  const listed = async (domain: string) => (await c.listRelayRecipients({ domain, limit: 1000 })).recipients.map((r) => `${r.address}/${r.createdBy}`);
  const audits = async () => (await sql.query<{ action: string; key: string; operator: string; detail: Record<string, unknown> }>("SELECT action, key, operator, detail FROM policy.audit WHERE entity = 'relay_recipient' ORDER BY id")).rows;

  it('counts with dry_run, then swaps the list in one call: removed ones refused at RCPT, new ones accepted, kept ones untouched', async () => {
    await c.putRelayRecipients({ addresses: ['alice@list.test', 'bob@list.test', 'carol@list.test'], operator: 'setup' });
    await c.putRelayRecipients({ addresses: ['zed@other.test'], operator: 'setup' });
    const before = await audits();

    const dry = await c.replaceRelayRecipients({ domain: 'List.Test', addresses: ['BOB@list.test', 'carol@list.test', 'dave@list.test', 'dave@list.test', 'erin@list.test'], dryRun: true, operator });
    assert.deepEqual(dry, { added: 2, removed: 1, kept: 2, dryRun: true });
    assert.deepEqual(await listed('list.test'), ['alice@list.test/setup', 'bob@list.test/setup', 'carol@list.test/setup']);
    assert.equal((await rcpt('dave@list.test')).action, PolicyAction.POLICY_ACTION_REJECT, 'a dry run writes nothing');
    assert.deepEqual(await audits(), before);

    const done = await c.replaceRelayRecipients({ domain: 'list.test', addresses: ['BOB@list.test', 'carol@list.test', 'dave@list.test', 'dave@list.test', 'erin@list.test'], operator });
    assert.deepEqual(done, { added: 2, removed: 1, kept: 2, dryRun: false });
    assert.deepEqual(await listed('list.test'), ['bob@list.test/setup', 'carol@list.test/setup', 'dave@list.test/sync-cron', 'erin@list.test/sync-cron']);
    assert.deepEqual(await listed('other.test'), ['zed@other.test/setup'], 'another domain is not touched');

    const gone = await rcpt('alice@list.test');
    assert.equal(gone.action, PolicyAction.POLICY_ACTION_REJECT);
    assert.deepEqual([gone.reply?.code, gone.reply?.enhanced], [550, '5.1.1']);
    assert.equal((await rcpt('dave@list.test')).action, PolicyAction.POLICY_ACTION_ACCEPT);
    assert.equal((await rcpt('bob@list.test')).action, PolicyAction.POLICY_ACTION_ACCEPT);

    const rows = (await audits()).slice(before.length);
    assert.equal(rows.length, 1);
    assert.deepEqual(
      { action: rows[0]!.action, key: rows[0]!.key, operator: rows[0]!.operator },
      { action: 'replace', key: '@list.test (all entries)', operator },
    );
    assert.deepEqual(rows[0]!.detail, { added: 2, removed: 1, kept: 2, addedSample: ['dave@list.test', 'erin@list.test'], removedSample: ['alice@list.test'] });

    // The same list again changes nothing and leaves no audit row (a cron that finds nothing new).
    assert.deepEqual(await c.replaceRelayRecipients({ domain: 'list.test', addresses: ['bob@list.test', 'carol@list.test', 'dave@list.test', 'erin@list.test'], operator }), {
      added: 0,
      removed: 0,
      kept: 4,
      dryRun: false,
    });
    assert.equal((await audits()).length, before.length + 1);
  });

  it('refuses an empty list unless allow_empty, which then removes every entry of the domain', async () => {
    await assert.rejects(c.replaceRelayRecipients({ domain: 'list.test', addresses: [], operator }), (err: Error) =>
      /addresses: empty: that would remove every entry of list\.test; .*--allow-empty/.test(err.message),
    );
    assert.equal((await listed('list.test')).length, 4);
    assert.deepEqual(await c.replaceRelayRecipients({ domain: 'list.test', addresses: [], allowEmpty: true, dryRun: true, operator }), { added: 0, removed: 4, kept: 0, dryRun: true });
    assert.equal((await listed('list.test')).length, 4);
    assert.deepEqual(await c.replaceRelayRecipients({ domain: 'list.test', addresses: [], allowEmpty: true, operator }), { added: 0, removed: 4, kept: 0, dryRun: false });
    assert.deepEqual(await listed('list.test'), []);
    assert.equal((await rcpt('bob@list.test')).action, PolicyAction.POLICY_ACTION_REJECT);
  });

  it('refuses, naming the field, an entry of another domain, a bad entry, a domain that is not a relay domain; nothing is changed', async () => {
    await c.replaceRelayRecipients({ domain: 'list.test', addresses: ['@list.test'], operator });
    const cases: Array<[Parameters<PolicyClient['replaceRelayRecipients']>[0], RegExp]> = [
      [{ domain: 'list.test', addresses: ['a@list.test', 'b@other.test'] }, /addresses\[1\]: b@other\.test is not of list\.test \(a replace covers one domain/],
      [{ domain: 'list.test', addresses: ['a@list.test', 'not an address'] }, /addresses\[1\]: "not an address" is not a valid mailbox address/],
      [{ domain: 'nowhere.test', addresses: ['a@nowhere.test'] }, /domain: nowhere\.test is not a relay domain; add it first: tern domain add nowhere\.test --kind relay/],
      // The domain is checked before its entries: a mistyped --domain is named as such.
      [{ domain: 'nowhere.test', addresses: ['a@list.test'] }, /domain: nowhere\.test is not a relay domain/],
      [{ domain: 'local.test', addresses: ['a@local.test'] }, /domain: local\.test is a local domain/],
      [{ domain: '', addresses: ['a@list.test'] }, /domain: required/],
    ];
    for (const [req, message] of cases) await assert.rejects(c.replaceRelayRecipients({ ...req, operator }), (err: Error) => message.test(err.message), String(message));
    assert.deepEqual(await listed('list.test'), ['@list.test/sync-cron']);
  });

  it('replaces a list of 20000 entries in one call', async () => {
    const big = Array.from({ length: 20_000 }, (_, i) => `user${i}@list.test`);
    assert.deepEqual(await c.replaceRelayRecipients({ domain: 'list.test', addresses: big, operator }), { added: 20_000, removed: 1, kept: 0, dryRun: false });
    const next = big.slice(5_000).concat(Array.from({ length: 1_000 }, (_, i) => `new${i}@list.test`));
    assert.deepEqual(await c.replaceRelayRecipients({ domain: 'list.test', addresses: next, operator }), { added: 1_000, removed: 5_000, kept: 15_000, dryRun: false });
    const n = await sql.query<{ n: number }>("SELECT count(*)::int AS n FROM policy.relay_recipients WHERE domain = 'list.test'");
    assert.equal(n.rows[0]!.n, 16_000);
  });
});
