// A test/demo SMTP (or LMTP) server that behaves like KumoMTA's sink: any
// recipient is accepted, except that a local part starting with `permfail`
// gets `550 5.1.1` and one starting with `tempfail` gets `451 4.3.0`.
// Accepted messages are kept in memory (and written as .eml files when `dir`
// is set). Every stage can be made to answer a given code, hang (never
// answer) or drop the connection, for tests of the delivery side.
//
//   const sink = await new SmtpSink({ host: '127.0.0.3', port: 2525 }).start();
//   sink.setBehaviour({ rcpt: (to) => (to.startsWith('slow@') ? 'hang' : undefined) });
//   await sink.waitForMessages(1, 10_000);
//
// Written on net/tls directly (not smtp-server) so that any reply, including
// the exact enhanced status code, and a hang at any stage are possible.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { selfSignedCert } from './tls';

/** A reply: `text` is used verbatim (include the enhanced code); several lines for a multi-line reply. */
export interface SinkReply {
  code: number;
  text?: string | string[];
  /** Wait this long before answering (the reply still comes). */
  delayMs?: number;
}

/**
 * accept: the normal answer. hang: never answer (later input is ignored,
 * the connection stays open). disconnect: close the connection without an answer.
 */
export type SinkAction = 'accept' | 'hang' | 'disconnect' | SinkReply;

export interface SinkTransaction {
  connectionId: number;
  remoteAddress: string;
  tls: boolean;
  helo: string;
  mailFrom: string;
  mailParams: Record<string, string | true>;
  rcptTo: string[];
}

export interface SinkBehaviour {
  /** The greeting (220 by default); e.g. { code: 421 } or 'hang'. */
  greeting?: SinkAction;
  /** EHLO/HELO/LHLO. */
  ehlo?: SinkAction;
  mail?: SinkAction | ((from: string, tx: SinkTransaction) => SinkAction | undefined);
  /** Before the default permfail/tempfail rule; undefined falls through to it. */
  rcpt?: SinkAction | ((to: string, tx: SinkTransaction) => SinkAction | undefined);
  /** The answer to the DATA command itself (354 by default). */
  dataCommand?: SinkAction;
  /**
   * The answer at end of data (and to BDAT LAST). In LMTP mode the function
   * is asked once per recipient, with `rcpt` set.
   */
  data?: SinkAction | ((msg: SinkTransaction & { raw: Buffer }, rcpt?: string) => SinkAction | undefined);
}

export interface SinkMessage {
  /** Sink-assigned id, also the .eml file's base name. */
  id: string;
  mailFrom: string;
  mailParams: Record<string, string | true>;
  rcptTo: string[];
  rcptParams: Record<string, string | true>[];
  /** The message as received, dot-unstuffed, CRLF line ends as sent. */
  raw: Buffer;
  remoteAddress: string;
  remotePort: number;
  tls: boolean;
  helo: string;
  connectionId: number;
  receivedAt: Date;
  /** Path of the .eml file, when `dir` is set. */
  file?: string;
}

export interface SinkConnection {
  id: number;
  remoteAddress: string;
  remotePort: number;
  openedAt: Date;
  closedAt?: Date;
  tls: boolean;
  /** Messages accepted on this connection. */
  messages: number;
  /** Commands received (verbs, upper-case), e.g. for checking a client's sequence. */
  commands: string[];
}

export interface SmtpSinkOptions {
  /** 127.0.0.x; default 127.0.0.1. */
  host?: string;
  /** 0 (default) = ephemeral. */
  port?: number;
  /** Name in the greeting and EHLO answer; default "sink.test". */
  hostname?: string;
  /** Write accepted messages here as <id>.eml (and <id>.json with the envelope). */
  dir?: string;
  /** Speak LMTP (LHLO; one reply per recipient at end of data). */
  lmtp?: boolean;
  /** Advertise (and allow) these; defaults: all true except starttls, chunking. */
  pipelining?: boolean;
  smtputf8?: boolean;
  dsn?: boolean;
  eightBitMime?: boolean;
  enhancedStatusCodes?: boolean;
  chunking?: boolean;
  starttls?: boolean;
  /** Implicit TLS from the first byte (like port 465). */
  implicitTls?: boolean;
  /** Certificate for STARTTLS/implicit TLS; default: a fresh self-signed one for `hostname` and `host`. */
  tlsCert?: { key: string | Buffer; cert: string | Buffer };
  /** SIZE limit in bytes, advertised; 0 = no SIZE keyword and no limit. Default 50 MiB. */
  size?: number;
  /** Close connections idle this long (default 300 s). */
  idleTimeoutMs?: number;
  /** The rules at start (setBehaviour() changes them later). */
  behaviour?: SinkBehaviour;
}

class Input {
  private buf: Buffer = Buffer.alloc(0);
  private waiter?: () => void;
  ended = false;

  push(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    this.wake();
  }
  end(): void {
    this.ended = true;
    this.wake();
  }
  get pending(): number {
    return this.buf.length;
  }
  discard(): void {
    this.buf = Buffer.alloc(0);
  }
  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
  private async more(): Promise<boolean> {
    if (this.ended) return false;
    await new Promise<void>((resolve) => (this.waiter = resolve));
    return true;
  }
  /** One line with its terminator, or null at end of input. `max` bytes at most (then the rest is cut). */
  async line(max = 65536): Promise<Buffer | null> {
    for (;;) {
      const i = this.buf.indexOf(10);
      if (i >= 0) {
        const line = this.buf.subarray(0, i + 1);
        this.buf = this.buf.subarray(i + 1);
        return line;
      }
      if (this.buf.length > max) {
        const line = this.buf;
        this.buf = Buffer.alloc(0);
        return line;
      }
      if (!(await this.more())) return null;
    }
  }
  async bytes(n: number): Promise<Buffer | null> {
    while (this.buf.length < n) if (!(await this.more())) return null;
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}

const ENHANCED: Record<number, string> = {
  211: '2.0.0', 214: '2.0.0', 220: '', 221: '2.0.0', 250: '2.0.0', 251: '2.1.5', 252: '2.5.0',
  421: '4.3.2', 450: '4.2.0', 451: '4.3.0', 452: '4.3.1', 454: '4.7.0',
  500: '5.5.2', 501: '5.5.4', 502: '5.5.1', 503: '5.5.1', 504: '5.5.4', 530: '5.7.0', 550: '5.7.1', 551: '5.1.6',
  552: '5.3.4', 553: '5.1.3', 554: '5.3.0', 555: '5.5.4',
};

function parseParams(s: string): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (const p of s.trim().split(/\s+/).filter(Boolean)) {
    const eq = p.indexOf('=');
    if (eq < 0) out[p.toUpperCase()] = true;
    else out[p.slice(0, eq).toUpperCase()] = p.slice(eq + 1);
  }
  return out;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class SmtpSink {
  readonly options: SmtpSinkOptions;
  private server?: net.Server;
  private boundPort = 0;
  private behaviour: SinkBehaviour;
  private readonly sockets = new Set<net.Socket>();
  private secureContext?: tls.SecureContext;
  private seq = 0;
  private waiters: { n: number; resolve: () => void }[] = [];
  /** Accepted messages, in order. */
  readonly messages: SinkMessage[] = [];
  /** Every connection, in order of arrival. */
  readonly connections: SinkConnection[] = [];

  constructor(opts: SmtpSinkOptions = {}) {
    this.options = opts;
    this.behaviour = opts.behaviour ?? {};
  }

  get host(): string {
    return this.options.host ?? '127.0.0.1';
  }
  get port(): number {
    return this.boundPort;
  }
  get address(): string {
    return `${this.host}:${this.boundPort}`;
  }
  /** Connections accepted so far. */
  get connectionCount(): number {
    return this.connections.length;
  }
  /** Connections currently open. */
  get openConnections(): number {
    return this.sockets.size;
  }
  /** Messages accepted on each connection, in connection order. */
  messagesPerConnection(): number[] {
    return this.connections.map((c) => c.messages);
  }

  /** Replaces the behaviour rules (the default permfail/tempfail rule always applies last). */
  setBehaviour(b: SinkBehaviour): this {
    this.behaviour = b;
    return this;
  }

  /** Forgets messages and connections (counters start again). */
  reset(): this {
    this.messages.length = 0;
    this.connections.length = 0;
    return this;
  }

  /** Messages for a recipient (case-insensitive). */
  messagesFor(rcpt: string): SinkMessage[] {
    const r = rcpt.toLowerCase();
    return this.messages.filter((m) => m.rcptTo.some((t) => t.toLowerCase() === r));
  }

  /** Resolves when at least `n` messages have been accepted in total. */
  async waitForMessages(n: number, timeoutMs = 10_000): Promise<SinkMessage[]> {
    if (this.messages.length >= n) return this.messages.slice();
    await new Promise<void>((resolve, reject) => {
      const w = { n, resolve: () => (clearTimeout(timer), resolve()) };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`SmtpSink ${this.address}: ${this.messages.length} of ${n} messages after ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(w);
    });
    return this.messages.slice();
  }

  async start(): Promise<this> {
    const o = this.options;
    if (o.starttls || o.implicitTls) {
      const c = o.tlsCert ?? selfSignedCert({ names: [o.hostname ?? 'sink.test', this.host, 'localhost'] });
      this.secureContext = tls.createSecureContext({ key: c.key, cert: c.cert });
    }
    if (o.dir) fs.mkdirSync(o.dir, { recursive: true });
    const server = net.createServer((socket) => void this.session(socket));
    server.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port ?? 0, this.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.boundPort = (server.address() as net.AddressInfo).port;
    return this;
  }

  /** Stops listening and drops every open connection. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server = undefined;
  }

  // ------------------------------------------------------------- session

  private async session(raw: net.Socket): Promise<void> {
    const o = this.options;
    const conn: SinkConnection = {
      id: this.connections.length + 1,
      remoteAddress: raw.remoteAddress ?? '',
      remotePort: raw.remotePort ?? 0,
      openedAt: new Date(),
      tls: false,
      messages: 0,
      commands: [],
    };
    this.connections.push(conn);
    this.sockets.add(raw);
    raw.on('error', () => undefined);
    raw.setTimeout(o.idleTimeoutMs ?? 300_000, () => raw.destroy());

    let socket: net.Socket = raw;
    let input = new Input();
    const attach = (s: net.Socket) => {
      s.on('data', (d: Buffer) => input.push(d));
      s.on('end', () => input.end());
      s.on('close', () => input.end());
      s.on('error', () => input.end());
    };
    raw.on('close', () => {
      conn.closedAt = new Date();
      this.sockets.delete(raw);
    });

    if (o.implicitTls && this.secureContext) {
      socket = new tls.TLSSocket(raw, { isServer: true, secureContext: this.secureContext });
      socket.on('error', () => undefined);
      conn.tls = true;
    }
    attach(socket);

    const enhanced = o.enhancedStatusCodes !== false;
    let closed = false;
    const write = (code: number, text: string | string[]) => {
      if (closed || socket.destroyed) return;
      const lines = Array.isArray(text) ? text : [text];
      socket.write(lines.map((l, i) => `${code}${i < lines.length - 1 ? '-' : ' '}${l}\r\n`).join(''));
    };
    /** Sends a default reply with the enhanced code. */
    const say = (code: number, text: string) => write(code, enhanced && ENHANCED[code] ? `${ENHANCED[code]} ${text}` : text);
    const close = () => {
      closed = true;
      socket.end();
      setTimeout(() => raw.destroy(), 1000).unref();
    };
    const hang = async () => {
      // Keep reading (and ignoring) until the peer or close() ends it.
      closed = true;
      while ((await input.line()) !== null) {
        /* ignore */
      }
    };

    /**
     * Applies an action. Returns 'default' when the caller should send its
     * normal answer, 'replied' when a reply was sent, 'stop' when the session is over.
     */
    const act = async (action: SinkAction | undefined): Promise<'default' | 'replied' | 'stop'> => {
      if (action === undefined || action === 'accept') return 'default';
      if (action === 'hang') {
        await hang();
        return 'stop';
      }
      if (action === 'disconnect') {
        closed = true;
        raw.destroy();
        return 'stop';
      }
      if (action.delayMs) await sleep(action.delayMs);
      if (action.code >= 200 && action.code < 300 && action.text === undefined) return 'default';
      write(action.code, action.text ?? (enhanced && ENHANCED[action.code] ? `${ENHANCED[action.code]} sink reply` : 'sink reply'));
      if (action.code === 421) {
        close();
        return 'stop';
      }
      return 'replied';
    };
    const isOk = (a: SinkAction | undefined) => a === undefined || a === 'accept' || (typeof a === 'object' && a.code >= 200 && a.code < 300);

    const hostname = o.hostname ?? 'sink.test';
    const b = () => this.behaviour;

    // Greeting.
    const g = await act(b().greeting);
    if (g === 'stop') return;
    let refused = false; // a non-2xx greeting: only QUIT is served
    if (g === 'default') write(220, `${hostname} ${o.lmtp ? 'LMTP' : 'ESMTP'} Tern test sink`);
    else refused = !isOk(b().greeting);

    let helo = '';
    let tx: SinkTransaction | undefined;
    let rcptParams: Record<string, string | true>[] = [];
    const maxSize = o.size ?? 50 * 1024 * 1024;
    let bdat: Buffer[] | undefined;
    let bdatSize = 0;

    const endOfData = async (body: Buffer): Promise<'stop' | 'ok'> => {
      const t = tx!;
      const msg = { ...t, raw: body };
      const decide = (rcpt?: string): SinkAction | undefined => {
        const d = b().data;
        return typeof d === 'function' ? d(msg, rcpt) : d;
      };
      const targets = o.lmtp ? t.rcptTo : [undefined];
      const accepted: string[] = [];
      for (const rcpt of targets) {
        const a = decide(rcpt);
        if (maxSize && body.length > maxSize) {
          say(552, 'message exceeds fixed maximum message size');
          continue;
        }
        if (isOk(a)) {
          if (typeof a === 'object' && a.delayMs) await sleep(a.delayMs);
          if (rcpt) accepted.push(rcpt);
          else accepted.push(...t.rcptTo);
          const stored = await this.store(t, rcptParams, body, conn, socket, o.lmtp ? [rcpt!] : t.rcptTo);
          conn.messages++;
          const text = typeof a === 'object' && a.text !== undefined ? a.text : `${enhanced ? '2.0.0 ' : ''}Ok: queued as ${stored.id}`;
          write(typeof a === 'object' ? a.code : 250, text);
          this.notify();
        } else {
          const r = await act(a);
          if (r === 'stop') return 'stop';
        }
      }
      tx = undefined;
      rcptParams = [];
      return 'ok';
    };

    for (;;) {
      const lineBuf = await input.line(4096);
      if (lineBuf === null || closed) return;
      const line = lineBuf.toString('utf8').replace(/\r?\n$/, '');
      if (lineBuf.length > 4096 && !lineBuf.includes(10)) {
        say(500, 'line too long');
        continue;
      }
      const sp = line.indexOf(' ');
      const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
      const arg = sp < 0 ? '' : line.slice(sp + 1);
      conn.commands.push(verb);

      if (verb === 'QUIT') {
        write(221, `${enhanced ? '2.0.0 ' : ''}${hostname} closing connection`);
        close();
        return;
      }
      if (refused) {
        say(503, 'no service');
        continue;
      }
      switch (verb) {
        case 'EHLO':
        case 'HELO':
        case 'LHLO': {
          if (!!o.lmtp !== (verb === 'LHLO')) {
            say(500, o.lmtp ? 'this is LMTP: use LHLO' : 'command not recognized');
            break;
          }
          if (!arg.trim()) {
            say(501, 'syntax: EHLO hostname');
            break;
          }
          const r = await act(b().ehlo);
          if (r === 'stop') return;
          if (r === 'replied') break;
          helo = arg.trim();
          tx = undefined;
          if (verb === 'HELO') {
            write(250, `${hostname}`);
            break;
          }
          const ext: string[] = [];
          if (o.pipelining !== false) ext.push('PIPELINING');
          if (maxSize) ext.push(`SIZE ${maxSize}`);
          if (o.eightBitMime !== false) ext.push('8BITMIME');
          if (o.smtputf8 !== false) ext.push('SMTPUTF8');
          if (o.dsn !== false) ext.push('DSN');
          if (enhanced) ext.push('ENHANCEDSTATUSCODES');
          if (o.chunking) ext.push('CHUNKING');
          if (o.starttls && !conn.tls) ext.push('STARTTLS');
          write(250, [`${hostname} greets ${helo}`, ...ext]);
          break;
        }
        case 'STARTTLS': {
          if (!o.starttls || conn.tls || !this.secureContext) {
            say(o.starttls ? 503 : 502, o.starttls ? 'already under TLS' : 'command not implemented');
            break;
          }
          // RFC 3207: anything pipelined after STARTTLS is discarded.
          input.discard();
          say(220, 'ready to start TLS');
          socket.removeAllListeners('data');
          socket.removeAllListeners('end');
          input.end();
          input = new Input();
          const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: this.secureContext });
          secure.on('error', () => undefined);
          socket = secure;
          attach(secure);
          conn.tls = true;
          helo = '';
          tx = undefined;
          break;
        }
        case 'MAIL': {
          const m = /^FROM:\s*<([^>]*)>(.*)$/i.exec(arg);
          if (!m) {
            say(501, 'syntax: MAIL FROM:<address>');
            break;
          }
          if (tx) {
            say(503, 'nested MAIL command');
            break;
          }
          const from = m[1]!;
          const params = parseParams(m[2] ?? '');
          if (maxSize && typeof params.SIZE === 'string' && Number(params.SIZE) > maxSize) {
            say(552, 'message size exceeds fixed maximum message size');
            break;
          }
          const draft: SinkTransaction = {
            connectionId: conn.id,
            remoteAddress: conn.remoteAddress,
            tls: conn.tls,
            helo,
            mailFrom: from,
            mailParams: params,
            rcptTo: [],
          };
          const beh = b().mail;
          const a = typeof beh === 'function' ? beh(from, draft) : beh;
          const r = await act(a);
          if (r === 'stop') return;
          if (r === 'replied' && !isOk(a)) break;
          tx = draft;
          rcptParams = [];
          if (r === 'default') say(250, 'sender ok');
          break;
        }
        case 'RCPT': {
          const m = /^TO:\s*<([^>]*)>(.*)$/i.exec(arg);
          if (!m) {
            say(501, 'syntax: RCPT TO:<address>');
            break;
          }
          if (!tx) {
            say(503, 'need MAIL before RCPT');
            break;
          }
          const to = m[1]!;
          const beh = b().rcpt;
          let a = typeof beh === 'function' ? beh(to, tx) : beh;
          if (a === undefined) {
            const at = to.lastIndexOf('@');
            const local = (at > 0 ? to.slice(0, at) : to).toLowerCase();
            if (local.startsWith('permfail')) a = { code: 550, text: '5.1.1 permfail: no such user' };
            else if (local.startsWith('tempfail')) a = { code: 451, text: '4.3.0 tempfail: try again later' };
          }
          const r = await act(a);
          if (r === 'stop') return;
          if (r === 'replied' && !isOk(a)) break;
          tx.rcptTo.push(to);
          rcptParams.push(parseParams(m[2] ?? ''));
          if (r === 'default') say(250, 'recipient ok');
          break;
        }
        case 'DATA': {
          if (!tx || tx.rcptTo.length === 0) {
            say(tx ? 554 : 503, tx ? 'no valid recipients' : 'need MAIL command');
            break;
          }
          const r = await act(b().dataCommand);
          if (r === 'stop') return;
          if (r === 'replied' && !isOk(b().dataCommand)) break;
          if (r === 'default') write(354, 'End data with <CR><LF>.<CR><LF>');
          const parts: Buffer[] = [];
          let size = 0;
          for (;;) {
            const l = await input.line(1 << 30);
            if (l === null) return;
            if ((l.length === 3 && l[0] === 0x2e && l[1] === 13 && l[2] === 10) || (l.length === 2 && l[0] === 0x2e && l[1] === 10)) break;
            const chunk = l[0] === 0x2e ? l.subarray(1) : l;
            size += chunk.length;
            if (!maxSize || size <= maxSize + 1) parts.push(chunk);
          }
          if ((await endOfData(Buffer.concat(parts))) === 'stop') return;
          break;
        }
        case 'BDAT': {
          const m = /^(\d+)(\s+LAST)?\s*$/i.exec(arg);
          if (!o.chunking || !m) {
            say(o.chunking ? 501 : 502, o.chunking ? 'syntax: BDAT size [LAST]' : 'command not implemented');
            if (m) await input.bytes(Number(m[1]));
            break;
          }
          const chunk = await input.bytes(Number(m[1]));
          if (chunk === null) return;
          if (!tx || tx.rcptTo.length === 0) {
            say(503, 'no valid recipients');
            break;
          }
          bdat ??= [];
          bdatSize += chunk.length;
          if (!maxSize || bdatSize <= maxSize + 1) bdat.push(chunk);
          if (!m[2]) {
            say(250, `${chunk.length} bytes received`);
            break;
          }
          const body = Buffer.concat(bdat);
          bdat = undefined;
          bdatSize = 0;
          if ((await endOfData(body)) === 'stop') return;
          break;
        }
        case 'RSET':
          tx = undefined;
          bdat = undefined;
          bdatSize = 0;
          say(250, 'reset');
          break;
        case 'NOOP':
          say(250, 'ok');
          break;
        case 'VRFY':
          say(252, 'cannot verify, but will accept');
          break;
        case 'HELP':
          say(214, 'see RFC 5321');
          break;
        default:
          say(500, 'command not recognized');
      }
    }
  }

  private async store(
    t: SinkTransaction,
    rcptParams: Record<string, string | true>[],
    raw: Buffer,
    conn: SinkConnection,
    socket: net.Socket,
    rcptTo: string[],
  ): Promise<SinkMessage> {
    const id = `${Date.now().toString(36)}-${(++this.seq).toString(36).padStart(4, '0')}-${this.boundPort}`;
    const msg: SinkMessage = {
      id,
      mailFrom: t.mailFrom,
      mailParams: t.mailParams,
      rcptTo: rcptTo.slice(),
      rcptParams: rcptTo.map((r) => rcptParams[t.rcptTo.indexOf(r)] ?? {}),
      raw,
      remoteAddress: conn.remoteAddress,
      remotePort: conn.remotePort,
      tls: conn.tls || socket instanceof tls.TLSSocket,
      helo: t.helo,
      connectionId: conn.id,
      receivedAt: new Date(),
    };
    if (this.options.dir) {
      const file = path.join(this.options.dir, `${id}.eml`);
      await fs.promises.writeFile(file, raw);
      const envelope = { ...msg, raw: undefined, file: undefined };
      await fs.promises.writeFile(path.join(this.options.dir, `${id}.json`), JSON.stringify(envelope, null, 2) + '\n');
      msg.file = file;
    }
    this.messages.push(msg);
    return msg;
  }

  private notify(): void {
    const ready = this.waiters.filter((w) => this.messages.length >= w.n);
    this.waiters = this.waiters.filter((w) => this.messages.length < w.n);
    for (const w of ready) w.resolve();
  }
}
