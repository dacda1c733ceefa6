// Lifecycle events through the running platform: an external reader with
// its own durable consumer on TERN_EVENTS sees each state change of a
// message once: received, delivered (with the remote host and reply),
// deferred and bounced (with the bounce class), suppressed (by bounce's
// feed), held, released and deleted by an operator (with who and why).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type Consumer } from '@nats-io/jetstream';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { LifecycleEvents, LifecycleEventType, type LifecycleEvent } from '@tern/proto';
import { send, tern, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-events' });
let platform: Platform;
let natsUrl: string;
const seen: LifecycleEvent[] = [];
const subjects: string[] = [];

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  natsUrl = nats.url;
  const port = await harness.freePort('127.0.0.10');
  await harness.startSink({ host: '127.0.0.10', port, hostname: 'mx.dest.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.10');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: { queue: { TERN_QUEUE_BACKOFF_MIN_S: '600', TERN_QUEUE_BACKOFF_MAX_S: '3600' } },
  });
  // An application's reader: its own durable consumer, from the start of the stream.
  const nc = await connect({ servers: natsUrl });
  harness.defer(() => nc.close(), 'close the events reader');
  const jsm = await jetstreamManager(nc);
  await jsm.consumers.add('TERN_EVENTS', { durable_name: 'app-reader', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All });
  const consumer: Consumer = await jetstream(nc).consumers.get('TERN_EVENTS', 'app-reader');
  const messages = await consumer.consume();
  harness.defer(() => messages.stop(), 'stop the events reader');
  void (async () => {
    for await (const m of messages) {
      subjects.push(m.subject);
      seen.push(...LifecycleEvents.decode(m.data).events);
      m.ack();
    }
  })();
});

after(() => harness.close());

const T = LifecycleEventType;
const eventsOf = (queueId: string) => seen.filter((e) => e.queueId === queueId);
const typesOf = (queueId: string) => eventsOf(queueId).map((e) => e.type);

async function until(queueId: string, types: LifecycleEventType[]): Promise<LifecycleEvent[]> {
  return waitFor(`${queueId}: events ${types.map((t) => T[t]).join(', ')}`, async () => {
    const have = typesOf(queueId);
    return types.every((t) => have.includes(t)) ? eventsOf(queueId) : undefined;
  });
}

test('a delivered message: received then delivered, each once, with the reply and remote host', async () => {
  const id = await send(platform, 'app@sender.test', ['alice@dest.test', 'bob@dest.test'], 'events delivered');
  const events = await until(id, [T.LIFECYCLE_EVENT_TYPE_RECEIVED, T.LIFECYCLE_EVENT_TYPE_DELIVERED]);
  await waitFor('both recipients delivered', async () => (eventsOf(id).filter((e) => e.type === T.LIFECYCLE_EVENT_TYPE_DELIVERED).length === 2 ? true : undefined));
  const received = events.filter((e) => e.type === T.LIFECYCLE_EVENT_TYPE_RECEIVED);
  assert.equal(received.length, 1, 'one received event per message');
  assert.deepEqual(received[0]!.recipients, ['alice@dest.test', 'bob@dest.test']);
  assert.equal(received[0]!.sender, 'app@sender.test');
  assert.ok(received[0]!.size > 0);
  const delivered = eventsOf(id).filter((e) => e.type === T.LIFECYCLE_EVENT_TYPE_DELIVERED);
  assert.deepEqual(delivered.map((e) => e.recipient).sort(), ['alice@dest.test', 'bob@dest.test']);
  for (const e of delivered) {
    assert.equal(e.reply?.code, 250);
    assert.equal(e.destination, 'dest.test');
    assert.ok(e.remoteHost, 'the remote host is named');
    assert.equal(e.attemptCount, 1);
    assert.match(e.traceId, /^[0-9a-f]{32}$/);
  }
  assert.ok(subjects.includes('tern.events.received') && subjects.includes('tern.events.delivered'), subjects.join(' '));
  // Every event id once.
  const ids = seen.map((e) => e.eventId);
  assert.equal(new Set(ids).size, ids.length, 'no event published twice');
});

test('deferred and bounced carry the reply and the bounce class', async () => {
  const deferred = await send(platform, 'app@sender.test', ['tempfail@dest.test'], 'events deferred');
  const bounced = await send(platform, 'app@sender.test', ['permfail@dest.test'], 'events bounced');
  const [d] = (await until(deferred, [T.LIFECYCLE_EVENT_TYPE_DEFERRED])).filter((e) => e.type === T.LIFECYCLE_EVENT_TYPE_DEFERRED);
  assert.equal(d!.reply?.code, 451);
  assert.equal(d!.bounceClass, 'other');
  const [b] = (await until(bounced, [T.LIFECYCLE_EVENT_TYPE_BOUNCED])).filter((e) => e.type === T.LIFECYCLE_EVENT_TYPE_BOUNCED);
  assert.equal(b!.reply?.code, 550);
  assert.equal(b!.reply?.enhanced, '5.1.1');
  assert.equal(b!.bounceClass, 'user_unknown');
  // Bounce lists the dead address and says so once.
  const suppressed = (await until(bounced, [T.LIFECYCLE_EVENT_TYPE_SUPPRESSED])).filter((e) => e.type === T.LIFECYCLE_EVENT_TYPE_SUPPRESSED);
  assert.equal(suppressed.length, 1);
  assert.equal(suppressed[0]!.recipient, 'permfail@dest.test');
  assert.match(suppressed[0]!.reason, /550/);
  assert.ok(subjects.includes('tern.events.suppressed'));
});

test('operator actions: held, released, deleted, with who and why', async () => {
  const id = await send(platform, 'app@sender.test', ['tempfail-op@dest.test'], 'events operator');
  await until(id, [T.LIFECYCLE_EVENT_TYPE_DEFERRED]);
  await tern(platform, 'queue', 'hold', id, '--reason', 'looking into it');
  await tern(platform, 'queue', 'release', id);
  await until(id, [T.LIFECYCLE_EVENT_TYPE_HELD, T.LIFECYCLE_EVENT_TYPE_RELEASED]);
  await until(id, [T.LIFECYCLE_EVENT_TYPE_DEFERRED]);
  await waitFor('deferred again after the release', async () => (eventsOf(id).filter((e) => e.type === T.LIFECYCLE_EVENT_TYPE_DEFERRED).length >= 2 ? true : undefined));
  await tern(platform, 'queue', 'delete', id, '--reason', 'not wanted');
  const events = await until(id, [T.LIFECYCLE_EVENT_TYPE_DELETED]);
  const held = events.find((e) => e.type === T.LIFECYCLE_EVENT_TYPE_HELD)!;
  assert.equal(held.reason, 'looking into it');
  assert.ok(held.operator, 'the operator is named');
  const deleted = events.find((e) => e.type === T.LIFECYCLE_EVENT_TYPE_DELETED)!;
  assert.equal(deleted.reason, 'not wanted');
  assert.equal(deleted.recipient, 'tempfail-op@dest.test');
  assert.deepEqual(
    typesOf(id).filter((t) => t !== T.LIFECYCLE_EVENT_TYPE_DEFERRED),
    [T.LIFECYCLE_EVENT_TYPE_RECEIVED, T.LIFECYCLE_EVENT_TYPE_HELD, T.LIFECYCLE_EVENT_TYPE_RELEASED, T.LIFECYCLE_EVENT_TYPE_DELETED],
    'in the order they happened',
  );
});
