// Test helpers for the delivery modules: WorkerDeps pointed at a test DNS
// server, a ReadBody-only fake of the queue client, jobs, and a tiny scripted
// SMTP server for what the devkit sink cannot do (seeing what arrived before
// a reply was sent, odd EHLO/STARTTLS behaviour, REQUIRETLS).
import net from 'node:net';
import tls from 'node:tls';
import { Readable } from 'node:stream';
import pino from 'pino';
import { DeliveryJob, type QueueServiceClient } from '@tern/proto';
import { NextHopResolver } from '../src/nexthop';
import { ConnectionPool } from '../src/pool';
import type { WorkerDeps } from '../src/worker';

export const logger = pino({ level: process.env.TERN_TEST_LOG_LEVEL ?? 'silent' });

/** A QueueServiceClient that only serves ReadBody, from `bodies` (queue id -> body). */
export function fakeQueue(bodies: Map<string, Buffer>, opts: { chunkSize?: number; failFor?: Set<string> } = {}): QueueServiceClient {
  const chunkSize = opts.chunkSize ?? 7; // small chunks: dot-stuffing and CRLF repair must hold across chunk boundaries
  return {
    readBody(req: { queueId: string }) {
      const body = bodies.get(req.queueId);
      const parts: { chunk: Buffer }[] = [];
      if (body) for (let i = 0; i < body.length; i += chunkSize) parts.push({ chunk: body.subarray(i, i + chunkSize) });
      const stream = opts.failFor?.has(req.queueId) || !body ? new Readable({ objectMode: true, read() { this.destroy(new Error('5 NOT_FOUND: no such message')); } }) : Readable.from(parts);
      return Object.assign(stream, { cancel: () => stream.destroy() });
    },
  } as unknown as QueueServiceClient;
}

export interface DepsOptions {
  dns: string;
  port: number;
  bodies: Map<string, Buffer>;
  pool?: ConnectionPool;
  ownNames?: string[];
  dnsTimeoutMs?: number;
  commandTimeoutMs?: number;
  tlsCa?: string;
}

export function makeDeps(o: DepsOptions): WorkerDeps {
  return {
    logger,
    resolver: new NextHopResolver({ servers: [o.dns], port: o.port, ownNames: o.ownNames ?? ['mx.tern.test'], timeoutMs: o.dnsTimeoutMs ?? 500 }),
    pool: o.pool ?? new ConnectionPool({ maxMessagesPerConnection: 100, idleMs: 60_000, maxSessionsPerPeer: 20 }),
    queue: fakeQueue(o.bodies),
    worker: 'test',
    heloName: 'mx.tern.test',
    smtpPort: o.port,
    connectTimeoutMs: 2_000,
    commandTimeoutMs: o.commandTimeoutMs ?? 5_000,
    dataEndTimeoutMs: 5_000,
    queueDeadlineMs: 5_000,
    tlsCa: o.tlsCa,
  };
}

let seq = 0;

/** A job for `rcpts` (all at one destination), its body registered in `bodies`. */
export function makeJob(
  bodies: Map<string, Buffer>,
  rcpts: string[],
  o: Omit<Partial<DeliveryJob>, 'body'> & { body?: Buffer | string; sender?: string; /** Send the body in the job, as the queue does for small ones. */ inline?: boolean } = {},
): DeliveryJob {
  const queueId = `q${++seq}`;
  const body = Buffer.from(o.body ?? `From: a@sender.test\r\nTo: ${rcpts.join(', ')}\r\nSubject: test ${seq}\r\n\r\nHello.\r\n`);
  bodies.set(queueId, body);
  const { body: _b, sender, inline, ...rest } = o;
  return DeliveryJob.fromPartial({
    jobId: `job-${seq}`,
    queueId,
    destination: rcpts[0]!.split('@')[1]!,
    size: body.length,
    attempt: 1,
    recipients: rcpts.map((address, i) => ({ recipientId: `r${seq}-${i}`, address })),
    ...rest,
    body: inline ? body : undefined,
    envelope: { sender: sender ?? 'a@sender.test', ...rest.envelope },
  });
}

// ---------------------------------------------------------------- scripted server

export interface MiniSession {
  id: number;
  /** Raw bytes as they arrived, one entry per 'data' event. */
  chunks: Buffer[];
  /** Command lines, in order. */
  lines: string[];
  tls: boolean;
  /** The body of the last DATA, dot-unstuffed, as received (line ends untouched). */
  lastData?: Buffer;
  /** Raw bytes of the last DATA section as on the wire (stuffed, terminator included). */
  lastWire?: Buffer;
  write(s: string): void;
  close(): void;
  /** Answers 220 and upgrades (STARTTLS). */
  startTls(): void;
  /** Stops reading (a server that has stopped taking data). */
  pause(): void;
  /** Replies still owed (for servers that hold replies back). */
  pending: string[];
}

/**
 * handler(line, session): the reply to send ("250 ok", several lines joined
 * with \r\n), undefined to send nothing now, or 'close'. After a reply
 * starting with 354 the server reads data up to CRLF.CRLF and then calls
 * handler('.', session) for the end-of-data reply.
 */
export type MiniHandler = (line: string, s: MiniSession) => string | undefined | 'close';

export class MiniSmtp {
  private server?: net.Server;
  readonly sessions: MiniSession[] = [];
  private readonly sockets = new Set<net.Socket>();

  constructor(
    readonly host: string,
    private readonly handler: MiniHandler,
    private readonly o: { greeting?: string; cert?: { key: string; cert: string } } = {},
  ) {}

  async start(port = 0): Promise<this> {
    const server = net.createServer((socket) => this.session(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, this.host, () => resolve());
    });
    this.server = server;
    return this;
  }

  get port(): number {
    return (this.server!.address() as net.AddressInfo).port;
  }

  /** Connections open now (a receiver's per-client count). */
  get openConnections(): number {
    return this.sockets.size;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private session(raw: net.Socket): void {
    this.sockets.add(raw);
    raw.on('close', () => this.sockets.delete(raw));
    raw.on('error', () => undefined);
    let socket: net.Socket = raw;
    let buf = Buffer.alloc(0);
    let inData = false;
    let wire: Buffer[] = [];
    const s: MiniSession = {
      id: this.sessions.length + 1,
      chunks: [],
      lines: [],
      tls: false,
      pending: [],
      write: (t) => {
        if (!socket.destroyed) socket.write(t.endsWith('\r\n') ? t : `${t}\r\n`);
      },
      close: () => raw.destroy(),
      pause: () => socket.pause(),
      startTls: () => {
        s.write('220 2.0.0 ready to start TLS');
        socket.removeAllListeners('data');
        const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: tls.createSecureContext(this.o.cert!) });
        secure.on('error', () => undefined);
        secure.on('data', onData);
        socket = secure;
        s.tls = true;
      },
    };
    this.sessions.push(s);
    const reply = (line: string) => {
      const r = this.handler(line, s);
      if (r === 'close') s.close();
      else if (r !== undefined) {
        s.write(r);
        if (r.startsWith('354')) {
          inData = true;
          wire = [];
        }
      }
    };
    const onData = (chunk: Buffer) => {
      s.chunks.push(chunk);
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          const atStart = buf.subarray(0, 3).equals(Buffer.from('.\r\n'));
          if (end < 0 && !atStart) return;
          const upto = atStart ? 0 : end + 2;
          const section = buf.subarray(0, upto);
          wire.push(buf.subarray(0, upto + 3));
          buf = buf.subarray(upto + 3);
          inData = false;
          s.lastWire = Buffer.concat(wire);
          // Unstuff: a line starting with "." loses it.
          s.lastData = Buffer.from(section.toString('latin1').replace(/(^|\r\n)\./g, '$1'), 'latin1');
          reply('.');
          continue;
        }
        const i = buf.indexOf('\n');
        if (i < 0) return;
        const line = buf.subarray(0, i).toString('latin1').replace(/\r$/, '');
        buf = buf.subarray(i + 1);
        s.lines.push(line);
        const wasTls = s.tls;
        reply(line);
        if (!wasTls && s.tls) {
          buf = Buffer.alloc(0); // the rest arrives over TLS (RFC 3207: anything pipelined after STARTTLS is dropped)
          return;
        }
      }
    };
    raw.on('data', onData);
    s.write(this.o.greeting ?? '220 mini.test ESMTP');
  }
}

/** An EHLO answer with these keywords. */
export function ehloReply(...keywords: string[]): string {
  const lines = ['mini.test', ...keywords];
  return lines.map((l, i) => `250${i < lines.length - 1 ? '-' : ' '}${l}`).join('\r\n');
}

/** A plain handler: EHLO with `keywords`, everything accepted. */
export function plainHandler(keywords: string[], overrides: (line: string, s: MiniSession) => string | undefined | 'close' | null = () => null): MiniHandler {
  return (line, s) => {
    const o = overrides(line, s);
    if (o !== null) return o;
    const verb = line.split(' ')[0]!.toUpperCase();
    if (verb === 'EHLO') return ehloReply(...keywords);
    if (verb === 'HELO') return '250 mini.test';
    if (verb === 'MAIL' || verb === 'RCPT' || verb === 'RSET') return '250 2.0.0 ok';
    if (verb === 'DATA') return '354 go ahead';
    if (line === '.') return '250 2.0.0 queued';
    if (verb === 'QUIT') {
      s.write('221 2.0.0 bye');
      return 'close';
    }
    return '502 5.5.1 not implemented';
  };
}
