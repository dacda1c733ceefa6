// What ingress keeps on an SMTP session (the engine's `session.state`): the
// session's and the transaction's trace spans, with the contexts every policy
// and queue call of that stage runs in (so traceparent reaches both), the
// client's verified name, a HOLD that policy gave at connect, HELO or MAIL,
// and what policy said at MAIL about rewriting the transaction's addresses.
import { context, SpanStatusCode, type Context, type Span } from '@tern/telemetry';
import type { SmtpSession } from '@tern/smtp';

export interface SessionState {
  span?: Span;
  ctx?: Context;
  clientName?: string;
  hold?: boolean;
  tx?: Span;
  txCtx?: Context;
  /** The current transaction's MAIL answer: the sender to store, its archive copy, header rewriting (CheckResponse). */
  mail?: MailRewrite;
}

export interface MailRewrite {
  /** The envelope sender to store ("" = as given). */
  sender: string;
  bcc: readonly string[];
  headers: boolean;
}

export const st = (s: SmtpSession) => s.state as SessionState;

/** The trace context of the session's calls: its transaction's, else the session's. */
export const ctxOf = (s: SmtpSession): Context => st(s).txCtx ?? st(s).ctx ?? context.active();

/** Ends the transaction's span (with an error status when `error` is given), if one is open. */
export function endTx(s: SmtpSession, error?: string): void {
  const state = st(s);
  if (!state.tx) return;
  if (error) state.tx.setStatus({ code: SpanStatusCode.ERROR, message: error });
  state.tx.end();
  state.tx = undefined;
  state.txCtx = undefined;
}
