// docker-compose.yml, the other way to run Tern (one machine, no Kubernetes),
// runs every service startPlatform runs and wires them as platform.ts and the
// chart do. `docker compose config` needs Docker; this reads the file as
// Compose does (YAML with merge keys) and checks what it says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { SERVICE_NAMES, STANDARD_PORTS } from '@tern/devkit';
import { ROOT } from './render';

interface ComposeService {
  command?: string[];
  environment?: Record<string, string>;
  depends_on?: string[] | Record<string, { condition: string }>;
}
const compose = parse(fs.readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as { services: Record<string, ComposeService> };

/** The dependencies each service is given, as libs/devkit/src/platform.ts (and the chart) wire them. */
const WIRING: Record<(typeof SERVICE_NAMES)[number], string[]> = {
  policy: ['TERN_DATABASE_URL', 'TERN_DELIVERY_ADDR'],
  queue: ['TERN_DATABASE_URL', 'TERN_NATS_URL'],
  delivery: ['TERN_NATS_URL', 'TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR'],
  bounce: ['TERN_NATS_URL', 'TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR'],
  webhooks: ['TERN_DATABASE_URL', 'TERN_NATS_URL'],
  admin: ['TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR', 'TERN_WEBHOOKS_ADDR'],
  ingress: ['TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR'],
};
const DEPENDENCIES = ['TERN_DATABASE_URL', 'TERN_NATS_URL', 'TERN_QUEUE_ADDR', 'TERN_POLICY_ADDR', 'TERN_DELIVERY_ADDR', 'TERN_WEBHOOKS_ADDR'];

test('docker-compose.yml runs every service of the platform, each by its entry command on its documented gRPC port', () => {
  for (const name of SERVICE_NAMES) {
    const svc = compose.services[name];
    assert.ok(svc, `docker-compose.yml has no ${name} service`);
    assert.deepEqual(svc.command, [name], name);
    assert.equal(svc.environment?.TERN_GRPC_LISTEN, `0.0.0.0:${STANDARD_PORTS[name].grpc}`, `${name} TERN_GRPC_LISTEN`);
  }
});

test('docker-compose.yml gives each service the dependencies platform.ts gives it, at a compose service and its gRPC port', () => {
  for (const name of SERVICE_NAMES) {
    const env = compose.services[name]!.environment ?? {};
    assert.deepEqual(DEPENDENCIES.filter((d) => env[d] !== undefined), WIRING[name], name);
    for (const d of DEPENDENCIES.filter((x) => x.endsWith('_ADDR') && env[x] !== undefined)) {
      const [host, port] = env[d]!.split(':');
      const target = compose.services[host!];
      assert.ok(target, `${name} ${d}=${env[d]}: no compose service ${host}`);
      assert.equal(target.environment?.TERN_GRPC_LISTEN, `0.0.0.0:${port}`, `${name} ${d}=${env[d]} is ${host}'s gRPC port`);
    }
  }
  // The owners of tables start after the migrations.
  for (const name of ['policy', 'queue', 'webhooks']) {
    const deps = compose.services[name]!.depends_on as Record<string, { condition: string }>;
    assert.equal(deps.migrate?.condition, 'service_completed_successfully', `${name} waits for the migrations`);
  }
});
