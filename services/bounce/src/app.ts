// Wires the bounce service: the durable JetStream consumer `bounce` on
// tern.reports, the queue client (ReadBody, Enqueue), gRPC health, /metrics.
// Bounce owns nothing durable: a ReportRequest is acked only after the
// queue committed the report, so a crash anywhere means a redelivery, and
// the event id as idempotency key makes the second Enqueue a no-op.
import { BusPart } from '@tern/bus';
import { redactUrl } from '@tern/config';
import { GrpcServer } from '@tern/grpc';
import { Components, HttpServerPart, part, type AppDeps } from '@tern/runtime';
import { queueClient, type QueueClient } from './clients';
import { SuppressionFeed } from './suppression';
import type { Config } from './config';
import type { ReportDeps } from './report';
import { reportRequestHandler, retryDelay } from './requests';

export { retryDelay };

export type { AppDeps };

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly ports: { grpc: number; metrics?: number };
  /** Ready: consuming, NATS connected, not stopping. */
  ready(): boolean;
}

export function createApp(config: Config, deps: AppDeps): App {
  const { logger, tracer, meter } = deps.telemetry;
  const queue: QueueClient = queueClient(config.TERN_QUEUE_ADDR);
  const metrics = {
    reports: meter.createCounter('tern_bounce_reports_total', {
      description: 'Report requests by outcome (enqueued, dropped, retry, abandoned) and kind/reason',
    }),
    bytes: meter.createCounter('tern_bounce_report_bytes_total', { description: 'Octets of reports enqueued' }),
    seconds: meter.createHistogram('tern_bounce_report_seconds', { description: 'Request received to report committed, seconds', unit: 's' }),
  };
  const suppressionFeed =
    config.TERN_POLICY_ADDR && config.TERN_BOUNCE_SUPPRESS_HARD_FAILURES
      ? new SuppressionFeed(
          config.TERN_POLICY_ADDR,
          10_000,
          logger,
          meter,
          config.TERN_BOUNCE_EVENTS ? { publish: (subject, data, msgId) => nats.bus.publish(subject, data, { msgId }), format: config.TERN_EVENTS_FORMAT } : undefined,
        )
      : undefined;
  const reportDeps: ReportDeps = {
    queue,
    logger,
    tracer,
    settings: {
      reportingMta: config.reportingMta,
      from: config.TERN_REPORT_FROM,
      postmaster: config.TERN_POSTMASTER,
      postmasterCopy: config.TERN_POSTMASTER_COPY ? { address: config.TERN_POSTMASTER_COPY, actions: config.postmasterCopyActions } : undefined,
      fullReturnLimit: config.TERN_REPORT_FULL_RETURN_LIMIT,
      deadlineMs: config.TERN_QUEUE_DEADLINE_MS,
    },
  };

  const nats = new BusPart({ url: config.TERN_NATS_URL, name: `tern-bounce-${config.TERN_HOSTNAME}`, logger }, ['bounce']);
  // Readiness (/readyz and gRPC health alike): consuming, NATS connection not closed, not stopping.
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => nats.open });
  const handle = reportRequestHandler({
    logger,
    tracer,
    reportDeps,
    suppressionFeed,
    metrics,
    retry: { maxAttempts: config.TERN_BOUNCE_MAX_ATTEMPTS, minMs: config.TERN_BOUNCE_RETRY_MIN_MS, maxMs: config.TERN_BOUNCE_RETRY_MAX_MS },
  });

  // Started in this order, stopped in reverse: not ready first, then stop
  // taking requests and let the ones in flight finish, close NATS, the gRPC
  // listener, and last the clients the requests in flight were using.
  const parts = new Components(logger);
  parts.add('clients', part('clients', { drain: () => (queue.close(), suppressionFeed?.close()) }));
  const metricsServer = deps.noMetricsServer
    ? undefined
    : parts.add('metrics', new HttpServerPart('metrics', () => deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, isReady)));
  parts.add('grpc', grpcServer.listener(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port, 1_000));
  parts.add('nats', nats);
  parts.add('consumer', nats.consumer('bounce', handle, { concurrency: config.TERN_BOUNCE_CONCURRENCY, retryDelayMs: config.TERN_BOUNCE_RETRY_MIN_MS }));
  parts.add('readiness', grpcServer.readiness());

  function isReady() {
    return grpcServer.ready();
  }

  return {
    get ports() {
      return { grpc: grpcServer.port, metrics: metricsServer?.port };
    },
    ready: isReady,
    async start() {
      await parts.start();
      logger.info(
        { grpc: grpcServer.port, metrics: metricsServer?.port, nats: redactUrl(config.TERN_NATS_URL), queue: config.TERN_QUEUE_ADDR, reporting_mta: config.reportingMta, postmaster_copy: config.TERN_POSTMASTER_COPY },
        'bounce serving',
      );
    },
    stop: () => parts.stop(),
  };
}
