// Test kit: a raw SMTP client over loopback sockets, a recording hook set,
// and a self-signed certificate made with the openssl CLI.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import tls from 'node:tls';
import { SmtpServer, type Envelope, type Reply, type SmtpHooks, type SmtpServerOptions, type SmtpSession } from '../src/index';

export interface ParsedReply {
  code: number;
  lines: string[];
  raw: string;
}

/** A line-oriented SMTP client that lets tests send arbitrary octets. */
export class RawClient {
  private buf = '';
  private waiters: Array<() => void> = [];
  closed = false;
  sock: net.Socket;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    this.hook(sock);
  }

  private hook(sock: net.Socket): void {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => {});
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static connect(port: number, host = '127.0.0.1', localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ port, host, ...(localAddress ? { localAddress } : {}) }, () => resolve(new RawClient(sock)));
      sock.once('error', reject);
    });
  }

  static connectTls(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const sock = tls.connect({ port, host, rejectUnauthorized: false }, () => resolve(new RawClient(sock)));
      sock.once('error', reject);
    });
  }

  /** Upgrades this connection with TLS (after a 220 to STARTTLS). */
  async startTls(): Promise<void> {
    const raw = this.sock;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ socket: raw, rejectUnauthorized: false }, () => resolve(s));
      s.once('error', reject);
    });
    this.sock = secure;
    this.hook(secure);
  }

  send(data: string | Buffer): void {
    this.sock.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
  }

  /** Writes `data` one octet per write, with a tick between writes. */
  async sendSlowly(data: string | Buffer): Promise<void> {
    const b = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    for (let i = 0; i < b.length; i++) {
      this.sock.write(b.subarray(i, i + 1));
      await new Promise((r) => setImmediate(r));
    }
  }

  private async waitFor(pred: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (this.closed) return;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for reply; buffer: ${JSON.stringify(this.buf)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Reads one (possibly multi-line) reply. */
  async read(timeoutMs = 5000): Promise<ParsedReply> {
    let end = -1;
    await this.waitFor(() => {
      end = findReplyEnd(this.buf);
      return end >= 0;
    }, timeoutMs);
    if (end < 0) throw new Error(`connection closed; buffer: ${JSON.stringify(this.buf)}`);
    const raw = this.buf.slice(0, end);
    this.buf = this.buf.slice(end);
    const lines = raw.split('\r\n').filter(Boolean);
    return { code: Number(lines[0]!.slice(0, 3)), lines: lines.map((l) => l.slice(4)), raw };
  }

  async cmd(line: string): Promise<ParsedReply> {
    this.send(`${line}\r\n`);
    return this.read();
  }

  /** Resolves when the server closed the connection. */
  async waitClosed(timeoutMs = 5000): Promise<void> {
    await this.waitFor(() => this.closed, timeoutMs);
    if (!this.closed) throw new Error('still open');
  }

  /** Everything not yet read as replies. */
  pending(): string {
    return this.buf;
  }

  close(): void {
    this.sock.destroy();
  }
}

function findReplyEnd(buf: string): number {
  let pos = 0;
  for (;;) {
    const nl = buf.indexOf('\r\n', pos);
    if (nl < 0) return -1;
    const line = buf.slice(pos, nl);
    if (line.length < 4 || line[3] === ' ') return nl + 2;
    pos = nl + 2;
  }
}

export interface StoredMessage {
  session: SmtpSession;
  envelope: Envelope;
  body: Buffer;
  id: string;
}

/** Hooks that accept everything and keep what was received. */
export function recordingHooks(overrides: Partial<SmtpHooks> = {}): SmtpHooks & { stored: StoredMessage[]; aborted: number; closed: string[] } {
  const stored: StoredMessage[] = [];
  const closed: string[] = [];
  const hooks = {
    stored,
    aborted: 0,
    closed,
    async onData(session: SmtpSession, envelope: Envelope, stream: Readable): Promise<Reply> {
      const chunks: Buffer[] = [];
      try {
        for await (const c of stream) chunks.push(c as Buffer);
      } catch (err) {
        hooks.aborted++;
        throw err;
      }
      const id = `Q${stored.length + 1}`;
      stored.push({ session, envelope, body: Buffer.concat(chunks), id });
      return { code: 250, enhanced: '2.0.0', text: `Ok: queued as ${id}` };
    },
    onClose(_s: SmtpSession, reason: string) {
      closed.push(reason);
    },
    ...overrides,
  };
  return hooks;
}

export async function startServer(
  opts: Partial<SmtpServerOptions>,
  hooks: SmtpHooks,
): Promise<{ server: SmtpServer; port: number }> {
  const server = new SmtpServer({ hostname: 'mx.test', port: 0, host: '127.0.0.1', ...opts }, hooks);
  const port = await server.listen();
  return { server, port };
}

/** Connects, reads the greeting, says EHLO. */
export async function ready(port: number, name = 'client.test'): Promise<RawClient> {
  const c = await RawClient.connect(port);
  const g = await c.read();
  if (g.code !== 220) throw new Error(`greeting ${g.raw}`);
  const e = await c.cmd(`EHLO ${name}`);
  if (e.code !== 250) throw new Error(`EHLO ${e.raw}`);
  return c;
}

let certCache: { cert: string; key: string; dir: string } | undefined;

/** A self-signed certificate for "mx.test" (openssl CLI). */
export function selfSignedCert(): { cert: string; key: string; certFile: string; keyFile: string } {
  if (!certCache) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-smtp-cert-'));
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '2', '-subj', '/CN=mx.test', '-addext', 'subjectAltName=DNS:mx.test,DNS:localhost,IP:127.0.0.1'],
      { stdio: 'ignore' },
    );
    certCache = {
      dir,
      cert: fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8'),
      key: fs.readFileSync(path.join(dir, 'key.pem'), 'utf8'),
    };
  }
  return { cert: certCache.cert, key: certCache.key, certFile: path.join(certCache.dir, 'cert.pem'), keyFile: path.join(certCache.dir, 'key.pem') };
}

export function tlsOptions(): { secureContext: () => tls.SecureContext } {
  const { cert, key } = selfSignedCert();
  const ctx = tls.createSecureContext({ cert, key });
  return { secureContext: () => ctx };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
