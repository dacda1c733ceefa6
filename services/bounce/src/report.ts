// One ReportRequest -> one report enqueued through the queue: read the
// original (ReadBody, headers only when that is all the report returns),
// build it with @tern/dsn, and stream it into QueueService.Enqueue with the
// null sender and the event id as idempotency key.
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { grpc, isGrpcError } from '@tern/grpc';
import {
  BodyType,
  DsnNotify,
  EnqueueRequest,
  EnqueueHeader,
  MessageOrigin,
  ReadBodyRequest,
  type EnqueueResponse,
  type EnvelopeRecipient,
  type ReportRequest,
} from '@tern/proto';
import { buildReport, openOriginal, returnMode, whyNoReport, type DsnAction, type NoReportReason, type OriginalMessage, type Report } from '@tern/dsn';
import type { Logger, Span, Tracer } from '@tern/telemetry';
import type { QueueClient } from './clients';
import { errorMessage } from '@tern/runtime';

const CHUNK = 64 * 1024;

export interface ReportSettings {
  reportingMta: string;
  from?: string;
  postmaster?: string;
  postmasterCopy?: { address: string; actions: Set<DsnAction> };
  fullReturnLimit: number;
  /** Deadline of the ReadBody and of the Enqueue stream. */
  deadlineMs: number;
}

export interface ReportDeps {
  queue: QueueClient;
  logger: Logger;
  tracer: Tracer;
  settings: ReportSettings;
}

export type ReportOutcome =
  | { result: 'enqueued'; reportQueueId: string; size: number; returned: Report['returned']; recipients: string[] }
  | { result: 'dropped'; reason: NoReportReason };

/** A failure retrying cannot fix (the queue refused the request as invalid). */
export function isPermanent(err: unknown): boolean {
  if (!isGrpcError(err)) return false;
  return [
    grpc.status.INVALID_ARGUMENT,
    grpc.status.FAILED_PRECONDITION,
    grpc.status.OUT_OF_RANGE,
    grpc.status.UNIMPLEMENTED,
    grpc.status.PERMISSION_DENIED,
    grpc.status.UNAUTHENTICATED,
  ].includes(err.code);
}

export function describeError(err: unknown): string {
  return isGrpcError(err) ? `${grpc.status[err.code] ?? err.code}: ${err.details || err.message}` : errorMessage(err);
}

/** Message-ID of the report: stable per event, so a rebuilt report is the same message. */
function reportMessageId(eventId: string, domain: string): string {
  return `<dsn.${createHash('sha256').update(eventId).digest('hex').slice(0, 32)}@${domain}>`;
}

async function withClientSpan<T>(tracer: Tracer, name: string, attributes: Record<string, string | number | boolean>, fn: (span: Span) => Promise<T>): Promise<T> {
  return tracer.startActiveSpan(name, { kind: SpanKind.CLIENT, attributes: { 'rpc.system': 'grpc', 'rpc.service': 'tern.v1.QueueService', ...attributes } }, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: describeError(err) });
      throw err;
    } finally {
      span.end();
    }
  });
}

/**
 * Opens QueueService.ReadBody and reads the original's header section.
 * Returns undefined when the queue no longer has the message (NOT_FOUND):
 * the report is still made, saying the original is unavailable.
 */
async function readOriginal(deps: ReportDeps, req: ReportRequest, headersOnly: boolean): Promise<{ original: OriginalMessage | undefined; call?: grpc.ClientReadableStream<{ chunk: Buffer }> }> {
  const call = deps.queue.readBody(ReadBodyRequest.fromPartial({ queueId: req.queueId, headersOnly }), new grpc.Metadata(), {
    deadline: Date.now() + deps.settings.deadlineMs,
  });
  async function* chunks(): AsyncGenerator<Buffer> {
    for await (const res of call as AsyncIterable<{ chunk: Buffer }>) {
      if (res.chunk.length > 0) yield res.chunk;
    }
  }
  try {
    const original = await openOriginal(chunks());
    return { original, call };
  } catch (err) {
    if (isGrpcError(err) && err.code === grpc.status.NOT_FOUND) {
      deps.logger.warn({ event: 'report_original_missing', queue_id: req.queueId, event_id: req.eventId }, 'original message no longer in the queue; the report says so');
      return { original: undefined };
    }
    call.cancel();
    throw err;
  }
}

/** Streams `report` into QueueService.Enqueue; resolves with the queue's answer after its commit. */
async function enqueue(deps: ReportDeps, header: EnqueueHeader, report: Report): Promise<EnqueueResponse & { sent: number }> {
  let failure: Error | undefined;
  let writer!: grpc.ClientWritableStream<EnqueueRequest>;
  const result = new Promise<EnqueueResponse>((resolve, reject) => {
    writer = deps.queue.enqueue(new grpc.Metadata(), { deadline: Date.now() + deps.settings.deadlineMs }, (err, res) => {
      if (err) {
        failure = err;
        reject(err);
      } else resolve(res);
    });
  });
  result.catch(() => undefined);
  writer.on('error', () => undefined);
  const write = async (req: EnqueueRequest): Promise<void> => {
    if (failure) throw failure;
    if (!writer.write(req)) await Promise.race([once(writer, 'drain'), result]);
  };
  let sent = 0;
  try {
    await write(EnqueueRequest.fromPartial({ header }));
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      if (pendingBytes === 0) return;
      const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending);
      pending = [];
      pendingBytes = 0;
      for (let i = 0; i < buf.length; i += CHUNK) {
        const piece = buf.subarray(i, i + CHUNK);
        sent += piece.length;
        await write(EnqueueRequest.fromPartial({ chunk: piece }));
      }
    };
    for await (const chunk of report.stream()) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes >= CHUNK) await flush();
    }
    await flush();
    // The commit marker: only a stream that ends with it stores anything.
    await write(EnqueueRequest.fromPartial({ commit: { size: sent } }));
    writer.end();
    const res = await result;
    return { ...res, sent };
  } catch (err) {
    // Without the commit marker the queue stores nothing; cancel to be quick about it.
    if (!failure) writer.cancel();
    throw err;
  }
}

/**
 * Makes and enqueues the report for `req`, inside the active span. Throws on
 * a failure worth retrying (the caller naks); returns `dropped` when no
 * report may be made.
 */
export async function processReport(req: ReportRequest, deps: ReportDeps, span: Span): Promise<ReportOutcome> {
  const { settings, logger, tracer } = deps;
  const early = whyNoReport(req);
  if (early) return { result: 'dropped', reason: early };

  const mode = returnMode(req, { fullReturnLimit: settings.fullReturnLimit });
  span.setAttribute('tern.report.return', mode);
  const { original, call } = await withClientSpan(tracer, 'tern.v1.QueueService/ReadBody', { 'tern.queue_id': req.queueId, 'tern.headers_only': mode === 'headers' }, () =>
    readOriginal(deps, req, mode === 'headers'),
  );
  let report: Report;
  try {
    const late = whyNoReport(req, original);
    if (late) {
      await original?.close();
      call?.cancel();
      return { result: 'dropped', reason: late };
    }
    report = buildReport(req, {
      reportingMta: settings.reportingMta,
      from: settings.from,
      postmaster: settings.postmaster,
      original,
      ret: mode,
      messageId: reportMessageId(req.eventId, settings.reportingMta),
    });
  } catch (err) {
    call?.cancel();
    throw err;
  }

  const recipients: EnvelopeRecipient[] = [{ address: report.to, orcpt: '', notify: [DsnNotify.DSN_NOTIFY_NEVER] }];
  const copy = settings.postmasterCopy;
  if (copy && copy.actions.has(report.action) && copy.address.toLowerCase() !== report.to.toLowerCase()) {
    recipients.push({ address: copy.address, orcpt: '', notify: [DsnNotify.DSN_NOTIFY_NEVER] });
  }
  const header = EnqueueHeader.fromPartial({
    // The null sender: a report never causes another report.
    envelope: {
      sender: '',
      smtputf8: report.global,
      bodyType: report.eightBit ? BodyType.BODY_TYPE_8BITMIME : BodyType.BODY_TYPE_UNSPECIFIED,
      arrivalTime: new Date(),
    },
    recipients,
    origin: MessageOrigin.MESSAGE_ORIGIN_REPORT,
    idempotencyKey: req.eventId,
  });

  try {
    const res = await withClientSpan(tracer, 'tern.v1.QueueService/Enqueue', { 'tern.idempotency_key': req.eventId }, async (s) => {
      const r = await enqueue(deps, header, report);
      s.setAttribute('tern.queue_id', r.queueId);
      return r;
    });
    span.setAttribute('tern.report.queue_id', res.queueId);
    logger.debug({ event: 'report_enqueue_done', queue_id: req.queueId, report_queue_id: res.queueId }, 'report committed');
    return { result: 'enqueued', reportQueueId: res.queueId, size: res.sent, returned: report.returned, recipients: recipients.map((r) => r.address) };
  } finally {
    // Whatever happened, stop reading the original.
    call?.cancel();
  }
}

