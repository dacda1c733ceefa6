// BDAT (RFC 3030 CHUNKING, and BINARYMIME): chunks of exactly the announced
// size feed the transfer of data.ts; a refused chunk is still consumed (the
// octets follow the command whatever we answer) and fails the transaction.
import { BodyDecoder } from './body';
import { bodyLimits, failTransfer, finishTransfer, pushBody, startTransfer, VIOLATION_REPLIES, type DataTransfer } from './data';
import { isPositive, reply, Replies, type Reply } from './reply';
import { Mode } from './session-context';
import type { Session } from './session';

export interface BdatChunk {
  remaining: number;
  last: boolean;
  /** Reply to give after the chunk is consumed instead of processing it. */
  refuse: Reply | undefined;
  /** Close the session after refusing (unrecoverable). */
  fatal: boolean;
}

export function bdatCommand(s: Session, arg: string): void {
  const m = /^(\d{1,15})(?: +(LAST))? *$/i.exec(arg);
  if (!m) {
    // Without a valid size the octets that follow cannot be skipped.
    s.endReason = 'bad BDAT syntax';
    return s.closeWith(Replies.syntaxBdat);
  }
  const size = Number(m[1]);
  const last = m[2] !== undefined;
  const env = s.info.envelope;
  const max = s.ctx.limits.maxMessageSize;
  let refuse: Reply | undefined;
  let fatal = false;
  if (!env) refuse = Replies.needMail;
  else if (env.rcptTo.length === 0) refuse = reply(554, '5.5.1', 'Error: no valid recipients');
  else if ((s.data?.size ?? 0) + size > max) {
    refuse = Replies.messageTooBig;
    // Skipping gigabytes to stay in sync is not worth it.
    fatal = size > max * 2 + 1_048_576;
  }
  const chunk: BdatChunk = { remaining: size, last, refuse, fatal };
  if (fatal) {
    failBdatTransaction(s);
    s.endReason = 'BDAT too large';
    return s.closeWith(Replies.messageTooBig);
  }
  // The chunk's octets follow the command whatever we decide: from here on
  // the session is in BDAT mode until they are consumed.
  s.bdat = chunk;
  s.mode = Mode.Bdat;
  s.sock.setTimeout(s.ctx.limits.dataTimeoutMs);
  const enter = () => {
    if (!chunk.refuse && env && !s.data) {
      env.chunking = true;
      const binary = env.mailFrom.params.body === 'BINARYMIME';
      startTransfer(s, env, binary ? undefined : new BodyDecoder(false, bodyLimits(s)));
    }
    if (size === 0) bdatChunkDone(s);
  };
  const hook = s.ctx.hooks.onDataStart;
  if (refuse || !env || s.data || !hook) return enter();
  s.await(
    () => hook.call(s.ctx.hooks, s.info, env),
    (r) => {
      if (r && !isPositive(r)) chunk.refuse = r;
      enter();
    },
    () => {
      chunk.refuse = Replies.hookFailed;
      enter();
    },
  );
}

/** BDAT mode: consumes the chunk's octets. */
export function bdatStep(s: Session): void {
  const chunk = s.bdat!;
  const buf = s.take(Math.min(chunk.remaining, s.inBuf!.length));
  chunk.remaining -= buf.length;
  const t = s.data;
  if (!chunk.refuse && t && !t.aborted) {
    if (t.decoder) {
      const segments: Buffer[] = [];
      t.decoder.feed(buf, (seg) => segments.push(seg));
      pushBody(s, t, segments);
      if (t.decoder.violation !== undefined) failTransfer(s, t, t.decoder.violation, VIOLATION_REPLIES[t.decoder.violation]);
    } else if (t.size + buf.length > s.ctx.limits.maxMessageSize) {
      failTransfer(s, t, 'size', Replies.messageTooBig);
      chunk.refuse = Replies.messageTooBig;
    } else pushBody(s, t, [buf]);
  }
  if (chunk.remaining === 0) bdatChunkDone(s);
}

function failBdatTransaction(s: Session): void {
  const t = s.data;
  if (t && !t.ended) failTransfer(s, t, 'aborted', Replies.hookFailed);
  if (t) t.ended = true;
  const env = s.info.envelope;
  s.data = undefined;
  s.info.envelope = undefined;
  if (env) {
    try {
      s.ctx.hooks.onReset?.(s.info, env);
    } catch {
      // observer only
    }
  }
}

function bdatChunkDone(s: Session): void {
  const chunk = s.bdat!;
  s.bdat = undefined;
  s.mode = Mode.Command;
  s.sock.setTimeout(s.ctx.limits.commandTimeoutMs);
  const t = s.data;
  if (chunk.refuse) {
    // RFC 3030: a failed chunk fails the transaction; later chunks get 503.
    if (s.info.envelope) failBdatTransaction(s);
    return s.send(chunk.refuse);
  }
  if (!t) return s.send(Replies.needMail);
  const violation = t.decoder?.violation;
  if (violation !== undefined || t.aborted) {
    // Wait for the hook to see the abort, then refuse the transaction.
    const r = violation !== undefined ? VIOLATION_REPLIES[violation] : Replies.messageTooBig;
    return finishRefused(s, t, r);
  }
  if (t.settled) {
    // The service gave up before the last chunk.
    const r = t.failed || !t.result || isPositive(t.result) ? Replies.hookFailed : t.result;
    return finishRefused(s, t, r);
  }
  if (!chunk.last) return s.send(reply(250, '2.0.0', `Ok: ${t.size} octets received`));
  t.decoder?.finish();
  const v = t.decoder?.violation;
  if (v !== undefined) {
    failTransfer(s, t, v, VIOLATION_REPLIES[v]);
    return finishRefused(s, t, VIOLATION_REPLIES[v]);
  }
  finishTransfer(s, t, undefined);
}

function finishRefused(s: Session, t: DataTransfer, r: Reply): void {
  if (!t.aborted) failTransfer(s, t, 'aborted', r);
  t.ended = true;
  s.busy = true;
  s.updateFlow();
  void t.promise.then(() => {
    if (s.mode === Mode.Closing || s.mode === Mode.Closed) return;
    s.busy = false;
    failBdatTransaction(s);
    s.send(r);
    s.pump();
  });
}
