// Message data: the stream handed to the onData hook (bounded, with
// backpressure to the socket), DATA (dot-terminated, checked by BodyDecoder),
// and the end of a transaction: wait for the hook, reply, reset. BDAT
// (bdat.ts) feeds the same transfer.
import { Readable } from 'node:stream';
import { BodyDecoder, type Violation } from './body';
import { closing, formatReply, isPositive, normalizeReply, reply, Replies, type Reply } from './reply';
import { Mode } from './session-context';
import type { Session } from './session';
import type { Envelope } from './types';

/** Data stream buffer handed to the service. */
const STREAM_HWM = 64 * 1024;

/** Thrown into the data stream when the engine refuses the message data. */
export class SmtpDataError extends Error {
  constructor(
    readonly violation: Violation | 'aborted',
    readonly reply: Reply,
  ) {
    super(`message data refused: ${violation}`);
    this.name = 'SmtpDataError';
  }
}

export const VIOLATION_REPLIES: Record<Violation, Reply> = {
  bare_line_ending: Replies.bareLineEnding,
  nul: Replies.nulInData,
  line_too_long: Replies.textLineTooLong,
  size: Replies.messageTooBig,
};

export interface DataTransfer {
  decoder: BodyDecoder | undefined; // undefined: BINARYMIME (no text checks)
  stream: Readable;
  /** The hook's promise settled (before or after the end). */
  settled: boolean;
  result: Reply | undefined;
  failed: boolean;
  promise: Promise<void>;
  /** push(null) done. */
  ended: boolean;
  /** The engine aborted the stream. */
  aborted: boolean;
  size: number;
}

export function dataCommand(s: Session, arg: string): void {
  const env = s.info.envelope;
  if (!env) return s.send(Replies.needMail);
  if (env.rcptTo.length === 0) return s.send(reply(554, '5.5.1', 'Error: no valid recipients'));
  if (arg) return s.send(Replies.syntaxData);
  if (env.chunking || env.mailFrom.params.body === 'BINARYMIME') return s.send(Replies.dataAfterBdat);
  const go = () => {
    s.write(formatReply(Replies.startData, false));
    startTransfer(s, env, new BodyDecoder(true, bodyLimits(s)));
    s.mode = Mode.Data;
    s.sock.setTimeout(s.ctx.limits.dataTimeoutMs);
  };
  const hook = s.ctx.hooks.onDataStart;
  if (!hook) return go();
  s.await(
    () => hook.call(s.ctx.hooks, s.info, env),
    (r) => {
      if (r && !isPositive(r)) return s.send(r);
      go();
    },
  );
}

export function bodyLimits(s: Session) {
  return { maxLineLength: s.ctx.limits.maxTextLine, maxSize: s.ctx.limits.maxMessageSize, rejectNul: true };
}

export function startTransfer(s: Session, env: Envelope, decoder: BodyDecoder | undefined): void {
  const stream = new Readable({
    highWaterMark: STREAM_HWM,
    read: () => {
      if (s.backpressure) {
        s.backpressure = false;
        s.updateFlow();
      }
    },
  });
  // The engine may destroy the stream with an error nobody listens for.
  stream.on('error', () => {});
  const t: DataTransfer = {
    decoder,
    stream,
    settled: false,
    result: undefined,
    failed: false,
    ended: false,
    aborted: false,
    size: 0,
    promise: Promise.resolve(),
  };
  const hook = s.ctx.hooks.onData;
  t.promise = s.safe(() => hook.call(s.ctx.hooks, s.info, env, stream)).then(
    (r) => {
      t.settled = true;
      t.result = r;
      onTransferSettled(s, t);
    },
    () => {
      t.settled = true;
      t.failed = true;
      onTransferSettled(s, t);
    },
  );
  s.data = t;
}

function onTransferSettled(s: Session, t: DataTransfer): void {
  // A hook that finished before the end of data reads no more: stop feeding it.
  if (!t.ended && s.backpressure && s.data === t) {
    s.backpressure = false;
    s.updateFlow();
  }
}

export function pushBody(s: Session, t: DataTransfer, segments: Buffer[]): void {
  if (t.settled || t.aborted || segments.length === 0) return;
  const buf = segments.length === 1 ? segments[0]! : Buffer.concat(segments);
  t.size += buf.length;
  if (!t.stream.push(buf) && !s.backpressure) {
    s.backpressure = true;
  }
}

export function failTransfer(s: Session, t: DataTransfer, violation: Violation | 'aborted', r: Reply): void {
  if (t.aborted) return;
  t.aborted = true;
  if (s.backpressure) s.backpressure = false;
  t.stream.destroy(new SmtpDataError(violation, r));
}

/** Connection lost, RSET, shutdown: the message must not be stored. */
export function abortData(s: Session, reason: 'aborted'): void {
  const t = s.data;
  if (!t || t.ended) return;
  failTransfer(s, t, reason, Replies.hookFailed);
  t.ended = true;
}

/** DATA mode: feeds the input to the decoder until the end of data. */
export function dataStep(s: Session): void {
  const t = s.data!;
  const decoder = t.decoder!;
  const buf = s.inBuf!;
  const segments: Buffer[] = [];
  const end = decoder.feed(buf, (seg) => segments.push(seg));
  pushBody(s, t, segments);
  if (decoder.violation !== undefined) failTransfer(s, t, decoder.violation, VIOLATION_REPLIES[decoder.violation]);
  if (end < 0) {
    s.inBuf = null;
    return;
  }
  s.inBuf = end < buf.length ? buf.subarray(end) : null;
  s.mode = Mode.Command;
  s.sock.setTimeout(s.ctx.limits.commandTimeoutMs);
  finishTransfer(s, t, decoder.violation);
}

/** End of data (DATA) or of the LAST chunk: wait for the hook, reply, close the transaction. */
export function finishTransfer(s: Session, t: DataTransfer, violation: Violation | undefined): void {
  if (violation === undefined && !t.aborted) {
    if (t.settled) {
      // The hook answered before the end of data: whatever it said, it
      // did not see the whole message, so it cannot be a success.
      t.aborted = true;
    } else {
      t.ended = true;
      t.stream.push(null);
    }
  }
  const early = t.aborted && violation === undefined;
  t.ended = true;
  s.busy = true;
  s.updateFlow();
  void t.promise.then(() => {
    if (s.mode === Mode.Closing || s.mode === Mode.Closed) return;
    s.busy = false;
    let r: Reply;
    if (violation !== undefined) r = VIOLATION_REPLIES[violation];
    else if (t.failed || !t.result) r = Replies.hookFailed;
    else if (early && isPositive(t.result)) r = Replies.hookFailed;
    else r = t.result;
    const env = s.info.envelope;
    s.data = undefined;
    s.info.envelope = undefined;
    if (isPositive(r)) s.info.transactions++;
    else if (env) {
      try {
        s.ctx.hooks.onReset?.(s.info, env);
      } catch {
        // observer only
      }
    }
    s.send(normalizeReply(r));
    if (s.ctx.closing() && s.mode === Mode.Command) {
      s.endReason = 'server shutdown';
      s.closeWith(closing(s.ctx.hostname, '4.3.2', 'Service shutting down, closing transmission channel'));
      return;
    }
    s.pump();
  });
}
