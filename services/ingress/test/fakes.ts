// Test kit: in-process fake PolicyService and QueueService on loopback ports
// (our own contracts) that record what they were asked and what was
// "stored", and an ingress app in-process in front of them.
import { grpc } from '@tern/grpc';
import {
  AuthenticateResponse,
  CheckMessageResponse,
  CheckResponse,
  ListMiltersResponse,
  EnqueueBatchResponse,
  EnqueueResponse,
  EnqueueStreamResponse,
  PolicyAction,
  PolicyServiceService,
  QueueServiceService,
  StatusResponse,
  type AuthenticateRequest,
  type CheckMessageHeader,
  type CheckMessageRequest,
  type CheckRequest,
  type EnqueueBatchRequest,
  type EnqueueHeader,
  type EnqueueMessage,
  type EnqueueOutcome,
  type EnqueueRequest,
  type EnqueueStreamRequest,
  type Milter,
} from '@tern/proto';
import { createTelemetry } from '@tern/telemetry';
import { createApp, type App } from '../src/app';
import { loadConfig } from '../src/config';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function unimplemented(definition: grpc.ServiceDefinition, impl: Record<string, unknown>): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [name, method] of Object.entries(definition)) {
    const streaming = method.requestStream && method.responseStream;
    // grpc-js answers UNIMPLEMENTED for a method without a handler (of any kind).
    if (!impl[name] && streaming) continue;
    out[name] = (impl[name] ??
      ((_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'fake', metadata: new grpc.Metadata() } as grpc.ServiceError, null))) as grpc.UntypedHandleCall;
  }
  return out;
}

async function bind(server: grpc.Server, port = 0): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
}

export interface PolicyCall {
  request: CheckRequest;
  traceparent: string | undefined;
}

export class FakePolicy {
  readonly checks: PolicyCall[] = [];
  readonly auths: AuthenticateRequest[] = [];
  /** Decides a Check; default ACCEPT. Throw a grpc-style error object to fail the call. */
  decide: (req: CheckRequest) => Partial<CheckResponse> | Promise<Partial<CheckResponse>> = () => ({ action: PolicyAction.POLICY_ACTION_ACCEPT });
  delayMs = 0;
  users: Record<string, string> = { alice: 'secret' };
  /** CheckMessage calls: header and the body received (complete when `ended`). */
  readonly messages: { header: CheckMessageHeader | undefined; body: Buffer; ended: boolean }[] = [];
  /** Decides a CheckMessage from the header and body; default ACCEPT. Throw a grpc-style error to fail it. */
  decideMessage: (header: CheckMessageHeader | undefined, body: Buffer) => Partial<CheckMessageResponse> | Promise<Partial<CheckMessageResponse>> = () => ({
    action: PolicyAction.POLICY_ACTION_ACCEPT,
  });
  /** ListMilters answers this list; 'unimplemented' (the default) answers UNIMPLEMENTED (no milters), 'down' UNAVAILABLE. */
  milters: Partial<Milter>[] | 'unimplemented' | 'down' = 'unimplemented';
  private server = new grpc.Server();
  port = 0;

  constructor() {
    this.server.addService(
      PolicyServiceService,
      unimplemented(PolicyServiceService, {
        check: (call: grpc.ServerUnaryCall<CheckRequest, CheckResponse>, cb: grpc.sendUnaryData<CheckResponse>) => {
          this.checks.push({ request: call.request, traceparent: call.metadata.get('traceparent')[0]?.toString() });
          void (async () => {
            if (this.delayMs) await sleep(this.delayMs);
            try {
              cb(null, CheckResponse.fromPartial(await this.decide(call.request)));
            } catch (err) {
              cb(err as grpc.ServiceError, null);
            }
          })();
        },
        checkMessage: (call: grpc.ServerReadableStream<CheckMessageRequest, CheckMessageResponse>, cb: grpc.sendUnaryData<CheckMessageResponse>) => {
          const m = { header: undefined as CheckMessageHeader | undefined, body: Buffer.alloc(0), ended: false };
          const parts: Buffer[] = [];
          this.messages.push(m);
          call.on('data', (req: CheckMessageRequest) => {
            if (req.header) m.header = req.header;
            if (req.chunk.length) parts.push(Buffer.from(req.chunk));
          });
          call.on('error', () => undefined);
          call.on('end', () => {
            m.body = Buffer.concat(parts);
            m.ended = true;
            void (async () => {
              if (this.delayMs) await sleep(this.delayMs);
              try {
                cb(null, CheckMessageResponse.fromPartial(await this.decideMessage(m.header, m.body)));
              } catch (err) {
                cb(err as grpc.ServiceError, null);
              }
            })();
          });
        },
        listMilters: (_call: unknown, cb: grpc.sendUnaryData<ListMiltersResponse>) => {
          if (this.milters === 'unimplemented' || this.milters === 'down') {
            const code = this.milters === 'down' ? grpc.status.UNAVAILABLE : grpc.status.UNIMPLEMENTED;
            cb({ code, details: 'fake', metadata: new grpc.Metadata() } as grpc.ServiceError, null);
            return;
          }
          cb(null, ListMiltersResponse.fromPartial({ milters: this.milters }));
        },
        authenticate: (call: grpc.ServerUnaryCall<AuthenticateRequest, AuthenticateResponse>, cb: grpc.sendUnaryData<AuthenticateResponse>) => {
          this.auths.push(call.request);
          const ok = this.users[call.request.username] === call.request.password;
          cb(null, AuthenticateResponse.fromPartial(ok ? { ok: true, user: call.request.username } : { ok: false, reply: { code: 535, enhanced: '5.7.8', text: 'Authentication credentials invalid' } }));
        },
      }),
    );
  }

  async start(port = 0): Promise<this> {
    this.port = await bind(this.server, port);
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  stages(): number[] {
    return this.checks.map((c) => c.request.stage);
  }

  async stop(): Promise<void> {
    this.server.forceShutdown();
  }
}

export interface StoredMessage {
  queueId: string;
  header: EnqueueHeader;
  body: Buffer;
  chunks: number;
  traceparent: string | undefined;
}

export class FakeQueue {
  readonly stored: StoredMessage[] = [];
  accepting = true;
  statusCalls = 0;
  /** Enqueue behaviour at the end of the stream. */
  mode: 'ok' | 'error' | 'hang' = 'ok';
  commitDelayMs = 0;
  /** Enqueue calls the client cancelled or that ended without commit. */
  cancelled = 0;
  /** Enqueue calls refused as malformed (commit size mismatch, a second header). */
  rejected = 0;
  /** EnqueueBatch calls received. */
  batchCalls = 0;
  /** EnqueueStream calls opened, and the batches received on them. */
  streamCalls = 0;
  streamBatches = 0;
  /** Refuses a message for its header (INVALID_ARGUMENT with this text): an Enqueue stream at its header, a batch's message as its outcome. */
  refuse: (header: EnqueueHeader) => string | undefined = () => undefined;
  private server = new grpc.Server();
  port = 0;

  /** `streams` false: a queue without EnqueueStream (UNIMPLEMENTED), as before it existed. */
  constructor(private readonly streams = true) {
    this.server.addService(
      QueueServiceService,
      unimplemented(QueueServiceService, {
        status: (_call: unknown, cb: grpc.sendUnaryData<StatusResponse>) => {
          this.statusCalls++;
          cb(null, StatusResponse.fromPartial({ accepting: this.accepting, reason: this.accepting ? '' : 'high-water mark' }));
        },
        // Whole messages (what ingress holds up to TERN_ENQUEUE_BATCH_BODY_MAX), with the same modes.
        enqueueBatch: (call: grpc.ServerUnaryCall<EnqueueBatchRequest, EnqueueBatchResponse>, cb: grpc.sendUnaryData<EnqueueBatchResponse>) => {
          void (async () => {
            this.batchCalls++;
            if (this.mode === 'hang') return;
            if (this.commitDelayMs) await sleep(this.commitDelayMs);
            if (this.mode === 'error') {
              cb({ code: grpc.status.UNAVAILABLE, details: 'database down', metadata: new grpc.Metadata() } as grpc.ServiceError, null);
              return;
            }
            cb(null, EnqueueBatchResponse.fromPartial({ outcomes: this.storeWhole(call.request.messages) }));
          })();
        },
        // The same, one batch per request on a long-lived stream ('error' mode fails the stream).
        ...(this.streams
          ? {
              enqueueStream: (call: grpc.ServerDuplexStream<EnqueueStreamRequest, EnqueueStreamResponse>) => {
                this.streamCalls++;
                call.on('data', (req: EnqueueStreamRequest) => {
                  void (async () => {
                    this.streamBatches++;
                    if (this.mode === 'hang') return;
                    if (this.commitDelayMs) await sleep(this.commitDelayMs);
                    if (this.mode === 'error') {
                      call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'database down', metadata: new grpc.Metadata() });
                      return;
                    }
                    if (!call.cancelled) call.write(EnqueueStreamResponse.fromPartial({ seq: req.seq, outcomes: this.storeWhole(req.messages) }));
                  })();
                });
                call.on('end', () => call.end());
                call.on('error', () => undefined);
              },
            }
          : {}),
        enqueue: (call: grpc.ServerReadableStream<EnqueueRequest, EnqueueResponse>, cb: grpc.sendUnaryData<EnqueueResponse>) => {
          let header: EnqueueHeader | undefined;
          const parts: Buffer[] = [];
          let chunks = 0;
          let done = false;
          let invalid = false;
          let committed: number | undefined;
          let prepend = Buffer.alloc(0);
          let hold = false;
          let received = 0;
          call.on('data', (req: EnqueueRequest) => {
            if (!header) {
              header = req.header;
              const refusal = header && this.refuse(header);
              if (refusal && !done) {
                done = true;
                this.rejected++;
                cb({ code: grpc.status.INVALID_ARGUMENT, details: refusal, metadata: new grpc.Metadata() } as grpc.ServiceError, null);
              }
              return;
            }
            // The contract: header first, then chunks, then the commit marker last.
            if (req.header || committed !== undefined) invalid = true;
            if (req.commit) {
              committed = req.commit.size;
              prepend = Buffer.from(req.commit.prepend);
              hold = req.commit.hold;
              // As the queue: the commit's key when the header has none.
              if (header && req.commit.idempotencyKey && !header.idempotencyKey) header = { ...header, idempotencyKey: req.commit.idempotencyKey };
              return;
            }
            chunks++;
            received += req.chunk.length;
            parts.push(Buffer.from(req.chunk));
          });
          call.on('cancelled', () => {
            if (!done) this.cancelled++;
            done = true;
          });
          call.on('error', () => undefined);
          call.on('end', () => {
            void (async () => {
              if (committed === undefined) {
                // Like the real queue: no commit marker, nothing stored.
                if (!done) this.cancelled++;
                done = true;
                cb({ code: grpc.status.CANCELLED, details: 'stream ended without commit', metadata: new grpc.Metadata() } as grpc.ServiceError, null);
                return;
              }
              if (done || call.cancelled) return;
              if (invalid || committed !== received) {
                done = true;
                this.rejected++;
                cb({ code: grpc.status.INVALID_ARGUMENT, details: 'malformed Enqueue stream (second header, or commit size mismatch)', metadata: new grpc.Metadata() } as grpc.ServiceError, null);
                return;
              }
              if (this.mode === 'hang') return;
              if (this.commitDelayMs) await sleep(this.commitDelayMs);
              if (done) return;
              done = true;
              if (this.mode === 'error' || !header) {
                cb({ code: grpc.status.UNAVAILABLE, details: 'database down', metadata: new grpc.Metadata() } as grpc.ServiceError, null);
                return;
              }
              const body = Buffer.concat([prepend, ...parts]);
              if (hold) header = { ...header, hold: true };
              const queueId = `Q${(this.stored.length + 1).toString(16).toUpperCase().padStart(6, '0')}`;
              this.stored.push({ queueId, header, body, chunks, traceparent: call.metadata.get('traceparent')[0]?.toString() });
              cb(null, EnqueueResponse.fromPartial({ queueId, size: body.length }));
            })();
          });
        },
      }),
    );
  }

  /** Whole messages stored as the queue would, or refused when malformed. */
  private storeWhole(messages: EnqueueMessage[]): EnqueueOutcome[] {
    return messages.map((m) => {
      if (!m.header || !m.commit || m.commit.size !== m.body.length) {
        this.rejected++;
        return { queueId: '', size: 0, errorCode: grpc.status.INVALID_ARGUMENT, error: 'malformed message (no header or commit, or commit size mismatch)' };
      }
      const refusal = this.refuse(m.header);
      if (refusal) {
        this.rejected++;
        return { queueId: '', size: 0, errorCode: grpc.status.INVALID_ARGUMENT, error: refusal };
      }
      const body = Buffer.concat([Buffer.from(m.commit.prepend), Buffer.from(m.body)]);
      const header = m.commit.hold ? { ...m.header, hold: true } : m.header;
      const queueId = `Q${(this.stored.length + 1).toString(16).toUpperCase().padStart(6, '0')}`;
      this.stored.push({ queueId, header, body, chunks: 1, traceparent: m.trace.traceparent });
      return { queueId, size: body.length, errorCode: 0, error: '' };
    });
  }

  async start(port = 0): Promise<this> {
    this.port = await bind(this.server, port);
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.server.forceShutdown();
  }
}

let telemetry: ReturnType<typeof createTelemetry> | undefined;

export function testTelemetry() {
  telemetry ??= createTelemetry({ service: 'ingress', logLevel: process.env.TERN_TEST_LOG_LEVEL ?? 'silent' });
  return telemetry;
}

export interface Harness {
  app: App;
  policy: FakePolicy;
  queue: FakeQueue;
  stop(): Promise<void>;
}

/** Fake policy + queue and an ingress app on free loopback ports. */
export async function startIngress(env: Record<string, string> = {}, setup?: (policy: FakePolicy) => void): Promise<Harness> {
  const policy = await new FakePolicy().start();
  setup?.(policy);
  const queue = await new FakeQueue().start();
  const config = loadConfig({
    TERN_SMTP_LISTEN: '127.0.0.1:0',
    TERN_SUBMISSION_LISTEN: '127.0.0.1:0',
    TERN_SUBMISSIONS_LISTEN: '127.0.0.1:0',
    TERN_GRPC_LISTEN: '127.0.0.1:0',
    TERN_METRICS_LISTEN: '127.0.0.1:0',
    TERN_HOSTNAME: 'mx.tern.test',
    TERN_POLICY_ADDR: policy.address,
    TERN_QUEUE_ADDR: queue.address,
    TERN_POLICY_DEADLINE_MS: '1000',
    TERN_SHUTDOWN_GRACE_MS: '4000',
    ...env,
  });
  const app = createApp(config, { telemetry: testTelemetry(), noMetricsServer: true });
  await app.start();
  return {
    app,
    policy,
    queue,
    async stop() {
      await app.stop();
      await policy.stop();
      await queue.stop();
    },
  };
}
