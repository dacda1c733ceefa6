// Wires the queue service from its compiled options (options.ts): Postgres
// pools, NATS (topology + the `queue` results consumer), the group-commit
// enqueuer, outbox relay, scheduler, housekeeping, gRPC server (health
// SERVING while ready) and /metrics, as parts started in order and stopped
// in reverse (libs/runtime Components; the order is in createApp).
import { BusPart } from '@tern/bus';
import { BodyCache } from './body-cache';
import { createPool } from '@tern/db';
import { GrpcServer } from '@tern/grpc';
import { QueueServiceBodyService } from '@tern/proto';
import { Components, HttpServerPart, part, together } from '@tern/runtime';
import type { Telemetry } from '@tern/telemetry';
import type { Config } from './config';
import { Scheduler } from './dispatch';
import { Enqueuer } from './enqueue';
import { QueueDepth } from './depth';
import { Housekeeping } from './housekeeping';
import { BounceRules } from './bounce-rules';
import { createQueueMetrics } from './metrics';
import { Operations } from './operations';
import { compileOptions } from './options';
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
  readonly parts: { relay: Relay; scheduler: Scheduler; results: ResultApplier | undefined; housekeeping: Housekeeping; enqueuer: Enqueuer; ops: Operations };
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const o = compileOptions(config);
  const disabled = new Set(deps.disable ?? []);
  // Two pools. The message path (enqueue, results, dispatch, relay,
  // ReadBody) runs a fixed set of prepared statements whose generic plans
  // are right for every batch; left to choose, Postgres re-planned them on
  // every call for small batches (its custom plans, costed for 4 rows
  // instead of the generic 10, always looked cheaper; docs/performance.md).
  // Operator and housekeeping queries keep plans made for
  // their parameters (a generic plan of a filtered listing can be poor).
  const pool = createPool({ url: withSearchPath(o.database.url, { genericPlans: true, lockTimeoutMs: o.database.lockTimeoutMs }), max: o.database.poolMax, applicationName: 'tern-queue', logger });
  const opsPool = createPool({ url: withSearchPath(o.database.url), max: o.database.opsPoolMax, applicationName: 'tern-queue-ops', logger });
  const routes = new RouteTable(opsPool, logger);
  const bounceRules = new BounceRules(opsPool, logger);
  const nats = new BusPart({ url: o.nats.url, name: o.nats.name, logger }, ['queue']);

  const metrics = createQueueMetrics(meter, o.topDestinations);

  // Rows a commit just wrote go straight to the relay (no reading back).
  const handoff = (rows?: StoredOutboxRow[]) => (rows?.length ? relay.handoff(rows) : relay.wake());
  const bodyCache = new BodyCache(o.bodyCacheBytes);
  meter
    .createObservableGauge('tern_queue_body_cache_bytes', { description: 'Bytes of bodies of queued messages kept in memory for their first dispatch (TERN_QUEUE_BODY_CACHE_BYTES)', unit: 'By' })
    .addCallback((r) => r.observe(bodyCache.bytes));
  const relay = new Relay({ ...o.relay, pool, bus: () => nats.bus, logger, tracer, published: metrics.published });
  const scheduler = new Scheduler({ ...o.dispatch, pool, logger, routes, bodyCache, metrics, onOutbox: handoff });
  const enqueuer = new Enqueuer({ ...o.enqueue, pool, logger, routes, bodyCache, metrics, onOutbox: handoff, onQueued: () => scheduler.wake() });
  // Made once NATS is connected (it consumes from the start).
  let results: ResultApplier | undefined;
  const housekeeping = new Housekeeping({ ...o.housekeeping, pool: opsPool, logger, metrics, classify: (reply) => bounceRules.classify(reply), onOutbox: () => relay.wake() });
  const ops = new Operations({ ...o.operations, pool: opsPool, logger, routes, onOutbox: () => relay.wake(), onDue: () => scheduler.wake() });

  // Status (accepting, against the high-water mark) and the depth gauges, from one background sample.
  const depth = new QueueDepth({ ...o.depth, pool: opsPool, logger, bus: () => (nats.open ? nats.bus : undefined) });
  depth.observe(meter);
  const status = { status: () => depth.status() };

  // Readiness (/readyz and gRPC health alike): started, not stopping, Postgres answering (the status count every 2 s).
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => depth.healthy });
  grpcServer.add('tern.v1.QueueService', QueueServiceBodyService, createQueueService({ pool, opsPool, logger, enqueuer, ops, bounceRules, status }));

  // Started in this order, stopped in reverse: not ready first; the gRPC
  // listener (in-flight Enqueues finish; open EnqueueStreams end once what
  // they read is answered, their clients send the rest elsewhere); the
  // group commit's last batch; the results consumer (in-flight results
  // committed and acked); the loops; the relay; NATS; the pools last.
  const parts = new Components(logger);
  parts.add('pools', part('pools', { drain: () => Promise.all([pool.end(), opsPool.end()]) }));
  parts.add('nats', nats);
  parts.add('routes', part('routes', { start: async () => (await routes.load(), routes.start()), drain: () => routes.stop() }));
  parts.add('bounce rules', part('bounce rules', { start: async () => (await bounceRules.load(), bounceRules.start()), drain: () => bounceRules.stop() }));
  parts.add('depth', part('depth', { start: async () => (await depth.refresh(), depth.start()), drain: () => depth.stop() }));
  if (!deps.noMetricsServer) {
    parts.add('metrics', new HttpServerPart('metrics', () => deps.telemetry.serveMetrics(o.listen.metrics.host, o.listen.metrics.port, () => grpcServer.ready())));
  }
  if (!disabled.has('relay')) parts.add('relay', relay);
  const loops = [...(disabled.has('scheduler') ? [] : [scheduler]), ...(disabled.has('housekeeping') ? [] : [part('housekeeping', { start: () => housekeeping.start(), drain: () => housekeeping.stop() })])];
  parts.add('loops', together('scheduler and housekeeping', loops));
  if (!disabled.has('results')) {
    parts.add(
      'results',
      part('results', {
        start: () => {
          results = new ResultApplier({
            ...o.results,
            pool,
            bus: nats.bus,
            logger,
            metrics,
            classify: (reply) => bounceRules.classify(reply),
            dispatch: { ...o.dispatch, routes, bodyCache },
            onOutbox: handoff,
            onSlotsFreed: () => scheduler.wake(),
          });
          results.start();
        },
        drain: () => results?.stop(),
      }),
    );
  }
  parts.add('group commit', part('group commit', { drain: () => enqueuer.batcher.drain() }));
  parts.add(
    'grpc',
    part('gRPC listener', {
      start: () => grpcServer.listen(o.listen.grpc.host, o.listen.grpc.port),
      drain: async () => {
        // shutdown() refuses new calls at once; then the open EnqueueStreams are told to end.
        const served = grpcServer.shutdown(o.listen.graceMs);
        enqueuer.closeStreams();
        await served;
      },
      close: () => grpcServer.server.forceShutdown(),
    }),
  );
  parts.add('readiness', grpcServer.readiness());

  return {
    parts: {
      relay,
      scheduler,
      get results() {
        return results;
      },
      housekeeping,
      enqueuer,
      ops,
    },
    get grpcPort() {
      return grpcServer.port;
    },
    async start() {
      await parts.start();
      logger.info({ grpc: grpcServer.port }, 'queue serving');
    },
    stop: () => parts.stop(),
  };
}

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
