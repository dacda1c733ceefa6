// The submission of one message to the queue, from the 354 to the reply to
// its end of data. A message that stays within the batch limit is held whole
// and, at its end, handed to the EnqueueBatcher (enqueue-batch.ts); one that
// outgrows it (every message, with batching off) opens a QueueService.Enqueue
// stream: header, what was held, then body chunks as the client sends them.
// Ingress adds Received (and, on submission listeners, a missing Message-ID
// and Date) on top. Where the listener has end-of-data checks the body, as
// sent, is teed to policy's CheckMessage and its verdict awaited before the
// commit. Where milters apply to the listener the message is spooled instead
// (spool.ts), the milter chain runs over it (milters.ts), and what comes out
// goes to the queue. Only the commit marker makes the queue store the
// message, and only its queue id gives the 250 (I1); any failure before that
// is a 4xx.
import crypto from 'node:crypto';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { grpc, isGrpcError } from '@tern/grpc';
import { EnqueueCommit, EnqueueHeader, EnqueueRequest, MessageOrigin, type EnqueueMessageParts, type EnqueueResponse } from '@tern/proto';
import { isPositive, SmtpDataError, type Envelope, type Reply, type SmtpSession } from '@tern/smtp';
import { SpanKind } from '@opentelemetry/api';
import { context, injectContext, SpanStatusCode, trace, type Logger, type Tracer } from '@tern/telemetry';
import type { PolicyClient, QueueClient } from './clients';
import type { EnqueueBatcher } from './enqueue-batch';
import { partKeys, sessionInfo, splitBySender, storedRecipients, toProtoEnvelope } from './envelope';
import { rewriteHeaderSection } from './header-rewrite';
import { HeaderScanner, messageId, receivedHeader, rfc5322Date } from './headers';
import { headerLines, MessageCheck, type MessageCheckSettings } from './messagecheck';
import type { IngressMetrics } from './metrics';
import { runMilterChain, type MilterDef, type MilterDirectory, type MilterMetrics } from './milters';
import { decisionReply } from './policy-check';
import type { QueueStatusCache } from './queue-gate';
import { IngressReplies } from './replies';
import { endTx, st } from './session-state';
import { Spool } from './spool';
import { serializeHeaders } from '@tern/milter';
import { errorMessage } from '@tern/runtime';

/** The batch path's body field: the pieces travel in bodyParts. */
const EMPTY_BODY = Buffer.alloc(0);

/** Body chunk size in Enqueue requests. */
const CHUNK = 64 * 1024;

export interface MessageSubmissionDeps {
  hostname: string;
  logger: Logger;
  tracer: Tracer;
  policy: PolicyClient;
  /** Deadline of a policy call (RewriteAddresses at the end of the header section). */
  policyDeadlineMs: number;
  queue: QueueClient;
  queueStatus: QueueStatusCache;
  metrics: IngressMetrics;
  commitTimeoutMs: number;
  /** End-of-data checks (policy CheckMessage); none when absent. */
  messageChecks?: MessageCheckSettings;
  /** Messages whose stored form is at most `bodyMax` bytes go whole through EnqueueBatch; none when absent. */
  enqueueBatch?: { batcher: EnqueueBatcher; bodyMax: number };
  /** Content filters at the end of data; none when absent. */
  milters?: MilterSettings;
}

export interface MilterSettings {
  directory: MilterDirectory;
  metrics: MilterMetrics;
  /** Where a message bigger than `spoolMemory` waits for the milters (TERN_MILTER_SPOOL_DIR). */
  spoolDir: string;
  spoolMemory: number;
  /** Largest replacement body a milter may give (TERN_MAX_MESSAGE_SIZE). */
  maxBody: number;
}

/**
 * Abandons an Enqueue. The queue stores a message only after the explicit
 * `commit` request, which an aborted submission never sends, so a cancel
 * (which grpc-js may show the server as a plain end of stream) stores nothing.
 */
function abortEnqueue(writer: grpc.ClientWritableStream<EnqueueRequest>): void {
  writer.cancel();
}

/**
 * One message: made at the 354 (it opens the end-of-data check, if any),
 * then `submit` reads the body and gives the reply to its end of data.
 */
export class MessageSubmission {
  private readonly started: number;
  private readonly arrival: Date;
  private hold: boolean;
  private readonly check: MessageCheck | undefined;
  private readonly sizeLimit: number;
  private readonly header: EnqueueHeader;
  private readonly batchMax: number;
  /** The milter chain of this listener: the message waits in `spool` until it answered. */
  private readonly milters: readonly MilterDef[] | undefined;
  /** The chain was never read from policy: nothing is stored (451). */
  private readonly miltersUnknown: boolean;
  private spool: Spool | undefined;
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** Enqueue streams not answered yet: cancelled when the submission fails. */
  private readonly unanswered = new Set<grpc.ClientWritableStream<EnqueueRequest>>();
  private failure: Error | undefined;
  private writer: grpc.ClientWritableStream<EnqueueRequest> | undefined;
  private result: Promise<EnqueueResponse> | undefined;
  /**
   * Recipients forwarded with an SRS sender (address key -> SRS address);
   * when others are not, the message is stored as more than one (envelope.ts
   * splitBySender): `extra` holds the Enqueue streams of the others.
   */
  private readonly forwarded: Map<string, string>;
  private extra: Array<{ writer: grpc.ClientWritableStream<EnqueueRequest>; result: Promise<EnqueueResponse> }> = [];
  /** The headers the streams were opened with (one per part). */
  private parts: EnqueueHeader[] = [];
  /**
   * Only where the message may be split: what makes its parts the same when
   * the client sends it again (partKeys).
   */
  private readonly sentCopy: SentCopy | undefined;
  /** Octets given to the queue (with the lines ingress adds). */
  private sent = 0;
  /** Octets the client sent. */
  private size = 0;

  constructor(
    private readonly deps: MessageSubmissionDeps,
    private readonly s: SmtpSession,
    private readonly envelope: Envelope,
    private readonly submission: boolean,
  ) {
    this.started = performance.now();
    this.arrival = new Date();
    this.hold = Boolean(st(s).hold || envelope.state.hold);
    // The body as the client sent it also goes to policy's end-of-data
    // checks, unless policy said at RCPT that for every recipient they would
    // only compare the size (a trusted network, say): then ingress compares
    // it with the smallest limit itself and spares streaming the body twice.
    const checked = deps.messageChecks?.listeners.has(s.listener) ?? false;
    const sizeOnly = checked && envelope.rcptTo.every((r) => r.state?.sizeOnly === true);
    this.check =
      checked && !sizeOnly
        ? new MessageCheck(deps.policy, { session: sessionInfo(s, deps.hostname), sender: envelope.mailFrom.address, recipients: envelope.rcptTo.map((r) => r.address) })
        : undefined;
    this.sizeLimit = sizeOnly ? Math.min(...envelope.rcptTo.map((r) => Number(r.state?.maxSize) || Infinity)) : Infinity;
    const stored = storedRecipients(envelope, st(s).mail?.bcc);
    this.forwarded = stored.forwarded;
    this.sentCopy = this.forwarded.size ? new SentCopy() : undefined;
    this.header = EnqueueHeader.fromPartial({
      envelope: toProtoEnvelope(s, envelope, this.arrival),
      recipients: stored.recipients,
      origin: MessageOrigin.MESSAGE_ORIGIN_SMTP,
      hold: this.hold,
    });
    // A message that stays small is held here whole and goes through
    // EnqueueBatch at the end; one that outgrows `batchMax` opens an Enqueue
    // stream (header, what was held, then the rest as it arrives).
    this.batchMax = deps.enqueueBatch?.bodyMax ?? 0;
    const chain = deps.milters?.directory.forListener(s.listener);
    this.miltersUnknown = deps.milters !== undefined && chain === undefined;
    this.milters = chain?.length ? chain : undefined;
    if (this.milters) this.spool = new Spool(deps.milters!.spoolDir, deps.milters!.spoolMemory);
  }

  /** Reads the body to its end and submits it: the reply to the end of data. */
  async submit(stream: Readable): Promise<Reply> {
    const { s } = this;
    try {
      // Batching off: the stream opens at once, as the body starts (with
      // milters only once they answered).
      if (!this.batchMax && !this.spool) await this.openStream();
      await this.readBody(stream);
      if (this.failure) throw this.failure;
      let prepend: Buffer | undefined;
      if (this.size > this.sizeLimit) return this.refuseOverSize();
      if (this.check) {
        const verdict = await this.endOfDataCheck(this.check);
        if (verdict.refusal) {
          this.abortStreams();
          endTx(s, `end of data refused: ${verdict.refusal.code}`);
          return verdict.refusal;
        }
        prepend = verdict.prepend;
        this.hold = this.hold || verdict.hold;
      }
      if (this.miltersUnknown) return this.refuse(IngressReplies.policyUnavailable, 'milters_unknown', 'the milter chain is not known yet (policy ListMilters not answered); nothing stored');
      if (this.spool) {
        const refusal = await this.filter();
        if (refusal) return refusal;
      }
      if (this.failure) throw this.failure;
      return this.queued(await this.commit(prepend));
    } catch (err) {
      return this.failed(err);
    } finally {
      void this.spool?.close();
    }
  }

  /**
   * Runs the milter chain over the spooled message, then gives the queue
   * what came out (through writeBody, as if it had just arrived). A reply
   * when the message is not to be stored: a milter's refusal, or a discard
   * (250, nothing stored).
   */
  private async filter(): Promise<Reply | undefined> {
    const { s, envelope } = this;
    const { logger, hostname } = this.deps;
    const settings = this.deps.milters!;
    const spool = this.spool!;
    const out = await runMilterChain(
      this.milters!,
      {
        hostname,
        listener: s.listener,
        messageId: `${s.id}.${envelope.seq}`,
        client: { name: st(s).clientName ?? `[${s.clientAddress}]`, address: s.clientAddress, port: s.clientPort },
        helo: s.heloName ?? '',
        tls: s.tls ? { protocol: s.tls.protocol, cipher: s.tls.cipher, bits: s.tls.bits } : undefined,
        authUser: s.user,
        sender: this.header.envelope!.sender,
        recipients: this.header.recipients,
        spool,
        spoolDir: settings.spoolDir,
        spoolMemory: settings.spoolMemory,
        maxBody: settings.maxBody,
      },
      settings.metrics,
      logger,
    );
    if (out.kind === 'refuse') return this.refuse(out.reply, 'milter', out.why, out.milter);
    const discard = (why: string, milter?: string): Reply => {
      this.deps.metrics.messages.add(1, { listener: s.listener, result: 'milter_discard' });
      logger.info({ event: 'smtp_discarded', session_id: s.id, client: s.clientAddress, sender: envelope.mailFrom.address, milter, reason: why }, `message discarded: ${why}; nothing stored`);
      endTx(s);
      // As Sendmail and Postfix do: the client is not told.
      return { code: 250, enhanced: '2.0.0', text: 'Ok' };
    };
    if (out.kind === 'discard') return discard(out.why, out.milter);
    try {
      if (out.recipients.length === 0) return discard('the milters removed every recipient');
      this.header.envelope!.sender = out.sender;
      this.header.recipients = out.recipients;
      if (out.quarantine.length) {
        this.hold = true;
        logger.info({ event: 'milter_quarantine', session_id: s.id, reasons: out.quarantine }, 'a milter quarantined the message: stored held');
      }
      // From here on writeBody goes to the queue.
      this.spool = undefined;
      this.sent = 0;
      if (!this.batchMax) await this.openStream();
      await this.writeBody(serializeHeaders(out.headers));
      if (out.blankLine) await this.writeBody(Buffer.from('\r\n'));
      for await (const chunk of out.body.read(out.bodyStart)) await this.writeBody(chunk);
      return undefined;
    } finally {
      await spool.close();
      await Promise.all(out.extra.map((x) => x.close()));
    }
  }

  /**
   * Abandons every Enqueue stream not answered yet: nothing is stored
   * without its commit marker (one that was sent may still be stored; the
   * client gets 4xx and sends again).
   */
  private abortStreams(): void {
    for (const w of this.unanswered) abortEnqueue(w);
    this.unanswered.clear();
  }

  /** Not stored, with `reply` (4xx or 5xx): counted, logged. */
  private refuse(reply: Reply, result: string, why: string, milter?: string): Reply {
    const { s } = this;
    const { logger, metrics } = this.deps;
    this.abortStreams();
    metrics.messages.add(1, { listener: s.listener, result: `${result}_${String(reply.code)[0]}xx` });
    logger.info({ event: 'smtp_reject', stage: 'data', session_id: s.id, client: s.clientAddress, reason: result, milter, reply: `${reply.code} ${reply.enhanced ?? ''}`.trim(), detail: why }, `message refused at end of data: ${why}; nothing stored`);
    endTx(s, `end of data refused: ${reply.code}`);
    return reply;
  }

  /** The body, Received and the submission headers on top, to the queue (held or streamed) and to the end-of-data check. */
  private async readBody(stream: Readable): Promise<void> {
    const { s, envelope, check } = this;
    const { hostname } = this.deps;
    const received = receivedHeader({ session: s, envelope, hostname, clientName: st(s).clientName, date: this.arrival });
    let prefix: Buffer | undefined = Buffer.from(received, 'utf8');
    // The header section is read whole first on submission listeners (a
    // missing Message-ID or Date is added) and where policy's rules rewrite
    // header addresses (st(s).mail.headers).
    const rewrite = st(s).mail?.headers ?? false;
    const scanner = this.submission || rewrite ? new HeaderScanner() : undefined;
    const submissionHeaders = (): Buffer => {
      if (!this.submission) return Buffer.alloc(0);
      let extra = '';
      if (!scanner!.hasMessageId) extra += `Message-ID: ${messageId(s, envelope, hostname)}\r\n`;
      if (!scanner!.hasDate) extra += `Date: ${rfc5322Date(this.arrival)}\r\n`;
      return Buffer.from(extra, 'latin1');
    };
    const headerSection = async (): Promise<Buffer> => {
      const head = scanner!.take();
      return rewrite ? rewriteHeaderSection(head, this.deps.policy, this.deps.policyDeadlineMs) : head;
    };
    for await (const piece of stream) {
      let chunk = piece as Buffer;
      this.size += chunk.length;
      this.sentCopy?.update(chunk);
      const teed = check?.write(chunk);
      if (scanner && !scanner.done) {
        if (!scanner.push(chunk)) {
          if (teed) await teed;
          continue;
        }
        chunk = Buffer.concat([submissionHeaders(), await headerSection()]);
      }
      if (prefix) {
        // Its own piece: joined to the first chunk it copied that chunk (up to 64 KiB).
        await this.writeBody(prefix);
        prefix = undefined;
      }
      await this.writeBody(chunk);
      if (teed) await teed;
    }
    if (scanner && !scanner.done) {
      scanner.finish();
      await this.writeBody(Buffer.concat([prefix ?? Buffer.alloc(0), submissionHeaders(), await headerSection()]));
      prefix = undefined;
    }
    if (prefix) await this.writeBody(prefix);
  }

  /** Holds `buf` while the message fits the batch limit; otherwise streams it (opening the stream the first time). */
  private async writeBody(buf: Buffer): Promise<void> {
    if (this.spool) return this.spool.write(buf);
    this.sent += buf.length;
    if (!this.writer && this.heldBytes + buf.length <= this.batchMax) {
      this.held.push(buf);
      this.heldBytes += buf.length;
      return;
    }
    if (!this.writer) await this.openStream();
    await this.streamBody(buf);
  }

  /** Opens the Enqueue stream (one per part, see `forwarded`) and sends the header and what was held. */
  private async openStream(): Promise<void> {
    this.parts = splitBySender(this.header, this.forwarded);
    const [first, ...others] = this.parts;
    const open = () => {
      let writer!: grpc.ClientWritableStream<EnqueueRequest>;
      const result = new Promise<EnqueueResponse>((resolve, reject) => {
        // No deadline on the stream itself: the client's pace is bounded by the
        // engine's data timeout, the commit by commitTimeoutMs (commit).
        writer = this.deps.queue.enqueue(new grpc.Metadata(), { deadline: Infinity }, (err, res) => {
          this.unanswered.delete(writer);
          if (err) {
            this.failure = err;
            reject(err);
          } else resolve(res);
        });
      });
      this.unanswered.add(writer);
      result.catch(() => undefined);
      writer.on('error', () => undefined);
      return { writer, result };
    };
    const main = open();
    this.writer = main.writer;
    this.result = main.result;
    this.extra = others.map(() => open());
    await this.write(EnqueueRequest.fromPartial({ header: first }));
    for (const [i, x] of this.extra.entries()) await this.write(EnqueueRequest.fromPartial({ header: others[i] }), x.writer);
    const pieces = this.held;
    this.held = [];
    this.heldBytes = 0;
    for (const p of pieces) await this.streamBody(p);
  }

  private async streamBody(buf: Buffer): Promise<void> {
    for (let i = 0; i < buf.length; i += CHUNK) {
      const req = EnqueueRequest.fromPartial({ chunk: buf.subarray(i, i + CHUNK) });
      await this.write(req);
      for (const x of this.extra) await this.write(req, x.writer);
    }
  }

  /** One request on an Enqueue stream (the first by default), waiting while the stream is full. */
  private async write(req: EnqueueRequest, writer = this.writer!): Promise<void> {
    if (this.failure) throw this.failure;
    if (!writer.write(req)) {
      await Promise.race([once(writer, 'drain'), this.result]);
    }
  }

  /** Over the smallest size limit of the recipients (checks that would only compare sizes): 552, nothing stored. */
  private refuseOverSize(): Reply {
    const { s } = this;
    const { logger, metrics } = this.deps;
    this.abortStreams();
    metrics.decisions.add(1, { stage: 'data', result: '5xx' });
    metrics.messages.add(1, { listener: s.listener, result: 'policy_5xx' });
    logger.info({ event: 'smtp_reject', stage: 'data', session_id: s.id, client: s.clientAddress, reason: 'message_too_large', reply: '552 5.3.4' }, 'message over the recipients\' size limit; nothing stored');
    endTx(s, 'end of data refused: 552');
    return { code: 552, enhanced: '5.3.4', text: 'Message size exceeds fixed limit' };
  }

  /**
   * The CheckMessage verdict: a refusal to give (REJECT 5xx, DEFER 4xx, no
   * verdict 451 4.3.0: never an accept), or the header lines to store on top
   * and whether to hold.
   */
  private async endOfDataCheck(check: MessageCheck): Promise<{ refusal?: Reply; prepend?: Buffer; hold: boolean }> {
    const { s } = this;
    const { logger, metrics } = this.deps;
    let res;
    try {
      res = await check.result(this.deps.messageChecks!.timeoutMs);
    } catch (err) {
      check.cancel();
      metrics.decisions.add(1, { stage: 'data', result: 'policy_error' });
      metrics.messages.add(1, { listener: s.listener, result: 'policy_error' });
      const detail = isGrpcError(err) ? `${grpc.status[err.code]}: ${err.details}` : errorMessage(err);
      logger.warn({ stage: 'data', session_id: s.id, err: detail }, 'CheckMessage failed; answering 451 4.3.0, nothing stored');
      return { refusal: IngressReplies.policyUnavailable, hold: false };
    }
    const d = decisionReply(res);
    const refused = d.reply && !isPositive(d.reply);
    metrics.decisions.add(1, { stage: 'data', result: refused ? String(d.reply!.code)[0] + 'xx' : 'accept' });
    if (refused) {
      metrics.messages.add(1, { listener: s.listener, result: `policy_${String(d.reply!.code)[0]}xx` });
      logger.info(
        { event: 'smtp_reject', stage: 'data', session_id: s.id, client: s.clientAddress, reason: res.reason, reply: `${d.reply!.code} ${d.reply!.enhanced ?? ''}` },
        'message refused by policy at end of data; nothing stored',
      );
      return { refusal: d.reply, hold: false };
    }
    const lines = res.addHeaders.length ? headerLines(res.addHeaders) : undefined;
    return { prepend: lines?.length ? lines : undefined, hold: d.hold };
  }

  /** Sends the commit marker (streamed) or the whole message (batched); the queue's answer, within commitTimeoutMs. */
  private async commit(prepend: Buffer | undefined): Promise<EnqueueResponse> {
    const { commitTimeoutMs } = this.deps;
    // The commit marker: only now may the queue store the message.
    const commit = EnqueueCommit.fromPartial({ size: this.sent, prepend, hold: this.hold });
    let committed: Promise<EnqueueResponse>;
    if (this.writer) {
      // The parts of a split message: each with its key, known only now (the hash of the whole message).
      const keys = this.keysOf(this.parts);
      const commitOf = (i: number) => (keys ? { ...commit, idempotencyKey: keys[i]! } : commit);
      await this.write(EnqueueRequest.fromPartial({ commit: commitOf(0) }));
      for (const [i, x] of this.extra.entries()) await this.write(EnqueueRequest.fromPartial({ commit: commitOf(i + 1) }), x.writer);
      this.writer.end();
      for (const x of this.extra) x.writer.end();
      committed = joinParts([this.result!, ...this.extra.map((x) => x.result)]);
    } else {
      // The message's own span for its enqueue: the batch and the stream it
      // travels on belong to no one message (enqueue-batch.ts). The queue's
      // spans of the message (dispatch, report) continue from it.
      const span = this.deps.tracer.startSpan('queue.enqueue', {
        kind: SpanKind.CLIENT,
        attributes: { 'rpc.system': 'grpc', 'rpc.service': 'tern.v1.QueueService', 'rpc.method': 'EnqueueStream' },
      });
      // The pieces as they arrived: the request's encoding joins them, once.
      // The parts of a split message go together, in one batch.
      const traceCtx = injectContext(trace.setSpan(context.active(), span));
      const parts = splitBySender(this.header, this.forwarded);
      const keys = this.keysOf(parts);
      const messages: EnqueueMessageParts[] = parts.map((header, i) => ({
        header: keys ? { ...header, idempotencyKey: keys[i]! } : header,
        body: EMPTY_BODY,
        bodyParts: this.held,
        commit,
        trace: traceCtx,
      }));
      committed = joinParts(
        this.deps.enqueueBatch!.batcher.addAll(messages).map((p) =>
          p.then((o) => {
            if (o.errorCode) throw new Error(`EnqueueBatch refused the message: ${grpc.status[o.errorCode] ?? o.errorCode}: ${o.error}`);
            return { queueId: o.queueId, size: o.size };
          }),
        ),
      ).then((res) => {
        span.setAttribute('tern.queue_id', res.queueId);
        return res;
      });
      committed.then(
        () => span.end(),
        (err: Error) => {
          span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
          span.end();
        },
      );
    }
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      committed,
      new Promise<never>((_r, reject) => {
        timer = setTimeout(() => reject(new Error(`queue did not commit within ${commitTimeoutMs} ms`)), commitTimeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /**
   * The idempotency keys of a split message's parts (envelope.ts partKeys),
   * so that a part stored before another failed is not stored again when
   * the client sends the message again; none for a message stored whole, or
   * one without a Message-ID (SentCopy).
   */
  private keysOf(parts: readonly EnqueueHeader[]): string[] | undefined {
    if (parts.length < 2 || !this.sentCopy) return undefined;
    const digest = this.sentCopy.digest();
    return digest ? partKeys(digest, this.header.envelope!, parts) : undefined;
  }

  /** Stored: counted, logged with the queue id, and 250. */
  private queued(res: EnqueueResponse): Reply {
    const { s, envelope, size } = this;
    const { logger, metrics } = this.deps;
    const seconds = (performance.now() - this.started) / 1000;
    metrics.enqueueSeconds.record(seconds, { listener: s.listener });
    metrics.messages.add(1, { listener: s.listener, result: 'queued' });
    metrics.bytes.add(size, { listener: s.listener });
    const tx = st(s).tx;
    tx?.setAttribute('tern.queue_id', res.queueId);
    tx?.setAttribute('smtp.size', size);
    tx?.setAttribute('smtp.recipients', this.header.recipients.length);
    logger.info(
      {
        event: 'smtp_queued',
        queue_id: res.queueId,
        session_id: s.id,
        listener: s.listener,
        client: s.clientAddress,
        sender: envelope.mailFrom.address,
        recipients: this.header.recipients.length,
        size,
        hold: this.hold,
        ms: Math.round(seconds * 1000),
      },
      `queued as ${res.queueId}`,
    );
    endTx(s);
    return { code: 250, enhanced: '2.0.0', text: `Ok: queued as ${res.queueId}` };
  }

  /** Not stored: the engine's refusal of the data (bare CR/LF, size, ...) or, for any other failure, 451 4.3.0. */
  private failed(err: unknown): Reply {
    const { s } = this;
    const { logger, metrics } = this.deps;
    this.abortStreams();
    this.check?.cancel();
    if (err instanceof SmtpDataError) {
      metrics.messages.add(1, { listener: s.listener, result: err.violation });
      endTx(s, `data refused: ${err.violation}`);
      logger.info({ event: 'smtp_data_refused', session_id: s.id, client: s.clientAddress, violation: err.violation }, 'message data refused');
      return err.reply;
    }
    metrics.messages.add(1, { listener: s.listener, result: 'enqueue_error' });
    const detail = isGrpcError(err) ? `${grpc.status[err.code]}: ${err.details}` : errorMessage(err);
    endTx(s, `enqueue failed: ${detail}`);
    logger.warn({ event: 'smtp_enqueue_failed', session_id: s.id, client: s.clientAddress, err: detail }, 'enqueue failed; answering 451 4.3.0');
    // Make the next DATA re-check the queue.
    void this.deps.queueStatus.refresh();
    return IngressReplies.enqueueFailed;
  }
}

/**
 * The answer for every part of a message: its queue ids, space-separated
 * (the first is the one the client's 250 names first). One part refused
 * fails the whole: the client gets 451 and sends again, and the parts that
 * were stored are then answered by the queue with their first queue id
 * (their idempotency keys, keysOf), not stored again.
 */
async function joinParts(parts: Promise<EnqueueResponse>[]): Promise<EnqueueResponse> {
  const all = await Promise.all(parts);
  return { queueId: all.map((r) => r.queueId).join(' '), size: all[0]!.size };
}

/**
 * The message as the client sent it (before Received and whatever else
 * ingress adds, which differ at every try): its SHA-256, and whether its
 * header section has a Message-ID (read by the HeaderScanner that submission
 * uses). Without one, two messages of the same bytes may well be two
 * messages (a script sending the same alert twice), so no digest is given:
 * such a split message may still be stored twice when sent again, rather
 * than a second message be taken for the first. A header section that does
 * not end within the scan counts as without.
 */
class SentCopy {
  private readonly hash = crypto.createHash('sha256');
  private readonly head = new HeaderScanner();
  private result: Buffer | undefined | null = null;

  update(chunk: Buffer): void {
    this.hash.update(chunk);
    // Once decided, the octets it kept are dropped: the hash has them.
    if (!this.head.done && this.head.push(chunk)) this.head.take();
  }

  /** The digest (once the whole message was read); undefined without a Message-ID. */
  digest(): Buffer | undefined {
    if (this.result === null) {
      // A message that is all header section.
      if (!this.head.done) {
        this.head.finish();
        this.head.take();
      }
      this.result = this.head.ended && this.head.hasMessageId ? this.hash.digest() : undefined;
    }
    return this.result;
  }
}
