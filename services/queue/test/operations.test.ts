// Operator RPCs: listing with filters and keyset paging, summary, bulk
// actions with dry run and operator record, destinations, routes.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { grpc } from '@tern/grpc';
import { QueueAction, RecipientState, ReportKind, RouteKind } from '@tern/proto';
import type { App } from '../src/app';
import { body, createDatabase, FakeDelivery, header, queueClient, startNats, startQueue, type QueueClient } from './helpers';

describe('operations', () => {
  let db: Awaited<ReturnType<typeof createDatabase>>;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let app: App;
  let client: QueueClient;
  let delivery: FakeDelivery;
  const held: string[] = [];

  before(async () => {
    db = await createDatabase();
    nats = await startNats();
    app = await startQueue(db.url, nats.url, { TERN_QUEUE_SCHEDULE_INTERVAL_MS: '200' });
    client = queueClient(app.grpcPort);
    delivery = await FakeDelivery.connect(nats.url);
    for (let i = 0; i < 3; i++) held.push((await client.enqueue(header({ hold: true }, [`h${i}@ops.example`, `x${i}@side.example`]), body(100))).queueId);
    await client.enqueue(header({ envelope: { sender: 'other@origin.example' } }, ['z@elsewhere.example']), body(100));
  });
  after(async () => {
    client?.close();
    await delivery?.close();
    await app?.stop();
    await nats?.stop();
    await db?.drop();
  });

  it('lists by domain and state with keyset paging, newest first', async () => {
    const newest = [...held].reverse();
    const p1 = await client.listMessages({ filter: { domain: 'ops.example', states: [RecipientState.RECIPIENT_STATE_HELD] }, pageSize: 2 });
    assert.deepEqual(p1.messages.map((m) => m.queueId), newest.slice(0, 2));
    assert.ok(p1.nextPageToken);
    assert.equal(p1.messages[0]!.recipients.length, 1, 'only the matching recipients');
    assert.equal(p1.messages[0]!.recipientCount, 2);
    const p2 = await client.listMessages({ filter: { domain: 'ops.example', states: [RecipientState.RECIPIENT_STATE_HELD] }, pageSize: 2, pageToken: p1.nextPageToken });
    assert.deepEqual(p2.messages.map((m) => m.queueId), newest.slice(2));
    assert.equal(p2.nextPageToken, '');
    const bySender = await client.listMessages({ filter: { sender: 'other@origin.example' } });
    assert.equal(bySender.messages.length, 1);
    const byRcpt = await client.listMessages({ filter: { recipient: 'h1@ops.example' } });
    assert.deepEqual(byRcpt.messages.map((m) => m.queueId), [held[1]]);
    const all = await client.listMessages({});
    assert.equal(all.messages.length, 4);
    assert.deepEqual(all.messages.slice(1).map((m) => m.queueId), newest, 'newest first without a filter too');
    // By sender and state: the sender's index, newest first, pages by the same token.
    const s1 = await client.listMessages({ filter: { sender: 'sender@origin.example', states: [RecipientState.RECIPIENT_STATE_HELD] }, pageSize: 2 });
    assert.deepEqual(s1.messages.map((m) => m.queueId), newest.slice(0, 2));
    const s2 = await client.listMessages({ filter: { sender: 'sender@origin.example', states: [RecipientState.RECIPIENT_STATE_HELD] }, pageSize: 2, pageToken: s1.nextPageToken });
    assert.deepEqual(s2.messages.map((m) => m.queueId), newest.slice(2));
    assert.equal((await client.listMessages({ filter: { sender: 'sender@origin.example', states: [RecipientState.RECIPIENT_STATE_DELIVERED] } })).messages.length, 0);
    const old = await client.listMessages({ filter: { minAgeSeconds: 3600 } });
    assert.equal(old.messages.length, 0);
    const young = await client.listMessages({ filter: { maxAgeSeconds: 3600 } });
    assert.equal(young.messages.length, 4);
    await assert.rejects(client.listMessages({ pageToken: 'garbage' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
  });

  it('summarises by destination and state', async () => {
    const s = await client.queueSummary({});
    const row = s.rows.find((r) => r.destination === 'ops.example' && r.state === RecipientState.RECIPIENT_STATE_HELD);
    assert.equal(Number(row?.count), 3);
    assert.ok(row?.oldest);
  });

  it('bulk actions count first with dry_run, then act and record operator and reason', async () => {
    await assert.rejects(client.applyAction({ action: QueueAction.QUEUE_ACTION_RELEASE, operator: 'alice' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /filter/.test(e.details));
    await assert.rejects(client.applyAction({ action: QueueAction.QUEUE_ACTION_RELEASE, queueId: held[0], filter: { domain: 'x' }, operator: 'alice' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    await assert.rejects(
      client.applyAction({ action: QueueAction.QUEUE_ACTION_RELEASE, filter: { domain: 'x' }, all: true, operator: 'alice' }),
      (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /filter, all: give exactly one of them/.test(e.details),
    );
    // all: every message, here the three held ones (their six recipients).
    const every = await client.applyAction({ action: QueueAction.QUEUE_ACTION_RELEASE, all: true, dryRun: true, operator: 'alice' });
    assert.deepEqual([Number(every.messages), Number(every.recipients), every.dryRun], [3, 6, true]);
    const dry = await client.applyAction({ action: QueueAction.QUEUE_ACTION_DELETE, filter: { domain: 'side.example' }, dryRun: true, operator: 'alice' });
    assert.equal(Number(dry.messages), 3);
    assert.equal(Number(dry.recipients), 3);
    assert.equal(dry.dryRun, true);
    const still = await db.query(`SELECT count(*)::int AS n FROM queue.recipients WHERE domain = 'side.example' AND state = ${RecipientState.RECIPIENT_STATE_HELD}`);
    assert.equal(still.rows[0].n, 3);
    const del = await client.applyAction({ action: QueueAction.QUEUE_ACTION_DELETE, filter: { domain: 'side.example' }, operator: 'alice', reason: 'spam run' });
    assert.equal(Number(del.recipients), 3);
    const { message } = await client.getMessage({ queueId: held[0] });
    assert.equal(message!.recipients.find((r) => r.address === 'x0@side.example')!.state, RecipientState.RECIPIENT_STATE_DELETED);
    assert.equal(message!.operatorEvents[0]!.operator, 'alice');
    assert.equal(message!.operatorEvents[0]!.action, 'delete');
    assert.equal(message!.operatorEvents[0]!.reason, 'spam run');
  });

  it('bounce now fails the recipients with a report; release dispatches', async () => {
    await client.applyAction({ action: QueueAction.QUEUE_ACTION_BOUNCE, queueId: held[0], operator: 'bob', reason: 'stuck' });
    const reports = (await delivery.reports(1)).filter((r) => r.queueId === held[0]);
    assert.equal(reports.length, 1);
    assert.equal(reports[0]!.kind, ReportKind.REPORT_KIND_FAILED);
    assert.deepEqual(reports[0]!.recipients.map((r) => r.address), ['h0@ops.example']);
    const rel = await client.applyAction({ action: QueueAction.QUEUE_ACTION_RELEASE, filter: { domain: 'ops.example' }, operator: 'bob' });
    assert.equal(Number(rel.recipients), 2);
    const jobs = await delivery.jobsWhere((j) => j.destination === 'ops.example', 2);
    assert.deepEqual(jobs.map((j) => j.queueId).sort(), held.slice(1).sort());
  });

  it('suspends and resumes a destination, with the operator recorded', async () => {
    await assert.rejects(
      client.suspendDestination({ destination: 'paused.example', operator: 'carol', reason: 'maintenance' }),
      (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND && /destination "paused\.example": the queue has never had mail for it/.test(e.details),
    );
    await assert.rejects(client.resumeDestination({ destination: 'paused.example', operator: 'carol' }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
    const s = await client.suspendDestination({ destination: 'Paused.Example', operator: 'carol', reason: 'maintenance', force: true });
    assert.equal(s.destination!.name, 'paused.example');
    assert.equal(s.destination!.suspended, true);
    const res = await client.enqueue(header({}, ['p@paused.example']), body(100));
    assert.equal((await delivery.jobs(1, 1200)).filter((j) => j.queueId === res.queueId).length, 0);
    const list = await client.listDestinations({});
    assert.equal(list.destinations.find((d) => d.name === 'paused.example')?.suspendedReason, 'maintenance');
    const r = await client.resumeDestination({ destination: 'paused.example', operator: 'carol' });
    assert.equal(r.destination!.suspended, false);
    assert.equal((await delivery.jobs(1)).filter((j) => j.queueId === res.queueId).length, 1);
    const ev = await db.query(`SELECT action, operator FROM queue.operator_events WHERE subject = 'paused.example' ORDER BY id`);
    assert.deepEqual(ev.rows.map((e) => e.action), ['suspend', 'resume']);
  });

  it('refuses a destination that is no domain (a wildcard would pass for every destination and suspend none), naming the forms', async () => {
    for (const destination of ['*', 'example.*', '*.example', 'a b.example', 'x,y.example']) {
      await assert.rejects(
        client.suspendDestination({ destination, operator: 'carol', reason: 'all', force: true }),
        (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /destination: ".*" is not a domain: a destination is one recipient domain \(example\.com\) or an address literal/.test(e.details),
        destination,
      );
    }
    for (const destination of ['[192.0.2.1]', '[IPv6:2001:db8::1]', 'bücher.example', 'xn--bcher-kva.example']) {
      const s = await client.suspendDestination({ destination, operator: 'carol', reason: 'test', force: true });
      assert.equal(s.destination!.suspended, true, destination);
      await client.resumeDestination({ destination, operator: 'carol' });
    }
  });

  it('validates routes, naming the field', async () => {
    const bad = async (route: object, field: RegExp) =>
      assert.rejects(client.putRoute({ route, operator: 'dave' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && field.test(e.details));
    await bad({ domain: '', kind: RouteKind.ROUTE_KIND_MX }, /^route\.domain/);
    await bad({ domain: 'a b', kind: RouteKind.ROUTE_KIND_MX }, /^route\.domain/);
    await bad({ domain: 'x.example', kind: 0 }, /^route\.kind/);
    await bad({ domain: 'x.example', kind: RouteKind.ROUTE_KIND_SMARTHOST }, /^route\.target/);
    await bad({ domain: 'x.example', kind: RouteKind.ROUTE_KIND_SMARTHOST, target: 'host:99999' }, /^route\.target/);
    await bad({ domain: 'x.example', kind: RouteKind.ROUTE_KIND_SMARTHOST, target: 'unix:/run/lmtp' }, /^route\.target/);
    await bad({ domain: 'x.example', kind: RouteKind.ROUTE_KIND_SMARTHOST, target: 'h:25', authUser: 'u' }, /^route\.auth_secret/);
    await client.putRoute({ route: { domain: 'local.example', kind: RouteKind.ROUTE_KIND_LMTP, target: 'unix:/run/dovecot/lmtp' }, operator: 'dave' });
    await client.putRoute({ route: { domain: '*', kind: RouteKind.ROUTE_KIND_SMARTHOST, target: 'relay:587', authUser: 'u', authSecret: 'relay-password' }, operator: 'dave' });
    const list = await client.listRoutes({});
    assert.deepEqual(list.routes.map((r) => r.domain), ['*', 'local.example']);
    assert.equal((await client.deleteRoute({ domain: '*', operator: 'dave' })).deleted, true);
    assert.equal((await client.deleteRoute({ domain: '*', operator: 'dave' })).deleted, false);
  });
});
