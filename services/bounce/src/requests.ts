// The handling of one ReportRequest from the `bounce` consumer: decode it,
// run in its message's trace, feed the suppression list, make and enqueue
// the report, then ack (committed or nothing owed), nak with a growing delay
// (ours or the queue's failure), or term (undecodable, or refused by the
// queue TERN_BOUNCE_MAX_ATTEMPTS times).
import type { BusMessage } from '@tern/bus';
import { ReportKind, ReportRequest } from '@tern/proto';
import { context, enumLabel, SpanStatusCode, trace, type Logger, type Meter, type Span, type Tracer } from '@tern/telemetry';
import { errorMessage } from '@tern/runtime';
import type { SuppressionFeed } from './suppression';
import { describeError, isPermanent, processReport, type ReportDeps } from './report';

/** Redelivery delay for the n-th failed delivery: doubling from min, capped at max. */
export function retryDelay(deliveryCount: number, minMs: number, maxMs: number): number {
  const exp = Math.min(Math.max(deliveryCount - 1, 0), 30);
  return Math.min(maxMs, minMs * 2 ** exp);
}

export interface RequestHandlerDeps {
  logger: Logger;
  tracer: Tracer;
  reportDeps: ReportDeps;
  suppressionFeed?: SuppressionFeed;
  metrics: { reports: ReturnType<Meter['createCounter']>; bytes: ReturnType<Meter['createCounter']>; seconds: ReturnType<Meter['createHistogram']> };
  /** TERN_BOUNCE_MAX_ATTEMPTS, TERN_BOUNCE_RETRY_MIN_MS, TERN_BOUNCE_RETRY_MAX_MS. */
  retry: { maxAttempts: number; minMs: number; maxMs: number };
}

/** The consumer's handler. */
export function reportRequestHandler(deps: RequestHandlerDeps): (msg: BusMessage) => Promise<void> {
  const { logger, tracer, metrics, suppressionFeed, reportDeps } = deps;
async function handle(msg: BusMessage): Promise<void> {
  let req: ReportRequest;
  try {
    req = ReportRequest.decode(msg.data);
  } catch (err) {
    // Not a ReportRequest at all: no retry can help; say so loudly.
    metrics.reports.add(1, { result: 'abandoned', reason: 'undecodable' });
    context.with(msg.ctx, () =>
      logger.error({ event: 'report_undecodable', msg_id: msg.msgId, err: errorMessage(err), bytes: msg.data.length }, 'undecodable report request dropped'),
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
    if (isPermanent(err) && msg.deliveryCount >= deps.retry.maxAttempts) {
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
    const delay = retryDelay(msg.deliveryCount, deps.retry.minMs, deps.retry.maxMs);
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

  return handle;
}
