// Test kit: a private nats-server with JetStream on a free loopback port, and
// an in-process fake QueueService (our own contract) that serves originals
// through ReadBody and records every Enqueue call.
import { grpc } from '@tern/grpc';
import {
  EnqueueResponse,
  QueueServiceService,
  ReadBodyResponse,
  type EnqueueHeader,
  type EnqueueRequest,
  type ReadBodyRequest,
} from '@tern/proto';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Ports claimed across test processes, below the ephemeral range (see devkit).
import { freePort, startNats, type NatsServerHandle } from '@tern/devkit';
export { freePort };

export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await cond()) return;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A private nats-server with JetStream (devkit's); stop kills it and removes its store. */
export class NatsServer {
  private handle: NatsServerHandle | undefined;
  url = '';

  async start(): Promise<this> {
    this.handle = await startNats();
    this.url = this.handle.url;
    return this;
  }

  async stop(): Promise<void> {
    await this.handle?.kill();
    await this.handle?.close();
  }
}

export interface EnqueueCall {
  header: EnqueueHeader | undefined;
  body: Buffer;
  committed: number | undefined;
  traceparent: string | undefined;
  /** What the fake answered: a queue id, or an error code. */
  answer: string | grpc.status | 'cancelled';
}

export interface StoredReport {
  queueId: string;
  header: EnqueueHeader;
  body: Buffer;
}

export class FakeQueue {
  /** Originals served by ReadBody, by queue id. */
  readonly messages = new Map<string, Buffer>();
  readonly readBodyCalls: ReadBodyRequest[] = [];
  readonly enqueueCalls: EnqueueCall[] = [];
  /** Committed reports; like the real queue, a repeated idempotency key stores nothing new. */
  readonly stored: StoredReport[] = [];
  /** Fail this many Enqueue calls with UNAVAILABLE before accepting. */
  failEnqueue = 0;
  /** Refuse every Enqueue as INVALID_ARGUMENT. */
  refuseEnqueue = false;
  private readonly byKey = new Map<string, string>();
  private server = new grpc.Server();
  port = 0;

  constructor() {
    const impl: grpc.UntypedServiceImplementation = {};
    for (const name of Object.keys(QueueServiceService)) {
      impl[name] = ((_call: unknown, cb?: grpc.sendUnaryData<unknown>) =>
        cb?.({ code: grpc.status.UNIMPLEMENTED, details: 'fake', metadata: new grpc.Metadata() } as grpc.ServiceError, null)) as grpc.UntypedHandleCall;
    }
    impl.readBody = ((call: grpc.ServerWritableStream<ReadBodyRequest, ReadBodyResponse>) => {
      this.readBodyCalls.push(call.request);
      const msg = this.messages.get(call.request.queueId);
      if (!msg) {
        call.emit('error', { code: grpc.status.NOT_FOUND, details: `no message ${call.request.queueId}`, metadata: new grpc.Metadata() });
        return;
      }
      let data = msg;
      if (call.request.headersOnly) {
        const end = msg.indexOf('\r\n\r\n');
        data = end >= 0 ? msg.subarray(0, end + 4) : msg;
      }
      for (let i = 0; i < data.length; i += 1000) call.write(ReadBodyResponse.fromPartial({ chunk: data.subarray(i, i + 1000) }));
      call.end();
    }) as grpc.UntypedHandleCall;
    impl.enqueue = ((call: grpc.ServerReadableStream<EnqueueRequest, EnqueueResponse>, cb: grpc.sendUnaryData<EnqueueResponse>) => {
      const rec: EnqueueCall = { header: undefined, body: Buffer.alloc(0), committed: undefined, traceparent: call.metadata.get('traceparent')[0]?.toString(), answer: 'cancelled' };
      this.enqueueCalls.push(rec);
      const parts: Buffer[] = [];
      let invalid = false;
      call.on('data', (req: EnqueueRequest) => {
        if (!rec.header) {
          if (!req.header) invalid = true;
          rec.header = req.header;
          return;
        }
        if (req.header || rec.committed !== undefined) invalid = true;
        if (req.commit) {
          rec.committed = req.commit.size;
          return;
        }
        parts.push(Buffer.from(req.chunk));
      });
      call.on('error', () => undefined);
      call.on('end', () => {
        rec.body = Buffer.concat(parts);
        const fail = (code: grpc.status, details: string) => {
          rec.answer = code;
          cb({ code, details, metadata: new grpc.Metadata() } as grpc.ServiceError, null);
        };
        if (rec.committed === undefined) return fail(grpc.status.CANCELLED, 'stream ended without commit');
        if (invalid || rec.committed !== rec.body.length || !rec.header) return fail(grpc.status.INVALID_ARGUMENT, 'malformed Enqueue stream');
        if (this.refuseEnqueue) return fail(grpc.status.INVALID_ARGUMENT, 'refused');
        if (this.failEnqueue > 0) {
          this.failEnqueue--;
          return fail(grpc.status.UNAVAILABLE, 'database down');
        }
        const key = rec.header.idempotencyKey;
        let queueId = key ? this.byKey.get(key) : undefined;
        if (!queueId) {
          queueId = `R${(this.stored.length + 1).toString(16).toUpperCase().padStart(6, '0')}`;
          this.stored.push({ queueId, header: rec.header, body: rec.body });
          if (key) this.byKey.set(key, queueId);
        }
        rec.answer = queueId;
        cb(null, EnqueueResponse.fromPartial({ queueId, size: rec.body.length }));
      });
    }) as grpc.UntypedHandleCall;
    this.server.addService(QueueServiceService, impl);
  }

  async start(): Promise<this> {
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.server.forceShutdown();
  }
}
