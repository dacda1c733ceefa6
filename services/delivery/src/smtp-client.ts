// A lean SMTP client for delivery: EHLO with HELO fallback, opportunistic
// STARTTLS, PIPELINING, SIZE, 8BITMIME, SMTPUTF8 and DSN parameters, one
// reply per recipient, and sessions that carry several transactions (RSET
// between) so connections are reused.
import net from 'node:net';
import tls from 'node:tls';
import type { SmtpReply, TlsInfo } from '@tern/proto';

export type Stage = 'connect' | 'greeting' | 'ehlo' | 'starttls' | 'mail' | 'rcpt' | 'data' | 'data-end' | 'rset';

/** The session broke (connection, timeout, 421, TLS): the destination is at fault, not a recipient. */
export class SessionError extends Error {
  constructor(
    readonly stage: Stage,
    readonly reply: SmtpReply,
  ) {
    super(`${stage}: ${reply.code} ${reply.enhanced} ${reply.text}`.replace(/ +/g, ' '));
    this.name = 'SessionError';
  }
}

export interface ConnectOptions {
  address: string;
  port: number;
  /** The MX host name (TLS servername, logs). */
  hostName: string;
  heloName: string;
  localAddress?: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  dataEndTimeoutMs: number;
  /** Try STARTTLS when offered (certificate not verified: opportunistic, "may"). */
  starttls: boolean;
}

export interface TransactionRequest {
  sender: string;
  recipients: { address: string; notify: string[]; orcpt: string }[];
  size: number;
  bodyType: '7BIT' | '8BITMIME' | 'BINARYMIME';
  smtputf8: boolean;
  ret: '' | 'FULL' | 'HDRS';
  envid: string;
  body: AsyncIterable<Buffer>;
}

export interface TransactionResult {
  mail: SmtpReply;
  rcpts: SmtpReply[];
  /** The reply to end of data; absent when no recipient was accepted or MAIL failed. */
  data?: SmtpReply;
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

export class SmtpClient {
  private socket: net.Socket | tls.TLSSocket;
  private buffer = '';
  private lines: string[] = [];
  private waiters: { resolve: (r: SmtpReply) => void; reject: (e: Error) => void; stage: Stage; timer: NodeJS.Timeout }[] = [];
  private replies: SmtpReply[] = [];
  private closedError: SessionError | undefined;
  readonly extensions = new Map<string, string>();
  tls: TlsInfo = { used: false, version: '', cipher: '', verified: false };
  messages = 0;
  lastUsed = Date.now();
  readonly remoteAddress: string;

  private constructor(
    socket: net.Socket,
    private readonly opts: ConnectOptions,
  ) {
    this.socket = socket;
    this.remoteAddress = opts.address;
    this.attach(socket);
  }

  static async connect(opts: ConnectOptions): Promise<SmtpClient> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: opts.address, port: opts.port, localAddress: opts.localAddress });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new SessionError('connect', syntheticReply(451, '4.4.1', `connect to ${opts.hostName}[${opts.address}]:${opts.port}: Connection timed out`)));
      }, opts.connectTimeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(s);
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        const why = err.code === 'ECONNREFUSED' ? 'Connection refused' : err.message;
        reject(new SessionError('connect', syntheticReply(451, '4.4.1', `connect to ${opts.hostName}[${opts.address}]:${opts.port}: ${why}`)));
      });
    });
    socket.setNoDelay(true);
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
    socket.on('close', () => this.fail(new SessionError('data', syntheticReply(451, '4.4.2', `lost connection with ${this.opts.hostName}[${this.opts.address}]`))));
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let i: number;
    while ((i = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, i).replace(/\r$/, '');
      this.buffer = this.buffer.slice(i + 1);
      this.lines.push(line);
      if (line.length < 4 || line[3] !== '-') {
        const reply = /^\d{3}/.test(line) ? parseReply(this.lines) : syntheticReply(451, '4.5.0', `garbled reply: ${line.slice(0, 100)}`);
        this.lines = [];
        const waiter = this.waiters.shift();
        if (waiter) {
          clearTimeout(waiter.timer);
          waiter.resolve(reply);
        } else this.replies.push(reply);
      }
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
        const err = new SessionError(stage, syntheticReply(451, '4.4.2', `conversation with ${this.opts.hostName}[${this.opts.address}] timed out while waiting for the ${stage} reply`));
        this.fail(err);
        this.destroy();
      }, timeoutMs);
      this.waiters.push({ resolve, reject, stage, timer });
    });
  }

  private write(data: string | Buffer): boolean {
    return this.socket.write(data);
  }

  private async command(line: string, stage: Stage): Promise<SmtpReply> {
    this.write(`${line}\r\n`);
    return this.read(stage);
  }

  private async handshake(): Promise<void> {
    const greeting = await this.read('greeting');
    if (greeting.code !== 220) throw new SessionError('greeting', greeting);
    await this.ehlo();
    if (this.opts.starttls && this.extensions.has('STARTTLS')) {
      const r = await this.command('STARTTLS', 'starttls');
      if (r.code === 220) {
        await this.upgrade();
        await this.ehlo();
      }
    }
  }

  private async ehlo(): Promise<void> {
    let r = await this.command(`EHLO ${this.opts.heloName}`, 'ehlo');
    this.extensions.clear();
    if (r.code >= 500 && r.code < 600) {
      r = await this.command(`HELO ${this.opts.heloName}`, 'ehlo');
      if (r.code !== 250) throw new SessionError('ehlo', r);
      return;
    }
    if (r.code !== 250) throw new SessionError('ehlo', r);
    for (const line of (rawLines.get(r) ?? []).slice(1)) {
      const [kw, ...rest] = line.slice(4).trim().split(/\s+/);
      if (kw) this.extensions.set(kw.toUpperCase(), rest.join(' '));
    }
  }

  private async upgrade(): Promise<void> {
    const plain = this.socket as net.Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const t = tls.connect({ socket: plain, servername: net.isIP(this.opts.hostName) ? undefined : this.opts.hostName, rejectUnauthorized: false, minVersion: 'TLSv1.2' });
      const timer = setTimeout(() => reject(new SessionError('starttls', syntheticReply(451, '4.7.5', 'TLS handshake timed out'))), this.opts.commandTimeoutMs);
      t.once('secureConnect', () => {
        clearTimeout(timer);
        resolve(t);
      });
      t.once('error', (err) => {
        clearTimeout(timer);
        reject(new SessionError('starttls', syntheticReply(451, '4.7.5', `TLS handshake failed: ${err.message}`)));
      });
    });
    this.socket = secure;
    this.attach(secure);
    const cipher = secure.getCipher();
    this.tls = { used: true, version: secure.getProtocol() ?? '', cipher: cipher?.name ?? '', verified: secure.authorized };
  }

  /** One mail transaction. Recipient-level refusals are results, not errors. */
  async send(req: TransactionRequest): Promise<TransactionResult> {
    this.lastUsed = Date.now();
    const dsn = this.extensions.has('DSN');
    let mailLine = `MAIL FROM:<${req.sender}>`;
    if (this.extensions.has('SIZE')) mailLine += ` SIZE=${req.size}`;
    if (req.bodyType !== '7BIT' && this.extensions.has('8BITMIME')) mailLine += ` BODY=${req.bodyType === 'BINARYMIME' ? '8BITMIME' : req.bodyType}`;
    if (req.smtputf8) mailLine += ' SMTPUTF8';
    if (dsn && req.ret) mailLine += ` RET=${req.ret}`;
    if (dsn && req.envid) mailLine += ` ENVID=${xtext(req.envid)}`;
    const rcptLines = req.recipients.map((r) => {
      let line = `RCPT TO:<${r.address}>`;
      if (dsn && r.notify.length) line += ` NOTIFY=${r.notify.join(',')}`;
      if (dsn && r.orcpt) line += ` ORCPT=${r.orcpt.replace(/^([^;]+);(.*)$/, (_m, t: string, a: string) => `${t};${xtext(a)}`)}`;
      return line;
    });

    const pipelining = this.extensions.has('PIPELINING');
    let mail: SmtpReply;
    const rcpts: SmtpReply[] = [];
    if (pipelining) {
      // MAIL, every RCPT and DATA in one write; replies come back in order.
      this.write([mailLine, ...rcptLines, 'DATA'].join('\r\n') + '\r\n');
      mail = await this.read('mail');
      for (let i = 0; i < rcptLines.length; i++) rcpts.push(await this.read('rcpt'));
    } else {
      mail = await this.command(mailLine, 'mail');
      if (mail.code === 250) for (const line of rcptLines) rcpts.push(await this.command(line, 'rcpt'));
    }
    if (mail.code === 421) throw new SessionError('mail', mail);
    if (mail.code !== 250) {
      if (pipelining) await this.read('data'); // the DATA reply (503) is still owed
      return { mail, rcpts: req.recipients.map(() => mail) };
    }
    const anyAccepted = rcpts.some((r) => r.code >= 200 && r.code < 300);
    let dataReply: SmtpReply;
    if (pipelining) dataReply = await this.read('data');
    else if (anyAccepted) dataReply = await this.command('DATA', 'data');
    else return { mail, rcpts };
    if (rcpts.some((r) => r.code === 421)) throw new SessionError('rcpt', rcpts.find((r) => r.code === 421)!);
    if (!anyAccepted) return { mail, rcpts };
    if (dataReply.code !== 354) {
      if (dataReply.code === 421) throw new SessionError('data', dataReply);
      return { mail, rcpts, data: dataReply };
    }
    await this.writeBody(req.body);
    const end = await this.read('data-end', this.opts.dataEndTimeoutMs);
    this.messages++;
    this.lastUsed = Date.now();
    if (end.code === 421) throw new SessionError('data-end', end);
    return { mail, rcpts, data: end };
  }

  /** Dot-stuffed, with stray bare CR or LF repaired to CRLF (never pass on a smuggling vector). */
  private async writeBody(body: AsyncIterable<Buffer>): Promise<void> {
    const stuffer = new DotStuffer();
    for await (const chunk of body) {
      const out = stuffer.push(chunk);
      if (!this.write(out)) await new Promise<void>((resolve) => this.socket.once('drain', resolve));
      if (this.closedError) throw this.closedError;
    }
    this.write(stuffer.end());
  }

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
    await Promise.race([this.read('rset', 2_000).catch(() => undefined), new Promise((r) => setTimeout(r, 2_000))]);
    this.destroy();
  }

  destroy(): void {
    this.closedError ??= new SessionError('data', syntheticReply(451, '4.4.2', 'connection closed'));
    this.socket.destroy();
  }
}

/** RFC 3461 xtext. */
function xtext(s: string): string {
  return s.replace(/[^!-*,-<>-~]/g, (c) => `+${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
}

/**
 * Dot-stuffing across chunk boundaries, repairing bare CR and bare LF to CRLF,
 * and ending with CRLF.CRLF.
 */
export class DotStuffer {
  private atLineStart = true;
  private pendingCr = false;

  push(chunk: Buffer): Buffer {
    const out = Buffer.allocUnsafe(chunk.length * 2 + 4);
    let o = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (this.pendingCr) {
        this.pendingCr = false;
        out[o++] = 13;
        out[o++] = 10;
        this.atLineStart = true;
        if (b === 10) continue; // CRLF: already written
      }
      if (b === 13) {
        this.pendingCr = true;
        continue;
      }
      if (b === 10) {
        // bare LF: repair
        out[o++] = 13;
        out[o++] = 10;
        this.atLineStart = true;
        continue;
      }
      if (this.atLineStart && b === 46) out[o++] = 46;
      this.atLineStart = false;
      out[o++] = b;
    }
    return out.subarray(0, o);
  }

  end(): Buffer {
    const tail: number[] = [];
    if (this.pendingCr) {
      tail.push(13, 10);
      this.atLineStart = true;
      this.pendingCr = false;
    }
    if (!this.atLineStart) tail.push(13, 10);
    tail.push(46, 13, 10);
    return Buffer.from(tail);
  }
}
