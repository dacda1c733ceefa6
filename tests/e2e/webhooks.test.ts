// Signed webhooks through the running platform (issue 25): endpoints added
// with the `tern` CLI (the secret it prints is what the receiver verifies
// with), mail sent over SMTP, delivered to a sink or refused 550 by it, and
// the lifecycle events POSTed to a receiver of the test's own on loopback:
// each as filtered, signed, webhook-id = event id, retried after 500s under
// the same id, batched as arrays, an endpoint answering 410 suspended (and so
// listed) until resumed, and a receiver that hangs not holding mail back.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, startPlatform, type Platform, type SmtpSink } from '@tern/devkit';
import { Receiver } from '../../services/webhooks/test/receiver';
import { send, tern, ternJson, ternRaw, waitFor } from '../ops/helpers';

const harness = new Harness({ name: 'e2e-webhooks' });
let platform: Platform;
let sink: SmtpSink;
let receiver: Receiver;
const ids: Record<string, string> = {};

interface Body {
  type: string;
  timestamp: string;
  data: { eventId: string; queueId: string; recipient: string; type: string; bounceClass?: string };
}

/** `tern webhook add`: the endpoint id and the secret from its output; the warning on stderr. */
async function add(path: string, ...opts: string[]): Promise<string> {
  const r = await ternRaw(platform, ['webhook', 'add', receiver.url(path), ...opts]);
  assert.equal(r.code, 0, r.stderr);
  const secret = /^Signing secret: (whsec_\S+)$/m.exec(r.stdout)?.[1];
  assert.ok(secret, `the secret is printed: ${r.stdout}`);
  assert.match(r.stderr, /not shown again/);
  receiver.secret(path, secret);
  const id = /^Webhook endpoint (wh_[a-z0-9]{20}) /m.exec(r.stdout)?.[1];
  assert.ok(id, r.stdout);
  return id;
}

/** The events of one message a path has received so far (batches flattened), with the request each came in. */
function eventsAt(path: string, queueId?: string) {
  return receiver.of(path).flatMap((r) => (Array.isArray(r.json) ? (r.json as Body[]) : [r.json as Body]).map((b) => ({ body: b, req: r }))).filter((x) => !queueId || x.body.data.queueId === queueId);
}

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const port = await harness.freePort('127.0.0.10');
  sink = await harness.startSink({ host: '127.0.0.10', port, hostname: 'mx.dest.test' });
  const dns = await harness.startDns({ host: '127.0.0.1' });
  dns.mx('dest.test', 'mx.dest.test').a('mx.dest.test', '127.0.0.10');
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: dns.address,
    remoteSmtpPort: port,
    env: {
      webhooks: {
        // Retries more than a second apart: each attempt has its own webhook-timestamp.
        TERN_WEBHOOKS_RETRY_MIN_MS: '1500',
        TERN_WEBHOOKS_RETRY_MAX_MS: '3000',
        TERN_WEBHOOKS_POLL_MS: '200',
        // A hanging receiver holds its requests this long.
        TERN_WEBHOOKS_TIMEOUT_MS: '60000',
        TERN_WEBHOOKS_CONNECT_TIMEOUT_MS: '2000',
      },
    },
  });
  receiver = await new Receiver().start();
  // Registered last, closed first: hung requests are let go before the services stop.
  harness.defer(() => receiver.close(), 'close the receiver');
  receiver.failFirst('/flaky', 2, 500);
  receiver.plan('/gone', [410]);
  receiver.always('/hang', 'hang');
  ids.all = await add('/all');
  ids.delivered = await add('/delivered', '--events', 'delivered');
  ids.batch = await add('/batch', '--batch', '--events', 'received,delivered,bounced', '--description', 'batches');
  ids.flaky = await add('/flaky', '--events', 'message.bounced');
  ids.gone = await add('/gone', '--events', 'received');
  ids.hang = await add('/hang');
});

after(() => harness.close());

let delivered: string;
let bounced: string;

test('a delivered and a bounced message: each event once at the endpoint taking all, signed, webhook-id = event id', async () => {
  delivered = await send(platform, 'app@sender.test', ['alice@dest.test'], 'webhooks delivered');
  bounced = await send(platform, 'app@sender.test', ['permfail@dest.test'], 'webhooks bounced');
  const types = (q: string) => eventsAt('/all', q).map((x) => x.body.type);
  await waitFor('received and delivered at /all', async () => (['message.received', 'message.delivered'].every((t) => types(delivered).includes(t)) ? true : undefined));
  // The 5.1.1 refusal also puts the address on the suppression list: an event of its own.
  await waitFor('received, bounced and suppressed at /all', async () =>
    ['message.received', 'message.bounced', 'message.suppressed'].every((t) => types(bounced).includes(t)) ? true : undefined,
  );
  assert.deepEqual(types(delivered).sort(), ['message.delivered', 'message.received']);
  assert.deepEqual(types(bounced).sort(), ['message.bounced', 'message.received', 'message.suppressed']);
  for (const { body, req } of eventsAt('/all')) {
    assert.ok(req.valid, `signature of ${req.id} verifies with the secret tern printed`);
    assert.equal(req.id, body.data.eventId, 'webhook-id is the event id');
    assert.equal(req.contentType, 'application/json');
    assert.equal(body.type, `message.${body.data.type.replace('LIFECYCLE_EVENT_TYPE_', '').toLowerCase()}`);
  }
  const b = eventsAt('/all', bounced).find((x) => x.body.type === 'message.bounced')!.body;
  assert.equal(b.data.recipient, 'permfail@dest.test');
  assert.equal(b.data.bounceClass, 'user_unknown');
  const seen = eventsAt('/all').map((x) => x.body.data.eventId);
  assert.equal(new Set(seen).size, seen.length, 'no event twice');
});

test('an endpoint filtered to delivered gets only delivered events', async () => {
  await waitFor('the delivered event at /delivered', async () => (eventsAt('/delivered', delivered).length ? true : undefined));
  // The bounced message's events went to /all already; nothing of them came here.
  await waitFor('the bounced event at /all', async () => (eventsAt('/all', bounced).some((x) => x.body.type === 'message.bounced') ? true : undefined));
  assert.deepEqual([...new Set(eventsAt('/delivered').map((x) => x.body.type))], ['message.delivered']);
  assert.equal(eventsAt('/delivered', delivered).length, 1);
  assert.ok(receiver.of('/delivered').every((r) => r.valid));
});

test('500 twice: retried under the same webhook-id, each attempt signed with its own timestamp', async () => {
  // The bounced message's event (the report to sender.test may bounce too: another event, another id).
  const ofBounced = () => receiver.of('/flaky').filter((r) => (r.json as Body).data.queueId === bounced);
  const tries = await waitFor('three attempts at /flaky', async () => (ofBounced().length >= 3 ? ofBounced() : undefined));
  assert.deepEqual(tries.map((r) => r.status), [500, 500, 200]);
  assert.equal(new Set(tries.map((r) => r.id)).size, 1, 'one webhook-id');
  assert.equal(new Set(tries.map((r) => r.timestamp)).size, 3, 'a timestamp per attempt');
  assert.equal(new Set(tries.map((r) => r.signature)).size, 3, 'a signature per attempt');
  assert.ok(tries.every((r) => r.valid));
});

test('a batch endpoint gets JSON arrays under a batch id', async () => {
  await waitFor('the delivered message at /batch', async () => (eventsAt('/batch', delivered).length >= 2 ? true : undefined));
  for (const r of receiver.of('/batch')) {
    assert.ok(Array.isArray(r.json), 'an array');
    assert.match(r.id, /^batch_/);
    assert.ok(r.valid);
  }
});

test('410 Gone suspends the endpoint (tern webhook ls shows it), resume sends what was kept', async () => {
  await waitFor('suspended', async () => {
    const ls = await ternJson<{ endpoints: { id: string; state: string; suspendedReason?: string }[] }>(platform, 'webhook', 'ls');
    return ls.endpoints.find((e) => e.id === ids.gone)?.state === 'WEBHOOK_ENDPOINT_STATE_SUSPENDED' ? true : undefined;
  });
  const table = await tern(platform, 'webhook', 'ls');
  const row = table.split('\n').find((l) => l.startsWith(ids.gone!))!;
  assert.match(row, /suspended/);
  assert.match(row, /answered 410 Gone/);
  const shown = await tern(platform, 'webhook', 'show', ids.gone!);
  assert.match(shown, /State:\s+suspended since .*answered 410 Gone/);
  // Other requests may have been in flight with it; the refused event itself was not tried again.
  const refused = receiver.of('/gone').filter((r) => r.status === 410);
  assert.equal(refused.length, 1);
  assert.equal(receiver.of('/gone').filter((r) => r.id === refused[0]!.id).length, 1, 'no retry after 410');
  const pending = await tern(platform, 'webhook', 'deliveries', ids.gone!, '--state', 'pending');
  assert.match(pending, /pending/);
  assert.match(await tern(platform, 'webhook', 'resume', ids.gone!), /Resumed webhook endpoint/);
  await waitFor('the kept delivery sent after resume', async () => (receiver.of('/gone').some((r) => r.status === 200 && r.id === refused[0]!.id) ? true : undefined));
  const again = receiver.of('/gone').filter((r) => r.status === 200);
  assert.ok(again.some((r) => r.id === refused[0]!.id), 'the event refused with 410 is sent again');
  await waitFor('active in the list', async () => {
    const ls = await ternJson<{ endpoints: { id: string; state: string }[] }>(platform, 'webhook', 'ls');
    return ls.endpoints.find((e) => e.id === ids.gone)?.state === 'WEBHOOK_ENDPOINT_STATE_ACTIVE' ? true : undefined;
  });
});

test('a receiver that hangs does not hold mail back: the next message is delivered while it still hangs', async () => {
  await waitFor('a request hanging at /hang', async () => (receiver.of('/hang').length ? true : undefined));
  const hanging = receiver.of('/hang').length;
  const id = await send(platform, 'app@sender.test', ['carol@dest.test'], 'webhooks while a receiver hangs');
  await waitFor('the sink has the message', async () => (sink.messagesFor('carol@dest.test').length ? true : undefined));
  await waitFor('its delivered event at /all', async () => (eventsAt('/all', id).some((x) => x.body.type === 'message.delivered') ? true : undefined));
  // The hanging requests were never answered (their timeout is 60 s): none of them was retried meanwhile.
  assert.ok(receiver.of('/hang').every((r) => r.status === 0));
  assert.ok(receiver.of('/hang').length >= hanging);
});

test('bad input is refused naming the field; rm removes', async () => {
  const r = await ternRaw(platform, ['webhook', 'add', receiver.url('/x'), '--events', 'delivred']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /event_types: unknown type "delivred"/);
  const ftp = await ternRaw(platform, ['webhook', 'add', 'ftp://hooks.example.com/']);
  assert.notEqual(ftp.code, 0);
  assert.match(ftp.stderr, /url: ftp:\/\/ is refused: use https:\/\//);
  assert.match(await tern(platform, 'webhook', 'rm', ids.hang!), /Removed webhook endpoint/);
  const gone = await ternRaw(platform, ['webhook', 'show', ids.hang!]);
  assert.notEqual(gone.code, 0);
  assert.match(gone.stderr, /no webhook endpoint/);
});
