// Wires the queue service: Postgres pool, NATS bus (topology + the `queue`
// results consumer), the group-commit enqueuer, outbox relay, scheduler,
// housekeeping, gRPC server (health SERVING while ready) and /metrics.
// Shutdown: not ready (health NOT_SERVING, /readyz 503), stop gRPC (in-flight Enqueues finish),
// stop loops and the consumer (in-flight results committed and acked),
// drain NATS, end the pool.
import type http from 'node:http';
import { Bus } from '@tern/bus';
import { BodyCache } from './body-cache';
import { createPool } from '@tern/db';
import { GrpcServer } from '@tern/grpc';
import { QueueServiceBodyService } from '@tern/proto';
import type { Telemetry } from '@tern/telemetry';
import type { Config } from './config';
import { destinationLimits } from './destination';
import { Scheduler } from './dispatch';
import { Enqueuer } from './enqueue';
import { QueueDepth } from './depth';
import { Housekeeping } from './housekeeping';
import type { EventSettings } from './events';
import { BounceRules } from './bounce-rules';
import { createQueueMetrics } from './metrics';
import { Operations } from './operations';
import { Relay, type StoredOutboxRow } from './outbox';
import { ResultApplier } from './results';
import { RouteTable } from './routes';
import { createQueueService } from './service';

export interface AppDeps {
  telemetry: Pick<Telemetry, 'logger' | 'tracer' | 'meter' | 'serveMetrics'>;
  /** Tests: serve no /metrics endpoint. */
  noMetricsServer?: boolean;
  /** Tests: do not run these loops (e.g. no relay, to leave rows in the outbox). */
  disable?: Array<'relay' | 'scheduler' | 'results' | 'housekeeping'>;
}

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly grpcPort: number;
  readonly parts: { relay: Relay; scheduler: Scheduler; results: ResultApplier; housekeeping: Housekeeping; enqueuer: Enqueuer; ops: Operations };
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const disabled = new Set(deps.disable ?? []);
  // Two pools. The message path (enqueue, results, dispatch, relay,
  // ReadBody) runs a fixed set of prepared statements whose generic plans
  // are right for every batch; left to choose, Postgres re-planned them on
  // every call for small batches (its custom plans, costed for 4 rows
  // instead of the generic 10, always looked cheaper; docs/performance.md).
  // Operator and housekeeping queries keep plans made for
  // their parameters (a generic plan of a filtered listing can be poor).
  const pool = createPool({ url: withSearchPath(config.TERN_DATABASE_URL, { genericPlans: true, lockTimeoutMs: config.TERN_QUEUE_LOCK_TIMEOUT_MS }), max: config.TERN_DATABASE_POOL_MAX, applicationName: 'tern-queue', logger });
  const opsPool = createPool({ url: withSearchPath(config.TERN_DATABASE_URL), max: OPS_POOL_MAX, applicationName: 'tern-queue-ops', logger });
  const routes = new RouteTable(opsPool, logger);
  const bounceRules = new BounceRules(opsPool, logger);
  const limits = destinationLimits(config);
  const backoff = { minS: config.TERN_QUEUE_BACKOFF_MIN_S, maxS: config.TERN_QUEUE_BACKOFF_MAX_S, jitter: config.TERN_QUEUE_BACKOFF_JITTER };

  const metrics = createQueueMetrics(meter, config.TERN_QUEUE_METRICS_TOP_DESTINATIONS);
  const events: EventSettings = { enabled: config.TERN_QUEUE_EVENTS, format: config.TERN_EVENTS_FORMAT };

  let bus: Bus | undefined;
  const busRef = () => {
    if (!bus) throw new Error('NATS is not connected yet');
    return bus;
  };
  // Late-bound: the bus exists after start().
  const lazyBus = new Proxy({} as Bus, { get: (_t, k) => Reflect.get(busRef(), k as keyof Bus, busRef()) });

  // Rows a commit just wrote go straight to the relay (no reading back).
  const handoff = (rows?: StoredOutboxRow[]) => (rows?.length ? relay.handoff(rows) : relay.wake());
  const bodyCache = new BodyCache(config.TERN_QUEUE_BODY_CACHE_BYTES);
  meter
    .createObservableGauge('tern_queue_body_cache_bytes', { description: 'Bytes of bodies of queued messages kept in memory for their first dispatch (TERN_QUEUE_BODY_CACHE_BYTES)', unit: 'By' })
    .addCallback((r) => r.observe(bodyCache.bytes));
  const relay = new Relay({ pool, bus: lazyBus, logger, tracer, batch: 500, pollMs: 1_000, published: metrics.published });
  const scheduler = new Scheduler({
    pool,
    logger,
    routes,
    limits,
    jobMaxRecipients: config.TERN_QUEUE_JOB_MAX_RECIPIENTS,
    batch: config.TERN_QUEUE_DISPATCH_BATCH,
    inlineBodyMax: config.TERN_QUEUE_INLINE_BODY_MAX,
    bodyCache,
    leaseS: config.TERN_QUEUE_LEASE_S,
    intervalMs: config.TERN_QUEUE_SCHEDULE_INTERVAL_MS,
    metrics,
    onOutbox: handoff,
  });
  const enqueuer = new Enqueuer({
    pool,
    logger,
    routes,
    limits,
    memoryBodyMax: config.TERN_QUEUE_MEMORY_BODY_MAX,
    maxMessageSize: config.TERN_QUEUE_MAX_MESSAGE_SIZE,
    maxRecipients: config.TERN_QUEUE_MAX_RECIPIENTS,
    batchMax: config.TERN_QUEUE_COMMIT_BATCH,
    batchDelayMs: config.TERN_QUEUE_COMMIT_DELAY_MS,
    lifetimeS: config.TERN_QUEUE_LIFETIME_S,
    leaseS: config.TERN_QUEUE_LEASE_S,
    jobMaxRecipients: config.TERN_QUEUE_JOB_MAX_RECIPIENTS,
    inlineBodyMax: config.TERN_QUEUE_INLINE_BODY_MAX,
    bodyCache,
    metrics,
    events,
    onOutbox: handoff,
    onQueued: () => scheduler.wake(),
  });
  const results = new ResultApplier({
    pool,
    bus: lazyBus,
    logger,
    limits,
    backoff,
    batchMax: config.TERN_QUEUE_RESULT_BATCH,
    batchDelayMs: config.TERN_QUEUE_RESULT_DELAY_MS,
    metrics,
    events,
    classify: (reply) => bounceRules.classify(reply),
    dispatch: {
      routes,
      jobMaxRecipients: config.TERN_QUEUE_JOB_MAX_RECIPIENTS,
      batch: config.TERN_QUEUE_DISPATCH_BATCH,
      inlineBodyMax: config.TERN_QUEUE_INLINE_BODY_MAX,
      bodyCache,
      leaseS: config.TERN_QUEUE_LEASE_S,
    },
    onOutbox: handoff,
    onSlotsFreed: () => scheduler.wake(),
  });
  const housekeeping = new Housekeeping({
    pool: opsPool,
    logger,
    batch: config.TERN_QUEUE_HOUSEKEEPING_BATCH,
    delayWarningS: config.TERN_QUEUE_DELAY_WARNING_S,
    bodyGraceS: config.TERN_QUEUE_BODY_GRACE_S,
    retentionS: config.TERN_QUEUE_RETENTION_S,
    intervalMs: 5_000,
    metrics,
    events,
    classify: (reply) => bounceRules.classify(reply),
    onOutbox: () => relay.wake(),
  });
  const ops = new Operations({ pool: opsPool, logger, routes, limits, events, onOutbox: () => relay.wake(), onDue: () => scheduler.wake() });

  // Status (accepting, against the high-water mark) and the depth gauges, from one background sample.
  const depth = new QueueDepth({
    pool: opsPool,
    logger,
    bus: () => bus,
    highWater: config.TERN_QUEUE_HIGH_WATER,
    topDestinations: config.TERN_QUEUE_METRICS_TOP_DESTINATIONS,
    minIntervalMs: 2_000,
  });
  depth.observe(meter);
  const status = { status: () => depth.status() };

  // Readiness (/readyz and gRPC health alike): started, not stopping, Postgres answering (the status count every 2 s).
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => depth.healthy });
  grpcServer.add('tern.v1.QueueService', QueueServiceBodyService, createQueueService({ pool, opsPool, logger, enqueuer, ops, bounceRules, status }));
  let metricsServer: http.Server | undefined;

  return {
    parts: { relay, scheduler, results, housekeeping, enqueuer, ops },
    get grpcPort() {
      return grpcServer.port;
    },
    async start() {
      await routes.load();
      routes.start();
      await bounceRules.load();
      bounceRules.start();
      await depth.refresh();
      depth.start();
      bus = await Bus.connect({ url: config.TERN_NATS_URL, name: `tern-queue-${config.TERN_HOSTNAME}`, logger });
      await bus.ensureTopology(['queue']);
      if (!disabled.has('relay')) relay.start();
      if (!disabled.has('scheduler')) scheduler.start();
      if (!disabled.has('results')) results.start();
      if (!disabled.has('housekeeping')) housekeeping.start();
      if (!deps.noMetricsServer) {
        metricsServer = await deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, () => grpcServer.ready());
      }
      const port = await grpcServer.listen(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port);
      grpcServer.serve();
      logger.info({ grpc: port }, 'queue serving');
    },
    async stop() {
      grpcServer.drain();
      // shutdown() refuses new calls at once; the open EnqueueStreams then end
      // as soon as what they read is answered (their clients send the rest elsewhere).
      const served = grpcServer.shutdown(config.TERN_SHUTDOWN_GRACE_MS);
      enqueuer.closeStreams();
      await served;
      await enqueuer.batcher.drain();
      await results.stop();
      await Promise.all([scheduler.stop(), housekeeping.stop()]);
      await relay.stop();
      routes.stop();
      bounceRules.stop();
      depth.stop();
      await bus?.close();
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
      await Promise.all([pool.end(), opsPool.end()]);
    },
  };
}

/** Connections of the operator and housekeeping pool. */
const OPS_POOL_MAX = 4;

/**
 * Every table lives in the queue schema: connections look there first (a
 * startup option, no extra round trip); `genericPlans` also makes prepared
 * statements keep their generic plan (see the pools in createApp), and
 * `lockTimeoutMs` bounds every wait for a row lock. Options already in the
 * URL are kept, ours come after them.
 */
export function withSearchPath(url: string, o: { genericPlans?: boolean; lockTimeoutMs?: number } = {}): string {
  const u = new URL(url);
  const given = u.searchParams.get('options') ?? '';
  const ours = [
    /search_path/.test(given) ? '' : '-c search_path=queue,public',
    o.genericPlans ? '-c plan_cache_mode=force_generic_plan' : '',
    o.lockTimeoutMs ? `-c lock_timeout=${o.lockTimeoutMs}` : '',
  ];
  const options = [given, ...ours].filter(Boolean).join(' ');
  if (options) u.searchParams.set('options', options);
  return u.toString();
}
