// Transactions with a retry on deadlock / serialization failure (two
// replicas touching the same destination rows in different orders).
import { withTransaction, pg, type Pool, type PoolClient } from '@tern/db';
import type { DestinationLimits } from './destination';

const RETRYABLE = new Set(['40P01', '40001']);
/** SQLSTATE lock_not_available: a wait for a lock ran past lock_timeout. */
const LOCK_NOT_AVAILABLE = '55P03';

export function isLockTimeout(err: unknown): boolean {
  return (err as { code?: string } | undefined)?.code === LOCK_NOT_AVAILABLE;
}

export async function tx<T>(pool: Pool, fn: (c: PoolClient) => Promise<T>, attempts = 5): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await withTransaction(pool, fn);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (i >= attempts || !code || !RETRYABLE.has(code)) throw err;
      await new Promise((r) => setTimeout(r, 5 * i + Math.random() * 20));
    }
  }
}

/**
 * Rows as named column arrays, the parameters of a statement's
 * `unnest($1::..[], $2::..[], ...)`: `columns(rows, 'a', 'b')` is
 * `{ a: rows.map((r) => r.a), b: rows.map((r) => r.b) }`.
 */
export function columns<R extends object, K extends keyof R>(rows: readonly R[], ...fields: K[]): { [F in K]: Array<R[F]> } {
  const out = {} as { [F in K]: Array<R[F]> };
  for (const f of fields) out[f] = rows.map((r) => r[f]);
  return out;
}

/** A Postgres array literal of integers, for `$n::smallint[]` inside unnest of text[]. */
export function intArrayLiteral(values: readonly number[]): string {
  return `{${values.join(',')}}`;
}

export function parseIntArray(v: unknown): number[] {
  if (Array.isArray(v)) return v.map(Number);
  if (typeof v === 'string') return v.replace(/[{}]/g, '').split(',').filter(Boolean).map(Number);
  return [];
}

/**
 * A named (prepared) statement of the message path: parsed and planned once
 * per connection instead of on every call, so its text must not vary with a
 * call's data. A text that pastes in the destination limits (settings of the
 * process) is a function of them, built at each call. Every statement is
 * registered under its name when its module loads: `npm run sql:snapshot`
 * writes each one's final text to services/queue/sql/<name>.sql and
 * test/sql-snapshots.test.ts fails when the code and those files differ, so
 * a change to a statement shows in review as SQL.
 */
export interface Statement {
  readonly name: string;
  readonly text: string;
  /** Only `statement` makes one, so every statement q runs is registered. */
  readonly [REGISTERED]: true;
}

declare const REGISTERED: unique symbol;

const STATEMENTS = new Map<string, { text: (l: DestinationLimits) => string; usesLimits: boolean }>();

export function statement(name: string, text: string): Statement;
export function statement(name: string, text: (l: DestinationLimits) => string): (l: DestinationLimits) => Statement;
export function statement(name: string, text: string | ((l: DestinationLimits) => string)): Statement | ((l: DestinationLimits) => Statement) {
  // node-pg refuses one name prepared with two texts on a connection.
  if (STATEMENTS.has(name)) throw new Error(`statement ${name} is defined twice`);
  if (typeof text === 'string') {
    STATEMENTS.set(name, { text: () => text, usesLimits: false });
    return { name, text } as Statement;
  }
  STATEMENTS.set(name, { text, usesLimits: true });
  return (l) => ({ name, text: text(l) }) as Statement;
}

/**
 * Every statement registered so far (by the modules loaded) with its final
 * text under the limits `l`, and whether the text depends on them.
 */
export function registeredStatements(l: DestinationLimits): Array<{ name: string; text: string; usesLimits: boolean }> {
  return [...STATEMENTS].map(([name, s]) => ({ name, text: s.text(l), usesLimits: s.usesLimits }));
}

export function q<R extends pg.QueryResultRow = pg.QueryResultRow>(c: Pool | PoolClient, s: Statement, values: unknown[] = []): Promise<pg.QueryResult<R>> {
  return c.query<R>({ name: s.name, text: s.text, values });
}

// No binary result format here: node-pg decodes every result field as UTF-8
// text, binary ones included, so a bytea in binary loses every byte that is
// not valid UTF-8 (8-bit and binary bodies). Bodies are read as hex text.

/**
 * Byte strings as ONE binary parameter plus offsets and lengths. node-pg
 * sends a Buffer parameter in binary, but a bytea[] as hex text in an array
 * literal (twice the size, escaped here, parsed back by Postgres): for bodies
 * that is most of the cost of storing them. In SQL, part i is
 * substring($packed from offsets[i] + 1 for lengths[i]).
 *
 * Parts that are views into one buffer (the bodies of one EnqueueBatch
 * request, see decodeEnqueueBatch) are sent as the piece of it that spans
 * them, without copying them together first, when the bytes between them
 * (the other fields of the request) are few.
 */
export function packBytes(parts: readonly Uint8Array[]): { packed: Buffer; offsets: number[]; lengths: number[] } {
  const lengths = parts.map((p) => p.byteLength);
  const total = lengths.reduce((a, b) => a + b, 0);
  const shared = sharedSpan(parts, total);
  if (shared) return { packed: shared.span, offsets: parts.map((p) => p.byteOffset - shared.start), lengths };
  const offsets: number[] = [];
  let at = 0;
  for (const n of lengths) {
    offsets.push(at);
    at += n;
  }
  return { packed: Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength))), total), offsets, lengths };
}

/** Bytes between the parts that a shared span may carry along: per part, and in all (over that, copying is cheaper than sending). */
const SPAN_SLACK_PER_PART = 2048;
const SPAN_SLACK_MAX_SHARE = 0.25;

function sharedSpan(parts: readonly Uint8Array[], total: number): { span: Buffer; start: number } | undefined {
  // One part is always sent as it is; several only when worth it.
  if (parts.length === 0 || (parts.length > 1 && total < 16 * 1024)) return undefined;
  const ab = parts[0]!.buffer;
  let start = Infinity;
  let end = 0;
  for (const p of parts) {
    if (p.buffer !== ab) return undefined;
    start = Math.min(start, p.byteOffset);
    end = Math.max(end, p.byteOffset + p.byteLength);
  }
  const slack = end - start - total;
  if (slack > SPAN_SLACK_PER_PART * parts.length && slack > total * SPAN_SLACK_MAX_SHARE) return undefined;
  return { span: Buffer.from(ab, start, end - start), start };
}
