// Issue 25's webhook promise through a receiver outage: a receiver that
// answers 503 while mail is delivered, deferred and bounced, then recovers,
// gets every lifecycle event of those messages, each signed and each event id
// once among the requests it accepted (a retry carries the same id), and an
// application's own durable consumer on TERN_EVENTS reads the same event ids.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Harness, startPlatform, type Platform } from '@tern/devkit';
import { LifecycleEvents, type LifecycleEvent } from '@tern/proto';
import { Receiver } from '../../services/webhooks/test/receiver';
import { send, ternRaw, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-webhooks-outage' });
let platform: Platform;
let receiver: Receiver;
const fromStream: LifecycleEvent[] = [];

interface Body {
  type: string;
  data: { eventId: string; queueId: string };
}

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.10');
  await harness.startSink({ host: '127.0.0.10', port, hostname: 'mx.dest.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.10');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      queue: { TERN_QUEUE_BACKOFF_MIN_S: '600', TERN_QUEUE_BACKOFF_MAX_S: '3600' },
      webhooks: { TERN_WEBHOOKS_RETRY_MIN_MS: '500', TERN_WEBHOOKS_RETRY_MAX_MS: '1000', TERN_WEBHOOKS_POLL_MS: '200' },
    },
  });
  receiver = await new Receiver().start();
  harness.defer(() => receiver.close(), 'close the receiver');
  // The application's own reader of the stream.
  const nc = await connect({ servers: nats.url });
  harness.defer(() => nc.close(), 'close the events reader');
  await (await jetstreamManager(nc)).consumers.add('TERN_EVENTS', { durable_name: 'app', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All });
  const messages = await (await jetstream(nc).consumers.get('TERN_EVENTS', 'app')).consume();
  harness.defer(() => messages.stop(), 'stop the events reader');
  void (async () => {
    for await (const m of messages) {
      fromStream.push(...LifecycleEvents.decode(m.data).events);
      m.ack();
    }
  })();
  const r = await ternRaw(platform, ['webhook', 'add', receiver.url('/app')]);
  assert.equal(r.code, 0, r.stderr);
  receiver.secret('/app', /^Signing secret: (whsec_\S+)$/m.exec(r.stdout)![1]!);
});

after(() => harness.close());

test('through a receiver outage: every event of a delivered, a deferred and a bounced message arrives signed, each id once, the same ids as the stream', async () => {
  receiver.always('/app', 503);
  const ids = [
    await send(platform, 'app@sender.test', ['ok@dest.test'], 'outage delivered'),
    await send(platform, 'app@sender.test', ['tempfail@dest.test'], 'outage deferred'),
    await send(platform, 'app@sender.test', ['permfail@dest.test'], 'outage bounced'),
  ];
  const streamIds = await waitFor('the stream to hold received, delivered, deferred, bounced and suppressed', async () => {
    const mine = fromStream.filter((e) => ids.includes(e.queueId));
    return mine.length >= 6 ? mine : undefined;
  }, 30_000);
  await waitFor('the receiver to have refused some attempts', async () => (receiver.of('/app').some((x) => x.status === 503) ? true : undefined));
  await new Promise((r) => setTimeout(r, 2_000)); // an outage of a few retries
  receiver.always('/app', 200);

  const expected = new Set(fromStream.filter((e) => ids.includes(e.queueId)).map((e) => e.eventId));
  assert.ok(streamIds.length >= 6);
  const accepted = await waitFor('every event accepted by the recovered receiver', async () => {
    const ok = receiver.of('/app').filter((x) => x.status === 200);
    const got = ok.map((x) => ({ req: x, body: x.json as Body })).filter((x) => ids.includes(x.body.data.queueId));
    return expected.size > 0 && [...expected].every((id) => got.some((g) => g.body.data.eventId === id)) ? got : undefined;
  }, 60_000);
  // Each event once among the accepted requests; every request (refused ones too) signed, its webhook-id the event id.
  const acceptedIds = accepted.map((a) => a.body.data.eventId);
  assert.equal(new Set(acceptedIds).size, acceptedIds.length, `an event accepted twice: ${acceptedIds.join(' ')}`);
  assert.deepEqual(new Set(acceptedIds), expected, 'the receiver and the stream have the same events');
  for (const x of receiver.of('/app')) {
    const body = x.json as Body;
    if (!ids.includes(body.data.queueId)) continue;
    assert.ok(x.valid, `signature of ${x.id}`);
    assert.equal(x.id, body.data.eventId, 'webhook-id is the event id');
  }
  const retried = receiver.of('/app').filter((x) => x.status === 503 && ids.includes((x.json as Body).data.queueId)).map((x) => x.id);
  assert.ok(retried.length > 0 && retried.every((id) => acceptedIds.includes(id)), 'what the outage refused came again under the same id');
  const types = new Set(accepted.map((a) => a.body.type));
  for (const t of ['message.received', 'message.delivered', 'message.deferred', 'message.bounced']) assert.ok(types.has(t), `${t} among ${[...types].join(', ')}`);
});
