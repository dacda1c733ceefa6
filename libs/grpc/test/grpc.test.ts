// libs/grpc against real sockets: the standard health service, default
// deadlines, trace context across the call, round_robin over replicas, and a
// shutdown that lets a running call finish.
import http2 from 'node:http2';
import net from 'node:net';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { context, trace } from '@opentelemetry/api';
import pino from 'pino';
import { service as healthService } from 'grpc-health-check';
import { createTelemetry } from '@tern/telemetry';
import { GrpcServer, HTTP2_WINDOW_BYTES, RETRIED_METHODS, createClient, grpc, unary } from '../src/index';

const telemetry = createTelemetry({ service: 'grpc-test', logLevel: 'silent' });
const logger = pino({ level: 'silent' });

// A one-method service with raw payloads: the request is a delay in ms as
// text; the reply names the replica and the trace id the server saw.
const echoDefinition: grpc.ServiceDefinition = {
  echo: {
    path: '/test.Echo/Echo',
    requestStream: false,
    responseStream: false,
    requestSerialize: (v: Buffer) => v,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (v: Buffer) => v,
    responseDeserialize: (b: Buffer) => b,
  },
};
type EchoClient = grpc.Client & {
  echo(req: Buffer, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Buffer) => void): grpc.ClientUnaryCall;
};
const EchoClientCtor = grpc.makeGenericClientConstructor(echoDefinition, 'Echo') as unknown as new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
) => EchoClient;

const servers: GrpcServer[] = [];

async function startReplica(name: string, ready?: () => boolean): Promise<GrpcServer> {
  const server = new GrpcServer({ logger, tracer: telemetry.tracer, ready, readyPollMs: 50 });
  server.add('test.Echo', echoDefinition, {
    echo(call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      const traceId = trace.getSpan(context.active())?.spanContext().traceId ?? '';
      setTimeout(() => cb(null, Buffer.from(`${name} ${traceId}`)), Number(call.request.toString() || 0));
    },
  });
  await server.listen('127.0.0.1', 0);
  server.serve();
  servers.push(server);
  return server;
}

function call(client: EchoClient, delayMs: number, opts: Partial<grpc.CallOptions> = {}): Promise<string> {
  return new Promise((resolve, reject) =>
    client.echo(Buffer.from(String(delayMs)), new grpc.Metadata(), opts, (err, res) => (err ? reject(err) : resolve(res.toString()))),
  );
}

let a: GrpcServer;
let b: GrpcServer;
before(async () => {
  a = await startReplica('a');
  b = await startReplica('b');
});
after(async () => {
  await Promise.all(servers.map((s) => s.shutdown(100)));
  await telemetry.shutdown();
});

type HealthClient = grpc.Client & {
  check(req: { service: string }, cb: (err: grpc.ServiceError | null, res: { status: string }) => void): void;
  watch(req: { service: string }): grpc.ClientReadableStream<{ status: string }>;
};

function healthClient(port: number): { client: HealthClient; check(service: string): Promise<string> } {
  const Ctor = grpc.makeGenericClientConstructor(healthService, 'Health');
  const client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as HealthClient;
  const check = (service: string) =>
    new Promise<string>((resolve, reject) => client.check({ service }, (err, res) => (err ? reject(err) : resolve(res.status))));
  return { client, check };
}

test('grpc.health.v1 is readiness ("", "readiness", each service) and liveness ("liveness"); shutdown lets a call in flight finish', async () => {
  let depsOk = true;
  const server = new GrpcServer({ logger, tracer: telemetry.tracer, ready: () => depsOk, readyPollMs: 50 });
  server.add('test.Echo', echoDefinition, {
    echo(call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      setTimeout(() => cb(null, Buffer.from('health')), Number(call.request.toString() || 0));
    },
  });
  await server.listen('127.0.0.1', 0);
  servers.push(server);
  const { client, check } = healthClient(server.port);
  // Listening but not started: alive, not ready.
  assert.equal(await check('liveness'), 'SERVING');
  for (const name of ['', 'readiness', 'test.Echo']) assert.equal(await check(name), 'NOT_SERVING', `"${name}" before serve()`);
  assert.equal(server.ready(), false);
  server.serve();
  for (const name of ['', 'readiness', 'test.Echo', 'liveness']) assert.equal(await check(name), 'SERVING', `"${name}" after serve()`);
  assert.equal(server.ready(), true);
  // A failing check shows in the very next Check (no poll to wait for), on every readiness name; liveness stays.
  const watched: string[] = [];
  const watch = client.watch({ service: '' });
  watch.on('data', (m: { status: string }) => watched.push(m.status));
  watch.on('error', () => {});
  const until = async (what: string, done: () => boolean) => {
    const deadline = Date.now() + 2_000;
    while (!done()) {
      assert.ok(Date.now() < deadline, `${what}: watch saw ${watched.join(',')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await until('watch started', () => watched.length > 0);
  depsOk = false;
  for (const name of ['', 'readiness', 'test.Echo']) assert.equal(await check(name), 'NOT_SERVING', `"${name}" with a dependency down`);
  assert.equal(await check('liveness'), 'SERVING', 'liveness does not follow dependencies');
  assert.equal(server.ready(), false);
  // Back: the poll tells the Watch stream without anyone asking.
  depsOk = true;
  await until('ready again', () => watched.length >= 3);
  assert.deepEqual(watched, ['SERVING', 'NOT_SERVING', 'SERVING'], 'a Watch hears each change once');
  watch.cancel();
  // A call in flight when shutdown starts is let finish; readiness is gone from the start, checks passing or not.
  const echo = createClient(EchoClientCtor, `127.0.0.1:${server.port}`, { deadlineMs: 5_000 });
  const running = call(echo, 300);
  await new Promise((r) => setTimeout(r, 50));
  const stopping = server.shutdown(5_000);
  assert.equal(server.ready(), false, 'not ready while draining');
  assert.match(await running, /^health/, 'the call in flight finished during the graceful shutdown');
  await stopping;
  client.close();
  echo.close();
});

test('drain() alone: NOT_SERVING at once and for good, liveness SERVING', async () => {
  const server = await startReplica('drain', () => true);
  const { client, check } = healthClient(server.port);
  assert.equal(await check(''), 'SERVING');
  server.drain();
  assert.equal(await check(''), 'NOT_SERVING');
  assert.equal(await check('test.Echo'), 'NOT_SERVING');
  assert.equal(await check('liveness'), 'SERVING');
  await new Promise((r) => setTimeout(r, 120));
  assert.equal(await check('readiness'), 'NOT_SERVING', 'the poll does not bring readiness back');
  client.close();
});

test('a call without its own deadline gets the client default: DEADLINE_EXCEEDED, not a hang', async () => {
  const client = createClient(EchoClientCtor, `127.0.0.1:${a.port}`, { deadlineMs: 150 });
  await assert.rejects(call(client, 2_000), (err: grpc.ServiceError) => err.code === grpc.status.DEADLINE_EXCEEDED);
  // A call's own deadline wins over the default.
  assert.match(await call(client, 300, { deadline: Date.now() + 3_000 }), /^a /);
  client.close();
});

test('the caller\'s trace continues on the server (traceparent in metadata)', async () => {
  const client = createClient(EchoClientCtor, `127.0.0.1:${a.port}`, { deadlineMs: 5_000 });
  const span = telemetry.tracer.startSpan('caller');
  const reply = await context.with(trace.setSpan(context.active(), span), () => call(client, 0));
  span.end();
  assert.equal(reply, `a ${span.spanContext().traceId}`);
  client.close();
});

test('round_robin: calls spread over every address of the target', async () => {
  const client = createClient(EchoClientCtor, `ipv4:127.0.0.1:${a.port},127.0.0.1:${b.port}`, { deadlineMs: 5_000 });
  const seen = new Map<string, number>();
  for (let i = 0; i < 20; i++) {
    const name = (await call(client, 0)).split(' ')[0]!;
    seen.set(name, (seen.get(name) ?? 0) + 1);
  }
  assert.deepEqual([...seen.keys()].sort(), ['a', 'b'], `calls per replica: ${JSON.stringify([...seen])}`);
  client.close();
});

test('unary: the reply, or the failure with its status; the stack-trace limit is left as it was', async () => {
  const client = createClient(EchoClientCtor, `127.0.0.1:${a.port}`, { deadlineMs: 5_000 });
  const limit = Error.stackTraceLimit;
  const echo = (delayMs: number, deadlineMs: number) => unary(client.echo.bind(client), Buffer.from(String(delayMs)), { deadlineMs });
  assert.match((await echo(0, 2_000)).toString(), /^a /);
  await assert.rejects(echo(1_000, 100), (err: grpc.ServiceError) => err.code === grpc.status.DEADLINE_EXCEEDED && /Deadline exceeded/i.test(err.details));
  assert.equal(Error.stackTraceLimit, limit);
  client.close();
});

test('the server advertises HTTP2_WINDOW_BYTES for each stream and opens the connection window as wide; a big request goes through', async () => {
  // A plain HTTP/2 client sees what any gRPC client would: the SETTINGS and the connection window the server grants.
  const session = http2.connect(`http://127.0.0.1:${a.port}`);
  try {
    const settings = await new Promise<http2.Settings>((resolve) => session.once('remoteSettings', resolve));
    assert.equal(settings.initialWindowSize, HTTP2_WINDOW_BYTES, 'per-stream window in SETTINGS');
    const deadline = Date.now() + 2000;
    while ((session.state.remoteWindowSize ?? 0) < HTTP2_WINDOW_BYTES && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.equal(session.state.remoteWindowSize, HTTP2_WINDOW_BYTES, 'connection window after the WINDOW_UPDATE');
  } finally {
    session.close();
  }
  // A 3 MiB request through a real client (whose own receive window is raised the same way).
  const client = createClient(EchoClientCtor, `127.0.0.1:${a.port}`, { deadlineMs: 5000 });
  try {
    const big = Buffer.concat([Buffer.from('0'), Buffer.alloc(3 * 1024 * 1024, 0x20)]);
    const reply = await new Promise<string>((resolve, reject) => client.echo(big, new grpc.Metadata(), {}, (err, res) => (err ? reject(err) : resolve(res.toString()))));
    assert.match(reply, /^a /);
  } finally {
    client.close();
  }
});

test('a call listed in RETRIED_METHODS that is cut by a replica going away is sent to another one; other calls are not sent twice', async () => {
  // Two replicas; once both are connected, `leaving` stops answering and is
  // shut down with calls in flight (a pod killed or cut off mid-call).
  const statusPath = `/${RETRIED_METHODS.find((m) => m.method === 'Status')!.service}/Status`;
  const definition = (path: string): grpc.ServiceDefinition => ({ call: { ...echoDefinition.echo!, path } });
  type GenericClient = grpc.Client & {
    call(req: Buffer, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Buffer) => void): void;
  };
  const scenario = async (path: string) => {
    const seen = { leaving: 0, staying: 0 };
    let hang = false;
    const replica = async (name: 'leaving' | 'staying') => {
      const server = new GrpcServer({ logger, tracer: telemetry.tracer });
      server.add('generic', definition(path), {
        call(_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
          seen[name]++;
          if (!(hang && name === 'leaving')) cb(null, Buffer.from(name));
        },
      });
      await server.listen('127.0.0.1', 0);
      server.serve();
      servers.push(server);
      return server;
    };
    const [leaving, staying] = [await replica('leaving'), await replica('staying')];
    // `leaving` is reached through a relay whose connections are cut as a
    // dead pod's are (the client sees the connection drop, not a reply).
    const sockets = new Set<net.Socket>();
    const relay = net.createServer((inbound) => {
      const outbound = net.connect(leaving.port, '127.0.0.1');
      for (const [a, b] of [[inbound, outbound], [outbound, inbound]] as const) {
        sockets.add(a);
        a.pipe(b);
        a.on('error', () => b.destroy());
        a.on('close', () => b.destroy());
      }
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const relayPort = (relay.address() as net.AddressInfo).port;
    const Ctor = grpc.makeGenericClientConstructor(definition(path), 'Generic') as unknown as new (...a: ConstructorParameters<typeof EchoClientCtor>) => GenericClient;
    const client = createClient(Ctor, `ipv4:127.0.0.1:${relayPort},127.0.0.1:${staying.port}`, { deadlineMs: 5_000 });
    const one = () => new Promise<string>((resolve) => client.call(Buffer.alloc(0), new grpc.Metadata(), {}, (err, res) => resolve(err ? `error ${err.code}` : res.toString())));
    // Until both replicas are connected, round_robin has only one to pick.
    for (let i = 0; i < 50 && seen.leaving === 0; i++) await one();
    hang = true;
    const before = seen.leaving;
    const results = Promise.all(Array.from({ length: 20 }, one));
    while (seen.leaving === before) await new Promise((r) => setTimeout(r, 5));
    relay.close();
    for (const socket of sockets) socket.destroy();
    const out = await results;
    client.close();
    await Promise.all([leaving.shutdown(100), staying.shutdown(100)]);
    return out;
  };

  const retried = await scenario(statusPath);
  assert.deepEqual(new Set(retried), new Set(['staying']), `every Status call is answered, by the replica that stayed: ${retried.join(', ')}`);
  const once = await scenario('/test.Echo/Write');
  assert.ok(once.some((r) => r.startsWith('error')), `a method not listed is not sent again: ${once.join(', ')}`);
});
