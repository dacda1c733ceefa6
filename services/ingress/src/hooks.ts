// The SMTP engine's hooks: the table that wires each stage of a session to
// the part that answers it. Connect, HELO, MAIL and RCPT ask policy
// (policy-check.ts); DATA and the first BDAT pass the queue status gate
// (queue-gate.ts); the body is one MessageSubmission (message-submission.ts),
// whose 250 carries the queue id of the commit (I1). AUTH asks policy
// Authenticate; VRFY, EXPN and ETRN are in commands.ts. Each session has a
// span and each transaction a child span (session-state.ts), and every call
// is made in their trace context.
import { AuthenticateRequest, CheckStage } from '@tern/proto';
import { isPositive, Replies, type SmtpHooks } from '@tern/smtp';
import { context, trace, type Tracer } from '@tern/telemetry';
import { SpanKind } from '@opentelemetry/api';
import { call } from './clients';
import { commandHooks, type CommandSettings } from './commands';
import { reverseName, sessionInfo, storedCount } from './envelope';
import { MessageSubmission, type MessageSubmissionDeps } from './message-submission';
import { checkPolicy, toReply, type PolicyCheckDeps } from './policy-check';
import { IngressReplies } from './replies';
import { ctxOf, endTx, st } from './session-state';
import { errorMessage } from '@tern/runtime';

export interface HooksDeps extends PolicyCheckDeps, MessageSubmissionDeps {
  tracer: Tracer;
  reverseDns: { timeoutMs: number } | undefined;
  /** VRFY, EXPN, ETRN; all answered by the engine's defaults when absent. */
  commands?: CommandSettings;
  /** Recipients per message after alias expansion (TERN_MAX_RECIPIENTS); no limit when absent. */
  maxRecipients?: number;
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
      state.mail = undefined;
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
      const res = d.res;
      if (res && (res.senderRewrite || res.bcc.length || res.rewriteHeaders)) {
        state.mail = { sender: res.senderRewrite, bcc: res.bcc, headers: res.rewriteHeaders };
      }
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
      const aliasTargets = d.res?.aliasTargets ?? [];
      rcpt.state = {
        local: d.res?.localRecipient ?? false,
        // What policy's end-of-data check would do for this recipient (see MessageSubmission).
        sizeOnly: d.res?.messageCheckSizeOnly ?? false,
        maxSize: d.res?.maxMessageSize ?? 0,
        // A virtual alias: the message is stored for these instead (envelope.ts toProtoRecipients).
        aliasTargets: aliasTargets.length ? aliasTargets : undefined,
        // Archive copies (recipient bcc maps), and the targets forwarded with an SRS sender.
        bcc: d.res?.bcc.length ? d.res.bcc : undefined,
        srsTargets: d.res?.srsTargets.length ? d.res.srsTargets : undefined,
        srsSender: d.res?.srsSender || undefined,
      };
      // The recipients-per-message limit holds for what is stored, after alias expansion.
      const stored = storedCount([...envelope.rcptTo, rcpt]);
      if (deps.maxRecipients && stored > deps.maxRecipients) {
        rcpt.state = undefined;
        metrics.decisions.add(1, { stage: 'rcpt', result: '4xx' });
        logger.info(
          { event: 'smtp_reject', stage: 'rcpt', session_id: s.id, client: s.clientAddress, reason: 'too_many_recipients_after_expansion', reply: '452 4.5.3', recipient: rcpt.address, stored, alias_targets: aliasTargets.length },
          'recipient refused: the message would have too many recipients after alias expansion',
        );
        return Replies.tooManyRecipients;
      }
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
        logger.warn({ session_id: s.id, err: errorMessage(err) }, 'policy Authenticate failed; answering 454 4.7.0');
        return { ok: false, reply: IngressReplies.authUnavailable };
      }
    },

    async onDataStart(s) {
      return context.with(ctxOf(s), () => deps.queueStatus.gate());
    },

    async onData(s, envelope, stream) {
      return context.with(ctxOf(s), () => new MessageSubmission(deps, s, envelope, submission).submit(stream));
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

  if (deps.commands) {
    Object.assign(hooks, commandHooks({ logger, policy, queue, deadlineMs: deps.policyDeadlineMs, sessionInfo: (s) => sessionInfo(s, hostname) }, deps.commands, submission));
  }
  // The engine offers AUTH only when onAuth exists: submission listeners only.
  if (!submission) delete hooks.onAuth;
  return hooks;
}
