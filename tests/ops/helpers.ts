// Shared by the operations tests: the `tern` CLI spawned the way an operator
// runs it, a raw SMTP client (for addresses nodemailer would refuse to send),
// nodemailer transports, and polling.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import nodemailer from 'nodemailer';
import { repoRoot, type Platform } from '@tern/devkit';

export interface TernResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Where the CLI connects: a Platform, or any admin API (a port-forward into a cluster). */
export type AdminTarget = Pick<Platform, 'adminAddr' | 'adminToken'>;

/** Runs `tern ARGS` against the platform's admin API; never throws on a non-zero exit. */
export function ternRaw(platform: AdminTarget, args: string[], opts: { stdin?: string; env?: Record<string, string> } = {}): Promise<TernResult> {
  const root = repoRoot();
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(root, 'node_modules/.bin/node'), [path.join(root, 'cli/bin/tern.js'), ...args], {
      cwd: root,
      env: { ...process.env, TERN_ADMIN_ADDR: platform.adminAddr, TERN_ADMIN_TOKEN: platform.adminToken, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(opts.stdin ?? '');
  });
}

/** Runs `tern ARGS`; asserts exit 0 and returns stdout. */
export async function tern(platform: AdminTarget, ...args: string[]): Promise<string> {
  const r = await ternRaw(platform, args);
  assert.equal(r.code, 0, `tern ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Runs `tern --json ARGS` and parses the output. */
export async function ternJson<T = Record<string, unknown>>(platform: AdminTarget, ...args: string[]): Promise<T> {
  const out = await tern(platform, '--json', ...args);
  try {
    return JSON.parse(out) as T;
  } catch {
    throw new Error(`tern --json ${args.join(' ')} printed no JSON: ${out}`);
  }
}

/** Runs `tern ARGS` and captures stdout as raw bytes (for `message download`). */
export function ternBytes(platform: Platform, ...args: string[]): Promise<Buffer> {
  const root = repoRoot();
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(root, 'node_modules/.bin/node'), [path.join(root, 'cli/bin/tern.js'), ...args], {
      cwd: root,
      env: { ...process.env, TERN_ADMIN_ADDR: platform.adminAddr, TERN_ADMIN_TOKEN: platform.adminToken },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const chunks: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => chunks.push(d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(chunks)) : reject(new Error(`tern ${args.join(' ')} exited ${code}: ${stderr}`))));
  });
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function smtp(platform: Platform, localAddress = '127.0.0.1', port = platform.smtpPort) {
  return nodemailer.createTransport({
    host: platform.smtpHost,
    port,
    secure: false,
    ignoreTLS: true,
    localAddress,
    name: 'client.example',
  } as Parameters<typeof nodemailer.createTransport>[0]);
}

export function queueIdOf(response: string): string {
  const m = /^250 2\.0\.0 Ok: queued as (\S+)$/.exec(response.trim());
  assert.ok(m, `the 250 reply names the queue id: "${response}"`);
  return m[1]!;
}

/** Sends one message over the MX listener from a trusted client; returns the queue id. */
export async function send(platform: Platform, from: string, to: string[], subject: string, body = 'Hello.\r\n'): Promise<string> {
  const info = await smtp(platform).sendMail({
    envelope: { from, to },
    raw: `From: ${from}\r\nTo: ${to.join(',\r\n ')}\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W+/g, '-')}@ops.test>\r\n\r\n${body}`,
  });
  return queueIdOf(info.response);
}

export interface SmtpReply {
  code: number;
  /** The enhanced status code of the first line ("5.7.1"), or "". */
  enhanced: string;
  text: string;
  lines: string[];
}

/** A raw SMTP client: one command, one reply; for addresses no library will send. */
export class RawSmtp {
  private buf = '';
  private waiting?: () => void;
  private closed = false;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }

  static async connect(host: string, port: number, localAddress = '127.0.0.1', timeoutMs = 15_000): Promise<{ client: RawSmtp; greeting: SmtpReply }> {
    const sock = net.connect({ host, port, localAddress });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        sock.destroy();
        reject(new Error(`no connection to ${host}:${port} within ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('connect', () => (clearTimeout(t), resolve()));
      sock.once('error', (err) => (clearTimeout(t), reject(err)));
    });
    const client = new RawSmtp(sock);
    const greeting = await client.reply();
    return { client, greeting };
  }

  async reply(timeoutMs = 15_000): Promise<SmtpReply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines = this.buf.split('\r\n');
      for (let i = 0; i < lines.length - 1; i++) {
        if (/^\d{3} /.test(lines[i]!) || /^\d{3}$/.test(lines[i]!)) {
          const got = lines.slice(0, i + 1);
          this.buf = lines.slice(i + 1).join('\r\n');
          const code = Number(got[0]!.slice(0, 3));
          const first = got[0]!.slice(4);
          const enh = /^([245]\.\d{1,3}\.\d{1,3})\b/.exec(first);
          return { code, enhanced: enh ? enh[1]! : '', text: got.map((l) => l.slice(4)).join('\n'), lines: got };
        }
      }
      if (this.closed) throw new Error(`connection closed without a reply (buffer: ${JSON.stringify(this.buf)})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms (buffer: ${JSON.stringify(this.buf)})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiting = () => (clearTimeout(t), resolve());
      });
    }
  }

  async command(line: string, timeoutMs?: number): Promise<SmtpReply> {
    this.sock.write(`${line}\r\n`);
    return this.reply(timeoutMs);
  }

  close(): void {
    if (!this.closed) {
      this.sock.write('QUIT\r\n');
      this.sock.end();
    }
    setTimeout(() => this.sock.destroy(), 500).unref();
  }
}

/** Connects, says EHLO and MAIL FROM, and returns the RCPT reply for `rcpt`. */
export async function rcptReply(platform: Platform, opts: { from: string; rcpt: string; localAddress?: string; port?: number }): Promise<SmtpReply> {
  const { client, greeting } = await RawSmtp.connect(platform.smtpHost, opts.port ?? platform.smtpPort, opts.localAddress ?? '127.0.0.2');
  try {
    assert.equal(greeting.code, 220, `greeting: ${greeting.text}`);
    const ehlo = await client.command('EHLO client.example');
    assert.equal(ehlo.code, 250, `EHLO: ${ehlo.text}`);
    const mail = await client.command(`MAIL FROM:<${opts.from}>`);
    assert.equal(mail.code, 250, `MAIL: ${mail.text}`);
    return await client.command(`RCPT TO:${opts.rcpt}`);
  } finally {
    client.close();
  }
}

/** The policy service's decision counters from /metrics: `reason` -> count (summed over stage/action). */
/** A metric's value summed over its series, from the text of a /metrics scrape (0 when absent). */
export function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

export async function policyDecisions(platform: Platform): Promise<Map<string, number>> {
  const res = await fetch(`http://${platform.services.policy.metricsAddr}/metrics`);
  const text = await res.text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('tern_policy_decisions_total{')) continue;
    const reason = /reason="([^"]*)"/.exec(line)?.[1] ?? '';
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    out.set(reason, (out.get(reason) ?? 0) + value);
  }
  return out;
}
