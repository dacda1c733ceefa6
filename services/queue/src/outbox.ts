// Transactional outbox: rows are written in the transaction that changes
// state, and the relay publishes them to JetStream (Nats-Msg-Id = msg_id, so
// a republish after a crash is dropped) and deletes them. Replicas share the
// work with FOR UPDATE SKIP LOCKED; a poll covers rows left by a crash.
import type { Bus } from '@tern/bus';
import type { Pool, PoolClient } from '@tern/db';
import { extractContext, withSpan, type Logger, type Tracer } from '@tern/telemetry';
import type { Counter } from './metrics';
import { appendBytesField } from '@tern/proto';
import { Batcher, Part, PollLoop, errorMessage } from '@tern/runtime';
import { packBytes, q, statement, tx } from './db';


export interface OutboxRow {
  subject: string;
  msgId: string;
  /** The message as stored (for a job with a body: without it, see `body`). */
  payload: Uint8Array;
  /**
   * A DeliveryJob's body, not stored with the row: the published message is
   * `payload` with the body field appended (protobuf fields concatenate).
   * `bodyOf` names the message whose stored body it is, for a republish.
   */
  body?: { of: string; data: Uint8Array };
  /** W3C trace context to continue (the message's Enqueue call). */
  trace: Record<string, string> | null;
  /** Span name for the publish, e.g. queue.dispatch; '' = no span (lifecycle events belong to no one message's trace). */
  span: string;
  attrs?: Record<string, string | number>;
}

/** The outbox columns of `rows` as arrays, for unnest. */
export function outboxColumns(rows: OutboxRow[]): { subjects: string[]; msgIds: string[]; payloads: Buffer[]; traces: string[]; bodyOf: (string | null)[] } {
  return {
    subjects: rows.map((r) => r.subject),
    msgIds: rows.map((r) => r.msgId),
    payloads: rows.map((r) => Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength)),
    traces: rows.map((r) => JSON.stringify({ ...(r.trace ?? {}), 'x-span': r.span, 'x-attrs': r.attrs ?? {} })),
    bodyOf: rows.map((r) => r.body?.of ?? null),
  };
}

/** `DeliveryJob.body`'s field number (events.proto). */
const BODY_FIELD = 10;

/**
 * A DeliveryJob payload with its body field appended (DeliveryJob.body is
 * never in the stored payload; protobuf takes fields in any order), the body
 * copied once (see @tern/proto's bodies.ts).
 */
export function withBody(payload: Uint8Array, body: Uint8Array | null | undefined): Uint8Array {
  return appendBytesField(payload, BODY_FIELD, body);
}

/** An outbox row as committed, with its id (for the relay's hand-off). */
export interface StoredOutboxRow extends OutboxRow {
  id: number;
}

/** Gives committed rows their ids back (matched by msg_id, unique per row). */
export function stored(rows: OutboxRow[], ids: Array<{ id: string | number; msg_id: string }>): StoredOutboxRow[] {
  const byMsg = new Map(ids.map((r) => [r.msg_id, Number(r.id)]));
  return rows.flatMap((r) => (byMsg.has(r.msgId) ? [{ ...r, id: byMsg.get(r.msgId)! }] : []));
}

/** Parameter numbers of the outbox columns (outboxColumns, the payloads packed by packBytes). */
export interface OutboxParams {
  subjects: number;
  msgIds: number;
  packed: number;
  offsets: number;
  lengths: number;
  traces: number;
  bodyOf: number;
}

/**
 * SQL inserting outbox rows from their columns as parameters, returning their
 * ids (for `stored`). With `granted`, for statements that take slots and
 * write jobs at once (the body of a CTE): only the rows of jobs that got a
 * slot in CTE `g` (name, granted): the job's destination (parameter
 * `granted.destinations`) granted at least its ordinal among the jobs of
 * that destination in the statement (parameter `granted.ordinals`, 1-based).
 * A row without a destination (a lifecycle event) is always inserted.
 */
function insertOutboxSql(p: OutboxParams, granted?: { destinations: number; ordinals: number }): string {
  const d = granted
    ? { param: `, $${granted.destinations}::text[], $${granted.ordinals}::int[]`, col: ', d, k', where: '\n       WHERE x.d IS NULL OR x.k <= (SELECT g.granted FROM g WHERE g.name = x.d)' }
    : { param: '', col: '', where: '' };
  return `INSERT INTO outbox (subject, msg_id, payload, trace, body_of)
       SELECT x.s, x.m, substring($${p.packed}::bytea from x.po + 1 for x.pl), x.t::jsonb, x.b
       FROM unnest($${p.subjects}::text[], $${p.msgIds}::text[], $${p.offsets}::int[], $${p.lengths}::int[], $${p.traces}::text[], $${p.bodyOf}::text[]${d.param})
         AS x(s, m, po, pl, t, b${d.col})${d.where}
       RETURNING id, msg_id`;
}

/** insertOutboxSql for the rows of the jobs granted a slot in CTE `g`; `outboxIdsSql` selects their ids. */
export function insertGrantedOutboxSql(p: OutboxParams & { destinations: number; ordinals: number }): string {
  return insertOutboxSql(p, { destinations: p.destinations, ordinals: p.ordinals });
}

/** Each job's 1-based ordinal among the jobs of its destination, in order (for insertGrantedOutboxSql and partial grants). */
export function ordinalsByDestination(destinations: string[]): number[] {
  const seen = new Map<string, number>();
  return destinations.map((d) => {
    const k = (seen.get(d) ?? 0) + 1;
    seen.set(d, k);
    return k;
  });
}

/** The ids of the rows inserted by the CTE `cte` (insertGrantedOutboxSql), as JSON for `stored`. */
export const outboxIdsSql = (cte: string): string => `(SELECT json_agg(json_build_object('id', id, 'msg_id', msg_id)) FROM ${cte})`;

const OUTBOX_INSERT = statement('tern_outbox_insert', insertOutboxSql({ subjects: 1, msgIds: 2, packed: 3, traces: 4, offsets: 5, lengths: 6, bodyOf: 7 }));

export async function insertOutbox(c: PoolClient, rows: OutboxRow[]): Promise<StoredOutboxRow[]> {
  if (!rows.length) return [];
  const cols = outboxColumns(rows);
  const payloads = packBytes(cols.payloads);
  const { rows: ids } = await q<{ id: string; msg_id: string }>(
    c,
    OUTBOX_INSERT,
    [cols.subjects, cols.msgIds, payloads.packed, cols.traces, payloads.offsets, payloads.lengths, cols.bodyOf],
  );
  return stored(rows, ids);
}

const OUTBOX_DELETE = statement('tern_outbox_delete', 'DELETE FROM outbox WHERE id = ANY($1::bigint[])');

/** A relay pass's rows ($1 at most, none of those in $2: in a hand-off), locked, with the bodies their jobs were stored without. */
const OUTBOX_SELECT = statement(
  'tern_outbox_select',
  `SELECT o.id, o.subject, o.msg_id, o.payload, o.trace,
                CASE WHEN o.body_of IS NOT NULL THEN
                  (SELECT b.data FROM body_chunks b WHERE b.message_id = o.body_of AND b.seq = 0
                     AND NOT EXISTS (SELECT 1 FROM body_chunks b1 WHERE b1.message_id = o.body_of AND b1.seq = 1)) END AS body
         FROM outbox o WHERE o.id <> ALL($2::bigint[]) ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED`,
);

export interface RelayOptions {
  pool: Pool;
  /** The NATS connection, once the service has connected (the relay publishes only after start). */
  bus: () => Bus;
  logger: Logger;
  tracer: Tracer;
  batch: number;
  pollMs: number;
  published: Counter;
}

export class Relay extends Part {
  private readonly loop: PollLoop;
  private readonly handoffs = new Set<Promise<void>>();
  /**
   * Rows a hand-off of this process is publishing or deleting: its passes
   * leave them alone (they would only publish duplicates). Another
   * replica's pass may still take them; JetStream drops the duplicate.
   */
  private readonly inHandoff = new Set<number>();
  /**
   * Deletes published rows. Hand-offs come one per commit; those that finish
   * within 50 ms of each other, or while a DELETE is in flight, go together
   * in one statement (a DELETE per group commit was a large share of the
   * queue's statements: docs/performance.md). A row left a moment longer
   * is at worst published again by a pass, and JetStream drops the
   * duplicate (its window is minutes).
   */
  private readonly deletes = new Batcher<number[], void>({
    maxItems: 256,
    delayMs: 50,
    concurrency: 1,
    flush: async (batches) => {
      await q(this.o.pool, OUTBOX_DELETE, [batches.flat()]);
      return batches.map(() => undefined);
    },
  });

  constructor(private readonly o: RelayOptions) {
    // A failing NATS is not retried once per commit: wakes wait for the backoff.
    const loop = new PollLoop({
      name: 'outbox relay',
      intervalMs: o.pollMs,
      wakeDuringBackoff: false,
      pass: async () => (await this.pass()) >= o.batch,
      onError: (err) => o.logger.warn({ err: errorMessage(err) }, 'outbox relay pass failed; retrying'),
    });
    super('outbox relay', {
      start: () => loop.start(),
      drain: async () => {
        const stopped = loop.drain();
        await Promise.allSettled([...this.handoffs]);
        await stopped;
      },
    });
    this.loop = loop;
  }

  /** Started and not stopping: hand-offs are taken. */
  private get running(): boolean {
    return (this.state === 'starting' || this.state === 'running') && this.loop.running;
  }

  /** Something was committed to the outbox: publish now. */
  wake(): void {
    this.loop.wake();
  }

  /**
   * Rows just committed, handed over by the committer: published from memory
   * (no reading back), then deleted in one statement. A row whose publish
   * fails stays, and the next pass publishes it (same Nats-Msg-Id); a pass
   * that picks a row while its hand-off is under way publishes it twice,
   * which JetStream drops as a duplicate.
   */
  handoff(rows: StoredOutboxRow[]): void {
    if (!rows.length) return;
    // Not running (not started, or stopping): the rows wait for a pass.
    if (!this.running) return this.wake();
    for (const r of rows) this.inHandoff.add(r.id);
    // Rows given back to the passes before a pass is woken for them.
    const giveBack = (ids: number[]) => {
      for (const id of ids) this.inHandoff.delete(id);
    };
    const p = (async () => {
      const results = await Promise.allSettled(
        rows.map((r) => this.publish(r.subject, r.msgId, withBody(r.payload, r.body?.data), { ...(r.trace ?? {}) }, r.span, r.attrs ?? {})),
      );
      const done = rows.filter((_, i) => results[i]!.status === 'fulfilled').map((r) => r.id);
      if (done.length < rows.length) {
        giveBack(rows.filter((_, i) => results[i]!.status !== 'fulfilled').map((r) => r.id));
        this.wake();
      }
      if (done.length) {
        await this.deletes.add(done);
        this.o.published.add(done.length);
      }
    })()
      .catch((err: Error) => {
        this.o.logger.warn({ err: err.message }, 'outbox hand-off failed; the relay pass retries');
        giveBack(rows.map((r) => r.id));
        this.wake();
      })
      .finally(() => {
        this.handoffs.delete(p);
        giveBack(rows.map((r) => r.id));
      });
    this.handoffs.add(p);
  }

  private publish(subject: string, msgId: string, payload: Uint8Array, carrier: Record<string, string>, span: string, attrs: Record<string, string | number>): Promise<unknown> {
    if (span === '') return this.o.bus().publish(subject, payload, { msgId });
    return withSpan(
      this.o.tracer,
      span,
      { 'messaging.destination': subject, 'messaging.message.id': msgId, ...attrs },
      () => this.o.bus().publish(subject, payload, { msgId }),
      extractContext(carrier),
    );
  }

  /** Publishes one batch; returns how many rows it published. */
  async pass(): Promise<number> {
    return tx(this.o.pool, async (c) => {
      // A job stored without its body gets it back from body_chunks: one
      // row only (a spilled body never travels in a job), none if removed.
      const { rows } = await q<{ id: number; subject: string; msg_id: string; payload: Buffer; trace: Record<string, unknown> | null; body: Buffer | null }>(
        c,
        OUTBOX_SELECT,
        [this.o.batch, [...this.inHandoff]],
      );
      if (!rows.length) return 0;
      await Promise.all(
        rows.map((r) => {
          const { 'x-span': span, 'x-attrs': attrs, ...carrier } = (r.trace ?? {}) as Record<string, unknown>;
          return this.publish(
            r.subject,
            r.msg_id,
            withBody(r.payload, r.body),
            carrier as Record<string, string>,
            typeof span === 'string' ? span : 'queue.publish',
            (attrs as Record<string, string>) ?? {},
          );
        }),
      );
      await q(c, OUTBOX_DELETE, [rows.map((r) => r.id)]);
      this.o.published.add(rows.length);
      return rows.length;
    });
  }
}
