// Readiness is one answer per service: GET /readyz on the metrics port and
// grpc.health.v1 Check on the gRPC port (the empty name, "readiness" and the
// service's own names) say the same, and follow the service's dependencies;
// "liveness" and /healthz do not (a dependency down must take a pod out of
// its Service, not restart it). The chart's readinessProbe asks gRPC
// "readiness", its liveness and startup probes "liveness".
//
// Services run as processes (policy, queue, ingress) against real Postgres
// and NATS; the queue reaches Postgres through a TCP relay the test can cut.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Harness, grpcHealthCheck, startPlatform, type Platform } from '@tern/devkit';

const harness = new Harness({ name: 'e2e-readiness' });
let platform: Platform;
let pgRelay: TcpRelay;

/** A TCP relay to host:port that can be cut (listener closed, every connection reset) and opened again on the same port. */
class TcpRelay {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async open(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.target.port, this.target.host);
      for (const [a, b] of [[client, upstream], [upstream, client]] as const) {
        this.sockets.add(a);
        a.pipe(b);
        a.on('error', () => b.destroy());
        a.on('close', () => {
          this.sockets.delete(a);
          b.destroy();
        });
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    const closed = new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    for (const s of this.sockets) s.resetAndDestroy();
    await closed;
  }
}

before(async () => {
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  const pgUrl = new URL(db.url);
  pgRelay = new TcpRelay({ host: pgUrl.hostname, port: Number(pgUrl.port || 5432) });
  await pgRelay.open();
  harness.defer(() => pgRelay.cut(), 'close the Postgres relay');
  const queueDbUrl = new URL(db.url);
  queueDbUrl.host = `127.0.0.1:${pgRelay.port}`;
  platform = await startPlatform(harness, {
    databaseUrl: db.url,
    natsUrl: nats.url,
    dnsServer: '127.0.0.1:53',
    remoteSmtpPort: 25,
    only: ['policy', 'queue', 'ingress'],
    env: { queue: { TERN_DATABASE_URL: queueDbUrl.toString() } },
  });
});

after(() => harness.close());

async function httpStatus(addr: string, path: string): Promise<number> {
  try {
    const res = await fetch(`http://${addr}${path}`, { signal: AbortSignal.timeout(2_000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return -1;
  }
}

async function grpcStatus(addr: string, service: string): Promise<string> {
  try {
    return await grpcHealthCheck(addr, service, 2_000);
  } catch (err) {
    return `error: ${(err as Error).message}`;
  }
}

interface Views {
  readyz: number;
  /** gRPC health status by service name. */
  grpc: Record<string, string>;
}

/** /readyz and gRPC health Check of every readiness name, asked one after the other. */
async function views(svc: { metricsAddr: string; grpcAddr: string }, names: string[]): Promise<Views> {
  const readyz = await httpStatus(svc.metricsAddr, '/readyz');
  const grpc: Record<string, string> = {};
  for (const name of names) grpc[name] = await grpcStatus(svc.grpcAddr, name);
  return { readyz, grpc };
}

/**
 * Waits until /readyz says `ready` (200 or 503), then requires the gRPC
 * health of every readiness name to say the same at once (SERVING or
 * NOT_SERVING): the two are one answer, not two that catch up.
 */
async function expectReadiness(what: string, svc: { metricsAddr: string; grpcAddr: string }, names: string[], ready: boolean, timeoutMs = 20_000): Promise<void> {
  const want = ready ? 200 : 503;
  const deadline = Date.now() + timeoutMs;
  let last: Views | undefined;
  while (Date.now() < deadline) {
    last = await views(svc, names);
    if (last.readyz === want) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(last?.readyz, want, `${what}: /readyz ${want} within ${timeoutMs} ms; last ${JSON.stringify(last)}`);
  for (const name of names) {
    assert.equal(last!.grpc[name], ready ? 'SERVING' : 'NOT_SERVING', `${what}: gRPC health "${name}" says what /readyz says (${JSON.stringify(last)})`);
  }
}

/** Liveness ignores dependencies: gRPC "liveness" SERVING and /healthz 200. */
async function expectAlive(what: string, svc: { metricsAddr: string; grpcAddr: string; running: boolean }): Promise<void> {
  assert.ok(svc.running, `${what}: still running`);
  assert.equal(await grpcStatus(svc.grpcAddr, 'liveness'), 'SERVING', `${what}: gRPC health "liveness"`);
  assert.equal(await httpStatus(svc.metricsAddr, '/healthz'), 200, `${what}: /healthz`);
}

test('ingress: queue stopped -> /readyz 503 and gRPC health NOT_SERVING together, alive; queue back -> both ready', async () => {
  const { ingress, queue } = platform.services;
  const names = ['', 'readiness'];
  await expectReadiness('ingress with the queue up', ingress, names, true, 5_000);
  await expectAlive('ingress with the queue up', ingress);

  await queue.stop();
  await expectReadiness('ingress with the queue stopped', ingress, names, false);
  await expectAlive('ingress with the queue stopped', ingress);

  await queue.restart();
  await expectReadiness('ingress with the queue back', ingress, names, true);
  await expectAlive('ingress with the queue back', ingress);
});

test('queue: Postgres unreachable -> /readyz 503 and gRPC health NOT_SERVING together, alive; Postgres back -> both ready', async () => {
  const { queue } = platform.services;
  const names = ['', 'readiness', 'tern.v1.QueueService'];
  await expectReadiness('queue with Postgres', queue, names, true, 5_000);

  await pgRelay.cut();
  try {
    await expectReadiness('queue without Postgres', queue, names, false);
    await expectAlive('queue without Postgres', queue);
  } finally {
    await pgRelay.open();
  }
  await expectReadiness('queue with Postgres back', queue, names, true);
  await expectAlive('queue with Postgres back', queue);
});
