// Test kit: a fresh database per test file (dropped after), the policy app
// on a loopback port, and a typed gRPC client.
import crypto from 'node:crypto';
import { migrate, pg } from '@tern/db';
import { grpc, unary } from '@tern/grpc';
import * as proto from '@tern/proto';
import { PolicyServiceService } from '@tern/proto';
import { createTelemetry } from '@tern/telemetry';
import { createApp, type App } from '../src/app';
import { loadConfig } from '../src/config';

export const ADMIN_URL = process.env.TERN_TEST_DATABASE_URL ?? 'postgres://tern:tern@127.0.0.1:5432/postgres';

export async function createDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `tern_policy_test_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = ADMIN_URL.replace(/\/[^/]*$/, `/${name}`);
  await migrate(url, [{ schema: 'policy', dir: 'services/policy/migrations' }]);
  return {
    url,
    async drop() {
      const c = new pg.Client({ connectionString: ADMIN_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

const telemetry = createTelemetry({ service: 'policy-test', logLevel: process.env.TERN_TEST_LOG_LEVEL ?? 'silent' });

export async function startPolicy(url: string, env: Record<string, string> = {}): Promise<App> {
  const config = loadConfig({
    TERN_DATABASE_URL: url,
    TERN_GRPC_LISTEN: '127.0.0.1:0',
    TERN_METRICS_LISTEN: '127.0.0.1:0',
    TERN_SHUTDOWN_GRACE_MS: '1000',
    ...env,
  });
  const app = createApp(config, { telemetry, noMetricsServer: true });
  await app.start();
  return app;
}

type DeepPartial<T> = T extends Buffer | string | number | boolean ? T : T extends Array<infer U> ? Array<DeepPartial<U>> : { [K in keyof T]?: DeepPartial<T[K]> };
type Methods = typeof PolicyServiceService;

export type PolicyClient = {
  [K in Exclude<keyof Methods, 'checkMessage'>]: Methods[K] extends {
    requestSerialize: (v: infer Req) => Buffer;
    responseDeserialize: (b: Buffer) => infer Res;
  }
    ? (req: DeepPartial<Req>) => Promise<Res>
    : never;
} & { raw: grpc.Client & Record<string, unknown>; close(): void };

const Ctor = grpc.makeGenericClientConstructor(PolicyServiceService, 'tern.v1.PolicyService');

export function policyClient(port: number): PolicyClient {
  const raw = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & Record<string, unknown>;
  const out: Record<string, unknown> = { raw, close: () => raw.close() };
  for (const name of Object.keys(PolicyServiceService)) {
    if (name === 'checkMessage') continue;
    const fn = (raw[name] as (...args: unknown[]) => unknown).bind(raw);
    // ts-proto encoders want complete messages: fill the defaults in.
    const method = PolicyServiceService[name as keyof typeof PolicyServiceService];
    const type = (proto as unknown as Record<string, { fromPartial(v: unknown): unknown }>)[`${method.path.split('/').pop()}Request`];
    out[name] = (req: unknown) => unary(fn as never, type!.fromPartial(req) as never, { deadlineMs: 10_000 });
  }
  return out as PolicyClient;
}

export const session = (over: Record<string, unknown> = {}) => ({
  sessionId: 's1',
  clientAddress: '127.0.0.2',
  clientPort: 40000,
  clientName: 'unknown',
  heloName: 'client.example',
  listener: 1,
  authUser: '',
  serverName: 'mx.test',
  tls: undefined,
  ...over,
});

export async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}
