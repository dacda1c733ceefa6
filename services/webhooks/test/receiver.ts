// A webhook receiver for tests: node:http on loopback, each path an endpoint
// whose answers the test sets (status, or hang), every request recorded with
// its signature checked against the endpoint's secret the Standard Webhooks
// way (HMAC-SHA256 over "id.timestamp.body" with the base64 bytes after
// "whsec_").
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Received {
  path: string;
  id: string;
  timestamp: number;
  signature: string;
  /** The signature verifies with the secret registered for the path. */
  valid: boolean;
  contentType: string;
  body: string;
  json: unknown;
  status: number;
}

/** Verifies a webhook-signature header ("v1,<b64>", possibly several space-separated) as a receiver would. */
export function verify(secret: string, id: string, timestamp: string, body: string, header: string): boolean {
  if (!secret.startsWith('whsec_')) return false;
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const expected = crypto.createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest();
  return header.split(' ').some((sig) => {
    const [version, b64] = sig.split(',');
    const got = Buffer.from(b64 ?? '', 'base64');
    return version === 'v1' && got.length === expected.length && crypto.timingSafeEqual(got, expected);
  });
}

export class Receiver {
  readonly requests: Received[] = [];
  private readonly secrets = new Map<string, string>();
  /** Per path: the statuses to answer next, in order ("hang" never answers); then 200. */
  private readonly plans = new Map<string, Array<number | 'hang'>>();
  private readonly perId = new Map<string, { n: number; status: number }>();
  /** Per path: the answer once its plan is used up (default 200). */
  private readonly fixed = new Map<string, number | 'hang'>();
  private readonly hung = new Set<http.ServerResponse>();
  private server = http.createServer((req, res) => this.handle(req, res));
  port = 0;

  async start(host = '127.0.0.1'): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, host, resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  url(path: string): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  secret(path: string, secret: string): void {
    this.secrets.set(path, secret);
  }

  /** The next answers of `path`. */
  plan(path: string, answers: Array<number | 'hang'>): void {
    this.plans.set(path, [...answers]);
  }

  /** Each webhook-id at `path` gets `status` to its first `n` attempts, then 200. */
  failFirst(path: string, n: number, status: number): void {
    this.perId.set(path, { n, status });
  }

  /** Answers `status` from now on (a plan of one, repeated). */
  always(path: string, status: number | 'hang'): void {
    this.plans.delete(path);
    this.fixed.set(path, status);
  }

  of(path: string): Received[] {
    return this.requests.filter((r) => r.path === path);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '/';
      const body = Buffer.concat(chunks).toString('utf8');
      const id = String(req.headers['webhook-id'] ?? '');
      const ts = String(req.headers['webhook-timestamp'] ?? '');
      const sig = String(req.headers['webhook-signature'] ?? '');
      const per = this.perId.get(path);
      const earlier = this.requests.filter((r) => r.path === path && r.id === id).length;
      const answer = per && earlier < per.n ? per.status : (this.plans.get(path)?.shift() ?? this.fixed.get(path) ?? 200);
      let json: unknown;
      try {
        json = JSON.parse(body);
      } catch {
        json = undefined;
      }
      this.requests.push({
        path,
        id,
        timestamp: Number(ts),
        signature: sig,
        valid: verify(this.secrets.get(path) ?? '', id, ts, body, sig),
        contentType: String(req.headers['content-type'] ?? ''),
        body,
        json,
        status: answer === 'hang' ? 0 : answer,
      });
      if (answer === 'hang') {
        this.hung.add(res);
        return;
      }
      res.writeHead(answer, { 'content-type': 'text/plain' });
      res.end('ok\n');
    });
  }

  async close(): Promise<void> {
    for (const res of this.hung) res.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
