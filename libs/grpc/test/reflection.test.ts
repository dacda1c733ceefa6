// GrpcServer's reflection, asked with a plain grpc-js client over the
// vendored reflection contract: it lists the services added to that server,
// health and reflection, nothing else; a service's file comes with every file
// it depends on (google/protobuf/timestamp.proto included). grpcurl against
// every service port: tests/e2e/reflection.test.ts.
import path from 'node:path';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as protoLoader from '@grpc/proto-loader';
import pino from 'pino';
import { createTelemetry } from '@tern/telemetry';
import { AdminServiceService, BinaryWriter, WireType } from '@tern/proto';
import { GrpcServer, HEALTH_SERVICE, REFLECTION_SERVICES, descriptorFiles, grpc } from '../src/index';

const telemetry = createTelemetry({ service: 'grpc-reflection-test', logLevel: 'silent' });
const logger = pino({ level: 'silent' });
const servers: GrpcServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.shutdown(100)));
  await telemetry.shutdown();
});

interface ReflectionResponse {
  listServicesResponse?: { service: { name: string }[] };
  fileDescriptorResponse?: { fileDescriptorProto: Buffer[] };
  errorResponse?: { errorCode: number; errorMessage: string };
}
type ReflectionClient = grpc.Client & { serverReflectionInfo(): grpc.ClientDuplexStream<Record<string, string>, ReflectionResponse> };

const reflectionDefinition = (version: 'v1' | 'v1alpha') => {
  const file = path.resolve(__dirname, `../../../proto/grpc/reflection/${version}/reflection.proto`);
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(file, { oneofs: true, defaults: true })) as unknown as {
    grpc: { reflection: Record<string, { ServerReflection: new (address: string, creds: grpc.ChannelCredentials) => ReflectionClient }> };
  };
  return pkg.grpc.reflection[version]!.ServerReflection;
};

/** One reflection request on its own stream. */
function ask(port: number, request: Record<string, string>, version: 'v1' | 'v1alpha' = 'v1'): Promise<ReflectionResponse> {
  const client = new (reflectionDefinition(version))(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.serverReflectionInfo();
    call.on('data', (res: ReflectionResponse) => {
      resolve(res);
      call.end();
    });
    call.on('error', reject);
    call.on('end', () => client.close());
    call.write(request);
  });
}

/** The names of the files in a reflection answer. */
function fileNames(res: ReflectionResponse): string[] {
  const set = new BinaryWriter();
  for (const proto of res.fileDescriptorResponse?.fileDescriptorProto ?? []) set.tag(1, WireType.LengthDelimited).bytes(proto);
  return descriptorFiles(set.finish()).map((f) => f.name);
}

async function server(add: (s: GrpcServer) => void): Promise<number> {
  const s = new GrpcServer({ logger, tracer: telemetry.tracer });
  add(s);
  servers.push(s);
  const port = await s.listen('127.0.0.1', 0);
  s.serve();
  return port;
}

const stubs = (definition: grpc.ServiceDefinition) => Object.fromEntries(Object.keys(definition).map((name) => [name, () => undefined]));

test('the descriptor set has every contract, its imports, and gRPC health and reflection', () => {
  const files = descriptorFiles();
  const names = files.map((f) => f.name);
  for (const name of ['google/protobuf/timestamp.proto', 'grpc/health/v1/health.proto', 'grpc/reflection/v1/reflection.proto', 'tern/v1/admin.proto']) assert.ok(names.includes(name), name);
  const services = files.flatMap((f) => f.services);
  for (const name of ['tern.v1.AdminService', 'tern.v1.PolicyService', 'tern.v1.QueueService', HEALTH_SERVICE, ...REFLECTION_SERVICES]) assert.ok(services.includes(name), name);
});

test('reflection lists what the server serves: its services, health and reflection (v1 and v1alpha)', async () => {
  const admin = await server((s) => s.add('tern.v1.AdminService', AdminServiceService, stubs(AdminServiceService)));
  const bare = await server(() => undefined);
  const list = async (port: number, version: 'v1' | 'v1alpha') =>
    (await ask(port, { listServices: '*' }, version)).listServicesResponse!.service.map((s) => s.name).sort();
  for (const version of ['v1', 'v1alpha'] as const) {
    assert.deepEqual(await list(admin, version), ['tern.v1.AdminService', HEALTH_SERVICE, ...REFLECTION_SERVICES].sort());
    assert.deepEqual(await list(bare, version), [HEALTH_SERVICE, ...REFLECTION_SERVICES].sort());
  }
  // A service the descriptor set does not describe is served but not listed.
  const echo = await server((s) =>
    s.add('test.Echo', { echo: { path: '/test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: (v: Buffer) => v, requestDeserialize: (b: Buffer) => b, responseSerialize: (v: Buffer) => v, responseDeserialize: (b: Buffer) => b } }, { echo: () => undefined }),
  );
  assert.deepEqual(await list(echo, 'v1'), [HEALTH_SERVICE, ...REFLECTION_SERVICES].sort());
});

test('the first reflection calls of a server, v1 and v1alpha at once, both answer (the index is built at the first call)', async () => {
  const port = await server((s) => s.add('tern.v1.AdminService', AdminServiceService, stubs(AdminServiceService)));
  const [v1, v1alpha] = await Promise.all([ask(port, { fileContainingSymbol: 'tern.v1.AdminService' }, 'v1'), ask(port, { fileContainingSymbol: 'tern.v1.AdminService' }, 'v1alpha')]);
  assert.equal(fileNames(v1)[0], 'tern/v1/admin.proto');
  assert.equal(fileNames(v1alpha)[0], 'tern/v1/admin.proto');
});

test('a symbol comes with every file it depends on, google/protobuf/timestamp.proto included', async () => {
  const port = await server((s) => s.add('tern.v1.AdminService', AdminServiceService, stubs(AdminServiceService)));
  const files = fileNames(await ask(port, { fileContainingSymbol: 'tern.v1.AdminService' }));
  assert.equal(files[0], 'tern/v1/admin.proto');
  assert.deepEqual(files.slice(1).sort(), ['google/protobuf/timestamp.proto', 'tern/v1/common.proto', 'tern/v1/delivery.proto', 'tern/v1/policy.proto', 'tern/v1/queue.proto', 'tern/v1/webhooks.proto']);
  assert.deepEqual(fileNames(await ask(port, { fileContainingSymbol: 'grpc.health.v1.Health' })), ['grpc/health/v1/health.proto']);
  assert.deepEqual(fileNames(await ask(port, { fileByFilename: 'google/protobuf/timestamp.proto' })), ['google/protobuf/timestamp.proto']);
  assert.equal((await ask(port, { fileContainingSymbol: 'no.Such' })).errorResponse?.errorCode, grpc.status.NOT_FOUND);
});

test('add() after listen() throws: reflection is set up at listen()', async () => {
  const s = new GrpcServer({ logger, tracer: telemetry.tracer });
  servers.push(s);
  await s.listen('127.0.0.1', 0);
  assert.throws(() => s.add('tern.v1.AdminService', AdminServiceService, stubs(AdminServiceService)), /after listen\(\)/);
});
