// The SMTP engine's hooks, implemented against policy and queue. Every
// stage asks policy (with a deadline); any failure to get an answer is a
// 4xx, never an accept. A small message is held whole and sent with others
// in one QueueService.EnqueueBatch call; a bigger one is streamed to Enqueue
// as it arrives. The 250 is given only with the queue id of the commit (I1).
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { grpc, isGrpcError } from '@tern/grpc';
import {
  AuthenticateRequest,
  CheckStage,
  EnqueueCommit,
  EnqueueHeader,
  EnqueueRequest,
  MessageOrigin,
  type EnqueueResponse,
  type EnqueueMessageParts,
} from '@tern/proto';
import { isPositive, SmtpDataError, type Envelope, type Reply, type SmtpHooks, type SmtpSession } from '@tern/smtp';
import { context, injectContext, trace, type Tracer } from '@tern/telemetry';
import { SpanKind } from '@opentelemetry/api';
import { call, type QueueClient } from './clients';
import { HeaderScanner, messageId, receivedHeader, rfc5322Date } from './headers';
import { headerLines, MessageCheck, type MessageCheckSettings } from './messagecheck';
import { commandHooks, type CommandSettings } from './commands';
import type { EnqueueBatcher } from './enqueue-batch';
import { reverseName, sessionInfo, toProtoEnvelope, toProtoRecipients } from './envelope';
import { QueueStatusCache } from './queue-gate';
import { checkPolicy, decisionReply, toReply, type PolicyCheckDeps } from './policy-check';
import { IngressReplies } from './replies';
import { ctxOf, endTx, st } from './session-state';

/** The batch path's body field: the pieces travel in bodyParts. */
const EMPTY_BODY = Buffer.alloc(0);

/** Body chunk size in Enqueue requests. */
const CHUNK = 64 * 1024;

export interface HooksDeps extends PolicyCheckDeps {
  tracer: Tracer;
  queue: QueueClient;
  queueStatus: QueueStatusCache;
  commitTimeoutMs: number;
  reverseDns: { timeoutMs: number } | undefined;
  /** End-of-data checks (policy CheckMessage); none when absent. */
  messageChecks?: MessageCheckSettings;
  /** VRFY, EXPN, ETRN; all answered by the engine's defaults when absent. */
  commands?: CommandSettings;
  /** Messages whose stored form is at most `bodyMax` bytes go whole through EnqueueBatch; none when absent. */
  enqueueBatch?: { batcher: EnqueueBatcher; bodyMax: number };
}

/**
 * Abandons an Enqueue. The queue stores a message only after the explicit
 * `commit` request, which an aborted submission never sends, so a cancel
 * (which grpc-js may show the server as a plain end of stream) stores nothing.
 */
function abortEnqueue(writer: grpc.ClientWritableStream<EnqueueRequest>): void {
  writer.cancel();
}

export function createHooks(deps: HooksDeps, submission: boolean): SmtpHooks {
  const { logger, tracer, policy, queue, metrics, hostname } = deps;

  const hooks: SmtpHooks = {
    async onConnect(s) {
      const span = tracer.startSpan('smtp.session', {
        kind: SpanKind.SERVER,
        attributes: { 'smtp.session_id': s.id, 'smtp.listener': s.listener, 'net.peer.ip': s.clientAddress, 'net.peer.port': s.clientPort },
      });
      st(s).span = span;
      st(s).ctx = trace.setSpan(context.active(), span);
      metrics.sessions.add(1, { listener: s.listener });
      if (deps.reverseDns) st(s).clientName = await reverseName(s.clientAddress, deps.reverseDns.timeoutMs);
      const d = await checkPolicy(deps, CheckStage.CHECK_STAGE_CONNECT, 'connect', s, {});
      if (d.hold) st(s).hold = true;
      return d.reply;
    },

    async onHelo(s, name) {
      const d = await checkPolicy(deps, CheckStage.CHECK_STAGE_HELO, 'helo', s, {});
      void name;
      if (d.hold) st(s).hold = true;
      return d.reply;
    },

    async onMailFrom(s, from) {
      endTx(s);
      const state = st(s);
      const tx = tracer.startSpan('smtp.transaction', { attributes: { 'smtp.session_id': s.id, 'smtp.sender': from.address } }, state.ctx);
      state.tx = tx;
      state.txCtx = trace.setSpan(state.ctx ?? context.active(), tx);
      const d = await checkPolicy(deps, CheckStage.CHECK_STAGE_MAIL, 'mail', s, {
        sender: from.address,
        declaredSize: from.params.size ?? 0,
        smtputf8: from.params.smtputf8,
      });
      if (d.reply && !isPositive(d.reply)) {
        endTx(s, `MAIL refused: ${d.reply.code}`);
        return d.reply;
      }
      state.hold = state.hold || d.hold;
      return d.reply;
    },

    async onRcptTo(s, rcpt, envelope) {
      const d = await checkPolicy(deps, CheckStage.CHECK_STAGE_RCPT, 'rcpt', s, {
        sender: envelope.mailFrom.address,
        recipient: rcpt.address,
        recipients: envelope.rcptTo.map((r) => r.address),
        declaredSize: envelope.mailFrom.params.size ?? 0,
        smtputf8: envelope.mailFrom.params.smtputf8,
      });
      if (d.reply && !isPositive(d.reply)) return d.reply;
      rcpt.state = {
        local: d.res?.localRecipient ?? false,
        // What policy's end-of-data check would do for this recipient (see enqueue).
        sizeOnly: d.res?.messageCheckSizeOnly ?? false,
        maxSize: d.res?.maxMessageSize ?? 0,
      };
      if (d.hold) envelope.state.hold = true;
      return d.reply;
    },

    async onAuth(s, req) {
      const body = AuthenticateRequest.fromPartial({ username: req.username, password: req.password, session: sessionInfo(s, hostname) });
      try {
        const res = await context.with(ctxOf(s), () => call(policy.authenticate, policy, body, deps.policyDeadlineMs));
        if (res.ok) {
          logger.info({ event: 'smtp_auth', session_id: s.id, client: s.clientAddress, user: res.user || req.username, mechanism: req.mechanism }, 'authenticated');
          return { ok: true, user: res.user || req.username };
        }
        const reply = toReply(res.reply);
        logger.info({ event: 'smtp_auth_failed', session_id: s.id, client: s.clientAddress, user: req.username, mechanism: req.mechanism }, 'authentication failed');
        return reply && !isPositive(reply) ? { ok: false, reply } : { ok: false };
      } catch (err) {
        logger.warn({ session_id: s.id, err: (err as Error).message }, 'policy Authenticate failed; answering 454 4.7.0');
        return { ok: false, reply: IngressReplies.authUnavailable };
      }
    },

    async onDataStart(s) {
      return context.with(ctxOf(s), () => deps.queueStatus.gate());
    },

    async onData(s, envelope, stream) {
      return context.with(ctxOf(s), () => enqueue(s, envelope, stream));
    },

    onReset(s) {
      endTx(s, 'transaction dropped');
    },

    onClose(s, reason) {
      endTx(s, `session closed: ${reason}`);
      const span = st(s).span;
      if (span) {
        span.setAttribute('smtp.close_reason', reason);
        span.setAttribute('smtp.transactions', s.transactions);
        span.end();
      }
    },
  };

  async function enqueue(s: SmtpSession, envelope: Envelope, stream: Readable): Promise<Reply> {
    const started = performance.now();
    const arrival = new Date();
    let hold = Boolean(st(s).hold || envelope.state.hold);
    // The body as the client sent it also goes to policy's end-of-data
    // checks, unless policy said at RCPT that for every recipient they would
    // only compare the size (a trusted network, say): then ingress compares
    // it with the smallest limit itself and spares streaming the body twice.
    const checked = deps.messageChecks?.listeners.has(s.listener) ?? false;
    const sizeOnly = checked && envelope.rcptTo.every((r) => r.state?.sizeOnly === true);
    const check =
      checked && !sizeOnly
        ? new MessageCheck(policy, { session: sessionInfo(s, hostname), sender: envelope.mailFrom.address, recipients: envelope.rcptTo.map((r) => r.address) })
        : undefined;
    const sizeLimit = sizeOnly ? Math.min(...envelope.rcptTo.map((r) => Number(r.state?.maxSize) || Infinity)) : Infinity;
    const header = EnqueueHeader.fromPartial({
      envelope: toProtoEnvelope(s, envelope, arrival),
      recipients: toProtoRecipients(envelope),
      origin: MessageOrigin.MESSAGE_ORIGIN_SMTP,
      hold,
    });
    // A message that stays small is held here whole and goes through
    // EnqueueBatch at the end; one that outgrows `batchMax` opens an Enqueue
    // stream (header, what was held, then the rest as it arrives).
    const batchMax = deps.enqueueBatch?.bodyMax ?? 0;
    let held: Buffer[] = [];
    let heldBytes = 0;
    let settled = false;
    let failure: Error | undefined;
    let writer: grpc.ClientWritableStream<EnqueueRequest> | undefined;
    let result: Promise<EnqueueResponse> | undefined;
    const write = async (req: EnqueueRequest): Promise<void> => {
      if (failure) throw failure;
      if (!writer!.write(req)) {
        await Promise.race([once(writer!, 'drain'), result]);
      }
    };
    const openStream = async (): Promise<void> => {
      result = new Promise<EnqueueResponse>((resolve, reject) => {
        // No deadline on the stream itself: the client's pace is bounded by the
        // engine's data timeout, the commit by commitTimeoutMs below.
        writer = queue.enqueue(new grpc.Metadata(), { deadline: Infinity }, (err, res) => {
          settled = true;
          if (err) {
            failure = err;
            reject(err);
          } else resolve(res);
        });
      });
      result.catch(() => undefined);
      writer!.on('error', () => undefined);
      await write(EnqueueRequest.fromPartial({ header }));
      const pieces = held;
      held = [];
      heldBytes = 0;
      for (const p of pieces) await streamBody(p);
    };
    const streamBody = async (buf: Buffer): Promise<void> => {
      for (let i = 0; i < buf.length; i += CHUNK) await write(EnqueueRequest.fromPartial({ chunk: buf.subarray(i, i + CHUNK) }));
    };
    let sent = 0;
    const writeBody = async (buf: Buffer): Promise<void> => {
      sent += buf.length;
      if (!writer && heldBytes + buf.length <= batchMax) {
        held.push(buf);
        heldBytes += buf.length;
        return;
      }
      if (!writer) await openStream();
      await streamBody(buf);
    };
    let size = 0;
    try {
      // Batching off: the stream opens at once, as the body starts.
      if (!batchMax) await openStream();
      const received = receivedHeader({ session: s, envelope, hostname, clientName: st(s).clientName, date: arrival });
      let prefix: Buffer | undefined = Buffer.from(received, 'utf8');
      const scanner = submission ? new HeaderScanner() : undefined;
      const submissionHeaders = (): Buffer => {
        let extra = '';
        if (!scanner!.hasMessageId) extra += `Message-ID: ${messageId(s, envelope, hostname)}\r\n`;
        if (!scanner!.hasDate) extra += `Date: ${rfc5322Date(arrival)}\r\n`;
        return Buffer.from(extra, 'latin1');
      };
      for await (const piece of stream) {
        let chunk = piece as Buffer;
        size += chunk.length;
        const teed = check?.write(chunk);
        if (scanner && !scanner.done) {
          if (!scanner.push(chunk)) {
            if (teed) await teed;
            continue;
          }
          chunk = Buffer.concat([submissionHeaders(), scanner.take()]);
        }
        if (prefix) {
          // Its own piece: joined to the first chunk it copied that chunk (up to 64 KiB).
          await writeBody(prefix);
          prefix = undefined;
        }
        await writeBody(chunk);
        if (teed) await teed;
      }
      if (scanner && !scanner.done) {
        scanner.finish();
        await writeBody(Buffer.concat([prefix ?? Buffer.alloc(0), submissionHeaders(), scanner.take()]));
        prefix = undefined;
      }
      if (prefix) await writeBody(prefix);
      if (failure) throw failure;
      let prepend: Buffer | undefined;
      if (size > sizeLimit) {
        if (writer) abortEnqueue(writer);
        metrics.decisions.add(1, { stage: 'data', result: '5xx' });
        metrics.messages.add(1, { listener: s.listener, result: 'policy_5xx' });
        logger.info({ event: 'smtp_reject', stage: 'data', session_id: s.id, client: s.clientAddress, reason: 'message_too_large', reply: '552 5.3.4' }, 'message over the recipients\' size limit; nothing stored');
        endTx(s, 'end of data refused: 552');
        return { code: 552, enhanced: '5.3.4', text: 'Message size exceeds fixed limit' };
      }
      if (check) {
        const verdict = await endOfDataCheck(s, check);
        if (verdict.refusal) {
          if (writer) abortEnqueue(writer);
          endTx(s, `end of data refused: ${verdict.refusal.code}`);
          return verdict.refusal;
        }
        prepend = verdict.prepend;
        hold = hold || verdict.hold;
      }
      if (failure) throw failure;
      // The commit marker: only now may the queue store the message.
      const commit = EnqueueCommit.fromPartial({ size: sent, prepend, hold });
      let committed: Promise<EnqueueResponse>;
      if (writer) {
        await write(EnqueueRequest.fromPartial({ commit }));
        writer.end();
        committed = result!;
      } else {
        // The pieces as they arrived: the request's encoding joins them, once.
        const message: EnqueueMessageParts = { header, body: EMPTY_BODY, bodyParts: held, commit, trace: injectContext() };
        committed = deps.enqueueBatch!.batcher.add(message).then((o) => {
          settled = true;
          if (o.errorCode) throw new Error(`EnqueueBatch refused the message: ${grpc.status[o.errorCode] ?? o.errorCode}: ${o.error}`);
          return { queueId: o.queueId, size: o.size };
        });
        committed.catch(() => undefined);
      }
      let timer: NodeJS.Timeout | undefined;
      const res = await Promise.race([
        committed,
        new Promise<never>((_r, reject) => {
          timer = setTimeout(() => reject(new Error(`queue did not commit within ${deps.commitTimeoutMs} ms`)), deps.commitTimeoutMs);
        }),
      ]).finally(() => clearTimeout(timer));
      const seconds = (performance.now() - started) / 1000;
      metrics.enqueueSeconds.record(seconds, { listener: s.listener });
      metrics.messages.add(1, { listener: s.listener, result: 'queued' });
      metrics.bytes.add(size, { listener: s.listener });
      const tx = st(s).tx;
      tx?.setAttribute('tern.queue_id', res.queueId);
      tx?.setAttribute('smtp.size', size);
      tx?.setAttribute('smtp.recipients', envelope.rcptTo.length);
      logger.info(
        {
          event: 'smtp_queued',
          queue_id: res.queueId,
          session_id: s.id,
          listener: s.listener,
          client: s.clientAddress,
          sender: envelope.mailFrom.address,
          recipients: envelope.rcptTo.length,
          size,
          hold,
          ms: Math.round(seconds * 1000),
        },
        `queued as ${res.queueId}`,
      );
      endTx(s);
      return { code: 250, enhanced: '2.0.0', text: `Ok: queued as ${res.queueId}` };
    } catch (err) {
      if (writer && !settled) abortEnqueue(writer);
      check?.cancel();
      if (err instanceof SmtpDataError) {
        metrics.messages.add(1, { listener: s.listener, result: err.violation });
        endTx(s, `data refused: ${err.violation}`);
        logger.info({ event: 'smtp_data_refused', session_id: s.id, client: s.clientAddress, violation: err.violation }, 'message data refused');
        return err.reply;
      }
      metrics.messages.add(1, { listener: s.listener, result: 'enqueue_error' });
      const detail = isGrpcError(err) ? `${grpc.status[err.code]}: ${err.details}` : (err as Error).message;
      endTx(s, `enqueue failed: ${detail}`);
      logger.warn({ event: 'smtp_enqueue_failed', session_id: s.id, client: s.clientAddress, err: detail }, 'enqueue failed; answering 451 4.3.0');
      // Make the next DATA re-check the queue.
      void deps.queueStatus.refresh();
      return IngressReplies.enqueueFailed;
    }
  }

  /**
   * The CheckMessage verdict: a refusal to give (REJECT 5xx, DEFER 4xx, no
   * verdict 451 4.3.0: never an accept), or the header lines to store on top
   * and whether to hold.
   */
  async function endOfDataCheck(s: SmtpSession, check: MessageCheck): Promise<{ refusal?: Reply; prepend?: Buffer; hold: boolean }> {
    let res;
    try {
      res = await check.result(deps.messageChecks!.timeoutMs);
    } catch (err) {
      check.cancel();
      metrics.decisions.add(1, { stage: 'data', result: 'policy_error' });
      metrics.messages.add(1, { listener: s.listener, result: 'policy_error' });
      const detail = isGrpcError(err) ? `${grpc.status[err.code]}: ${err.details}` : (err as Error).message;
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

  if (deps.commands) {
    Object.assign(hooks, commandHooks({ logger, policy, queue, deadlineMs: deps.policyDeadlineMs, sessionInfo: (s) => sessionInfo(s, hostname) }, deps.commands, submission));
  }
  // The engine offers AUTH only when onAuth exists: submission listeners only.
  if (!submission) delete hooks.onAuth;
  return hooks;
}
