// One SMTP session: a state machine over a byte stream. Input is kept in
// Buffers and scanned with indexOf; commands are handled strictly in order
// (a hook that is still running holds the commands behind it, so replies to
// a pipelined batch come back in order); replies are batched into one write
// per burst of input. Message data goes to the service as a bounded stream.
// Here: the session's state, its lifecycle (greeting, shutdown, close,
// timeouts), output and the input loop. By concern elsewhere: session-start.ts
// (PROXY header, per-client limit), command-line.ts (reading a line),
// commands.ts (the command table) over helo.ts, mail-rcpt.ts, data.ts and
// bdat.ts (message data), starttls.ts, auth.ts, vrfy-expn-etrn.ts; limits.ts
// (error limits); session-context.ts (what the server gives a session).
import type net from 'node:net';
import type { AuthState } from './auth';
import { bdatStep, type BdatChunk } from './bdat';
import { commandStep } from './command-line';
import { abortData, dataStep, type DataTransfer } from './data';
import { ReplyLimits } from './limits';
import { normalizeIp } from './proxy';
import { closing, formatReply, isPositive, reply, Replies, type Reply } from './reply';
import { Mode, nextId, type SessionContext } from './session-context';
import { afterProxy, proxyStep } from './session-start';
import type { SmtpSession } from './types';

export type { SessionContext } from './session-context';

/** Input we hold while a hook runs before we stop reading the socket. */
const MAX_PENDING_INPUT = 64 * 1024;

/**
 * The session's state and its input loop. What is not private is shared
 * with the files that handle commands and message data (functions of the
 * session); Session is not exported from the package.
 */
export class Session {
  readonly info: SmtpSession;
  sock: net.Socket;
  mode: Mode = Mode.Command;
  inBuf: Buffer | null = null;
  busy = false;
  private out = '';
  private readonly limits: ReplyLimits;
  pipelining = false;
  skipLine = false;
  auth: AuthState | undefined;
  data: DataTransfer | undefined;
  bdat: BdatChunk | undefined;
  clientSlot: string | undefined;
  paused = false;
  backpressure = false;
  private closeTimer: NodeJS.Timeout | undefined;
  seq = 0;
  endReason = 'closed';

  constructor(
    readonly ctx: SessionContext,
    socket: net.Socket,
  ) {
    this.sock = socket;
    this.limits = new ReplyLimits(ctx.limits, ctx.hostname);
    const remoteAddress = normalizeIp(socket.remoteAddress ?? '');
    this.info = {
      id: nextId(),
      listener: ctx.name,
      startedAt: new Date(),
      remoteAddress,
      remotePort: socket.remotePort ?? 0,
      localAddress: normalizeIp(socket.localAddress ?? ''),
      localPort: socket.localPort ?? 0,
      clientAddress: remoteAddress,
      clientPort: socket.remotePort ?? 0,
      proxied: false,
      tls: undefined,
      heloName: undefined,
      esmtp: false,
      user: undefined,
      envelope: undefined,
      transactions: 0,
      state: {},
    };
  }

  // ---------------------------------------------------------------- lifecycle

  start(): void {
    this.attach(this.sock);
    this.sock.setNoDelay(true);
    if (this.ctx.isTrustedProxy(this.info.remoteAddress)) {
      this.mode = Mode.Proxy;
      this.sock.setTimeout(this.ctx.limits.handshakeTimeoutMs);
      return;
    }
    afterProxy(this);
  }

  attach(sock: net.Socket): void {
    sock.on('data', this.onData);
    sock.on('error', this.onError);
    sock.on('close', this.onClose);
    sock.on('timeout', this.onTimeout);
  }

  detach(sock: net.Socket): void {
    sock.off('data', this.onData);
    sock.off('error', this.onError);
    sock.off('close', this.onClose);
    sock.off('timeout', this.onTimeout);
  }

  beginSession(): void {
    this.mode = Mode.PreGreeting;
    this.busy = true;
    this.sock.setTimeout(this.ctx.limits.commandTimeoutMs);
    const hook = this.ctx.hooks.onConnect;
    const delay = this.ctx.limits.greetingDelayMs;
    const waits: Array<Promise<Reply | undefined>> = [];
    if (hook) waits.push(this.safe(() => hook.call(this.ctx.hooks, this.info)).catch(() => Replies.hookFailed));
    if (delay > 0) waits.push(new Promise((r) => setTimeout(() => r(undefined), delay)));
    const greet = (r: Reply | undefined) => {
      if (this.mode !== Mode.PreGreeting) return;
      this.busy = false;
      if (r && !isPositive(r)) {
        // Only 220, 421 and 554 are valid greetings (RFC 5321 4.3.2).
        const code = r.code >= 500 ? 554 : 421;
        this.endReason = 'refused at connect';
        this.closeWith({ ...r, code });
        return;
      }
      if (this.inBuf) {
        this.endReason = 'pregreet';
        this.closeWith(Replies.pregreet);
        return;
      }
      this.mode = Mode.Command;
      this.write(formatReply(reply(220, undefined, `${this.ctx.hostname} ${this.ctx.banner}`), false));
      this.flush();
    };
    if (waits.length === 0) return greet(undefined);
    void Promise.all(waits).then((rs) => greet(rs[0]));
  }

  /** The server is stopping: idle sessions get 421 at once, others when their transaction ends. */
  shutdown(force: boolean): void {
    if (this.mode === Mode.Closing || this.mode === Mode.Closed) return;
    const idle = this.mode === Mode.Command && !this.busy && !this.info.envelope && this.inBuf === null;
    if (force || idle || this.mode === Mode.Proxy || this.mode === Mode.Handshake || this.mode === Mode.PreGreeting) {
      this.endReason = 'server shutdown';
      if (this.mode === Mode.Proxy || this.mode === Mode.Handshake) {
        this.destroy();
        return;
      }
      this.closeWith(closing(this.ctx.hostname, '4.3.2', 'Service shutting down, closing transmission channel'));
    }
  }

  destroy(): void {
    abortData(this, 'aborted');
    this.sock.destroy();
  }

  private readonly onError = (err: Error): void => {
    this.endReason = `socket error: ${err.message}`;
    this.ctx.logger?.debug({ session: this.info.id, err: err.message }, 'smtp socket error');
    abortData(this, 'aborted');
  };

  private readonly onClose = (): void => {
    if (this.mode === Mode.Closed) return;
    this.mode = Mode.Closed;
    if (this.closeTimer) clearTimeout(this.closeTimer);
    abortData(this, 'aborted');
    this.ctx.limiter.releaseTotal();
    if (this.clientSlot !== undefined) this.ctx.limiter.releaseClient(this.clientSlot);
    this.ctx.ended(this);
    try {
      this.ctx.hooks.onClose?.(this.info, this.endReason);
    } catch {
      // a failing observer must not affect other sessions
    }
  };

  private readonly onTimeout = (): void => {
    if (this.mode === Mode.Proxy || this.mode === Mode.Handshake) {
      this.endReason = 'handshake timeout';
      this.destroy();
      return;
    }
    if (this.mode === Mode.Closing || this.mode === Mode.Closed) {
      this.sock.destroy();
      return;
    }
    this.endReason = 'timeout';
    this.closeWith(closing(this.ctx.hostname, '4.4.2', 'Error: timeout exceeded'));
  };

  /**
   * Sends `r` (if any) and closes: no more input is processed. After QUIT
   * (`final`) the socket is closed as soon as the 221 is written, as Postfix
   * does: many clients close with a reset once they have sent QUIT, which an
   * open socket would take as an error (an exception with its stack per
   * session: docs/performance.md). Otherwise the client
   * gets 5 s to read the reply and close first (a reply to a client that is
   * still sending could be lost to our reset).
   */
  closeWith(r: Reply | undefined, final = false): void {
    if (this.mode === Mode.Closing || this.mode === Mode.Closed) return;
    abortData(this, 'aborted');
    if (r) this.write(formatReply(r));
    this.flush();
    this.mode = Mode.Closing;
    this.inBuf = null;
    if (final) this.sock.end(() => this.sock.destroy());
    else this.sock.end();
    this.closeTimer = setTimeout(() => this.sock.destroy(), 5_000);
    this.closeTimer.unref();
  }

  // ---------------------------------------------------------------- output

  write(s: string): void {
    this.ctx.stats.reply(s);
    this.out += s;
  }

  flush(): void {
    if (this.out.length === 0 || this.sock.destroyed) return;
    const s = this.out;
    this.out = '';
    this.sock.write(s);
  }

  /** Queues a reply; closes the session when it reaches a limit (limits.ts). */
  send(r: Reply): void {
    this.write(formatReply(r));
    const over = this.limits.count(r);
    if (over) {
      this.endReason = over.reason;
      this.closeWith(over.reply);
    }
  }

  // ---------------------------------------------------------------- input

  private readonly onData = (chunk: Buffer): void => {
    if (this.mode === Mode.Closing || this.mode === Mode.Closed) return;
    if (this.mode === Mode.PreGreeting) {
      // Talking before the greeting: refuse now (Postfix's pregreet test).
      this.endReason = 'pregreet';
      this.closeWith(Replies.pregreet);
      return;
    }
    this.inBuf = this.inBuf === null ? chunk : Buffer.concat([this.inBuf, chunk]);
    if (!this.busy) this.pump();
    else this.updateFlow();
  };

  updateFlow(): void {
    const shouldPause =
      this.backpressure || (this.busy && this.inBuf !== null && this.inBuf.length > MAX_PENDING_INPUT);
    if (shouldPause && !this.paused) {
      this.paused = true;
      this.sock.pause();
    } else if (!shouldPause && this.paused) {
      this.paused = false;
      this.sock.resume();
    }
  }

  /** Processes buffered input until it runs out or a hook is pending. */
  pump(): void {
    while (this.inBuf !== null && !this.busy) {
      const mode = this.mode;
      if (mode === Mode.Command || mode === Mode.Auth) {
        if (!commandStep(this)) break;
      } else if (mode === Mode.Data) {
        dataStep(this);
      } else if (mode === Mode.Bdat) {
        bdatStep(this);
      } else if (mode === Mode.Proxy) {
        if (!proxyStep(this)) break;
      } else break;
    }
    this.flush();
    this.updateFlow();
  }

  take(n: number): Buffer {
    const buf = this.inBuf!;
    if (n >= buf.length) {
      this.inBuf = null;
      return buf;
    }
    this.inBuf = buf.subarray(n);
    return buf.subarray(0, n);
  }

  // ---------------------------------------------------------------- hooks and transaction

  /** Runs a hook; a throw or rejection becomes `undefined` + failed flag. */
  safe<T>(fn: () => Promise<T>): Promise<T | undefined> {
    try {
      return fn().catch((err: unknown) => {
        this.ctx.logger?.warn({ session: this.info.id, err: (err as Error)?.message ?? String(err) }, 'smtp hook failed');
        throw err;
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Awaits a hook with the session busy (input queues up behind it), then
   * continues with `then`; a failed hook gets 451 4.3.0.
   */
  await<T>(fn: () => Promise<T>, then: (v: T) => void, onFail?: () => void): void {
    this.busy = true;
    this.updateFlow();
    this.safe(fn).then(
      (v) => {
        if (this.mode === Mode.Closing || this.mode === Mode.Closed) return;
        this.busy = false;
        then(v as T);
        this.pump();
      },
      () => {
        if (this.mode === Mode.Closing || this.mode === Mode.Closed) return;
        this.busy = false;
        if (onFail) onFail();
        else this.send(Replies.hookFailed);
        this.pump();
      },
    );
  }

  /** RSET, EHLO/HELO: the transaction and its data go, unstored. */
  resetTransaction(): void {
    const env = this.info.envelope;
    abortData(this, 'aborted');
    this.data = undefined;
    if (env) {
      this.info.envelope = undefined;
      try {
        this.ctx.hooks.onReset?.(this.info, env);
      } catch {
        // observer only
      }
    }
  }

  /** TLS is on (STARTTLS or implicit). */
  get secure(): boolean {
    return this.info.tls !== undefined;
  }

  /** AUTH is offered: the service has the hook, and TLS is on unless not required for AUTH. */
  get authOffered(): boolean {
    return this.ctx.hooks.onAuth !== undefined && (this.secure || !this.ctx.requireTlsForAuth);
  }
}
