// gRPC reflection on every service port, through the real grpcurl with no
// .proto files (what docs/operating.md tells an operator to run): `list`
// gives exactly the services that port serves plus health and reflection;
// `describe` resolves each listed service and every message its methods take
// or return (google.protobuf.Timestamp included); calls work: health Check
// everywhere, QueueService/Status, PolicyService/ListDomains, and the admin
// API with the operator's bearer token (and not without it).
//
// grpcurl comes from TERN_GRPCURL or .tern/bin/grpcurl (scripts/install-grpcurl.sh,
// which scripts/test.sh runs).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Harness, SERVICE_NAMES, startPlatform, type Platform, type ServiceName } from '@tern/devkit';
import { waitFor } from '../ops/helpers';

const ROOT = path.resolve(__dirname, '../..');
const GRPCURL = process.env.TERN_GRPCURL ?? path.join(ROOT, '.tern/bin/grpcurl');

const harness = new Harness({ name: 'e2e-reflection' });
let platform: Platform;

/** What each port serves besides health and reflection. */
const OWN: Record<ServiceName, string[]> = {
  admin: ['tern.v1.AdminService'],
  ingress: [],
  policy: ['tern.v1.PolicyService'],
  queue: ['tern.v1.QueueService'],
  delivery: ['tern.v1.DeliveryService'],
  bounce: [],
  webhooks: ['tern.v1.WebhookService'],
};
const ALWAYS = ['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

before(async () => {
  if (!fs.existsSync(GRPCURL)) throw new Error(`grpcurl is not installed at ${GRPCURL}: run \`bash scripts/install-grpcurl.sh\` (or set TERN_GRPCURL), then run this test again`);
  const db = await harness.createTestDatabase();
  await harness.runMigrate(db.url, { entry: 'libs/db/dist/migrate.js' });
  const nats = await harness.startNats();
  platform = await startPlatform(harness, { databaseUrl: db.url, natsUrl: nats.url, dnsServer: '127.0.0.1:53', remoteSmtpPort: 25 });
});

after(() => harness.close());

interface Run {
  code: number;
  out: string;
  err: string;
}

function grpcurl(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(GRPCURL, ['-plaintext', '-max-time', '10', ...args], { encoding: 'utf8' }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ code, out: stdout, err: stderr });
    });
  });
}

/** grpcurl that must succeed; its stdout. */
async function ok(...args: string[]): Promise<string> {
  const r = await grpcurl(...args);
  assert.equal(r.code, 0, `grpcurl ${args.join(' ')} exited ${r.code}: ${r.err}${r.out}`);
  return r.out;
}

const addr = (name: ServiceName) => platform.services[name].grpcAddr;

for (const name of SERVICE_NAMES) {
  test(`${name}: grpcurl lists, describes and calls with reflection only`, async () => {
    const listed = (await ok(addr(name), 'list')).split('\n').filter(Boolean).sort();
    assert.deepEqual(listed, [...OWN[name], ...ALWAYS].sort(), `${name} lists exactly its own services, health and reflection`);

    // Each service, then every message its methods take or return.
    const types = new Set<string>();
    for (const service of listed) {
      const described = await ok(addr(name), 'describe', service);
      assert.match(described, new RegExp(`^${service.replaceAll('.', '\\.')} is a service:`));
      for (const m of described.matchAll(/rpc \w+ \( (?:stream )?\.([\w.]+) \) returns \( (?:stream )?\.([\w.]+) \)/g)) {
        types.add(m[1]!);
        types.add(m[2]!);
      }
    }
    assert.ok(types.size > 0, 'the methods name their message types');
    for (const type of types) assert.match(await ok(addr(name), 'describe', type), / is a message:/, type);

    // Health: the service's readiness (SERVING once it has started) and liveness.
    await waitFor(`${name} readiness SERVING`, async () => {
      const r = await grpcurl('-d', '{"service":"readiness"}', addr(name), 'grpc.health.v1.Health/Check');
      return r.code === 0 && JSON.parse(r.out).status === 'SERVING' ? true : undefined;
    });
    assert.deepEqual(JSON.parse(await ok('-d', '{"service":"liveness"}', addr(name), 'grpc.health.v1.Health/Check')), { status: 'SERVING' });
  });
}

test('admin: google.protobuf.Timestamp resolves (the message of issue 23), from the AdminService symbol alone', async () => {
  const r = await grpcurl(addr('admin'), 'describe', 'tern.v1.AdminService');
  assert.equal(r.code, 0, r.err);
  assert.doesNotMatch(r.err + r.out, /cannot resolve type/);
  assert.match(await ok(addr('admin'), 'describe', 'google.protobuf.Timestamp'), /google\.protobuf\.Timestamp is a message:/);
  assert.match(await ok(addr('admin'), 'describe', 'tern.v1.Envelope'), /\.google\.protobuf\.Timestamp arrival_time/);
});

test('queue: QueueService/Status', async () => {
  const status = JSON.parse(await ok('-d', '{}', addr('queue'), 'tern.v1.QueueService/Status')) as { accepting?: boolean };
  assert.equal(status.accepting, true);
});

test('policy: PolicyService/ListDomains', async () => {
  assert.deepEqual(JSON.parse(await ok('-d', '{}', addr('policy'), 'tern.v1.PolicyService/ListDomains')), {});
});

test('admin: calls with the operator token in `authorization: Bearer`; without it, Unauthenticated (reflection and health need none)', async () => {
  const auth = ['-H', `authorization: Bearer ${platform.adminToken}`];
  await ok(...auth, '-d', '{"domain":{"name":"reflection.test","kind":"DOMAIN_KIND_LOCAL"}}', addr('admin'), 'tern.v1.AdminService/PutDomain');
  const listed = JSON.parse(await ok(...auth, '-d', '{}', addr('admin'), 'tern.v1.AdminService/ListDomains')) as { domains?: { name: string }[] };
  assert.ok(listed.domains?.some((d) => d.name === 'reflection.test'), JSON.stringify(listed));
  await ok(...auth, '-d', '{}', addr('admin'), 'tern.v1.AdminService/QueueSummary');

  const refused = await grpcurl('-d', '{}', addr('admin'), 'tern.v1.AdminService/QueueSummary');
  assert.notEqual(refused.code, 0);
  assert.match(refused.err, /Code: Unauthenticated/);
});
