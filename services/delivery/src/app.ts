// Wires the delivery service: the shared durable JetStream consumer
// `delivery` on tern.jobs.> (one job's handling: jobs.ts), the next-hop
// resolver, the SMTP connection pool, the queue client (ReadBody), gRPC
// (VerifyRecipient, health) and /metrics, each a part started in order and
// stopped in reverse (libs/runtime Components). Delivery owns nothing
// durable: a job is acked only after its result is published, so a crash
// means the job is redelivered (or its lease brings it back).
import { BusPart } from '@tern/bus';
import { createClient, GrpcServer } from '@tern/grpc';
import { DeliveryServiceService, PolicyServiceClient, QueueServiceClient } from '@tern/proto';
import { Components, HttpServerPart, part, type AppDeps } from '@tern/runtime';
import type { Config } from './config';
import { DaneResolver } from './dane';
import { DkimRefresh } from './dkim-refresh';
import { jobHandler } from './jobs';
import { MtaStsPolicies } from './mta-sts';
import { NextHopResolver } from './nexthop';
import { compileOptions } from './options';
import { ConnectionPool } from './pool';
import { ResultPublisher } from './results';
import { RouteCache, Verifier } from './verify';
import type { WorkerDeps } from './worker';

export type { AppDeps };

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const o = compileOptions(config);
  const queue = createClient(QueueServiceClient, o.queueAddr, { deadlineMs: 0 });
  const pool = new ConnectionPool(o.pool);
  const resolver = new NextHopResolver(o.resolver);
  const worker: WorkerDeps = { ...o.worker, logger, resolver, pool, queue };
  // The admin API's DKIM keys, from policy, next to (and before) the files' keys.
  const policy = o.policyAddr ? createClient(PolicyServiceClient, o.policyAddr, { deadlineMs: 0 }) : undefined;
  const dkimRefresh = policy ? new DkimRefresh({ policy, ...o.dkimRefresh, signer: worker.dkim!, logger }) : undefined;
  if (o.dane) worker.dane = new DaneResolver(o.dane);
  if (o.mtaSts) worker.mtaSts = new MtaStsPolicies({ resolver, logger, ca: worker.tlsCa, ...o.mtaSts });
  const metrics = {
    recipients: meter.createCounter('tern_delivery_recipients_total', { description: 'Recipient results by outcome' }),
    seconds: meter.createHistogram('tern_delivery_job_seconds', { description: 'Job taken to result published, seconds', unit: 's' }),
  };
  // The pool counts these since start: counters, read when scraped.
  meter
    .createObservableCounter('tern_delivery_connections_opened_total', { description: 'SMTP connections opened (reused ones are not counted)' })
    .addCallback((obs) => obs.observe(pool.opened));
  meter
    .createObservableCounter('tern_delivery_connections_reused_total', { description: 'Transactions that took an idle SMTP/LMTP session instead of a new connection' })
    .addCallback((obs) => obs.observe(pool.reused));
  meter
    .createObservableCounter('tern_delivery_session_waits_total', { description: 'Jobs that waited for a session because their peer had TERN_SMTP_MAX_SESSIONS_PER_PEER open' })
    .addCallback((obs) => obs.observe(pool.waited));

  // Recipient verification for policy (relay domains with callout checks), on the gRPC port.
  const routes = new RouteCache(queue, o.verify.routesRefreshMs, logger);
  const verifier = new Verifier(worker, routes, o.verify, meter);

  const nats = new BusPart({ ...o.nats, logger }, ['delivery']);
  // Readiness (/readyz and gRPC health alike): consuming, NATS connection not closed, DKIM keys loaded, not stopping.
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => nats.open && (dkimRefresh?.loaded ?? true) });
  grpcServer.add('tern.v1.DeliveryService', DeliveryServiceService, verifier.service());
  let results: ResultPublisher | undefined;
  const handle = jobHandler({ logger, tracer, worker, metrics, publish: (result) => results!.publish(result) });

  // Started in this order, stopped in reverse: not ready first; the route
  // refresh; the consumer stops taking jobs and lets those in hand finish
  // (the runtime's grace timer bounds it; jobs fetched but not started are
  // handed back); the DKIM refresh; the results gathered are published;
  // then the SMTP sessions, NATS, the gRPC listener, /metrics and last the
  // clients the jobs were using.
  const parts = new Components(logger);
  parts.add('clients', part('clients', { drain: () => (queue.close(), policy?.close()) }));
  parts.add('metrics', new HttpServerPart('metrics', () => deps.telemetry.serveMetrics(o.listen.metrics.host, o.listen.metrics.port, () => grpcServer.ready())));
  parts.add('grpc', grpcServer.listener(o.listen.grpc.host, o.listen.grpc.port, 2_000));
  parts.add('nats', nats);
  parts.add('pool', part('SMTP pool', { drain: () => pool.close() }));
  parts.add(
    'results',
    part('results', {
      start: () => {
        results = new ResultPublisher(nats.bus, o.results);
      },
      drain: () => results?.drain(),
    }),
  );
  // No job before the DKIM keys are in: a message must not leave unsigned because policy was slow.
  if (dkimRefresh) parts.add('dkim refresh', part('DKIM refresh', { start: () => dkimRefresh.start(), drain: () => dkimRefresh.stop() }));
  parts.add('consumer', nats.consumer('delivery', handle, o.consumer));
  parts.add('routes', part('route refresh', { start: () => routes.start(), drain: () => routes.stop() }));
  parts.add('readiness', grpcServer.readiness());

  return {
    start: () => parts.start(),
    stop: () => parts.stop(),
  };
}
