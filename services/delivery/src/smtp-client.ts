// A lean SMTP/LMTP client for delivery: EHLO with HELO fallback (LHLO for
// LMTP), STARTTLS by policy (none, may, encrypt, verify), PIPELINING, SIZE,
// 8BITMIME, SMTPUTF8, DSN and REQUIRETLS parameters, one reply per recipient,
// and sessions that carry several transactions (RSET between) so that
// connections are reused.
import net from 'node:net';
import tls from 'node:tls';
import { orcptParam, xtextEncode } from '@tern/dsn';
import type { SmtpReply, TlsInfo } from '@tern/proto';
import { daneVerify, type Tlsa } from './dane';
import { errorMessage } from '@tern/runtime';

export type Stage = 'connect' | 'greeting' | 'ehlo' | 'starttls' | 'auth' | 'mail' | 'rcpt' | 'data' | 'data-end' | 'rset';

/**
 * none: never STARTTLS. may: STARTTLS when offered, certificate not checked,
 * clear text when not offered. encrypt: STARTTLS required, certificate not
 * checked. verify: STARTTLS required and the certificate must chain to a
 * trusted CA and name one of `tlsNames`.
 */
export type TlsMode = 'none' | 'may' | 'encrypt' | 'verify';

/** The session broke (connection, timeout, 421, TLS, greeting): the destination is at fault, not a recipient. */
export class SessionError extends Error {
  constructor(
    readonly stage: Stage,
    readonly reply: SmtpReply,
    /** A TLS requirement was not met (not offered, handshake failed, certificate not verified). */
    readonly tlsFailure = false,
  ) {
    super(`${stage}: ${reply.code} ${reply.enhanced} ${reply.text}`.replace(/ +/g, ' '));
    this.name = 'SessionError';
  }
}

/**
 * A reused session turned out unusable at its RSET (closed, timed out, or
 * refused): nothing of the transaction was given to the server, so the job
 * goes on a fresh session instead of counting as an attempt.
 */
export class StaleSessionError extends Error {
  constructor(override readonly cause: unknown) {
    super(`reused session unusable at RSET: ${errorMessage(cause)}`);
    this.name = 'StaleSessionError';
  }
}

export interface ConnectOptions {
  address: string;
  port: number;
  /** A unix socket path instead of address:port (LMTP). */
  socketPath?: string;
  /** The next hop's host name (TLS servername, logs). */
  hostName: string;
  heloName: string;
  localAddress?: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  dataEndTimeoutMs: number;
  tls: TlsMode;
  /** Names the certificate may carry under `verify` (default: hostName); "*.example.com" patterns allowed (MTA-STS). */
  tlsNames?: string[];
  /** Trust anchors for `verify` (PEM); default: Node's bundled CAs. */
  ca?: string | Buffer | (string | Buffer)[];
  /** LMTP (RFC 2033): LHLO, and one reply per accepted recipient at end of data. */
  lmtp?: boolean;
  /**
   * DANE (RFC 7672): the host has a secure TLSA RRset. STARTTLS is then
   * required, and the certificate is authenticated by these records (none
   * usable = encryption without authentication) instead of by CAs.
   */
  dane?: Tlsa[];
  /** SMTP AUTH (RFC 4954) after STARTTLS, PLAIN or LOGIN; never sent without TLS. */
  auth?: { user: string; password: string };
}

export interface TransactionRequest {
  sender: string;
  recipients: { address: string; notify: string[]; orcpt: string }[];
  size: number;
  bodyType: '7BIT' | '8BITMIME' | 'BINARYMIME';
  smtputf8: boolean;
  requiretls?: boolean;
  ret: '' | 'FULL' | 'HDRS';
  envid: string;
  body: AsyncIterable<Buffer>;
}

export interface TransactionResult {
  mail: SmtpReply;
  rcpts: SmtpReply[];
  /**
   * The reply to end of data per recipient (the same reply for every accepted
   * one in SMTP; LMTP gives each its own); undefined for a recipient whose
   * RCPT was refused. Absent when MAIL failed or no recipient was accepted.
   */
  data?: (SmtpReply | undefined)[];
  /**
   * LMTP only: the session broke after some recipients had their reply at
   * end of data (those keep it, they are delivered or refused); the others
   * (data[i] undefined though their RCPT was accepted) get this error's reply.
   */
  broken?: SessionError;
}

const ENHANCED = /^([245]\.\d{1,3}\.\d{1,3})\s+/;

/** Raw lines of each parsed reply (EHLO keywords are read from them). */
const rawLines = new WeakMap<SmtpReply, string[]>();

function parseReply(lines: string[]): SmtpReply {
  const code = Number(lines[0]!.slice(0, 3));
  const texts = lines.map((l) => l.slice(4));
  const m = ENHANCED.exec(texts[0] ?? '');
  const enhanced = m ? m[1]! : '';
  const reply = { code, enhanced, text: texts.map((t) => (enhanced && t.startsWith(enhanced) ? t.slice(enhanced.length).trimStart() : t)).join(' ') };
  rawLines.set(reply, lines);
  return reply;
}

export function syntheticReply(code: number, enhanced: string, text: string): SmtpReply {
  return { code, enhanced, text };
}

const isOk = (r: SmtpReply) => r.code >= 200 && r.code < 300;

/** Does a certificate name pattern ("mx.example.com", "*.example.com") cover `host`? */
export function nameMatches(pattern: string, host: string): boolean {
  const p = pattern.toLowerCase().replace(/\.$/, '');
  const h = host.toLowerCase().replace(/\.$/, '');
  if (p.startsWith('*.')) {
    const rest = p.slice(2);
    const dot = h.indexOf('.');
    return dot > 0 && h.slice(dot + 1) === rest;
  }
  return p === h;
}

export class SmtpClient {
  private socket: net.Socket | tls.TLSSocket;
  private buffer = '';
  private lines: string[] = [];
  private waiters: { resolve: (r: SmtpReply) => void; reject: (e: Error) => void; stage: Stage; timer: NodeJS.Timeout }[] = [];
  private replies: SmtpReply[] = [];
  private closedError: SessionError | undefined;
  private resetDue = false;
  readonly extensions = new Map<string, string>();
  tls: TlsInfo = { used: false, version: '', cipher: '', verified: false };
  /** Transactions that reached end of data on this session (the reuse cap counts them). */
  messages = 0;
  lastUsed = Date.now();
  readonly remoteAddress: string;
  /** EHLO was refused and HELO used: no extensions. */
  heloOnly = false;

  private constructor(
    socket: net.Socket,
    readonly opts: ConnectOptions,
  ) {
    this.socket = socket;
    this.remoteAddress = opts.socketPath ?? opts.address;
    this.attach(socket);
  }

  private get peer(): string {
    return this.opts.socketPath ? `${this.opts.hostName}[${this.opts.socketPath}]` : `${this.opts.hostName}[${this.opts.address}]:${this.opts.port}`;
  }

  static async connect(opts: ConnectOptions): Promise<SmtpClient> {
    const where = opts.socketPath ? `${opts.hostName}[${opts.socketPath}]` : `${opts.hostName}[${opts.address}]:${opts.port}`;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = opts.socketPath ? net.connect({ path: opts.socketPath }) : net.connect({ host: opts.address, port: opts.port, localAddress: opts.localAddress });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new SessionError('connect', syntheticReply(451, '4.4.1', `connect to ${where}: Connection timed out`)));
      }, opts.connectTimeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        const why = err.code === 'ECONNREFUSED' ? 'Connection refused' : err.message;
        reject(new SessionError('connect', syntheticReply(451, '4.4.1', `connect to ${where}: ${why}`)));
      });
    });
    if (!opts.socketPath) socket.setNoDelay(true);
    const client = new SmtpClient(socket, opts);
    try {
      await client.handshake();
    } catch (err) {
      client.destroy();
      throw err;
    }
    return client;
  }

  private attach(socket: net.Socket | tls.TLSSocket): void {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.fail(new SessionError('data', syntheticReply(451, '4.4.2', `lost connection with ${this.peer}`))));
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let i: number;
    while ((i = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, i).replace(/\r$/, '');
      this.buffer = this.buffer.slice(i + 1);
      this.lines.push(line);
      if (line.length < 4 || line[3] !== '-') {
        const reply = /^[2-5]\d\d$|^[2-5]\d\d /.test(line) ? parseReply(this.lines) : syntheticReply(451, '4.5.0', `garbled reply from ${this.peer}: ${line.slice(0, 100)}`);
        this.lines = [];
        const waiter = this.waiters.shift();
        if (waiter) {
          clearTimeout(waiter.timer);
          waiter.resolve(reply);
        } else this.replies.push(reply);
      }
    }
    // A peer that sends an endless line without LF must not grow memory without bound.
    if (this.buffer.length > 65_536) {
      this.fail(new SessionError('data', syntheticReply(451, '4.5.0', `overlong reply line from ${this.peer}`)));
      this.destroy();
    }
  }

  private fail(err: SessionError): void {
    if (!this.closedError) this.closedError = err;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new SessionError(w.stage, err.reply));
    }
  }

  /** The next reply, in order (pipelined commands get theirs in sequence). */
  private read(stage: Stage, timeoutMs = this.opts.commandTimeoutMs): Promise<SmtpReply> {
    const ready = this.replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.closedError) return Promise.reject(new SessionError(stage, this.closedError.reply));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const err = new SessionError(stage, syntheticReply(451, '4.4.2', `conversation with ${this.peer} timed out while waiting for the ${stage} reply`));
        this.fail(err);
        this.destroy();
      }, timeoutMs);
      this.waiters.push({ resolve, reject, stage, timer });
    });
  }

  /**
   * The next reply; a 421 ends the session (RFC 5321 3.8: the server is
   * closing the channel), which concerns the destination, not the message.
   */
  private async expect(stage: Stage, timeoutMs?: number): Promise<SmtpReply> {
    const r = await this.read(stage, timeoutMs);
    if (r.code === 421) {
      this.destroy();
      throw new SessionError(stage, r);
    }
    return r;
  }

  private write(data: string | Buffer): boolean {
    if (this.socket.destroyed) return false;
    return this.socket.write(data);
  }

  private async command(line: string, stage: Stage): Promise<SmtpReply> {
    this.write(`${line}\r\n`);
    return this.expect(stage);
  }

  private async handshake(): Promise<void> {
    const greeting = await this.read('greeting');
    if (greeting.code !== 220) throw new SessionError('greeting', greeting);
    await this.hello();
    const mode = this.opts.tls;
    if (this.opts.auth && mode === 'none') throw new SessionError('auth', syntheticReply(451, '4.7.0', `refusing to send credentials to ${this.peer} without TLS (the route's TLS policy is none)`), true);
    if (mode === 'none') return;
    const required = mode === 'encrypt' || mode === 'verify' || !!this.opts.dane;
    if (!this.extensions.has('STARTTLS')) {
      if (this.opts.auth) throw new SessionError('auth', syntheticReply(451, '4.7.0', `refusing to send credentials to ${this.peer}: it does not offer STARTTLS`), true);
      if (required) throw new SessionError('starttls', syntheticReply(451, '4.7.4', `TLS is required, but was not offered by host ${this.peer}`), true);
      return;
    }
    const r = await this.command('STARTTLS', 'starttls');
    if (r.code !== 220) {
      if (this.opts.auth) throw new SessionError('auth', syntheticReply(451, '4.7.0', `refusing to send credentials to ${this.peer}: STARTTLS refused (${r.code} ${r.text})`), true);
      if (required) throw new SessionError('starttls', syntheticReply(451, '4.7.5', `TLS is required, but host ${this.peer} refused to start TLS: ${r.code} ${r.text}`), true);
      return; // "may": go on in clear, as the server still talks to us
    }
    await this.upgrade();
    await this.hello();
    if (this.opts.auth) await this.authenticate(this.opts.auth);
  }

  /** RFC 4954: PLAIN, else LOGIN. Credentials only ever go over TLS. */
  private async authenticate(auth: { user: string; password: string }): Promise<void> {
    const mechs = (this.extensions.get('AUTH') ?? '').toUpperCase().split(/\s+/);
    const b64 = (v: string) => Buffer.from(v, 'utf8').toString('base64');
    let r: SmtpReply;
    if (mechs.includes('PLAIN')) r = await this.command(`AUTH PLAIN ${b64(`\0${auth.user}\0${auth.password}`)}`, 'auth');
    else if (mechs.includes('LOGIN')) {
      r = await this.command('AUTH LOGIN', 'auth');
      if (r.code === 334) r = await this.command(b64(auth.user), 'auth');
      if (r.code === 334) r = await this.command(b64(auth.password), 'auth');
    } else throw new SessionError('auth', syntheticReply(451, '4.7.0', `${this.peer} offers no AUTH mechanism we use (PLAIN, LOGIN): "${this.extensions.get('AUTH') ?? ''}"`));
    // A refused login is the route's problem (a wrong password), not the message's: defer, like Postfix.
    if (r.code !== 235) throw new SessionError('auth', syntheticReply(451, '4.7.8', `SASL authentication as ${auth.user} failed at ${this.peer}: ${r.code} ${r.enhanced} ${r.text}`.replace(/ +/g, ' ')));
  }

  private async hello(): Promise<void> {
    this.extensions.clear();
    if (this.opts.lmtp) {
      const r = await this.command(`LHLO ${this.opts.heloName}`, 'ehlo');
      if (r.code !== 250) throw new SessionError('ehlo', r);
      this.readExtensions(r);
      return;
    }
    const r = await this.command(`EHLO ${this.opts.heloName}`, 'ehlo');
    if (r.code >= 500 && r.code < 600) {
      // An old server: HELO, and no extensions (RFC 5321 3.2).
      const h = await this.command(`HELO ${this.opts.heloName}`, 'ehlo');
      if (h.code !== 250) throw new SessionError('ehlo', h);
      this.heloOnly = true;
      return;
    }
    if (r.code !== 250) throw new SessionError('ehlo', r);
    this.readExtensions(r);
  }

  private readExtensions(r: SmtpReply): void {
    for (const line of (rawLines.get(r) ?? []).slice(1)) {
      const [kw, ...rest] = line.slice(4).trim().split(/\s+/);
      if (kw) this.extensions.set(kw.toUpperCase(), rest.join(' '));
    }
  }

  private async upgrade(): Promise<void> {
    const plain = this.socket as net.Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    // Anything the server sent after its 220 (it must not have) is discarded with the clear-text state (RFC 3207 4.2).
    this.buffer = '';
    this.replies = [];
    const verify = this.opts.tls === 'verify';
    const names = this.opts.tlsNames?.length ? this.opts.tlsNames : [this.opts.hostName];
    let verified = false;
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const t = tls.connect({
        socket: plain,
        servername: net.isIP(this.opts.hostName) ? undefined : this.opts.hostName,
        // Chain validation is always computed (for the `verified` record) but enforced only under `verify`.
        rejectUnauthorized: false,
        ca: this.opts.ca,
        minVersion: 'TLSv1.2',
      });
      const timer = setTimeout(() => {
        t.destroy();
        reject(new SessionError('starttls', syntheticReply(451, '4.7.5', `TLS handshake with ${this.peer} timed out`), true));
      }, this.opts.commandTimeoutMs);
      t.once('secureConnect', () => {
        clearTimeout(timer);
        const cert = t.getPeerCertificate(true);
        const dane = this.opts.dane;
        if (dane?.length) {
          // DANE decides, whatever the policy (RFC 7672 2.2: TLSA records take precedence over CAs).
          const d = daneVerify(dane, cert, this.opts.hostName);
          if (!d.ok) {
            t.destroy();
            reject(new SessionError('starttls', syntheticReply(451, '4.7.5', `DANE: ${d.why} (${this.peer})`), true));
            return;
          }
          verified = true;
          resolve(t);
          return;
        }
        const nameOk = !!cert && Object.keys(cert).length > 0 && names.some((n) => certCovers(cert, n));
        verified = t.authorized && nameOk;
        if (verify && !verified) {
          const err = String(t.authorizationError ?? '');
          const why = t.authorized || err === 'ERR_TLS_CERT_ALTNAME_INVALID' ? `certificate does not name ${names.join(' or ')}` : err;
          t.destroy();
          reject(new SessionError('starttls', syntheticReply(451, '4.7.5', `Server certificate not verified for ${this.peer}: ${why}`), true));
          return;
        }
        resolve(t);
      });
      t.once('error', (err) => {
        clearTimeout(timer);
        reject(new SessionError('starttls', syntheticReply(451, '4.7.5', `TLS handshake with ${this.peer} failed: ${err.message}`), true));
      });
    });
    this.socket = secure;
    this.attach(secure);
    const cipher = secure.getCipher();
    this.tls = { used: true, version: secure.getProtocol() ?? '', cipher: cipher?.name ?? '', verified };
  }

  /** One mail transaction. Recipient-level refusals are results, not errors; a broken session throws SessionError. */
  async send(req: TransactionRequest): Promise<TransactionResult> {
    this.lastUsed = Date.now();
    const dsn = this.extensions.has('DSN');
    let mailLine = `MAIL FROM:<${req.sender}>`;
    if (this.extensions.has('SIZE')) mailLine += ` SIZE=${req.size}`;
    // RFC 3030: BDAT when the server offers CHUNKING (a BINARYMIME message needs it, and BINARYMIME).
    const chunking = this.extensions.has('CHUNKING');
    if (req.bodyType === 'BINARYMIME') mailLine += ' BODY=BINARYMIME';
    else if (req.bodyType === '8BITMIME' && this.extensions.has('8BITMIME')) mailLine += ' BODY=8BITMIME';
    if (req.smtputf8) mailLine += ' SMTPUTF8';
    if (req.requiretls) mailLine += ' REQUIRETLS';
    if (dsn && req.ret) mailLine += ` RET=${req.ret}`;
    if (dsn && req.envid) mailLine += ` ENVID=${xtextEncode(req.envid)}`;
    const rcptLines = req.recipients.map((r) => {
      let line = `RCPT TO:<${r.address}>`;
      if (dsn && r.notify.length) line += ` NOTIFY=${r.notify.join(',')}`;
      const orcpt = dsn && r.orcpt ? orcptParam(r.orcpt, req.smtputf8) : undefined;
      if (orcpt) line += ` ORCPT=${orcpt}`;
      return line;
    });

    // RFC 2920 (and LMTP, which always pipelines): MAIL, every RCPT and DATA in one write; replies come back in order.
    const pipelining = this.extensions.has('PIPELINING');
    // A reused session's RSET (see resetBeforeNext) leads the same write.
    const reset = this.resetDue;
    this.resetDue = false;
    if (reset && !pipelining && !(await this.reset())) throw new StaleSessionError(new Error('RSET refused or unanswered'));
    let mail: SmtpReply;
    const rcpts: SmtpReply[] = [];
    let dataReply: SmtpReply | undefined;
    if (pipelining) {
      this.write([...(reset ? ['RSET'] : []), mailLine, ...rcptLines, ...(chunking ? [] : ['DATA'])].join('\r\n') + '\r\n');
      if (reset) {
        let r: SmtpReply;
        try {
          r = await this.expect('rset');
        } catch (err) {
          this.destroy();
          throw new StaleSessionError(err);
        }
        if (r.code !== 250) {
          // The rest of the group is unread: this session is done.
          this.destroy();
          throw new StaleSessionError(new Error(`RSET answered ${r.code} ${r.text}`));
        }
      }
      mail = await this.expect('mail');
      for (let i = 0; i < rcptLines.length; i++) rcpts.push(await this.expect('rcpt'));
      if (!chunking) dataReply = await this.expect('data');
    } else {
      mail = await this.command(mailLine, 'mail');
      if (isOk(mail)) for (const line of rcptLines) rcpts.push(await this.command(line, 'rcpt'));
    }
    if (!isOk(mail)) return { mail, rcpts: req.recipients.map(() => mail) };
    const anyAccepted = rcpts.some(isOk);
    if (!anyAccepted) {
      if (dataReply?.code === 354) {
        // A server that said 354 although it took no recipient: end the empty data (RFC 2920 3.1).
        this.write('.\r\n');
        await this.expect('data-end');
      }
      return { mail, rcpts };
    }
    if (chunking) {
      // BDAT chunks, each answered; a refused chunk ends the transaction with that reply.
      const refused = await this.writeChunks(req.body, req.bodyType === 'BINARYMIME');
      if (refused) return { mail, rcpts, data: rcpts.map((r) => (isOk(r) ? refused : undefined)) };
    } else {
      dataReply ??= await this.command('DATA', 'data');
      if (dataReply.code !== 354) return { mail, rcpts, data: rcpts.map((r) => (isOk(r) ? dataReply : undefined)) };
      await this.writeBody(req.body);
    }
    const data: (SmtpReply | undefined)[] = [];
    if (this.opts.lmtp) {
      // RFC 2033 4.2: one reply per accepted recipient, in RCPT order. A 421
      // among them ends the session; the recipients answered before it keep theirs.
      for (const r of rcpts) {
        if (!isOk(r)) {
          data.push(undefined);
          continue;
        }
        try {
          data.push(await this.expect('data-end', this.opts.dataEndTimeoutMs));
        } catch (err) {
          // Replies already given stand: a mailbox that took the message must not get it twice.
          if (!(err instanceof SessionError) || !data.some((d) => d)) throw err;
          this.destroy();
          while (data.length < rcpts.length) data.push(undefined);
          return { mail, rcpts, data, broken: err };
        }
      }
    } else {
      const end = await this.expect('data-end', this.opts.dataEndTimeoutMs);
      for (const r of rcpts) data.push(isOk(r) ? end : undefined);
    }
    this.messages++;
    this.lastUsed = Date.now();
    return { mail, rcpts, data };
  }

  /**
   * Recipient verification (a callout): MAIL FROM and RCPT TO, then RSET;
   * nothing is sent. The replies to MAIL and, when MAIL was taken, to RCPT;
   * a broken session throws SessionError.
   */
  async probe(sender: string, recipient: string): Promise<{ mail: SmtpReply; rcpt?: SmtpReply }> {
    this.lastUsed = Date.now();
    if (this.resetDue) {
      this.resetDue = false;
      if (!(await this.reset())) throw new StaleSessionError(new Error('RSET refused or unanswered'));
    }
    // RFC 6531: a UTF-8 address needs SMTPUTF8 on MAIL (where offered; elsewhere the RCPT says what the server thinks).
    const utf8 = /[\u0080-\u{10ffff}]/u.test(recipient) && this.extensions.has('SMTPUTF8');
    const mail = await this.command(`MAIL FROM:<${sender}>${utf8 ? ' SMTPUTF8' : ''}`, 'mail');
    if (!isOk(mail)) return { mail };
    const rcpt = await this.command(`RCPT TO:<${recipient}>`, 'rcpt');
    // Ends the transaction at once: the server must not keep a half-made one open.
    await this.reset();
    return { mail, rcpt };
  }

  /** Dot-stuffed, with stray bare CR or LF repaired to CRLF (never pass on a smuggling vector). */
  private async writeBody(body: AsyncIterable<Buffer>): Promise<void> {
    const stuffer = new WireBody(true);
    // Each chunk is written when the next arrives, so that the last one and
    // the end of data leave in one write (a 4 KiB message: one write, not two).
    let held: Buffer | undefined;
    for await (const chunk of body) {
      if (this.closedError) throw this.closedError;
      const out = stuffer.push(chunk);
      if (held && !this.write(held)) await this.drained();
      held = out;
    }
    if (this.closedError) throw this.closedError;
    // Corked: the two buffers go out in one writev, without a copy. A
    // peer that stops reading still meets the data timeout (drained).
    this.socket.cork();
    const taken = held ? this.write(held) : true;
    const endTaken = this.write(stuffer.end());
    this.socket.uncork();
    if (!(taken && endTaken)) await this.drained();
  }

  /**
   * The body as BDAT chunks (RFC 3030) of about 64 KiB, the last one with
   * LAST (its reply is read by the caller, as the end of data). No
   * dot-stuffing; bare CR and LF are still repaired, except in a BINARYMIME
   * body, which is sent as it is. Returns the reply that refused a chunk, if any.
   */
  private async writeChunks(body: AsyncIterable<Buffer>, binary: boolean): Promise<SmtpReply | undefined> {
    const repair = binary ? undefined : new WireBody(false);
    let pending: Buffer[] = [];
    let size = 0;
    const flush = async (): Promise<SmtpReply | undefined> => {
      const chunk = Buffer.concat(pending, size);
      pending = [];
      size = 0;
      this.write(`BDAT ${chunk.length}\r\n`);
      if (!this.write(chunk)) await this.drained();
      const r = await this.expect('data');
      return isOk(r) ? undefined : r;
    };
    for await (const part of body) {
      if (this.closedError) throw this.closedError;
      const out = repair ? repair.push(part) : part;
      pending.push(out);
      size += out.length;
      if (size >= 65_536) {
        const refused = await flush();
        if (refused) return refused;
      }
    }
    if (repair) {
      const tail = repair.end();
      pending.push(tail);
      size += tail.length;
    }
    const last = Buffer.concat(pending, size);
    this.write(`BDAT ${last.length} LAST\r\n`);
    if (!this.write(last)) await this.drained();
    return undefined;
  }

  /**
   * Waits until the socket takes more data. A server that stops reading in
   * the middle of the data is given up after the command timeout (RFC 5321
   * 4.5.3.2 "data block": 3 minutes), never waited for forever.
   */
  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.fail(new SessionError('data', syntheticReply(451, '4.4.2', `conversation with ${this.peer} timed out while sending the message data`)));
        this.destroy();
        done();
      }, this.opts.commandTimeoutMs);
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  /**
   * The next transaction starts with RSET (a reused session). With
   * PIPELINING it travels in the same write as MAIL, RCPT and DATA (RFC 2920
   * allows RSET anywhere in a group): one round trip fewer per reused
   * message. Its failure is a StaleSessionError from send().
   */
  resetBeforeNext(): void {
    this.resetDue = true;
  }

  /** RSET before a reused session's next transaction; false = do not use this session. */
  async reset(): Promise<boolean> {
    try {
      const r = await this.command('RSET', 'rset');
      return r.code === 250;
    } catch {
      return false;
    }
  }

  get usable(): boolean {
    return !this.closedError && !this.socket.destroyed;
  }

  async quit(): Promise<void> {
    if (!this.usable) return this.destroy();
    this.write('QUIT\r\n');
    await this.read('rset', 2_000).catch(() => undefined);
    this.destroy();
  }

  destroy(): void {
    this.closedError ??= new SessionError('data', syntheticReply(451, '4.4.2', 'connection closed'));
    this.socket.destroy();
  }
}

/** Does the certificate name `name` (subjectAltName DNS names, or the CN when there are none)? `name` may be "*.example.com". */
function certCovers(cert: tls.PeerCertificate, name: string): boolean {
  const sans = (cert.subjectaltname ?? '')
    .split(/,\s*/)
    .filter((s) => s.startsWith('DNS:'))
    .map((s) => s.slice(4));
  const certNames = sans.length ? sans : cert.subject?.CN ? [String(cert.subject.CN)] : [];
  if (name.startsWith('*.')) {
    // An MTA-STS pattern: a certificate name that the pattern covers, or a wildcard certificate for the same suffix.
    return certNames.some((c) => c.toLowerCase() === name.toLowerCase() || nameMatches(name, c));
  }
  return certNames.some((c) => nameMatches(c, name));
}

const CR = 13;
const LF = 10;
const DOT = 46;
/** A CR not followed by LF, an LF not preceded by CR. */
const NEEDS_REPAIR = /\r(?!\n)|(?<!\r)\n/;
/** The same, or a line starting with "." (to be doubled for DATA). */
const NEEDS_REPAIR_OR_STUFFING = /\r(?!\n)|(?<!\r)\n|\n\./;

/**
 * A body for the wire, across chunk boundaries: bare CR and bare LF repaired
 * to CRLF (never pass on a smuggling vector) and the last line ended with
 * CRLF; for DATA also dot-stuffed and terminated with "." CRLF, for BDAT
 * (`dotStuff` false) neither.
 */
export class WireBody {
  private atLineStart = true;
  private pendingCr = false;

  constructor(private readonly dotStuff: boolean) {}

  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    if (!this.pendingCr && this.passesAsIs(chunk)) {
      this.atLineStart = chunk[chunk.length - 1] === LF;
      return chunk;
    }
    return this.rewrite(chunk);
  }

  /**
   * True when the chunk needs no change: every line ending CR LF, no CR at
   * its end (that one's LF is in the next chunk) and, for DATA, no line
   * starting with ".". Nearly every body is like that (queue stores what
   * ingress accepted, and ingress refuses bare line endings), and a regular
   * expression over a latin1 view scans it about ten times faster than a
   * byte loop in JavaScript.
   */
  private passesAsIs(chunk: Buffer): boolean {
    const n = chunk.length;
    if (chunk[n - 1] === CR) return false;
    if (this.dotStuff && this.atLineStart && chunk[0] === DOT) return false;
    // An LF first in the chunk is bare here (no CR pending): the lookbehind
    // has nothing before it, so the expression finds it.
    return !(this.dotStuff ? NEEDS_REPAIR_OR_STUFFING : NEEDS_REPAIR).test(chunk.toString('latin1'));
  }

  /** Byte by byte: repairs bare CR and LF to CR LF and doubles a leading dot. */
  private rewrite(chunk: Buffer): Buffer {
    const out = Buffer.allocUnsafe(chunk.length * 2 + 4);
    const dotStuff = this.dotStuff;
    let atLineStart = this.atLineStart;
    let pendingCr = this.pendingCr;
    let o = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (pendingCr) {
        pendingCr = false;
        out[o++] = CR;
        out[o++] = LF;
        atLineStart = true;
        if (b === LF) continue; // CRLF: already written
      }
      if (b === CR) {
        pendingCr = true;
        continue;
      }
      if (b === LF) {
        // bare LF: repair
        out[o++] = CR;
        out[o++] = LF;
        atLineStart = true;
        continue;
      }
      if (dotStuff && atLineStart && b === DOT) out[o++] = DOT;
      atLineStart = false;
      out[o++] = b;
    }
    this.atLineStart = atLineStart;
    this.pendingCr = pendingCr;
    return out.subarray(0, o);
  }

  end(): Buffer {
    const tail: number[] = [];
    if (this.pendingCr || !this.atLineStart) tail.push(13, 10);
    this.pendingCr = false;
    this.atLineStart = true;
    if (this.dotStuff) tail.push(46, 13, 10);
    return Buffer.from(tail);
  }
}
