// The health service (src/health.ts, messages encoded by hand) against
// grpc-health-check's own client definition (read from its .proto by
// proto-loader): Check, Watch and List answer as that package's server did.
// First, in this fresh process: a GrpcServer that listens loads neither
// proto-loader nor protobufjs (reflection loads them at its first call).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { createTelemetry } from '@tern/telemetry';
import { GrpcServer, grpc } from '../src/index';

const telemetry = createTelemetry({ service: 'grpc-health-test', logLevel: 'silent' });
const logger = pino({ level: 'silent' });
const servers: GrpcServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.shutdown(100)));
  await telemetry.shutdown();
});

const loaded = (pkg: string) => Object.keys(require.cache).some((file) => file.includes(`/node_modules/${pkg}/`));

type Status = { status: string };
type HealthClient = grpc.Client & {
  check(req: { service: string }, cb: (err: grpc.ServiceError | null, res: Status) => void): void;
  watch(req: { service: string }): grpc.ClientReadableStream<Status>;
  list(req: object, cb: (err: grpc.ServiceError | null, res: { statuses: Record<string, Status> }) => void): void;
};

test('a listening GrpcServer loads no protobufjs or proto-loader', async () => {
  const server = new GrpcServer({ logger, tracer: telemetry.tracer });
  servers.push(server);
  await server.listen('127.0.0.1', 0);
  server.serve();
  assert.equal(loaded('protobufjs'), false);
  assert.equal(loaded('@grpc/proto-loader'), false);
});

test('Check, Watch and List as grpc-health-check answers them', async () => {
  const server = new GrpcServer({ logger, tracer: telemetry.tracer, readyPollMs: 50 });
  servers.push(server);
  await server.listen('127.0.0.1', 0);
  const { service } = await import('grpc-health-check');
  const Client = grpc.makeGenericClientConstructor(service, 'Health') as unknown as new (address: string, creds: grpc.ChannelCredentials) => HealthClient;
  const client = new Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
  try {
    const check = (name: string) => new Promise<string>((resolve, reject) => client.check({ service: name }, (err, res) => (err ? reject(err) : resolve(res.status))));
    assert.equal(await check(''), 'NOT_SERVING');
    assert.equal(await check('liveness'), 'SERVING');
    await assert.rejects(check('no.Such'), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND && /Health status unknown for service no\.Such/.test(err.details));
    // Watch: the current status at once, then each change; an unknown name is SERVICE_UNKNOWN.
    const seen: string[] = [];
    const watch = client.watch({ service: 'readiness' });
    watch.on('data', (m: Status) => seen.push(m.status));
    watch.on('error', () => {});
    const unknown = await new Promise<string>((resolve) => {
      const w = client.watch({ service: 'no.Such' });
      w.on('data', (m: Status) => {
        resolve(m.status);
        w.cancel();
      });
      w.on('error', () => {});
    });
    assert.equal(unknown, 'SERVICE_UNKNOWN');
    server.serve();
    const deadline = Date.now() + 5_000;
    while (seen.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(seen, ['NOT_SERVING', 'SERVING']);
    watch.cancel();
    const list = await new Promise<Record<string, Status>>((resolve, reject) => client.list({}, (err, res) => (err ? reject(err) : resolve(res.statuses))));
    assert.deepEqual(
      Object.fromEntries(Object.entries(list).map(([name, s]) => [name, s.status])),
      { '': 'SERVING', readiness: 'SERVING', liveness: 'SERVING' },
    );
  } finally {
    client.close();
  }
});
