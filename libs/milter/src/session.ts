// One conversation with one milter, MTA side: connect, negotiate (OPTNEG,
// version 6), then the stages in order, each answered by the milter unless
// it asked for no reply (SMFIP_NR_*) or for the stage to be skipped
// (SMFIP_NO*). The end of the message collects the modifications until the
// final answer. Every wait is bounded (connect, each answer); the caller
// bounds the whole conversation with destroy().
import net from 'node:net';
import { cstrings, encode, indexed, MilterError, PacketDecoder, protocolError, type Packet } from './codec';
import {
  Action,
  ALL_ACTIONS,
  Cmd,
  IGNORED_PROTOCOL,
  MILTER_CHUNK_SIZE,
  MILTER_MIN_VERSION,
  MILTER_VERSION,
  NO_REPLY,
  NO_STAGE,
  OFFERED_PROTOCOL,
  Proto,
  Reply,
} from './protocol';

/** Answers read ahead of their use, at most (then the socket waits). */
const QUEUE_BYTES = 256 * 1024;

export interface MilterTimeouts {
  /** Opening the connection. */
  connectMs: number;
  /** Each answer; a PROGRESS from the milter starts it again. */
  commandMs: number;
}

/** The answer to a stage: go on, or a verdict on the whole message. */
export type Verdict =
  | { kind: 'continue' }
  | { kind: 'accept' }
  | { kind: 'reject' }
  | { kind: 'tempfail' }
  | { kind: 'discard' }
  /** Body only: the milter has seen enough of it. */
  | { kind: 'skip' }
  /** REPLYCODE: the milter's own reply, e.g. "554 5.7.1 Gtube pattern" (4xx or 5xx). */
  | { kind: 'reply'; reply: string };

/** What a milter may change at the end of the message (each needs its negotiated action). */
export type Modification =
  /** Appended; `raw` is the header's text after the colon (folds as CRLF + white space). */
  | { type: 'addheader'; name: string; raw: string }
  /** Inserted before the `index`th header (0 = on top). */
  | { type: 'insheader'; index: number; name: string; raw: string }
  /** The `index`th (from 1) header of that name replaced; `raw` undefined deletes it. */
  | { type: 'chgheader'; index: number; name: string; raw: string | undefined }
  | { type: 'addrcpt'; address: string; args: string }
  | { type: 'delrcpt'; address: string }
  | { type: 'chgfrom'; address: string; args: string }
  /** One piece of the replacement body, in order. */
  | { type: 'replbody'; chunk: Buffer }
  | { type: 'quarantine'; reason: string };

export interface Negotiated {
  version: number;
  actions: number;
  protocol: number;
}

/** "host:port", "[v6]:port" or "unix:/path". */
export function parseMilterAddress(address: string): { host: string; port: number } | { path: string } {
  if (address.startsWith('unix:')) return { path: address.slice(5) };
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(address);
  if (!m) throw new MilterError('connect', `milter address "${address}" is not host:port or unix:/path`);
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

/** Angle brackets around an address, as milters expect in MAIL and RCPT ("<>" for the null sender). */
export const bracket = (address: string) => `<${address}>`;
/** An address a milter gave (ADDRCPT, DELRCPT, CHGFROM) without its angle brackets and white space. */
export const unbracket = (address: string) => address.trim().replace(/^<(.*)>$/, '$1');

/** Header text a milter gave, stored form: CRLF line ends, every continuation line starting with white space, no final line end. */
function storedRaw(value: string, leadingSpace: boolean): string {
  const folded = value.replace(/(\r?\n)+$/, '').replace(/\r?\n([ \t])?/g, (_m, ws: string | undefined) => `\r\n${ws ?? '\t'}`);
  return leadingSpace ? folded : ` ${folded}`;
}

export class MilterSession {
  private readonly decoder = new PacketDecoder();
  private readonly packets: Packet[] = [];
  /** Octets in `packets`: past QUEUE_BYTES the socket is paused (a milter that talks ahead, e.g. REPLBODY, waits). */
  private queued = 0;
  private waiter: { resolve: (p: Packet) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private negotiatedFlags: Negotiated = { version: 0, actions: 0, protocol: 0 };

  private constructor(
    private readonly socket: net.Socket,
    private readonly timeouts: MilterTimeouts,
    readonly address: string,
  ) {
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const p of this.decoder.push(chunk)) {
          this.packets.push(p);
          this.queued += p.data.length;
        }
      } catch (err) {
        this.destroy(err as Error);
        return;
      }
      if (this.queued > QUEUE_BYTES) socket.pause();
      this.deliver();
    });
    socket.on('error', (err) => this.fail(new MilterError('closed', `milter ${address}: ${err.message}`, { cause: err })));
    socket.on('close', () => this.fail(new MilterError('closed', `milter ${address} closed the connection`)));
  }

  /** Opens the connection within `connectMs`. */
  static async connect(address: string, timeouts: MilterTimeouts): Promise<MilterSession> {
    const target = parseMilterAddress(address);
    const socket = 'path' in target ? net.createConnection({ path: target.path }) : net.createConnection({ host: target.host, port: target.port });
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new MilterError('timeout', `milter ${address}: no connection within ${timeouts.connectMs} ms`));
      }, timeouts.connectMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new MilterError('connect', `milter ${address}: ${err.message}`, { cause: err }));
      });
    });
    return new MilterSession(socket, timeouts, address);
  }

  get negotiated(): Negotiated {
    return this.negotiatedFlags;
  }

  private has(flag: number): boolean {
    return (this.negotiatedFlags.protocol & flag) !== 0;
  }

  /** Ends the conversation now (total timeout, caller's failure): pending and later calls reject with `err`. */
  destroy(err: Error = new MilterError('closed', 'milter session destroyed')): void {
    this.fail(err);
    this.socket.destroy();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.failure);
  }

  private deliver(): void {
    if (!this.waiter || !this.packets.length) return;
    const w = this.waiter;
    this.waiter = undefined;
    w.resolve(this.take());
  }

  private take(): Packet {
    const p = this.packets.shift()!;
    this.queued -= p.data.length;
    if (this.queued <= QUEUE_BYTES) this.socket.resume();
    return p;
  }

  /** The next packet, within the command timeout. */
  private next(): Promise<Packet> {
    if (this.packets.length) return Promise.resolve(this.take());
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<Packet>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        const err = new MilterError('timeout', `milter ${this.address}: no answer within ${this.timeouts.commandMs} ms`);
        this.destroy(err);
        reject(err);
      }, this.timeouts.commandMs);
      this.waiter = {
        resolve: (p) => {
          clearTimeout(timer);
          resolve(p);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.deliver();
    });
  }

  private async send(packet: Buffer): Promise<void> {
    if (this.failure) throw this.failure;
    if (!this.socket.write(packet)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => {
          this.socket.off('close', onClose);
          resolve();
        };
        const onClose = () => {
          this.socket.off('drain', onDrain);
          reject(this.failure ?? new MilterError('closed', `milter ${this.address} closed the connection`));
        };
        this.socket.once('drain', onDrain);
        this.socket.once('close', onClose);
      });
    }
  }

  /** OPTNEG: offers version 6, every action and the skip/no-reply flags; takes what the milter asks for within that. */
  async negotiate(): Promise<Negotiated> {
    await this.send(encode(Cmd.OPTNEG, MILTER_VERSION, ALL_ACTIONS, OFFERED_PROTOCOL));
    const p = await this.next();
    if (p.code !== Reply.OPTNEG || p.data.length < 12) throw protocolError(`milter ${this.address}: expected an OPTNEG answer, got '${p.code}'`);
    const version = p.data.readUInt32BE(0);
    const actions = p.data.readUInt32BE(4);
    const protocol = p.data.readUInt32BE(8) & ~IGNORED_PROTOCOL;
    if (version < MILTER_MIN_VERSION) throw protocolError(`milter ${this.address}: protocol version ${version} (at least ${MILTER_MIN_VERSION})`);
    if (actions & ~ALL_ACTIONS) throw protocolError(`milter ${this.address}: asks for actions 0x${(actions & ~ALL_ACTIONS).toString(16)} not offered`);
    if (protocol & ~OFFERED_PROTOCOL) throw protocolError(`milter ${this.address}: asks for protocol flags 0x${(protocol & ~OFFERED_PROTOCOL).toString(16)} not offered`);
    // What follows (SETSYMLIST: the macros it wants) is a hint; all macros are sent.
    this.negotiatedFlags = { version: Math.min(version, MILTER_VERSION), actions, protocol };
    return this.negotiatedFlags;
  }

  /** Macros for the next command of `cmd` (no answer). */
  async macros(cmd: string, values: Record<string, string | undefined>): Promise<void> {
    const parts: string[] = [];
    for (const [k, v] of Object.entries(values)) if (v !== undefined) parts.push(k, v);
    if (parts.length) await this.send(encode(Cmd.MACRO, Buffer.from(cmd, 'latin1'), ...parts));
  }

  /** One stage command: skipped if the milter asked so, unanswered if it asked for no reply, else its answer. */
  private async stage(cmd: string, ...parts: Array<Buffer | string | number>): Promise<Verdict> {
    const skip = NO_STAGE[cmd];
    if (skip !== undefined && this.has(skip)) return { kind: 'continue' };
    await this.send(encode(cmd, ...parts));
    const nr = NO_REPLY[cmd];
    if (nr !== undefined && this.has(nr)) return { kind: 'continue' };
    for (;;) {
      const p = await this.next();
      if (p.code === Reply.PROGRESS) continue;
      const v = this.verdict(p, cmd === Cmd.BODY);
      if (v) return v;
      throw protocolError(`milter ${this.address}: answer '${p.code}' is not allowed after command '${cmd}'`);
    }
  }

  private verdict(p: Packet, body: boolean): Verdict | undefined {
    switch (p.code) {
      case Reply.CONTINUE:
        return { kind: 'continue' };
      case Reply.ACCEPT:
        return { kind: 'accept' };
      case Reply.REJECT:
        return { kind: 'reject' };
      case Reply.TEMPFAIL:
        return { kind: 'tempfail' };
      case Reply.DISCARD:
        return { kind: 'discard' };
      case Reply.SKIP:
        return body ? { kind: 'skip' } : undefined;
      case Reply.REPLYCODE: {
        const text = cstrings(p.data)[0] ?? '';
        if (!/^[45]\d\d[ -]/.test(text)) throw protocolError(`milter ${this.address}: reply "${text.slice(0, 80)}" is not a 4xx or 5xx reply`);
        return { kind: 'reply', reply: text };
      }
      default:
        return undefined;
    }
  }

  /** SMFIC_CONNECT: the client's name (or "[address]"), and its address: family '4' or '6' with port, or 'U' (unknown). */
  connect(hostname: string, clientAddress: string, clientPort: number): Promise<Verdict> {
    const family = net.isIPv4(clientAddress) ? '4' : net.isIPv6(clientAddress) ? '6' : 'U';
    if (family === 'U') return this.stage(Cmd.CONNECT, hostname, Buffer.from('U', 'latin1'));
    const port = Buffer.alloc(2);
    port.writeUInt16BE(clientPort & 0xffff);
    return this.stage(Cmd.CONNECT, hostname, Buffer.from(family, 'latin1'), port, clientAddress);
  }

  helo(name: string): Promise<Verdict> {
    return this.stage(Cmd.HELO, name);
  }

  /** MAIL FROM: "<address>" then ESMTP parameters. */
  mail(args: string[]): Promise<Verdict> {
    return this.stage(Cmd.MAIL, ...args);
  }

  rcpt(args: string[]): Promise<Verdict> {
    return this.stage(Cmd.RCPT, ...args);
  }

  data(): Promise<Verdict> {
    return this.stage(Cmd.DATA);
  }

  /** One header: `raw` is its text after the colon as stored (CRLF folds). Sent with LF folds, leading white space kept only under HDR_LEADSPC. */
  header(name: string, raw: string): Promise<Verdict> {
    let value = raw.replace(/\r\n/g, '\n');
    if (!this.has(Proto.HDR_LEADSPC)) value = value.replace(/^[ \t]+/, '');
    return this.stage(Cmd.HEADER, name, value);
  }

  eoh(): Promise<Verdict> {
    return this.stage(Cmd.EOH);
  }

  /** Body octets, in packets of at most 64 KiB - 1; a verdict other than continue ends the body. */
  async body(chunk: Buffer): Promise<Verdict> {
    for (let i = 0; i < chunk.length; i += MILTER_CHUNK_SIZE) {
      const v = await this.stage(Cmd.BODY, chunk.subarray(i, i + MILTER_CHUNK_SIZE));
      if (v.kind !== 'continue') return v;
    }
    return { kind: 'continue' };
  }

  /**
   * End of message: each modification goes to `onModification` as it
   * arrives (awaited, so a replacement body is never held whole); the
   * final answer ends it. A modification the milter did not negotiate is
   * a protocol error.
   */
  async endOfMessage(onModification: (m: Modification) => void | Promise<void>): Promise<Verdict> {
    await this.send(encode(Cmd.BODYEOB));
    const lead = this.has(Proto.HDR_LEADSPC);
    for (;;) {
      const p = await this.next();
      if (p.code === Reply.PROGRESS) continue;
      const final = this.verdict(p, false);
      if (final) return final;
      await onModification(this.modification(p, lead));
    }
  }

  private need(action: number, what: string): void {
    if (!(this.negotiatedFlags.actions & action)) throw protocolError(`milter ${this.address}: ${what} without negotiating it`);
  }

  private modification(p: Packet, lead: boolean): Modification {
    switch (p.code) {
      case Reply.ADDHEADER: {
        this.need(Action.ADDHDRS, 'adds a header');
        const [name = '', value = ''] = cstrings(p.data);
        return { type: 'addheader', name: headerName(name, this.address), raw: storedRaw(value, lead) };
      }
      case Reply.INSHEADER: {
        this.need(Action.ADDHDRS, 'inserts a header');
        const { index, strings } = indexed(p.data);
        const [name = '', value = ''] = strings;
        return { type: 'insheader', index, name: headerName(name, this.address), raw: storedRaw(value, lead) };
      }
      case Reply.CHGHEADER: {
        this.need(Action.CHGHDRS, 'changes a header');
        const { index, strings } = indexed(p.data);
        const [name = '', value = ''] = strings;
        return { type: 'chgheader', index, name: headerName(name, this.address), raw: value === '' ? undefined : storedRaw(value, lead) };
      }
      case Reply.ADDRCPT: {
        this.need(Action.ADDRCPT, 'adds a recipient');
        return { type: 'addrcpt', address: unbracket(cstrings(p.data)[0] ?? ''), args: '' };
      }
      case Reply.ADDRCPT_PAR: {
        this.need(Action.ADDRCPT_PAR, 'adds a recipient with parameters');
        const [address = '', args = ''] = cstrings(p.data);
        return { type: 'addrcpt', address: unbracket(address), args };
      }
      case Reply.DELRCPT: {
        this.need(Action.DELRCPT, 'deletes a recipient');
        return { type: 'delrcpt', address: unbracket(cstrings(p.data)[0] ?? '') };
      }
      case Reply.CHGFROM: {
        this.need(Action.CHGFROM, 'changes the sender');
        const [address = '', args = ''] = cstrings(p.data);
        return { type: 'chgfrom', address: unbracket(address), args };
      }
      case Reply.REPLBODY:
        this.need(Action.CHGBODY, 'replaces the body');
        return { type: 'replbody', chunk: Buffer.from(p.data) };
      case Reply.QUARANTINE:
        this.need(Action.QUARANTINE, 'quarantines');
        return { type: 'quarantine', reason: cstrings(p.data)[0] ?? '' };
      default:
        throw protocolError(`milter ${this.address}: answer '${p.code}' is not allowed at the end of the message`);
    }
  }

  /** ABORT: the message is off (the connection may carry another). */
  async abort(): Promise<void> {
    await this.send(encode(Cmd.ABORT)).catch(() => undefined);
  }

  /** QUIT and close. */
  async quit(): Promise<void> {
    if (!this.failure) await this.send(encode(Cmd.QUIT)).catch(() => undefined);
    this.socket.end();
    this.failure ??= new MilterError('closed', 'session ended');
  }
}

/** A header name a milter gave: printable, no colon or white space (RFC 5322 2.2). */
function headerName(name: string, address: string): string {
  if (!/^[!-9;-~]{1,256}$/.test(name)) throw protocolError(`milter ${address}: "${name.slice(0, 40)}" is not a header name`);
  return name;
}
