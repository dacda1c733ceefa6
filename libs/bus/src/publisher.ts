// JetStream publishes whose acknowledgements come back on one wildcard inbox
// subscription, matched by token.
//
// Why not js.publish(): it goes through nc.request(), which per publish
// builds a promise, a timer, a random token and, once the ack has arrived,
// an Error (with its stack) only to "cancel" the finished request; and it
// decodes the ack with a fresh TextDecoder, for every job and every result
// published (docs/performance.md). The protocol is the same: a publish with
// a reply subject; the stream answers a PubAck or an error document, the
// server a 503 status when no stream takes the subject.
import { createInbox, type MsgHdrs, type Msg, type NatsConnection, type Subscription } from '@nats-io/nats-core';
import type { PubAck } from '@nats-io/jetstream';

interface Pending {
  resolve(ack: PubAck): void;
  reject(err: Error): void;
  deadline: number;
  subject: string;
}

interface AckDocument {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  domain?: string;
  error?: { code?: number; err_code?: number; description?: string };
}

export class JetStreamPublisher {
  private readonly prefix = createInbox();
  private next = 0;
  /** In publish order, which is deadline order (one timeout for all): the sweep stops at the first live one. */
  private readonly pending = new Map<string, Pending>();
  private readonly sub: Subscription;
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs: number,
  ) {
    this.sub = nc.subscribe(`${this.prefix}.*`, { callback: (err, msg) => (err ? this.failAll(err) : this.onAck(msg)) });
    this.sweeper = setInterval(() => this.sweep(), Math.max(10, Math.min(1_000, Math.floor(timeoutMs / 4))));
    this.sweeper.unref();
  }

  /** Publishes and resolves with the stream's PubAck; rejects with the stream's error, or after the timeout. */
  publish(subject: string, data: Uint8Array, headers: MsgHdrs): Promise<PubAck> {
    if (this.closed) return Promise.reject(new Error(`JetStream publish to ${subject}: publisher closed`));
    const token = (this.next++).toString(36);
    return new Promise<PubAck>((resolve, reject) => {
      this.pending.set(token, { resolve, reject, deadline: Date.now() + this.timeoutMs, subject });
      try {
        this.nc.publish(subject, data, { headers, reply: `${this.prefix}.${token}` });
      } catch (err) {
        this.pending.delete(token);
        reject(err as Error);
      }
    });
  }

  /** Publishes still waiting for their ack. */
  get inflight(): number {
    return this.pending.size;
  }

  /** Resolves once no publish waits for its ack, or after `maxMs`. */
  async settled(maxMs: number): Promise<void> {
    const until = Date.now() + maxMs;
    while (this.pending.size && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  }

  /** Rejects the publishes still waiting, and stops taking acks. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    this.failAll(new Error('publisher closed before the PubAck arrived'));
    this.sub.unsubscribe();
  }

  private onAck(msg: Msg): void {
    const token = msg.subject.slice(this.prefix.length + 1);
    const p = this.pending.get(token);
    if (!p) return; // timed out already
    this.pending.delete(token);
    if (msg.headers?.code === 503) {
      p.reject(new Error(`JetStream publish to ${p.subject}: no stream takes this subject (503 no responders)`));
      return;
    }
    let doc: AckDocument;
    try {
      doc = JSON.parse(Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength).toString('utf8')) as AckDocument;
    } catch {
      p.reject(new Error(`JetStream publish to ${p.subject}: unreadable PubAck`));
      return;
    }
    if (doc.error) {
      const e = doc.error;
      p.reject(new Error(`JetStream publish to ${p.subject} refused: ${e.description ?? 'unknown error'} (code ${e.code ?? '?'}, err_code ${e.err_code ?? '?'})`));
    } else if (!doc.stream) {
      p.reject(new Error(`JetStream publish to ${p.subject}: PubAck names no stream`));
    } else {
      p.resolve({ stream: doc.stream, seq: doc.seq ?? 0, duplicate: doc.duplicate === true, domain: doc.domain } as PubAck);
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const [token, p] of this.pending) {
      if (p.deadline > now) break;
      this.pending.delete(token);
      p.reject(new Error(`JetStream publish to ${p.subject}: no PubAck within ${this.timeoutMs} ms`));
    }
  }

  private failAll(err: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(err);
  }
}
