// Transactional outbox: rows are written in the transaction that changes
// state, and the relay publishes them to JetStream (Nats-Msg-Id = msg_id, so
// a republish after a crash is dropped) and deletes them. Replicas share the
// work with FOR UPDATE SKIP LOCKED; a poll covers rows left by a crash.
import type { Bus } from '@tern/bus';
import type { Pool, PoolClient } from '@tern/db';
import { extractContext, withSpan, type Logger, type Tracer } from '@tern/telemetry';
import type { Counter } from './metrics';
import { q, tx } from './db';

export interface OutboxRow {
  subject: string;
  msgId: string;
  payload: Uint8Array;
  /** W3C trace context to continue (the message's Enqueue call). */
  trace: Record<string, string> | null;
  /** Span name for the publish, e.g. queue.dispatch. */
  span: string;
  attrs?: Record<string, string | number>;
}

/** The outbox columns of `rows` as arrays, for unnest. */
export function outboxColumns(rows: OutboxRow[]): { subjects: string[]; msgIds: string[]; payloads: Buffer[]; traces: string[] } {
  return {
    subjects: rows.map((r) => r.subject),
    msgIds: rows.map((r) => r.msgId),
    payloads: rows.map((r) => Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength)),
    traces: rows.map((r) => JSON.stringify({ ...(r.trace ?? {}), 'x-span': r.span, 'x-attrs': r.attrs ?? {} })),
  };
}

export async function insertOutbox(c: PoolClient, rows: OutboxRow[]): Promise<void> {
  if (!rows.length) return;
  await q(
    c,
    'tern_outbox_insert',
    `INSERT INTO outbox (subject, msg_id, payload, trace)
     SELECT s, m, p, t::jsonb FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) AS x(s, m, p, t)`,
    [
      rows.map((r) => r.subject),
      rows.map((r) => r.msgId),
      rows.map((r) => Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength)),
      rows.map((r) => JSON.stringify({ ...(r.trace ?? {}), 'x-span': r.span, 'x-attrs': r.attrs ?? {} })),
    ],
  );
}

export interface RelayOptions {
  pool: Pool;
  bus: Bus;
  logger: Logger;
  tracer: Tracer;
  batch: number;
  pollMs: number;
  published: Counter;
}

export class Relay {
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  private woken = false;
  private loop: Promise<void> | undefined;

  constructor(private readonly o: RelayOptions) {}

  start(): void {
    this.loop = this.run();
  }

  /** Something was committed to the outbox: publish now. */
  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wakeUp?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      this.woken = false;
      let n = 0;
      try {
        n = await this.pass();
        failures = 0;
      } catch (err) {
        failures++;
        this.o.logger.warn({ err: (err as Error).message }, 'outbox relay pass failed; retrying');
      }
      if (this.stopped) break;
      if (n >= this.o.batch || (this.woken && failures === 0)) continue;
      const wait = failures ? Math.min(10_000, 250 * 2 ** failures) : this.o.pollMs;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, wait);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.wakeUp = failures ? undefined : done;
      });
      this.wakeUp = undefined;
    }
  }

  /** Publishes one batch; returns how many rows it published. */
  async pass(): Promise<number> {
    return tx(this.o.pool, async (c) => {
      const { rows } = await q<{ id: number; subject: string; msg_id: string; payload: Buffer; trace: Record<string, unknown> | null }>(
        c,
        'tern_outbox_select',
        'SELECT id, subject, msg_id, payload, trace FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED',
        [this.o.batch],
      );
      if (!rows.length) return 0;
      await Promise.all(
        rows.map((r) => {
          const { 'x-span': span, 'x-attrs': attrs, ...carrier } = (r.trace ?? {}) as Record<string, unknown>;
          const parent = extractContext(carrier as Record<string, string>);
          return withSpan(
            this.o.tracer,
            typeof span === 'string' ? span : 'queue.publish',
            { 'messaging.destination': r.subject, 'messaging.message.id': r.msg_id, ...((attrs as Record<string, string>) ?? {}) },
            () => this.o.bus.publish(r.subject, r.payload, { msgId: r.msg_id }),
            parent,
          );
        }),
      );
      await q(
        c,
        'tern_outbox_delete',
        'DELETE FROM outbox WHERE id = ANY($1::bigint[])', [rows.map((r) => r.id)],
      );
      this.o.published.add(rows.length);
      return rows.length;
    });
  }
}
