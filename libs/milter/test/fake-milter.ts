// A small milter server for tests (the filter side of the protocol): it
// negotiates what it is told, records what it is sent per connection, answers
// each stage with CONTINUE unless told otherwise, and at the end of the
// message sends the modifications and final answer the test scripts.
import net from 'node:net';
import { Cmd, cstrings, encode, PacketDecoder, Proto, Reply, type Packet } from '../src/index';

export interface SeenMessage {
  macros: Record<string, Record<string, string>>;
  connect?: { hostname: string; family: string; port: number; address: string };
  helo?: string;
  mail?: string[];
  rcpts: string[][];
  headers: Array<[string, string]>;
  body: Buffer;
  /** Size of each BODY packet. */
  bodyChunks: number[];
  commands: string[];
  ended: boolean;
  aborted: boolean;
}

export interface FakeMilterOptions {
  version?: number;
  actions?: number;
  protocol?: number;
  /** Answer to a stage command (not OPTNEG, MACRO, BODYEOB, ABORT, QUIT); default CONTINUE. 'hang' never answers. */
  stage?: (cmd: string, seen: SeenMessage) => Buffer[] | 'hang' | undefined;
  /** Packets sent at the end of the message (modifications, then the final answer); default CONTINUE. 'hang' never answers. */
  eom?: (seen: SeenMessage) => Buffer[] | 'hang';
}

export const pkt = encode;
export const R = Reply;

export class FakeMilter {
  readonly messages: SeenMessage[] = [];
  connections = 0;
  private server = net.createServer((s) => this.serve(s));
  private sockets = new Set<net.Socket>();
  port = 0;

  constructor(public opts: FakeMilterOptions = {}) {}

  async start(host = '127.0.0.1'): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, host, resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private serve(socket: net.Socket): void {
    this.connections++;
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    const decoder = new PacketDecoder();
    let protocol = 0;
    let seen: SeenMessage | undefined;
    const fresh = (): SeenMessage => {
      const m: SeenMessage = { macros: {}, rcpts: [], headers: [], body: Buffer.alloc(0), bodyChunks: [], commands: [], ended: false, aborted: false };
      this.messages.push(m);
      return m;
    };
    const send = (bufs: Buffer[] | 'hang' | undefined) => {
      if (bufs === 'hang') return;
      for (const b of bufs ?? [encode(Reply.CONTINUE)]) socket.write(b);
    };
    const noReply: Record<string, number> = {
      [Cmd.CONNECT]: Proto.NR_CONN,
      [Cmd.HELO]: Proto.NR_HELO,
      [Cmd.MAIL]: Proto.NR_MAIL,
      [Cmd.RCPT]: Proto.NR_RCPT,
      [Cmd.DATA]: Proto.NR_DATA,
      [Cmd.HEADER]: Proto.NR_HDR,
      [Cmd.EOH]: Proto.NR_EOH,
      [Cmd.BODY]: Proto.NR_BODY,
    };
    socket.on('data', (chunk: Buffer) => {
      for (const p of decoder.push(chunk)) {
        const m = p.code === Cmd.OPTNEG || p.code === Cmd.QUIT ? seen : (seen ??= fresh());
        if (m) m.commands.push(p.code);
        this.handle(p, m, (offered) => {
          protocol = this.opts.protocol ?? 0;
          const out = encode(Reply.OPTNEG, this.opts.version ?? 6, this.opts.actions ?? 0x1ff, protocol);
          void offered;
          socket.write(out);
        });
        if (!m) continue;
        switch (p.code) {
          case Cmd.OPTNEG:
          case Cmd.MACRO:
          case Cmd.QUIT:
            break;
          case Cmd.ABORT:
            m.aborted = true;
            seen = undefined;
            break;
          case Cmd.BODYEOB:
            m.ended = true;
            send(this.opts.eom?.(m));
            seen = undefined;
            break;
          default: {
            const flag = noReply[p.code];
            if (flag !== undefined && protocol & flag) break;
            send(this.opts.stage?.(p.code, m));
          }
        }
      }
    });
  }

  private handle(p: Packet, m: SeenMessage | undefined, negotiate: (offered: Buffer) => void): void {
    switch (p.code) {
      case Cmd.OPTNEG:
        negotiate(p.data);
        return;
      case Cmd.MACRO: {
        const [names] = [cstrings(p.data.subarray(1))];
        const map: Record<string, string> = {};
        for (let i = 0; i + 1 < names.length; i += 2) map[names[i]!] = names[i + 1]!;
        m!.macros[String.fromCharCode(p.data[0]!)] = map;
        return;
      }
      case Cmd.CONNECT: {
        const hostname = cstrings(p.data)[0] ?? '';
        const rest = p.data.subarray(Buffer.byteLength(hostname, 'latin1') + 1);
        const family = String.fromCharCode(rest[0]!);
        m!.connect = family === 'U' ? { hostname, family, port: 0, address: '' } : { hostname, family, port: rest.readUInt16BE(1), address: cstrings(rest.subarray(3))[0] ?? '' };
        return;
      }
      case Cmd.HELO:
        m!.helo = cstrings(p.data)[0];
        return;
      case Cmd.MAIL:
        m!.mail = cstrings(p.data);
        return;
      case Cmd.RCPT:
        m!.rcpts.push(cstrings(p.data));
        return;
      case Cmd.HEADER: {
        const [name = '', value = ''] = cstrings(p.data);
        m!.headers.push([name, value]);
        return;
      }
      case Cmd.BODY:
        m!.body = Buffer.concat([m!.body, p.data]);
        m!.bodyChunks.push(p.data.length);
        return;
      default:
        return;
    }
  }
}
