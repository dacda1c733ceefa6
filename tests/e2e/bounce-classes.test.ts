// Bounce classification through the running platform and the CLI: a failure
// is classed by the operator's rules first, then the built-in ones; the class
// is on the attempt (tern message show), and a reputation block backs off the
// whole destination (its concurrency drops and its last error names the
// block), which a user_unknown refusal does not.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { send, tern, ternJson, ternRaw, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-bounce-classes' });
let platform: Platform;
let db: pg.Pool;

/** `tern --json message show`: the message's detail. */
interface Shown {
  recipients?: Array<{ address: string; state: string; attempts?: Array<{ bounceClass?: string; reply?: { code: number } }> }>;
}

before(async () => {
  const testDb = await harness.createTestDatabase();
  await harness.runMigrate(testDb.url, { entry: 'libs/db/dist/migrate.js' });
  db = new pg.Pool({ connectionString: testDb.url, max: 2 });
  harness.defer(() => db.end(), 'close the test pool');
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.10');
  // blocked.test refuses everyone with a provider's own code for a blocked sending IP, which the built-in rules do not know.
  await harness.startSink({
    host: '127.0.0.10',
    port,
    hostname: 'mx.test',
    behaviour: { rcpt: (to) => (to.endsWith('@blocked.test') ? { code: 550, text: '5.7.1 [XB17] Message refused from 198.51.100.7' } : undefined) },
  });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  for (const d of ['blocked.test', 'plain.test']) dns.mx(d, 'mx.test');
  dns.a('mx.test', '127.0.0.10');
  platform = await startPlatform(harness, { databaseUrl: testDb.url, natsUrl: nats.url, dnsServer: dns.address, remoteSmtpPort: port });
});

after(() => harness.close());

/** The scheduler's row of a destination (tern destination ls shows only destinations with mail waiting). */
async function destination(name: string): Promise<{ concurrencyLimit: number; lastError: string } | undefined> {
  const { rows } = await db.query<{ concurrency_limit: number; last_error: string }>('SELECT concurrency_limit, last_error FROM queue.destinations WHERE name = $1', [name]);
  return rows[0] ? { concurrencyLimit: rows[0].concurrency_limit, lastError: rows[0].last_error } : undefined;
}

async function attemptClass(id: string): Promise<string | undefined> {
  const shown = await ternJson<Shown>(platform, 'message', 'show', id);
  return shown.recipients?.[0]?.attempts?.[0]?.bounceClass;
}

test('an operator rule classes a provider block as reputation; the destination backs off; the class is on the attempt', async () => {
  // Built in, a 5.7.1 whose text names no reason is a policy refusal.
  const before = await send(platform, 'app@sender.test', ['a@blocked.test'], 'before the rule');
  assert.equal(await waitFor('the failure classed', () => attemptClass(before)), 'policy');
  const limitBefore = (await destination('blocked.test'))?.concurrencyLimit ?? 0;
  assert.ok(limitBefore >= 5, `a policy refusal is no reason to slow down: concurrency ${limitBefore}`);

  await tern(platform, 'bounce-rule', 'set', 'xb-block', 'reputation', '--code', '5.7.', '--text', '\\[XB\\d\\d\\]', '--description', 'the provider blocks the sending IP');
  const listed = await ternJson<{ rules?: Array<{ name: string; bounceClass: string }> }>(platform, 'bounce-rule', 'ls');
  assert.deepEqual(listed.rules?.map((r) => [r.name, r.bounceClass]), [['xb-block', 'reputation']]);
  await new Promise((r) => setTimeout(r, 6_000)); // every replica reloads the rules within 5 s
  const after = await send(platform, 'app@sender.test', ['b@blocked.test'], 'after the rule');
  assert.equal(await waitFor('the failure classed', () => attemptClass(after)), 'reputation');
  const human = await tern(platform, 'message', 'show', after);
  assert.match(human, /\(reputation\)/, 'message show names the class');

  const dest = await waitFor('blocked.test backed off', async () => {
    const d = await destination('blocked.test');
    return d && (d.concurrencyLimit ?? 0) < limitBefore ? d : undefined;
  });
  assert.equal(dest.concurrencyLimit, limitBefore - 1, 'one failure to reach it: one slot less');
  assert.match(dest.lastError ?? '', /XB17/);
});

test('a user_unknown refusal does not back off its destination', async () => {
  const id = await send(platform, 'app@sender.test', ['permfail@plain.test'], 'unknown user');
  assert.equal(await waitFor('the failure classed', () => attemptClass(id)), 'user_unknown');
  const d = await destination('plain.test');
  assert.ok((d?.concurrencyLimit ?? 0) >= 5, `plain.test keeps its concurrency: ${d?.concurrencyLimit}`);
});

test('a bad rule is refused naming the field', async () => {
  const r = await ternRaw(platform, ['bounce-rule', 'set', 'bad', 'dead-address', '--code', '5.1.1']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr + r.stdout, /bounce_class: "dead-address" is not one of user_unknown/);
  const r2 = await ternRaw(platform, ['bounce-rule', 'set', 'bad', 'policy', '--text', '(']);
  assert.match(r2.stderr + r2.stdout, /pattern: not a valid regular expression/);
});
