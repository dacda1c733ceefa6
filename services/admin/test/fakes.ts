// Test kit: in-process fake QueueService and PolicyService on loopback ports
// (our own contracts) that record every request and answer what a test sets,
// the admin app in-process in front of them, and a typed admin client.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as proto from '@tern/proto';
import { AdminServiceService, PolicyServiceService, QueueServiceService } from '@tern/proto';
import { grpc, unary } from '@tern/grpc';
import { createTelemetry } from '@tern/telemetry';
import { createApp, type App } from '../src/app';
import { loadConfig } from '../src/config';

type Definition = grpc.ServiceDefinition;
type MessageType = { fromPartial(v: unknown): unknown };

export interface Recorded {
  method: string;
  request: Record<string, unknown>;
  metadata: grpc.Metadata;
}

const typeOf = (definition: Definition, method: string, suffix: 'Request' | 'Response'): MessageType | undefined => {
  const rpc = definition[method]!.path.split('/').pop()!;
  return (proto as unknown as Record<string, MessageType>)[`${rpc}${suffix}`];
};

/** A fake owner: answers `responses[method]` (a partial, or a function of the request) or `errors[method]`. */
export class FakeOwner {
  readonly calls: Recorded[] = [];
  readonly responses: Record<string, unknown> = {};
  readonly errors: Record<string, { code: grpc.status; details: string }> = {};
  /** ReadBody answers these chunks. */
  body: Buffer[] = [];
  private server = new grpc.Server();
  port = 0;

  constructor(
    readonly name: string,
    private readonly definition: Definition,
  ) {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const [method, desc] of Object.entries(definition)) {
      if (desc.responseStream) {
        impl[method] = ((call: grpc.ServerWritableStream<Record<string, unknown>, unknown>) => {
          this.calls.push({ method, request: call.request, metadata: call.metadata });
          const error = this.errors[method];
          if (error) return call.emit('error', error);
          for (const chunk of this.body) call.write({ chunk });
          call.end();
        }) as grpc.UntypedHandleCall;
      } else if (desc.requestStream) {
        impl[method] = ((call: grpc.ServerReadableStream<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
          call.on('data', () => undefined);
          call.on('end', () => cb(null, typeOf(definition, method, 'Response')!.fromPartial({})));
        }) as grpc.UntypedHandleCall;
      } else {
        impl[method] = ((call: grpc.ServerUnaryCall<Record<string, unknown>, unknown>, cb: grpc.sendUnaryData<unknown>) => {
          this.calls.push({ method, request: call.request, metadata: call.metadata });
          const error = this.errors[method];
          if (error) return cb(Object.assign(new Error(error.details), { ...error, metadata: new grpc.Metadata() }));
          const r = this.responses[method];
          const partial = typeof r === 'function' ? (r as (req: unknown) => unknown)(call.request) : (r ?? {});
          cb(null, typeOf(definition, method, 'Response')!.fromPartial(partial));
        }) as grpc.UntypedHandleCall;
      }
    }
    this.server.addService(definition, impl);
  }

  async start(port = 0): Promise<number> {
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    return this.port;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  last(method: string): Recorded | undefined {
    return this.calls.filter((c) => c.method === method).pop();
  }

  async stop(): Promise<void> {
    this.server.forceShutdown();
  }
}

export const fakeQueue = () => new FakeOwner('queue', QueueServiceService);
export const fakePolicy = () => new FakeOwner('policy', PolicyServiceService);

/** A loopback port nothing listens on. */
export async function deadPort(): Promise<number> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const telemetry = createTelemetry({ service: 'admin-test', logLevel: process.env.TERN_TEST_LOG_LEVEL ?? 'silent' });

export const TOKENS = { alice: 'alice-token-0123456789', bob: 'bob-token-9876543210' };

export async function startAdmin(queueAddr: string, policyAddr: string, env: Record<string, string> = {}): Promise<App> {
  const config = loadConfig({
    TERN_QUEUE_ADDR: queueAddr,
    TERN_POLICY_ADDR: policyAddr,
    TERN_GRPC_LISTEN: '127.0.0.1:0',
    TERN_METRICS_LISTEN: '127.0.0.1:0',
    TERN_SHUTDOWN_GRACE_MS: '1000',
    TERN_ADMIN_FORWARD_DEADLINE_MS: '2000',
    TERN_ADMIN_TOKENS: Object.entries(TOKENS).map(([n, t]) => `${n}:${t}`).join(','),
    ...env,
  });
  const app = createApp(config, { telemetry, noMetricsServer: true });
  await app.start();
  return app;
}

type DeepPartial<T> = T extends Buffer | string | number | boolean | Date ? T : T extends Array<infer U> ? Array<DeepPartial<U>> : { [K in keyof T]?: DeepPartial<T[K]> };
type Methods = typeof AdminServiceService;

export type AdminClient = {
  [K in Exclude<keyof Methods, 'readBody'>]: Methods[K] extends {
    requestSerialize: (v: infer Req) => Buffer;
    responseDeserialize: (b: Buffer) => infer Res;
  }
    ? (req: DeepPartial<Req>, metadata?: grpc.Metadata) => Promise<Res>
    : never;
} & { raw: grpc.Client & Record<string, unknown>; close(): void };

const AdminCtor = grpc.makeGenericClientConstructor(AdminServiceService, 'tern.v1.AdminService');

/** An admin client that sends `token` (none when undefined). */
export function adminClient(port: number, token?: string, credentials = grpc.credentials.createInsecure(), host = '127.0.0.1'): AdminClient {
  const raw = new AdminCtor(`${host}:${port}`, credentials) as unknown as grpc.Client & Record<string, unknown>;
  const out: Record<string, unknown> = { raw, close: () => raw.close() };
  for (const name of Object.keys(AdminServiceService)) {
    if (name === 'readBody') continue;
    const fn = (raw[name] as (...args: unknown[]) => unknown).bind(raw);
    const type = typeOf(AdminServiceService, name, 'Request')!;
    out[name] = (req: unknown, metadata?: grpc.Metadata) => {
      const md = metadata ?? new grpc.Metadata();
      if (token !== undefined && !metadata) md.set('authorization', `Bearer ${token}`);
      return unary(fn as never, type.fromPartial(req) as never, { deadlineMs: 10_000, metadata: md });
    };
  }
  return out as AdminClient;
}

export interface Pki {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** A test CA (openssl CLI) with a server certificate for localhost/127.0.0.1 and a client certificate CN=`clientName`. */
export function makePki(clientName = 'ops-bot'): Pki {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-admin-pki-'));
  const f = (name: string) => path.join(dir, name);
  const ssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=tern-test-ca', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const issue = (name: string, cn: string, ext: string) => {
    fs.writeFileSync(f(`${name}.ext`), ext);
    ssl('req', ...ec, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${cn}`);
    ssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f(`${name}.pem`), '-days', '2', '-extfile', f(`${name}.ext`));
  };
  issue('server', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  issue('client', clientName, 'extendedKeyUsage=clientAuth\n');
  return { dir, ca: f('ca.pem'), serverCert: f('server.pem'), serverKey: f('server.key'), clientCert: f('client.pem'), clientKey: f('client.key') };
}
