// Milter definitions as policy data: stored with defaults filled in, listed in
// chain order, validated naming the field, deleted; over real gRPC and Postgres.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { grpc } from '@tern/grpc';
import { Listener, MilterDefaultAction } from '@tern/proto';
import type { App } from '../src/app';
import { createDatabase, policyClient, startPolicy, type PolicyClient } from './helpers';

describe('milter definitions', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let app: App;
  let c: PolicyClient;

  before(async () => {
    db = await createDatabase();
    app = await startPolicy(db.url);
    c = policyClient(app.grpcPort);
  });

  after(async () => {
    c?.close();
    await app?.stop();
    await db?.drop();
  });

  it('stores a milter with defaults, lists the chain in order, replaces and deletes', async () => {
    const put = await c.putMilter({ milter: { name: 'Rspamd', address: '127.0.0.1:11332', listeners: [Listener.LISTENER_MX], order: 20 }, operator: 'op' });
    assert.deepEqual(put.milter, {
      name: 'rspamd',
      address: '127.0.0.1:11332',
      listeners: [Listener.LISTENER_MX],
      connectTimeoutMs: 10_000,
      commandTimeoutMs: 30_000,
      totalTimeoutMs: 300_000,
      defaultAction: MilterDefaultAction.MILTER_DEFAULT_ACTION_TEMPFAIL,
      order: 20,
    });
    await c.putMilter({
      milter: { name: 'clamav', address: 'unix:/run/clamav/milter.sock', listeners: [Listener.LISTENER_MX, Listener.LISTENER_SUBMISSION], order: 10, defaultAction: MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT, commandTimeoutMs: 5000, totalTimeoutMs: 60_000 },
      operator: 'op',
    });
    let list = await c.listMilters({});
    assert.deepEqual(list.milters.map((m) => m.name), ['clamav', 'rspamd']);
    assert.equal(list.milters[0]!.defaultAction, MilterDefaultAction.MILTER_DEFAULT_ACTION_ACCEPT);
    assert.deepEqual(list.milters[0]!.listeners, [Listener.LISTENER_MX, Listener.LISTENER_SUBMISSION]);
    await c.putMilter({ milter: { name: 'rspamd', address: '[::1]:11332', listeners: [Listener.LISTENER_MX], order: 1 }, operator: 'op' });
    list = await c.listMilters({});
    assert.deepEqual(list.milters.map((m) => `${m.name} ${m.address}`), ['rspamd [::1]:11332', 'clamav unix:/run/clamav/milter.sock']);
    assert.deepEqual(await c.deleteMilter({ name: 'clamav', operator: 'op' }), { deleted: true });
    assert.deepEqual(await c.deleteMilter({ name: 'clamav', operator: 'op' }), { deleted: false });
    assert.deepEqual((await c.listMilters({})).milters.map((m) => m.name), ['rspamd']);
  });

  it('answers INVALID_ARGUMENT naming the field', async () => {
    const mx = [Listener.LISTENER_MX];
    const cases: Array<[() => Promise<unknown>, RegExp]> = [
      [() => c.putMilter({}), /^milter: required/],
      [() => c.putMilter({ milter: { name: 'bad name', address: '127.0.0.1:1', listeners: mx } }), /^milter\.name: /],
      [() => c.putMilter({ milter: { name: 'a', address: '127.0.0.1', listeners: mx } }), /^milter\.address: .*host:port/],
      [() => c.putMilter({ milter: { name: 'a', address: '127.0.0.1:70000', listeners: mx } }), /^milter\.address: /],
      [() => c.putMilter({ milter: { name: 'a', address: 'unix:relative', listeners: mx } }), /^milter\.address: .*unix:\/absolute/],
      [() => c.putMilter({ milter: { name: 'a', address: '127.0.0.1:1', listeners: [] } }), /^milter\.listeners: at least one/],
      [() => c.putMilter({ milter: { name: 'a', address: '127.0.0.1:1', listeners: mx, commandTimeoutMs: 700_000 } }), /^milter\.command_timeout_ms: /],
      [() => c.putMilter({ milter: { name: 'a', address: '127.0.0.1:1', listeners: mx, commandTimeoutMs: 9000, totalTimeoutMs: 8000 } }), /^milter\.total_timeout_ms: /],
      [() => c.deleteMilter({ name: '' }), /^name: /],
    ];
    for (const [call, message] of cases) {
      await assert.rejects(call, (err: grpc.ServiceError) => {
        assert.equal(err.code, grpc.status.INVALID_ARGUMENT, err.details);
        assert.match(err.details, message);
        return true;
      });
    }
  });
});
