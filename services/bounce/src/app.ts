// Wires the bounce service: the durable JetStream consumer `bounce` on
// tern.reports, the queue client (ReadBody, Enqueue), gRPC health, /metrics.
// Bounce owns nothing durable: a ReportRequest is acked only after the
// queue committed the report, so a crash anywhere means a redelivery, and
// the event id as idempotency key makes the second Enqueue a no-op.
import type http from 'node:http';
import { Bus, type BusMessage, type Consumption } from '@tern/bus';
import { GrpcServer } from '@tern/grpc';
import { ReportKind, ReportRequest } from '@tern/proto';
import { context, enumLabel, SpanStatusCode, trace, type Span, type Telemetry } from '@tern/telemetry';
import { queueClient, type QueueClient } from './clients';
import { SuppressionFeed } from './suppression';
import type { Config } from './config';
import { describeError, isPermanent, processReport, type ReportDeps } from './report';

export interface AppDeps {
  telemetry: Pick<Telemetry, 'logger' | 'tracer' | 'meter' | 'serveMetrics'>;
  /** Tests: serve no /metrics endpoint. */
  noMetricsServer?: boolean;
}

export interface App {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly ports: { grpc: number; metrics?: number };
  /** Ready: consuming, NATS connected, not stopping. */
  ready(): boolean;
}

/** Redelivery delay for the n-th failed delivery: doubling from min, capped at max. */
export function retryDelay(deliveryCount: number, minMs: number, maxMs: number): number {
  const exp = Math.min(Math.max(deliveryCount - 1, 0), 30);
  return Math.min(maxMs, minMs * 2 ** exp);
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
    config.TERN_POLICY_ADDR && config.TERN_BOUNCE_SUPPRESS_HARD_FAILURES ? new SuppressionFeed(config.TERN_POLICY_ADDR, 10_000, logger, meter) : undefined;
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

  let bus: Bus | undefined;
  // Readiness (/readyz and gRPC health alike): consuming, NATS connection not closed, not stopping.
  const grpcServer = new GrpcServer({ logger, tracer, ready: () => bus !== undefined && !bus.nc.isClosed() });
  let metricsServer: http.Server | undefined;
  let consumption: Consumption | undefined;
  const ports: App['ports'] = { grpc: 0 };

  async function handle(msg: BusMessage): Promise<void> {
    let req: ReportRequest;
    try {
      req = ReportRequest.decode(msg.data);
    } catch (err) {
      // Not a ReportRequest at all: no retry can help; say so loudly.
      metrics.reports.add(1, { result: 'abandoned', reason: 'undecodable' });
      context.with(msg.ctx, () =>
        logger.error({ event: 'report_undecodable', msg_id: msg.msgId, err: (err as Error).message, bytes: msg.data.length }, 'undecodable report request dropped'),
      );
      // No reason text: nats-server before 2.10.4 ignores a "+TERM <reason>" ack.
      msg.term('');
      return;
    }
    const kind = enumLabel(ReportKind[req.kind], 'REPORT_KIND_');
    // Everything done for the request runs in its message's trace (from the
    // NATS headers), inside the report's span: the Suppress call, ReadBody,
    // Enqueue, and every log line (trace_id next to queue_id).
    const span = tracer.startSpan(
      'bounce.report',
      { attributes: { 'tern.queue_id': req.queueId, 'tern.event_id': req.eventId, 'tern.report.kind': kind, 'tern.report.recipients': req.recipients.length, 'messaging.delivery_count': msg.deliveryCount } },
      msg.ctx,
    );
    try {
      await context.with(trace.setSpan(msg.ctx, span), () => report(msg, req, kind, span));
    } finally {
      span.end();
    }
  }

  /** One decoded request, in its trace: feed the suppression list, make and enqueue the report, then ack, nak or term. */
  async function report(msg: BusMessage, req: ReportRequest, kind: string, span: Span): Promise<void> {
    const started = performance.now();
    // Long reports (a big original) keep the ack timer from running out.
    const keepAlive = setInterval(() => msg.working(), 20_000);
    try {
      await suppressionFeed?.feed(req);
      const outcome = await processReport(req, reportDeps, span);
      if (outcome.result === 'dropped') {
        metrics.reports.add(1, { result: 'dropped', reason: outcome.reason, kind });
        logger.info(
          { event: 'report_dropped', queue_id: req.queueId, event_id: req.eventId, kind, reason: outcome.reason },
          outcome.reason === 'null-sender' ? 'no report: the original sender is null' : outcome.reason === 'original-is-report' ? 'no report: the original is itself a delivery report' : 'no report: no recipients',
        );
        msg.ack();
        return;
      }
      // Only now, with the report committed in the queue, may the request go.
      msg.ack();
      const seconds = (performance.now() - started) / 1000;
      metrics.reports.add(1, { result: 'enqueued', kind });
      metrics.bytes.add(outcome.size);
      metrics.seconds.record(seconds, { kind });
      logger.info(
        {
          event: 'report_enqueued',
          queue_id: req.queueId,
          event_id: req.eventId,
          report_queue_id: outcome.reportQueueId,
          kind,
          recipients: req.recipients.length,
          to: outcome.recipients,
          returned: outcome.returned,
          size: outcome.size,
          ms: Math.round(seconds * 1000),
        },
        `report for ${req.queueId} queued as ${outcome.reportQueueId}`,
      );
    } catch (err) {
      const detail = describeError(err);
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: detail });
      if (isPermanent(err) && msg.deliveryCount >= config.TERN_BOUNCE_MAX_ATTEMPTS) {
        metrics.reports.add(1, { result: 'abandoned', reason: 'refused', kind });
        logger.error(
          {
            event: 'report_abandoned',
            queue_id: req.queueId,
            event_id: req.eventId,
            kind,
            sender: req.envelope?.sender,
            recipients: req.recipients.map((r) => r.address),
            attempts: msg.deliveryCount,
            err: detail,
          },
          `report for ${req.queueId} refused by the queue ${msg.deliveryCount} times; giving up`,
        );
        msg.term('');
        return;
      }
      const delay = retryDelay(msg.deliveryCount, config.TERN_BOUNCE_RETRY_MIN_MS, config.TERN_BOUNCE_RETRY_MAX_MS);
      metrics.reports.add(1, { result: 'retry', kind });
      logger.warn(
        { event: 'report_retry', queue_id: req.queueId, event_id: req.eventId, kind, attempt: msg.deliveryCount, retry_in_ms: delay, err: detail },
        `report for ${req.queueId} failed; retrying in ${delay} ms`,
      );
      msg.nak(delay);
    } finally {
      clearInterval(keepAlive);
    }
  }

  const isReady = () => grpcServer.ready();

  return {
    get ports() {
      return ports;
    },
    ready: isReady,
    async start() {
      if (!deps.noMetricsServer) {
        metricsServer = await deps.telemetry.serveMetrics(config.TERN_METRICS_LISTEN.host, config.TERN_METRICS_LISTEN.port, isReady);
        const addr = metricsServer.address();
        if (addr && typeof addr === 'object') ports.metrics = addr.port;
      }
      ports.grpc = await grpcServer.listen(config.TERN_GRPC_LISTEN.host, config.TERN_GRPC_LISTEN.port);
      bus = await Bus.connect({ url: config.TERN_NATS_URL, name: `tern-bounce-${config.TERN_HOSTNAME}`, logger });
      await bus.ensureTopology(['bounce']);
      consumption = bus.consume('bounce', handle, { concurrency: config.TERN_BOUNCE_CONCURRENCY, retryDelayMs: config.TERN_BOUNCE_RETRY_MIN_MS });
      grpcServer.serve();
      logger.info(
        { grpc: ports.grpc, metrics: ports.metrics, nats: config.TERN_NATS_URL, queue: config.TERN_QUEUE_ADDR, reporting_mta: config.reportingMta, postmaster_copy: config.TERN_POSTMASTER_COPY },
        'bounce serving',
      );
    },
    async stop() {
      // Not ready first, then stop taking requests and let the ones in flight finish.
      grpcServer.drain();
      await consumption?.stop();
      await bus?.close();
      await grpcServer.shutdown(1_000);
      queue.close();
      suppressionFeed?.close();
      await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
    },
  };
}
