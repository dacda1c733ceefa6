// One SMTP session: a state machine over a byte stream. Input is kept in
// Buffers and scanned with indexOf; commands are handled strictly in order
// (a hook that is still running holds the commands behind it, so replies to
// a pipelined batch come back in order); replies are batched into one write
// per burst of input. Message data goes to the service as a bounded stream.
import type net from 'node:net';
import { parsePath } from './address';
import { authCommand, authResponse, type AuthState } from './auth';
import { bdatCommand, bdatStep, type BdatChunk } from './bdat';
import { abortData, dataCommand, dataStep, type DataTransfer } from './data';
import { parseMailParams, parseRcptParams } from './params';
import { normalizeIp, parseProxyHeader } from './proxy';
import { closing, formatReply, isPositive, reply, Replies, type Reply } from './reply';
import { Mode, nextId, type SessionContext } from './session-context';
import { startTls, upgrade } from './starttls';
import type { MailFrom, RcptTo, SmtpSession } from './types';

export type { SessionContext } from './session-context';

const LF = 0x0a;
const CR = 0x0d;
/** RFC 4954: AUTH command and SASL response lines may be this long. */
const AUTH_LINE_LIMIT = 12_288;
/** Input we hold while a hook runs before we stop reading the socket. */
const MAX_PENDING_INPUT = 64 * 1024;

/**
 * The session's state and its input loop. The fields and methods that are not
 * private are the engine's own, shared with the files that handle commands
 * and message data (data.ts, bdat.ts, ...); Session is not exported from the
 * package.
 */
export class Session {
  readonly info: SmtpSession;
  sock: net.Socket;
  mode: Mode = Mode.Command;
  inBuf: Buffer | null = null;
  busy = false;
  private out = '';
  private errors = 0;
  /** When the current run of ourFault replies (with no 2xx since) began. */
  private unavailableSince: number | undefined;
  pipelining = false;
  skipLine = false;
  auth: AuthState | undefined;
  data: DataTransfer | undefined;
  bdat: BdatChunk | undefined;
  private clientSlot: string | undefined;
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
    this.afterProxy();
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

  private afterProxy(): void {
    const ip = this.info.clientAddress;
    if (!this.ctx.limiter.tryAcquireClient(ip)) {
      this.endReason = 'too many connections from client';
      this.closeWith(reply(421, '4.7.0', `${this.ctx.hostname} Error: too many connections from ${ip}`));
      return;
    }
    this.clientSlot = ip;
    if (this.ctx.implicitTls) {
      upgrade(this, true);
      return;
    }
    this.beginSession();
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
   * session, 4% of ingress' CPU under smtp-source). Otherwise the client
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

  /**
   * Queues a reply; counts the client's errors and closes after too many.
   * Our own transient failures are not the client's errors: a session that
   * gets nothing else for unavailableCloseMs is closed with 421 4.3.0.
   */
  send(r: Reply): void {
    this.write(formatReply(r));
    if (r.code < 400) {
      if (r.code < 300) this.unavailableSince = undefined;
      return;
    }
    if (r.code === 421) return;
    if (r.ourFault) {
      const now = Date.now();
      this.unavailableSince ??= now;
      if (now - this.unavailableSince >= this.ctx.limits.unavailableCloseMs) {
        this.endReason = 'service unavailable';
        this.closeWith(closing(this.ctx.hostname, '4.3.0', 'Error: service temporarily unavailable, try again later'));
      }
      return;
    }
    this.errors++;
    if (this.errors >= this.ctx.limits.maxErrors) {
      this.endReason = 'too many errors';
      this.closeWith(closing(this.ctx.hostname, '4.7.0', 'Error: too many errors'));
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
        if (!this.commandStep()) break;
      } else if (mode === Mode.Data) {
        dataStep(this);
      } else if (mode === Mode.Bdat) {
        bdatStep(this);
      } else if (mode === Mode.Proxy) {
        if (!this.proxyStep()) break;
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

  private proxyStep(): boolean {
    const r = parseProxyHeader(this.inBuf!);
    if (r.status === 'incomplete') return false;
    if (r.status === 'error') {
      this.ctx.logger?.warn({ session: this.info.id, remote: this.info.remoteAddress, err: r.message }, 'bad PROXY header');
      this.endReason = 'bad PROXY header';
      this.destroy();
      return false;
    }
    this.take(r.consumed);
    if (r.source) {
      this.info.clientAddress = normalizeIp(r.source.address);
      this.info.clientPort = r.source.port;
      this.info.proxied = true;
    }
    const rest = this.inBuf;
    this.inBuf = null;
    if (this.ctx.implicitTls && rest) {
      // The client's first TLS octets came with the header: hand them to TLS.
      this.sock.pause();
      this.sock.unshift(rest);
    } else if (rest) {
      // Plain SMTP client talking before the greeting.
      this.endReason = 'pregreet';
      this.afterProxyThenRefuse();
      return false;
    }
    this.afterProxy();
    return false;
  }

  private afterProxyThenRefuse(): void {
    this.mode = Mode.Command;
    this.closeWith(Replies.pregreet);
  }

  /** One command (or SASL response) line. Returns false when more input is needed. */
  private commandStep(): boolean {
    const buf = this.inBuf!;
    const lf = buf.indexOf(LF);
    let limit = this.ctx.limits.maxCommandLine;
    if ((lf < 0 ? buf.length : lf + 1) > limit) {
      const authLine = this.mode === Mode.Auth || (buf.length >= 5 && buf.subarray(0, 5).toString('latin1').toUpperCase() === 'AUTH ');
      if (authLine) limit = AUTH_LINE_LIMIT;
    }
    if (lf < 0) {
      if (buf.length > limit || this.skipLine) {
        // Too long: drop what we have and the rest of the line, then say so.
        this.skipLine = true;
        this.inBuf = null;
      }
      return false;
    }
    const line = this.take(lf + 1);
    if (this.skipLine) {
      this.skipLine = false;
      this.auth = undefined;
      if (this.mode === Mode.Auth) this.mode = Mode.Command;
      this.send(Replies.lineTooLong);
      return true;
    }
    if (lf + 1 > limit) {
      this.auth = undefined;
      if (this.mode === Mode.Auth) this.mode = Mode.Command;
      this.send(Replies.lineTooLong);
      return true;
    }
    if (lf === 0 || line[lf - 1] !== CR) {
      this.endReason = 'bare LF in command';
      this.closeWith(reply(521, '5.5.2', `${this.ctx.hostname} Error: bare <LF> received`));
      return false;
    }
    const content = line.subarray(0, lf - 1);
    if (content.indexOf(CR) >= 0) {
      this.endReason = 'bare CR in command';
      this.closeWith(reply(521, '5.5.2', `${this.ctx.hostname} Error: bare <CR> received`));
      return false;
    }
    let text = content.toString('latin1');
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(text)) {
      this.send(Replies.badCharacter);
      return true;
    }
    // eslint-disable-next-line no-control-regex
    if (/[^\x00-\x7f]/.test(text)) {
      text = content.toString('utf8');
      if (text.includes('\ufffd')) {
        this.send(Replies.badUtf8);
        return true;
      }
    }
    if (this.mode === Mode.Auth) {
      authResponse(this, text);
      return true;
    }
    this.command(text);
    return true;
  }

  // ---------------------------------------------------------------- commands

  private command(line: string): void {
    const sp = line.indexOf(' ');
    const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
    const arg = sp < 0 ? '' : line.slice(sp + 1);
    this.ctx.stats.command(verb);

    // RFC 2920: without PIPELINING (no EHLO yet, or HELO) a client must wait
    // for each reply, and EHLO/HELO always end a group. Input already queued
    // behind such a command is a synchronization error (Postfix 3.9 style).
    if (this.inBuf !== null && (!this.pipelining || verb === 'EHLO' || verb === 'HELO')) {
      this.endReason = 'improper pipelining';
      this.closeWith(Replies.pipelining);
      return;
    }
    if (this.ctx.closing() && !this.info.envelope && verb !== 'QUIT') {
      this.endReason = 'server shutdown';
      this.closeWith(closing(this.ctx.hostname, '4.3.2', 'Service shutting down, closing transmission channel'));
      return;
    }
    // Between BDAT chunks only BDAT, RSET, NOOP and QUIT make sense.
    if (this.data && !this.data.ended && verb !== 'BDAT' && verb !== 'RSET' && verb !== 'QUIT' && verb !== 'NOOP') {
      this.send(reply(503, '5.5.1', 'Error: BDAT transfer in progress; send BDAT, RSET or QUIT'));
      return;
    }

    switch (verb) {
      case 'EHLO':
      case 'HELO':
        return this.helo(verb === 'EHLO', arg);
      case 'MAIL':
        return this.mail(arg);
      case 'RCPT':
        return this.rcpt(arg);
      case 'DATA':
        return dataCommand(this, arg);
      case 'BDAT':
        return bdatCommand(this, arg);
      case 'RSET':
        if (arg) return this.send(Replies.syntaxNoArgs);
        this.resetTransaction();
        return this.send(Replies.ok);
      case 'NOOP':
        return this.send(Replies.ok);
      case 'QUIT':
        this.endReason = 'quit';
        return this.closeWith(Replies.bye, true);
      case 'HELP':
        return this.send(Replies.help);
      case 'VRFY':
        return this.vrfy(arg);
      case 'EXPN':
        return this.expn(arg);
      case 'ETRN':
        return this.etrn(arg);
      case 'STARTTLS':
        return startTls(this, arg);
      case 'AUTH':
        return authCommand(this, arg);
      case 'TURN':
      case 'ATRN':
      case 'SEND':
      case 'SOML':
      case 'SAML':
        return this.send(Replies.notImplemented);
      default:
        return this.send(Replies.notRecognized);
    }
  }

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

  private helo(esmtp: boolean, arg: string): void {
    const name = arg.trim();
    if (!name) return this.send(esmtp ? Replies.syntaxEhlo : Replies.syntaxHelo);
    if (!/^[\x21-\x7e\u00a0-\uffff]{1,255}$/.test(name)) return this.send(esmtp ? Replies.syntaxEhlo : Replies.syntaxHelo);
    const hook = this.ctx.hooks.onHelo;
    const accept = () => {
      this.resetTransaction();
      this.info.heloName = name;
      this.info.esmtp = esmtp;
      this.pipelining = esmtp;
      if (!esmtp) return this.write(formatReply(reply(250, undefined, this.ctx.hostname), false));
      this.write(formatReply(reply(250, undefined, [this.ctx.hostname, ...this.extensions()]), false));
    };
    if (!hook) return accept();
    this.await(
      () => hook.call(this.ctx.hooks, this.info, name, esmtp),
      (r) => {
        if (r && !isPositive(r)) return this.send(r);
        accept();
      },
    );
  }

  get secure(): boolean {
    return this.info.tls !== undefined;
  }

  get authOffered(): boolean {
    return this.ctx.hooks.onAuth !== undefined && (this.secure || !this.ctx.requireTlsForAuth);
  }

  private extensions(): string[] {
    const ext = ['PIPELINING', `SIZE ${this.ctx.limits.maxMessageSize}`];
    if (this.ctx.hooks.onEtrn) ext.push('ETRN');
    if (this.ctx.secureContext && !this.secure) ext.push('STARTTLS');
    if (this.authOffered && !this.info.user) ext.push('AUTH PLAIN LOGIN');
    ext.push('ENHANCEDSTATUSCODES', '8BITMIME', 'DSN', 'SMTPUTF8', 'CHUNKING', 'BINARYMIME');
    if (this.secure) ext.push('REQUIRETLS');
    return ext;
  }

  private mail(arg: string): void {
    if (!this.info.heloName) return this.send(Replies.sendHeloFirst);
    if (this.info.envelope) return this.send(Replies.nestedMail);
    if (this.ctx.authRequired && !this.info.user) {
      return this.send(this.secure || !this.ctx.secureContext ? Replies.authRequired : Replies.mustIssueStarttls);
    }
    const lim = this.ctx.limits.maxTransactions;
    if (lim > 0 && this.info.transactions >= lim) {
      this.endReason = 'too many transactions';
      return this.closeWith(closing(this.ctx.hostname, '4.7.0', 'Error: too many messages in one session'));
    }
    const m = /^FROM: */i.exec(arg);
    if (!m) return this.send(reply(501, '5.5.4', 'Syntax: MAIL FROM:<address>'));
    const path = parsePath(arg, m[0].length, { allowNull: true, utf8: true });
    if (!path.ok) return this.send(path.kind === 'too_long' ? reply(501, '5.1.7', 'Error: sender address too long') : reply(501, '5.1.7', 'Error: bad sender address syntax'));
    const rest = arg.slice(path.end);
    if (rest.length > 0 && rest.charCodeAt(0) !== 0x20) return this.send(reply(501, '5.1.7', 'Error: bad sender address syntax'));
    const params = parseMailParams(rest, {
      maxMessageSize: this.ctx.limits.maxMessageSize,
      tls: this.secure,
      authEnabled: this.authOffered,
    });
    if (!params.ok) return this.send(params.reply);
    if (path.address.utf8 && !params.params.smtputf8) return this.send(Replies.nonAsciiAddress);
    const from: MailFrom = { address: path.address.address, parsed: path.address, params: params.params };
    const start = () => {
      this.seq++;
      this.info.envelope = { seq: this.seq, mailFrom: from, rcptTo: [], chunking: false, startedAt: new Date(), state: {} };
    };
    const hook = this.ctx.hooks.onMailFrom;
    if (!hook) {
      start();
      return this.send(Replies.mailOk);
    }
    this.await(
      () => hook.call(this.ctx.hooks, this.info, from),
      (r) => {
        if (r && !isPositive(r)) return this.send(r);
        start();
        this.send(r ?? Replies.mailOk);
      },
    );
  }

  private rcpt(arg: string): void {
    const env = this.info.envelope;
    if (!env) return this.send(Replies.needMail);
    const m = /^TO: */i.exec(arg);
    if (!m) return this.send(reply(501, '5.5.4', 'Syntax: RCPT TO:<address>'));
    const smtputf8 = env.mailFrom.params.smtputf8;
    const path = parsePath(arg, m[0].length, { allowPostmaster: true, utf8: smtputf8 });
    if (!path.ok) {
      if (path.kind === 'non_ascii') return this.send(Replies.nonAsciiAddress);
      return this.send(reply(501, '5.1.3', path.kind === 'too_long' ? 'Error: recipient address too long' : 'Error: bad recipient address syntax'));
    }
    const rest = arg.slice(path.end);
    if (rest.length > 0 && rest.charCodeAt(0) !== 0x20) return this.send(reply(501, '5.1.3', 'Error: bad recipient address syntax'));
    const params = parseRcptParams(rest);
    if (!params.ok) return this.send(params.reply);
    if (env.rcptTo.length >= this.ctx.limits.maxRecipients) return this.send(Replies.tooManyRecipients);
    const address = path.address.address;
    const key = `${path.address.local}@${path.address.asciiDomain}`;
    if (env.rcptTo.some((r) => `${r.parsed.local}@${r.parsed.asciiDomain}` === key)) return this.send(Replies.rcptOk);
    const rcpt: RcptTo = { address, parsed: path.address, params: params.params };
    const hook = this.ctx.hooks.onRcptTo;
    if (!hook) {
      env.rcptTo.push(rcpt);
      return this.send(Replies.rcptOk);
    }
    this.await(
      () => hook.call(this.ctx.hooks, this.info, rcpt, env),
      (r) => {
        if (r && !isPositive(r)) return this.send(r);
        if (this.info.envelope !== env) return this.send(Replies.needMail);
        env.rcptTo.push(rcpt);
        this.send(r ?? Replies.rcptOk);
      },
    );
  }

  private vrfy(arg: string): void {
    if (!arg.trim()) return this.send(Replies.syntaxVrfy);
    const hook = this.ctx.hooks.onVrfy;
    if (!hook) return this.send(Replies.vrfyCannot);
    this.await(() => hook.call(this.ctx.hooks, this.info, arg.trim()), (r) => this.send(r));
  }

  private expn(arg: string): void {
    const hook = this.ctx.hooks.onExpn;
    if (!hook) return this.send(Replies.expnDisabled);
    if (!arg.trim()) return this.send(reply(501, '5.5.4', 'Syntax: EXPN list'));
    this.await(() => hook.call(this.ctx.hooks, this.info, arg.trim()), (r) => this.send(r));
  }

  private etrn(arg: string): void {
    const hook = this.ctx.hooks.onEtrn;
    if (!hook) return this.send(Replies.etrnDisabled);
    if (!this.info.heloName) return this.send(Replies.sendHeloFirst);
    if (this.info.envelope) return this.send(Replies.inTransaction);
    const node = arg.trim();
    if (!/^[@#]?[A-Za-z0-9.-]+$/.test(node)) return this.send(Replies.syntaxEtrn);
    this.await(
      () => hook.call(this.ctx.hooks, this.info, node),
      (r) => this.send(r ?? reply(250, '2.0.0', 'Queuing started')),
    );
  }
}
