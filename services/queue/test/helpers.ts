// Test kit: a fresh database per test file (dropped after), a private
// nats-server with JetStream, the queue app in-process on loopback, a typed
// client, and helpers acting as ingress (Enqueue) and delivery (jobs, results).
import crypto from 'node:crypto';
import path from 'node:path';
import { Bus, SUBJECTS } from '@tern/bus';
import { migrate, pg } from '@tern/db';
import { grpc } from '@tern/grpc';
import * as proto from '@tern/proto';
import { DeliveryJob, DeliveryResult, DeliveryResults, EnqueueRequest, QueueServiceService, ReportRequest, type EnqueueResponse } from '@tern/proto';
import { createTelemetry } from '@tern/telemetry';
import { createApp, type App, type AppDeps } from '../src/app';
import { loadConfig } from '../src/config';

export const ADMIN_URL = process.env.TERN_TEST_DATABASE_URL ?? 'postgres://tern:tern@127.0.0.1:5432/postgres';
export const MIGRATIONS = path.resolve(__dirname, '../migrations');

export async function createDatabase(): Promise<{ url: string; query: pg.Pool['query']; pool: pg.Pool; drop(): Promise<void> }> {
  const name = `tern_queue_test_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = ADMIN_URL.replace(/\/[^/]*$/, `/${name}`);
  await migrate(url, [{ schema: 'queue', dir: MIGRATIONS }]);
  const pool = new pg.Pool({ connectionString: url, max: 4, options: '-c search_path=queue,public' });
  return {
    url,
    pool,
    query: pool.query.bind(pool) as pg.Pool['query'],
    async drop() {
      await pool.end();
      const c = new pg.Client({ connectionString: ADMIN_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

// Ports claimed across test processes, below the ephemeral range (see devkit).
import { freePort, startNats as startDevkitNats } from '@tern/devkit';
export { freePort };

/** A private nats-server with JetStream (devkit's), removed with its store on stop. */
export async function startNats(): Promise<{ url: string; stop(): Promise<void> }> {
  const nats = await startDevkitNats();
  return { url: nats.url, stop: () => nats.close() };
}

export const telemetry = createTelemetry({ service: 'queue-test', logLevel: process.env.TERN_TEST_LOG_LEVEL ?? 'silent' });

export async function startQueue(dbUrl: string, natsUrl: string, env: Record<string, string> = {}, opts: Partial<AppDeps> = {}): Promise<App> {
  const config = loadConfig({
    TERN_DATABASE_URL: dbUrl,
    TERN_NATS_URL: natsUrl,
    TERN_GRPC_LISTEN: '127.0.0.1:0',
    TERN_METRICS_LISTEN: '127.0.0.1:0',
    TERN_SHUTDOWN_GRACE_MS: '2000',
    ...env,
  });
  const app = createApp(config, { telemetry, noMetricsServer: true, ...opts });
  await app.start();
  return app;
}

type DeepPartial<T> = T extends Buffer | Uint8Array | Date | string | number | boolean ? T : T extends Array<infer U> ? Array<DeepPartial<U>> : { [K in keyof T]?: DeepPartial<T[K]> };
type Methods = typeof QueueServiceService;
type UnaryNames = Exclude<keyof Methods, 'enqueue' | 'readBody' | 'enqueueStream'>;

export type QueueClient = {
  [K in UnaryNames]: Methods[K] extends { requestSerialize: (v: infer Req) => Buffer; responseDeserialize: (b: Buffer) => infer Res }
    ? (req: DeepPartial<Req>) => Promise<Res>
    : never;
} & {
  raw: grpc.Client & Record<string, unknown>;
  close(): void;
  enqueue(header: DeepPartial<proto.EnqueueHeader>, body: Buffer | Buffer[], opts?: { commit?: boolean; size?: number; chunk?: number; prepend?: Buffer; hold?: boolean; commitKey?: string }): Promise<EnqueueResponse>;
  readBody(queueId: string, headersOnly?: boolean): Promise<Buffer>;
};

const Ctor = grpc.makeGenericClientConstructor(QueueServiceService, 'tern.v1.QueueService');

export function queueClient(port: number): QueueClient {
  const raw = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & Record<string, unknown>;
  const out: Record<string, unknown> = { raw, close: () => raw.close() };
  for (const name of Object.keys(QueueServiceService)) {
    if (name === 'enqueue' || name === 'readBody' || name === 'enqueueStream') continue;
    const fn = (raw[name] as (...args: unknown[]) => unknown).bind(raw);
    const method = QueueServiceService[name as keyof typeof QueueServiceService];
    const type = (proto as unknown as Record<string, { fromPartial(v: unknown): unknown }>)[`${method.path.split('/').pop()}Request`];
    out[name] = (req: unknown) =>
      new Promise((resolve, reject) => {
        fn(type!.fromPartial(req), new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (err: Error | null, res: unknown) => (err ? reject(err) : resolve(res)));
      });
  }
  out.enqueue = (header: DeepPartial<proto.EnqueueHeader>, body: Buffer | Buffer[], opts: { commit?: boolean; size?: number; chunk?: number; prepend?: Buffer; hold?: boolean; commitKey?: string } = {}) =>
    new Promise<EnqueueResponse>((resolve, reject) => {
      const call = (raw.enqueue as (md: grpc.Metadata, o: object, cb: (e: Error | null, r: EnqueueResponse) => void) => grpc.ClientWritableStream<EnqueueRequest>).call(
        raw,
        new grpc.Metadata(),
        { deadline: Date.now() + 30_000 },
        (err, res) => (err ? reject(err) : resolve(res)),
      );
      call.write(EnqueueRequest.fromPartial({ header: header as proto.EnqueueHeader }));
      const parts = Array.isArray(body) ? body : [body];
      let size = 0;
      const step = opts.chunk ?? 64 * 1024;
      for (const p of parts) {
        for (let i = 0; i < p.length; i += step) {
          const piece = p.subarray(i, i + step);
          size += piece.length;
          call.write(EnqueueRequest.fromPartial({ chunk: piece }));
        }
      }
      if (opts.commit !== false) call.write(EnqueueRequest.fromPartial({ commit: { size: opts.size ?? size, prepend: opts.prepend, hold: opts.hold, idempotencyKey: opts.commitKey } }));
      call.end();
    });
  out.readBody = (queueId: string, headersOnly = false) =>
    new Promise<Buffer>((resolve, reject) => {
      const stream = (raw.readBody as (req: unknown) => grpc.ClientReadableStream<{ chunk: Uint8Array }>).call(raw, proto.ReadBodyRequest.fromPartial({ queueId, headersOnly }));
      const parts: Buffer[] = [];
      stream.on('data', (m: { chunk: Uint8Array }) => parts.push(Buffer.from(m.chunk)));
      stream.on('end', () => resolve(Buffer.concat(parts)));
      stream.on('error', reject);
    });
  return out as unknown as QueueClient;
}

export function header(over: Record<string, unknown> = {}, recipients: string[] = ['rcpt@dest.example']) {
  return {
    envelope: { sender: 'sender@origin.example', arrivalTime: new Date() },
    recipients: recipients.map((address) => ({ address, orcpt: `rfc822;${address}`, notify: [] })),
    origin: proto.MessageOrigin.MESSAGE_ORIGIN_SMTP,
    ...over,
  };
}

export function body(size = 200, tag = 'x'): Buffer {
  const head = `From: sender@origin.example\r\nTo: rcpt@dest.example\r\nSubject: test ${tag}\r\n\r\n`;
  const line = 'The quick brown fox jumps over the lazy dog 0123456789.\r\n';
  let text = head;
  while (text.length < size) text += line;
  return Buffer.from(text);
}

/** Acts as the delivery side: takes jobs from the `delivery` consumer, publishes results. */
export class FakeDelivery {
  private constructor(readonly bus: Bus) {}

  static async connect(natsUrl: string): Promise<FakeDelivery> {
    const bus = await Bus.connect({ url: natsUrl, name: 'fake-delivery', logger: telemetry.logger });
    await bus.ensureTopology(['delivery', 'bounce']);
    return new FakeDelivery(bus);
  }

  /** Jobs available now (waits up to `timeoutMs` for at least `min`). */
  async jobs(min = 1, timeoutMs = 5_000): Promise<DeliveryJob[]> {
    const consumer = await this.bus.js.consumers.get('TERN_JOBS', 'delivery');
    const out: DeliveryJob[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < min && Date.now() < deadline) {
      const m = await consumer.next({ expires: Math.max(1_000, Math.min(2_000, deadline - Date.now())) });
      if (!m) continue;
      out.push(DeliveryJob.decode(m.data));
      m.ack();
    }
    return out;
  }

  /** Jobs matching `pred` (others taken meanwhile are dropped). */
  async jobsWhere(pred: (j: DeliveryJob) => boolean, min = 1, timeoutMs = 5_000): Promise<DeliveryJob[]> {
    const out: DeliveryJob[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < min && Date.now() < deadline) out.push(...(await this.jobs(1, Math.max(1, deadline - Date.now()))).filter(pred));
    return out;
  }

  async reports(min = 1, timeoutMs = 5_000): Promise<ReportRequest[]> {
    const consumer = await this.bus.js.consumers.get('TERN_REPORTS', 'bounce');
    const out: ReportRequest[] = [];
    const deadline = Date.now() + timeoutMs;
    while (out.length < min && Date.now() < deadline) {
      const m = await consumer.next({ expires: Math.max(1_000, Math.min(2_000, deadline - Date.now())) });
      if (!m) continue;
      out.push(ReportRequest.decode(m.data));
      m.ack();
    }
    return out;
  }

  async result(job: DeliveryJob, outcome: proto.AttemptOutcome, reply: { code: number; enhanced?: string; text?: string }, over: Partial<DeliveryResult> = {}, msgId?: string) {
    const res = this.resultOf(job, outcome, reply, over);
    await this.bus.publish(SUBJECTS.results, DeliveryResult.encode(res).finish(), { msgId: msgId ?? `${job.jobId}.r.${crypto.randomBytes(4).toString('hex')}` });
    return res;
  }

  /** The results of several jobs in one message, as delivery publishes them. */
  async resultBatch(results: DeliveryResult[]) {
    await this.bus.publish(SUBJECTS.resultsBatch, DeliveryResults.encode({ results }).finish(), { msgId: `batch.${crypto.randomBytes(6).toString('hex')}` });
  }

  resultOf(job: DeliveryJob, outcome: proto.AttemptOutcome, reply: { code: number; enhanced?: string; text?: string }, over: Partial<DeliveryResult> = {}): DeliveryResult {
    return DeliveryResult.fromPartial({
      jobId: job.jobId,
      queueId: job.queueId,
      destination: job.destination,
      recipients: job.recipients.map((r) => ({ recipientId: r.recipientId, outcome, reply: { enhanced: '', text: '', ...reply }, remoteDsn: true })),
      remoteHost: 'mx.dest.example',
      remoteIp: '127.0.0.9',
      startedAt: new Date(),
      durationMs: 12,
      worker: 'fake-1',
      ...over,
    });
  }

  close() {
    return this.bus.close();
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 8_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > deadline) return v;
    await sleep(50);
  }
}
