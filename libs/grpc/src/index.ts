// gRPC plumbing shared by every service: a server with the standard health
// service, reflection and graceful shutdown; clients with default deadlines;
// W3C trace context carried in metadata both ways (invariant I6); and the
// named errors that decide a call's status (errors.ts).
import fs from 'node:fs';
import { createRequire } from 'node:module';
import * as grpc from '@grpc/grpc-js';
import type { PackageDefinition } from '@grpc/proto-loader';
import type { ReflectionService } from '@grpc/reflection';
import { context, propagation, trace, SpanKind, SpanStatusCode, type Tracer } from '@opentelemetry/api';
import type { Logger } from '@tern/telemetry';
import { BinaryReader, WireType, descriptorSet } from '@tern/proto';
import { errorMessage, part, type Part } from '@tern/runtime';
import { statusError } from './errors';
import { Health, healthDefinition } from './health';

export { grpc };
export * from './errors';
export type ServingStatus = 'SERVING' | 'NOT_SERVING';

export interface TlsFiles {
  certFile?: string;
  keyFile?: string;
  /** With a CA, peers must present a certificate it signed (mTLS). */
  caFile?: string;
}

export function serverCredentials(tls?: TlsFiles): grpc.ServerCredentials {
  if (!tls?.certFile || !tls.keyFile) return grpc.ServerCredentials.createInsecure();
  const ca = tls.caFile ? fs.readFileSync(tls.caFile) : null;
  return grpc.ServerCredentials.createSsl(
    ca,
    [{ cert_chain: fs.readFileSync(tls.certFile), private_key: fs.readFileSync(tls.keyFile) }],
    ca !== null,
  );
}

export function channelCredentials(tls?: TlsFiles): grpc.ChannelCredentials {
  if (!tls?.caFile) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(
    fs.readFileSync(tls.caFile),
    tls.keyFile ? fs.readFileSync(tls.keyFile) : null,
    tls.certFile ? fs.readFileSync(tls.certFile) : null,
  );
}

const metadataGetter = {
  get: (md: grpc.Metadata, key: string) => {
    const v = md.get(key)[0];
    return v === undefined ? undefined : String(v);
  },
  keys: (md: grpc.Metadata) => Object.keys(md.getMap()),
};

type AnyHandler = (...args: unknown[]) => unknown;

/**
 * Wraps every handler of a service so it runs inside a server span that
 * continues the caller's trace (from `traceparent` metadata).
 */
export function traced<T extends object>(
  definition: grpc.ServiceDefinition,
  impl: T,
  tracer: Tracer,
): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [name, method] of Object.entries(definition)) {
    const handler = (impl as Record<string, AnyHandler>)[name];
    if (typeof handler !== 'function') throw new Error(`gRPC service is missing handler ${name}`);
    const spanName = method.path.slice(1);
    const wrapped = (call: { metadata: grpc.Metadata; on?: (e: string, f: () => void) => void }, callback?: grpc.sendUnaryData<unknown>) => {
      const parent = propagation.extract(context.active(), call.metadata, metadataGetter);
      const span = tracer.startSpan(spanName, { kind: SpanKind.SERVER, attributes: { 'rpc.system': 'grpc', 'rpc.method': spanName } }, parent);
      const ctx = trace.setSpan(parent, span);
      if (callback) {
        const done: grpc.sendUnaryData<unknown> = (err, value, trailer, flags) => {
          if (err) {
            span.setStatus({ code: SpanStatusCode.ERROR, message: 'message' in err ? err.message : (err.details ?? 'error') });
            span.setAttribute('rpc.grpc.status_code', (err as grpc.ServiceError).code ?? grpc.status.UNKNOWN);
          }
          span.end();
          callback(err, value, trailer, flags);
        };
        return context.with(ctx, () => handler.call(impl, call, done));
      }
      let ended = false;
      const end = () => {
        if (!ended) {
          ended = true;
          span.end();
        }
      };
      call.on?.('finish', end);
      call.on?.('error', end);
      call.on?.('close', end);
      return context.with(ctx, () => handler.call(impl, call));
    };
    out[name] = wrapped as grpc.UntypedHandleCall;
  }
  return out;
}

export interface ServerOptions {
  logger: Logger;
  tracer: Tracer;
  tls?: TlsFiles;
  /** Interceptors run before every handler (e.g. admin authentication). */
  interceptors?: grpc.ServerInterceptor[];
  /**
   * The service's readiness checks (its dependencies, e.g. "queue
   * reachable"); cheap, synchronous. Default: none. Readiness is this and
   * serve() called and drain() not (see GrpcServer.ready).
   */
  ready?: () => boolean;
  /** How often readiness is re-evaluated for health Watch streams, ms (default 1000). */
  readyPollMs?: number;
}

/**
 * grpc.health.v1 service names. The empty name, READINESS_SERVICE and every
 * service the server carries (e.g. tern.v1.QueueService) answer readiness:
 * the same value as /readyz (GrpcServer.ready). LIVENESS_SERVICE answers
 * SERVING while the process answers at all, like /healthz: it never depends
 * on a dependency, so a liveness probe does not restart a pod whose queue or
 * database is down.
 */
export const READINESS_SERVICE = 'readiness';
export const LIVENESS_SERVICE = 'liveness';

/**
 * HTTP/2 receive window of every Tern gRPC server and client, per stream
 * and per connection. Node's default is 64 KiB, and grpc-js' server has no
 * option to raise it (its client has `grpc-node.flow_control_window`): a
 * batch of four 64 KiB messages (256 KiB) then waited for four or more
 * WINDOW_UPDATEs, each a wake-up of the busy receiver and of the sender,
 * on every message's path to its 250 (docs/performance.md). The
 * window bounds what a peer may send ahead of what is read: at most this
 * much per connection.
 */
export const HTTP2_WINDOW_BYTES = 4 * 1024 * 1024;

/** The standard health service every GrpcServer carries. */
export const HEALTH_SERVICE = 'grpc.health.v1.Health';
/** The reflection services every GrpcServer carries (@grpc/reflection serves both versions; grpcurl asks v1 first). */
export const REFLECTION_SERVICES: readonly string[] = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];

/** One file of a FileDescriptorSet: its name, the services it declares (full names) and its FileDescriptorProto as encoded. */
export interface DescriptorFile {
  name: string;
  services: string[];
  proto: Uint8Array;
}

/**
 * The files of a FileDescriptorSet (default: @tern/proto's, which is every
 * file of proto/ with its imports: google/protobuf/*, and gRPC's health and
 * reflection contracts), each kept as encoded: reflection hands them out
 * byte for byte, as buf built them.
 */
export function descriptorFiles(set: Uint8Array = descriptorSet): DescriptorFile[] {
  const files: DescriptorFile[] = [];
  const each = (bytes: Uint8Array, visit: (field: number, r: BinaryReader) => boolean) => {
    const r = new BinaryReader(bytes);
    while (r.pos < r.len) {
      const [field, wire] = r.tag();
      if (wire !== WireType.LengthDelimited || !visit(field, r)) r.skip(wire, field);
    }
  };
  // FileDescriptorSet.file = 1; FileDescriptorProto.name = 1, package = 2, service = 6; ServiceDescriptorProto.name = 1.
  each(set, (field, r) => {
    if (field !== 1) return false;
    const proto = r.bytes();
    let name = '';
    let pkg = '';
    const services: string[] = [];
    each(proto, (f, fr) => {
      if (f === 1) name = fr.string();
      else if (f === 2) pkg = fr.string();
      else if (f === 6) each(fr.bytes(), (sf, sr) => sf === 1 && services.push(sr.string()) > 0);
      else return false;
      return true;
    });
    files.push({ name, services: services.map((svc) => (pkg ? `${pkg}.${svc}` : svc)), proto });
    return true;
  });
  return files;
}

let builtInFiles: DescriptorFile[] | undefined;

type ReflectionHandler = (call: unknown) => void;

/**
 * @grpc/reflection, required at the first reflection call: it loads
 * @grpc/proto-loader and protobufjs (its contracts are .proto files read at
 * run time), which nothing else in a service needs.
 */
let reflectionModule: typeof import('@grpc/reflection') | undefined;
const reflectionLib = () => (reflectionModule ??= createRequire(__filename)('@grpc/reflection') as typeof import('@grpc/reflection'));

/** What a ReflectionService would add to a server: each contract's definition and handlers. */
function reflectionParts(reflection: ReflectionService): { definition: grpc.ServiceDefinition; impl: Record<string, ReflectionHandler> }[] {
  const parts: { definition: grpc.ServiceDefinition; impl: Record<string, ReflectionHandler> }[] = [];
  reflection.addToServer({ addService: (definition: grpc.ServiceDefinition, impl: Record<string, ReflectionHandler>) => parts.push({ definition, impl }) } as unknown as grpc.Server);
  return parts;
}

/** The grpc-js server internals the window needs (GrpcServer's constructor and listen); absent if a grpc-js upgrade renamed them. */
interface ServerInternals {
  commonServerOptions?: { settings?: Record<string, number> };
  http2Servers?: Map<{ on(event: 'session', f: (s: { setLocalWindowSize(n: number): void }) => void): void }, unknown>;
}

/**
 * A gRPC server with health (grpc.health.v1) and reflection, and the one
 * place a service's readiness is decided: ready() serves /readyz and sets the
 * health status of "", READINESS_SERVICE and the added services, so the HTTP
 * and the gRPC answers cannot differ. A health Check (or List, or a new
 * Watch) evaluates readiness at once; open Watch streams hear of a change
 * within `readyPollMs`.
 *
 * Reflection (v1 and v1alpha) lists exactly what this server serves: the
 * services added (add(), before listen()), grpc.health.v1.Health and
 * reflection itself; it describes them from @tern/proto's descriptor set,
 * every imported file included, so grpcurl needs no .proto files.
 */
export class GrpcServer {
  readonly server: grpc.Server;
  private readonly health = new Health({ '': 'NOT_SERVING', [READINESS_SERVICE]: 'NOT_SERVING', [LIVENESS_SERVICE]: 'SERVING' });
  private readonly serviceNames: string[] = ['', READINESS_SERVICE];
  /** Full names of the services added (from their method paths), for reflection. */
  private readonly served = new Set<string>();
  private reflecting = false;
  private boundPort = 0;
  /** starting: until serve(); draining: from drain() (shutdown) on. */
  private phase: 'starting' | 'serving' | 'draining' = 'starting';
  private published: ServingStatus = 'NOT_SERVING';
  private pollTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ServerOptions) {
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': 8 * 1024 * 1024,
      // Clients re-resolve DNS only when a connection ends: capping the age of
      // connections lets them discover replicas added since (headless Services).
      'grpc.max_connection_age_ms': 5 * 60_000,
      'grpc.max_connection_age_grace_ms': 10 * 60_000,
      interceptors: opts.interceptors ?? [],
    });
    // Every stream a client opens starts with the window (SETTINGS_INITIAL_WINDOW_SIZE); the connection's is raised per session (listen).
    const inner = this.server as unknown as ServerInternals;
    if (inner.commonServerOptions) inner.commonServerOptions.settings = { ...inner.commonServerOptions.settings, initialWindowSize: HTTP2_WINDOW_BYTES };
    else opts.logger.warn({}, 'grpc-js internals changed: HTTP/2 receive window left at 64 KiB (see HTTP2_WINDOW_BYTES)');
    // The health service's handlers, each evaluating readiness first so
    // that what they read is current (not as old as the last poll).
    this.server.addService(healthDefinition, this.health.handlers(() => this.ready()));
  }

  add<T extends object>(fullName: string, definition: grpc.ServiceDefinition, impl: T): this {
    if (this.reflecting) throw new Error(`GrpcServer.add(${fullName}) after listen(): reflection would not list it`);
    this.server.addService(definition, traced(definition, impl, this.opts.tracer));
    for (const method of Object.values(definition)) this.served.add(method.path.split('/')[1]!);
    this.serviceNames.push(fullName);
    this.health.setStatus(fullName, this.published);
    return this;
  }

  /**
   * Reflection over the services added so far, health and reflection (once,
   * at listen()). The descriptor files go to @grpc/reflection as they are
   * (it reads only `fileDescriptorProtos` of the package definition), not
   * through proto-loader, whose rebuilt files lost google/protobuf/timestamp.proto.
   * The library (reflectionLib) and its index (every file decoded by
   * protobufjs, once per reflection version: 4.7 MB of heap a process would
   * keep) are loaded and built at the first reflection call, not at start:
   * reflection is for grpcurl and the like, seldom asked. Until then the two
   * contracts are served by definitions whose (de)serializers are the
   * library's, looked up at that first call.
   */
  private addReflection(): void {
    if (this.reflecting) return;
    this.reflecting = true;
    builtInFiles ??= descriptorFiles();
    const described = new Set(builtInFiles.flatMap((f) => f.services));
    const listed = [...this.served, HEALTH_SERVICE, ...REFLECTION_SERVICES];
    const undescribed = listed.filter((name) => !described.has(name));
    if (undescribed.length > 0) this.opts.logger.warn({ services: undescribed }, 'gRPC services missing from the descriptor set: reflection does not list them');
    const pkg = Object.fromEntries(builtInFiles.map((f) => [f.name, { fileDescriptorProtos: [f.proto] }])) as unknown as PackageDefinition;
    const services = listed.filter((name) => described.has(name));
    let built: Map<string, { method: grpc.MethodDefinition<unknown, unknown>; handler: ReflectionHandler }> | undefined;
    const real = (path: string) => {
      built ??= new Map(
        reflectionParts(new (reflectionLib().ReflectionService)(pkg, { services })).flatMap((part) =>
          Object.entries(part.definition).map(([name, method]) => [method.path, { method, handler: part.impl[name]! }] as const),
        ),
      );
      return built.get(path)!;
    };
    for (const service of REFLECTION_SERVICES) {
      const path = `/${service}/ServerReflectionInfo`;
      const definition: grpc.ServiceDefinition = {
        ServerReflectionInfo: {
          path,
          requestStream: true,
          responseStream: true,
          originalName: 'serverReflectionInfo',
          requestSerialize: (value: unknown) => real(path).method.requestSerialize(value),
          requestDeserialize: (bytes: Buffer) => real(path).method.requestDeserialize(bytes),
          responseSerialize: (value: unknown) => real(path).method.responseSerialize(value),
          responseDeserialize: (bytes: Buffer) => real(path).method.responseDeserialize(bytes),
        },
      };
      this.server.addService(definition, { ServerReflectionInfo: (call: unknown) => real(path).handler(call) } as grpc.UntypedServiceImplementation);
    }
  }

  async listen(host: string, port: number): Promise<number> {
    this.addReflection();
    this.boundPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${port}`, serverCredentials(this.opts.tls), (err, bound) =>
        err ? reject(err) : resolve(bound),
      );
    });
    const servers = (this.server as unknown as ServerInternals).http2Servers;
    if (servers) for (const h of servers.keys()) h.on('session', (session) => session.setLocalWindowSize(HTTP2_WINDOW_BYTES));
    else this.opts.logger.warn({}, 'grpc-js internals changed: HTTP/2 connection window left at 64 KiB (see HTTP2_WINDOW_BYTES)');
    return this.boundPort;
  }

  get port(): number {
    return this.boundPort;
  }

  /**
   * The service has started: from now on readiness is the `ready` option's
   * checks, re-evaluated every `readyPollMs` (and at every ready() call).
   */
  serve(): void {
    if (this.phase !== 'starting') return;
    this.phase = 'serving';
    this.ready();
    const tick = () => {
      this.pollTimer = setTimeout(() => {
        this.ready();
        if (this.phase === 'serving') tick();
      }, this.opts.readyPollMs ?? 1_000);
      this.pollTimer.unref();
    };
    tick();
  }

  /** Not ready from now on, whatever the checks say (shutdown: the load balancer stops sending work). */
  drain(): void {
    this.phase = 'draining';
    clearTimeout(this.pollTimer);
    this.pollTimer = undefined;
    this.publish('NOT_SERVING');
  }

  /**
   * Readiness, what /readyz answers: serve() called, drain() not, and the
   * `ready` checks pass. Sets the health status of "", READINESS_SERVICE and
   * the added services to match (watchers hear only of changes).
   */
  ready(): boolean {
    let ok = false;
    if (this.phase === 'serving') {
      try {
        ok = this.opts.ready?.() ?? true;
      } catch (err) {
        this.opts.logger.warn({ err: errorMessage(err) }, 'readiness check failed; not ready');
      }
    }
    const status: ServingStatus = ok ? 'SERVING' : 'NOT_SERVING';
    if (status !== this.published && this.phase === 'serving') {
      this.opts.logger[ok ? 'info' : 'warn']({ ready: ok }, ok ? 'ready (gRPC health SERVING, /readyz 200)' : 'not ready (gRPC health NOT_SERVING, /readyz 503)');
    }
    this.publish(status);
    return ok;
  }

  private publish(status: ServingStatus): void {
    if (status === this.published) return;
    this.published = status;
    for (const name of this.serviceNames) this.health.setStatus(name, status);
  }

  /**
   * The listener as a part of its service (libs/runtime Components): start
   * listens on host:port, drain is shutdown(graceMs), close cuts every call.
   */
  listener(host: string, port: number, graceMs: number): Part {
    return part('gRPC listener', {
      start: () => this.listen(host, port),
      drain: () => this.shutdown(graceMs),
      close: () => this.server.forceShutdown(),
    });
  }

  /**
   * Readiness as a part, added last: start is serve() (ready from now on),
   * drain is drain(), so not ready is the first step of every stop.
   */
  readiness(): Part {
    return part('readiness', { start: () => this.serve(), drain: () => this.drain() });
  }

  /** drain(), then let in-flight calls finish for up to `graceMs`, then cut. */
  async shutdown(graceMs: number): Promise<void> {
    this.drain();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.opts.logger.warn({ graceMs }, 'gRPC calls still running after the grace period; cancelling them');
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** Client interceptor: default deadline and trace context in metadata. */
export function clientInterceptor(defaultDeadlineMs: number): grpc.Interceptor {
  return (options, nextCall) => {
    if (options.deadline === undefined && defaultDeadlineMs > 0) {
      options.deadline = Date.now() + defaultDeadlineMs;
    }
    return new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        propagation.inject(context.active(), metadata, {
          set: (md, key, value) => md.set(key, value),
        });
        next(metadata, listener);
      },
    });
  };
}

type ClientCtor<C> = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions) => C;

export interface ClientOptions {
  /** Applied to calls that set no deadline of their own; 0 = none (streams). */
  deadlineMs: number;
  tls?: TlsFiles;
}

/**
 * Calls sent again, to another replica, when the one that had them goes
 * away (UNAVAILABLE: a pod draining in a rolling upgrade, or gone): reads,
 * and policy's verdicts (a repeated Check at most counts a client twice
 * toward a rate limit). Never Enqueue or anything that writes: a retry
 * could store a message twice.
 */
export const RETRIED_METHODS: readonly { service: string; method: string }[] = [
  { service: 'tern.v1.PolicyService', method: 'Check' },
  { service: 'tern.v1.PolicyService', method: 'Authenticate' },
  { service: 'tern.v1.PolicyService', method: 'LookupRecipient' },
  { service: 'tern.v1.QueueService', method: 'Status' },
];

export const CLIENT_SERVICE_CONFIG = {
  // Spread calls over every address the target resolves to (a headless
  // Service in Kubernetes lists each replica), not just the first.
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: RETRIED_METHODS,
      retryPolicy: { maxAttempts: 3, initialBackoff: '0.05s', maxBackoff: '0.5s', backoffMultiplier: 2, retryableStatusCodes: ['UNAVAILABLE'] },
    },
  ],
};

export function createClient<C>(Ctor: ClientCtor<C>, target: string, opts: ClientOptions): C {
  return new Ctor(target, channelCredentials(opts.tls), {
    interceptors: [clientInterceptor(opts.deadlineMs)],
    'grpc.service_config': JSON.stringify(CLIENT_SERVICE_CONFIG),
    // A replica gone (its connection failed) makes the channel resolve the
    // name again; grpc-js waits 30 s between resolutions by default, long
    // enough after one pod replacement for the next one to leave the
    // channel with no known live replica (seen in a drain: every ingress
    // pod unready at once).
    'grpc.dns_min_time_between_resolutions_ms': 1_000,
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.max_receive_message_length': 8 * 1024 * 1024,
    'grpc-node.flow_control_window': HTTP2_WINDOW_BYTES,
  });
}

/**
 * Promise form of a unary call on a ts-proto grpc-js client. grpc-js builds
 * an Error on every call only to append the caller's stack to a failure;
 * with no frames to capture it costs next to nothing (capturing them was
 * a cost on every call: one per message and per uncached policy check;
 * docs/performance.md). A failure still carries its status and details.
 */
export function unary<Req, Res>(
  fn: (req: Req, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown,
  req: Req,
  opts: { deadlineMs?: number; metadata?: grpc.Metadata } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const callOpts: Partial<grpc.CallOptions> = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
    const frames = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      fn(req, opts.metadata ?? new grpc.Metadata(), callOpts, (err, res) => (err ? reject(err) : resolve(res)));
    } finally {
      Error.stackTraceLimit = frames;
    }
  });
}

/**
 * An error for a gRPC callback: `status` with a message that names the
 * cause. Prefer a named error (errors.ts, a service's own errors.ts): this
 * is statusError, for code that has only the status.
 */
export function grpcError(code: grpc.status, message: string): grpc.ServiceError {
  return statusError(code, message);
}
