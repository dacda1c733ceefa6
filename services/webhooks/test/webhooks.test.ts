// The webhooks service as a process, against real Postgres (its migrations
// through the migrate command), a private nats-server with JetStream, and a
// receiver of the test's own on loopback: lifecycle events published to
// TERN_EVENTS reach the endpoints whose filter takes them, signed; failures
// are retried under the same webhook-id; batches are arrays; 410 suspends at
// once, repeated failures after TERN_WEBHOOKS_FAILURES_TO_SUSPEND; resume
// sends what was kept; a redelivered NATS message is sent once.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { Bus, eventSubject } from '@tern/bus';
import { Harness, type ServiceHandle } from '@tern/devkit';
import { createClient, unary } from '@tern/grpc';
import {
  LifecycleEvent,
  LifecycleEvents,
  LifecycleEventType,
  WebhookDeliveryState,
  WebhookEndpointState,
  WebhookServiceClient,
  type CreateWebhookEndpointRequest,
  type WebhookEndpoint,
} from '@tern/proto';
import pino from 'pino';
import { checkEndpointUrl, isPublicAddress } from '../src/address';
import { createAgents, post } from '../src/post';
import { backoffMs } from '../src/sender';
import { Receiver } from './receiver';

const harness = new Harness({ name: 'webhooks-service' });
let svc: ServiceHandle;
let client: WebhookServiceClient;
let bus: Bus;
let receiver: Receiver;

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url);
  const nats = await harness.startNats();
  receiver = await new Receiver().start();
  harness.defer(() => receiver.close(), 'close the receiver');
  svc = await harness.startService('webhooks', {
    TERN_DATABASE_URL: db.url,
    TERN_NATS_URL: nats.url,
    // The receiver is http:// on loopback.
    TERN_WEBHOOKS_ALLOW_HTTP: 'true',
    TERN_WEBHOOKS_ALLOW_PRIVATE: 'true',
    // Retries more than a second apart, so each has its own webhook-timestamp.
    TERN_WEBHOOKS_RETRY_MIN_MS: '1500',
    TERN_WEBHOOKS_RETRY_MAX_MS: '3000',
    TERN_WEBHOOKS_FAILURES_TO_SUSPEND: '3',
    TERN_WEBHOOKS_POLL_MS: '200',
    TERN_WEBHOOKS_TIMEOUT_MS: '2000',
    TERN_WEBHOOKS_CONNECT_TIMEOUT_MS: '2000',
    TERN_WEBHOOKS_BATCH_MAX: '3',
  });
  client = createClient(WebhookServiceClient, svc.grpcAddr, { deadlineMs: 10_000 });
  harness.defer(() => client.close(), 'close the client');
  bus = await Bus.connect({ url: nats.url, name: 'test-publisher', logger: pino({ level: 'silent' }) });
  harness.defer(() => bus.close(), 'close the publisher');
});

after(() => harness.close());

// eslint-disable-next-line @typescript-eslint/no-unsafe-function-type -- any generated client method
const call = <Req, Res>(method: Function, req: Req): Promise<Res> => unary(method.bind(client) as never, req as never) as Promise<Res>;

async function create(path: string, req: Partial<CreateWebhookEndpointRequest> = {}): Promise<WebhookEndpoint> {
  const res = await call<CreateWebhookEndpointRequest, { endpoint: WebhookEndpoint; secret: string }>(client.createWebhookEndpoint, {
    url: receiver.url(path),
    description: '',
    eventTypes: [],
    batch: false,
    operator: 'test',
    ...req,
  });
  assert.match(res.secret, /^whsec_[A-Za-z0-9+/]{43}=$/, 'whsec_ and base64 of 32 bytes');
  receiver.secret(path, res.secret);
  return res.endpoint;
}

const get = async (id: string) => (await call<{ id: string }, { endpoint: WebhookEndpoint }>(client.getWebhookEndpoint, { id })).endpoint;

function event(type: LifecycleEventType, queueId: string, extra: Partial<LifecycleEvent> = {}): LifecycleEvent {
  return LifecycleEvent.fromPartial({ eventId: crypto.randomUUID(), type, at: new Date(), queueId, sender: 'app@sender.test', recipient: 'rcpt@dest.test', ...extra });
}

async function publish(type: string, events: LifecycleEvent[], msgId = `test-${crypto.randomUUID()}`): Promise<void> {
  await bus.publish(eventSubject(type), LifecycleEvents.encode({ events }).finish(), { msgId });
}

async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${svc.log().split('\n').slice(-20).join('\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const T = LifecycleEventType;

test('events reach the endpoints whose filter takes them, signed (Standard Webhooks), webhook-id = event id', async () => {
  const all = await create('/all');
  const onlyDelivered = await create('/delivered', { eventTypes: ['delivered'] });
  assert.deepEqual(onlyDelivered.eventTypes, ['delivered']);
  const received = event(T.LIFECYCLE_EVENT_TYPE_RECEIVED, 'Q1');
  const delivered = event(T.LIFECYCLE_EVENT_TYPE_DELIVERED, 'Q1', { reply: { code: 250, enhanced: '2.0.0', text: 'ok' }, remoteHost: 'mx.dest.test' });
  await publish('received', [received]);
  await publish('delivered', [delivered]);
  await waitFor('both events at /all', () => receiver.of('/all').length >= 2 || undefined);
  await waitFor('the delivered event at /delivered', () => receiver.of('/delivered').length >= 1 || undefined);
  const got = receiver.of('/all');
  assert.deepEqual(got.map((r) => r.id).sort(), [received.eventId, delivered.eventId].sort());
  for (const r of got) {
    assert.ok(r.valid, `signature verifies: ${r.signature}`);
    assert.equal(r.contentType, 'application/json');
    assert.ok(Math.abs(r.timestamp - Date.now() / 1000) < 300, 'webhook-timestamp is now, in seconds');
  }
  const body = got.find((r) => r.id === delivered.eventId)!.json as { type: string; timestamp: string; data: Record<string, unknown> };
  assert.equal(body.type, 'message.delivered');
  assert.equal(body.data.eventId, delivered.eventId);
  assert.equal(body.data.queueId, 'Q1');
  assert.equal(body.data.remoteHost, 'mx.dest.test');
  assert.deepEqual(body.data.reply, { code: 250, enhanced: '2.0.0', text: 'ok' });
  // The filtered endpoint: only the delivered one, and nothing else ever queued for it.
  assert.deepEqual(receiver.of('/delivered').map((r) => r.id), [delivered.eventId]);
  assert.ok(receiver.of('/delivered')[0]!.valid);
  // Recorded after the receiver answered.
  const list = await waitFor('the delivery recorded', async () => {
    const l = await call<unknown, { deliveries: { eventId: string; state: number }[] }>(client.listWebhookDeliveries, { endpointId: onlyDelivered.id, state: 0, limit: 0, pageToken: '' });
    return l.deliveries.every((d) => d.state === WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_DELIVERED) ? l : undefined;
  });
  assert.deepEqual(list.deliveries.map((d) => [d.eventId, d.state]), [[delivered.eventId, WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_DELIVERED]]);
  assert.equal((await get(all.id)).consecutiveFailures, 0);
});

test('a redelivered events message (another Nats-Msg-Id, same events) is sent once per endpoint', async () => {
  await create('/dedupe');
  const e = event(T.LIFECYCLE_EVENT_TYPE_BOUNCED, 'Q2', { bounceClass: 'user_unknown' });
  await publish('bounced', [e]);
  await publish('bounced', [e]);
  await waitFor('the bounced event', () => receiver.of('/dedupe').length >= 1 || undefined);
  // A third, later event proves the second message has been processed too.
  const marker = event(T.LIFECYCLE_EVENT_TYPE_DELIVERED, 'Q2b');
  await publish('delivered', [marker]);
  await waitFor('the marker', () => receiver.of('/dedupe').some((r) => r.id === marker.eventId) || undefined);
  assert.equal(receiver.of('/dedupe').filter((r) => r.id === e.eventId).length, 1);
});

test('500 twice, then 200: retried with backoff under the same webhook-id, each attempt with its own timestamp and signature', async () => {
  const ep = await create('/flaky', { eventTypes: ['deferred'] });
  receiver.plan('/flaky', [500, 500]);
  const e = event(T.LIFECYCLE_EVENT_TYPE_DEFERRED, 'Q3');
  await publish('deferred', [e]);
  const tries = await waitFor('three attempts', () => (receiver.of('/flaky').length >= 3 ? receiver.of('/flaky') : undefined));
  assert.deepEqual(tries.map((r) => r.status), [500, 500, 200]);
  assert.ok(tries.every((r) => r.id === e.eventId), 'same webhook-id each time');
  assert.ok(tries.every((r) => r.valid), 'each signature verifies');
  assert.equal(new Set(tries.map((r) => r.timestamp)).size, 3, 'a new timestamp per attempt');
  assert.equal(new Set(tries.map((r) => r.signature)).size, 3, 'a new signature per attempt');
  await waitFor('failures reset by the success', async () => ((await get(ep.id)).consecutiveFailures === 0 ? true : undefined));
  const [d] = (await call<unknown, { deliveries: { attempts: number; state: number }[] }>(client.listWebhookDeliveries, { endpointId: ep.id, state: 0, limit: 0, pageToken: '' })).deliveries;
  assert.equal(d!.attempts, 3);
  assert.equal(d!.state, WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_DELIVERED);
});

test('a batch endpoint gets JSON arrays (up to TERN_WEBHOOKS_BATCH_MAX), each event once, under a batch id', async () => {
  await create('/batch', { batch: true, eventTypes: ['received'] });
  const events = Array.from({ length: 7 }, (_, i) => event(T.LIFECYCLE_EVENT_TYPE_RECEIVED, `QB${i}`));
  await publish('received', events);
  await waitFor('seven events in batches', () => (receiver.of('/batch').flatMap((r) => r.json as unknown[]).length >= 7 ? true : undefined));
  const reqs = receiver.of('/batch');
  for (const r of reqs) {
    assert.ok(Array.isArray(r.json), 'an array');
    assert.ok((r.json as unknown[]).length <= 3, 'at most TERN_WEBHOOKS_BATCH_MAX');
    assert.match(r.id, /^batch_/);
    assert.ok(r.valid);
  }
  const ids = reqs.flatMap((r) => (r.json as { data: { eventId: string } }[]).map((x) => x.data.eventId));
  assert.deepEqual(ids.sort(), events.map((e) => e.eventId).sort());
});

test('410 Gone suspends the endpoint at once; new events are not queued for it; resume sends what was pending', async () => {
  const ep = await create('/gone', { eventTypes: ['held'] });
  receiver.plan('/gone', [410]);
  const first = event(T.LIFECYCLE_EVENT_TYPE_HELD, 'Q4');
  await publish('held', [first]);
  const suspended = await waitFor('suspended', async () => {
    const e = await get(ep.id);
    return e.state === WebhookEndpointState.WEBHOOK_ENDPOINT_STATE_SUSPENDED ? e : undefined;
  });
  assert.equal(receiver.of('/gone').length, 1, 'one attempt, no retry');
  assert.match(suspended.suspendedReason, /410/);
  assert.ok(suspended.suspendedAt);
  assert.equal(suspended.pendingDeliveries, 1, 'the delivery is kept');
  const during = event(T.LIFECYCLE_EVENT_TYPE_HELD, 'Q4b');
  await publish('held', [during]);
  // Resumed: the kept delivery goes, the event published while suspended never was queued.
  const marker = event(T.LIFECYCLE_EVENT_TYPE_HELD, 'Q4c');
  const resumed = (await call<unknown, { endpoint: WebhookEndpoint }>(client.resumeWebhookEndpoint, { id: ep.id, operator: 'test' })).endpoint;
  assert.equal(resumed.state, WebhookEndpointState.WEBHOOK_ENDPOINT_STATE_ACTIVE);
  await publish('held', [marker]);
  await waitFor('the kept delivery and the marker', () => (receiver.of('/gone').filter((r) => r.status === 200).length >= 2 ? true : undefined));
  const ids = receiver.of('/gone').filter((r) => r.status === 200).map((r) => r.id);
  assert.deepEqual(ids.sort(), [first.eventId, marker.eventId].sort());
});

test('TERN_WEBHOOKS_FAILURES_TO_SUSPEND failed attempts in a row suspend the endpoint, with the reason', async () => {
  const ep = await create('/down', { eventTypes: ['expired'] });
  receiver.always('/down', 503);
  await publish('expired', [event(T.LIFECYCLE_EVENT_TYPE_EXPIRED, 'Q5')]);
  const e = await waitFor('suspended', async () => {
    const x = await get(ep.id);
    return x.state === WebhookEndpointState.WEBHOOK_ENDPOINT_STATE_SUSPENDED ? x : undefined;
  });
  assert.equal(receiver.of('/down').length, 3);
  assert.match(e.suspendedReason, /3 failed attempts in a row; the last: HTTP 503/);
  assert.equal(e.lastError, 'HTTP 503');
});

test('a bad endpoint is refused naming the field', async () => {
  const bad = (req: Partial<CreateWebhookEndpointRequest>) =>
    assert.rejects(call(client.createWebhookEndpoint, { url: receiver.url('/x'), description: '', eventTypes: [], batch: false, operator: 't', ...req }));
  await bad({ url: 'ftp://example.com/' });
  await bad({ url: 'not a url' });
  await bad({ eventTypes: ['delivred'] });
  await assert.rejects(call(client.createWebhookEndpoint, { url: 'https://u:p@example.com/', description: '', eventTypes: [], batch: false, operator: 't' }), /url: holds a user name or password/);
  await assert.rejects(call(client.createWebhookEndpoint, { url: receiver.url('/x'), description: '', eventTypes: ['delivred'], batch: false, operator: 't' }), /event_types: unknown type "delivred"/);
  await assert.rejects(call(client.getWebhookEndpoint, { id: 'wh_aaaaaaaaaaaaaaaaaaaa' }), /no webhook endpoint wh_a/);
});

test('the SSRF guard: private, loopback and link-local addresses are refused unless allowed, http only inside', async () => {
  const strict = { allowHttp: false, allowPrivate: false };
  assert.throws(() => checkEndpointUrl('http://hooks.example.com/', strict), /url: http:\/\/ is refused/);
  assert.throws(() => checkEndpointUrl('https://127.0.0.1/', strict), /not a public address/);
  assert.throws(() => checkEndpointUrl('https://[::1]/', strict), /not a public address/);
  assert.throws(() => checkEndpointUrl('https://169.254.169.254/latest', strict), /not a public address/);
  assert.throws(() => checkEndpointUrl('https://10.1.2.3/', strict), /TERN_WEBHOOKS_ALLOW_PRIVATE/);
  assert.throws(() => checkEndpointUrl('http://8.8.8.8/', { allowHttp: true, allowPrivate: true }), /public address and http:\/\/ is allowed only inside/);
  assert.equal(checkEndpointUrl('https://hooks.example.com/x', strict).href, 'https://hooks.example.com/x');
  for (const ip of ['127.0.0.1', '10.0.0.1', '172.16.5.4', '192.168.1.1', '169.254.1.1', '100.64.0.1', '0.0.0.0', '::1', 'fe80::1', 'fd00::1', '::ffff:127.0.0.1']) {
    assert.equal(isPublicAddress(ip), false, ip);
  }
  for (const ip of ['8.8.8.8', '1.1.1.1', '2606:4700::1111']) assert.equal(isPublicAddress(ip), true, ip);
  // At request time too: a name that resolves to loopback is refused before any connection.
  const before = receiver.requests.length;
  const agents = createAgents(1);
  const viaName = await post(new URL(`http://localhost:${receiver.port}/ssrf`), {}, Buffer.from('{}'), { allowHttp: true, allowPrivate: false, connectTimeoutMs: 1000, timeoutMs: 1000 }, agents);
  assert.equal(viaName.refused, true, viaName.error);
  const viaIp = await post(new URL(receiver.url('/ssrf')), {}, Buffer.from('{}'), { allowHttp: true, allowPrivate: false, connectTimeoutMs: 1000, timeoutMs: 1000 }, agents);
  assert.equal(viaIp.refused, true, viaIp.error);
  assert.equal(receiver.requests.length, before, 'no request reached the receiver');
});

test('backoff doubles from the minimum to the maximum, with jitter within 80-120%', () => {
  assert.equal(backoffMs(1, 5000, 3_600_000, () => 0.5), 5000);
  assert.equal(backoffMs(3, 5000, 3_600_000, () => 0.5), 20_000);
  assert.equal(backoffMs(40, 5000, 3_600_000, () => 0.5), 3_600_000);
  assert.equal(backoffMs(1, 5000, 3_600_000, () => 0), 4000);
  assert.equal(backoffMs(1, 5000, 3_600_000, () => 1), 6000);
});
