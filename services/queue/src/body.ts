// Reading stored bodies: row by row (each at most SPILL_CHUNK), streamed
// with backpressure, so memory stays bounded whatever the size (I4).
import type { Pool } from '@tern/db';
import type { grpc } from '@tern/grpc';
import { errorMessage } from '@tern/runtime';
import { BodyNotFoundError, BodyReadError } from './errors';
import type { ReadBodyRequest, ReadBodyResponse } from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { q, statement } from './db';
import { parseQueueId } from './ids';

const PIECE = 64 * 1024;

/** Body rows read per query (each at most SPILL_CHUNK). */
const ROWS = 2;

/** The message's body_removed and its first body rows. */
const BODY_FIRST = statement(
  'tern_body_first',
  `SELECT m.body_removed, c.seq, c.data FROM messages m
       LEFT JOIN LATERAL (SELECT seq, data FROM body_chunks WHERE message_id = m.id ORDER BY seq LIMIT ${ROWS}) c ON true
      WHERE m.id = $1 ORDER BY c.seq`,
);

const BODY_NEXT = statement('tern_body_next', `SELECT seq, data FROM body_chunks WHERE message_id = $1 AND seq > $2 ORDER BY seq LIMIT ${ROWS}`);

/**
 * Iterates a message's body rows in order; undefined when the message is
 * unknown or its body removed. The first query checks the message and reads
 * the first rows together, and a page shorter than ROWS is the last one, so a
 * small body (one row) costs one statement.
 */
export async function bodyRows(pool: Pool, queueId: string): Promise<AsyncGenerator<Buffer> | undefined> {
  const first = await q<{ body_removed: boolean; seq: number | null; data: Buffer | null }>(
    pool,
    BODY_FIRST,
    [queueId],
  );
  if (!first.rows.length || first.rows[0]!.body_removed) return undefined;
  const head = first.rows.filter((r) => r.seq !== null) as { seq: number; data: Buffer }[];
  return (async function* () {
    let page = head;
    let seq = -1;
    for (;;) {
      for (const row of page) {
        seq = row.seq;
        yield row.data;
      }
      if (page.length < ROWS) return;
      const r = await q<{ seq: number; data: Buffer }>(
        pool,
        BODY_NEXT,
        [queueId, seq],
      );
      page = r.rows;
    }
  })();
}

/** Finds the end of the header section (after the blank line) across chunk boundaries. */
export class HeaderEnd {
  private tail = Buffer.alloc(0);
  private seen = 0;
  /** Returns how many bytes of `buf` belong to the headers (blank line included), or -1 if they go on. */
  push(buf: Buffer): number {
    if (this.seen === 0 && buf.length >= 2 && buf[0] === 13 && buf[1] === 10) return 2;
    const joined = this.tail.length ? Buffer.concat([this.tail, buf]) : buf;
    const at = joined.indexOf('\r\n\r\n');
    this.seen += buf.length;
    if (at >= 0) return at + 4 - this.tail.length;
    this.tail = Buffer.from(joined.subarray(Math.max(0, joined.length - 3)));
    return -1;
  }
}

/** The header section of a message (up to `max` bytes), as text. */
export async function readHeaders(pool: Pool, queueId: string, max = 256 * 1024): Promise<string | undefined> {
  const rows = await bodyRows(pool, queueId);
  if (!rows) return undefined;
  const scanner = new HeaderEnd();
  const out: Buffer[] = [];
  let size = 0;
  for await (const data of rows) {
    const end = scanner.push(data);
    const part = end >= 0 ? data.subarray(0, end) : data;
    out.push(part);
    size += part.length;
    if (end >= 0 || size >= max) {
      await rows.return(undefined);
      break;
    }
  }
  return Buffer.concat(out).subarray(0, max).toString('utf8');
}

export function readBodyHandler(pool: Pool, logger: Logger) {
  return async (call: grpc.ServerWritableStream<ReadBodyRequest, ReadBodyResponse>): Promise<void> => {
    const { headersOnly } = call.request;
    let cancelled = false;
    call.on('cancelled', () => (cancelled = true));
    let queueId = call.request.queueId;
    try {
      // An operator's id (tern message download) in either case; a malformed one named as such, not "no stored body".
      queueId = parseQueueId(queueId);
    } catch (err) {
      call.emit('error', err);
      return;
    }
    try {
      const rows = await bodyRows(pool, queueId);
      if (!rows) {
        call.emit('error', new BodyNotFoundError(queueId));
        return;
      }
      const scanner = headersOnly ? new HeaderEnd() : undefined;
      outer: for await (const data of rows) {
        let buf = data;
        let last = false;
        if (scanner) {
          const end = scanner.push(data);
          if (end >= 0) {
            buf = data.subarray(0, end);
            last = true;
          }
        }
        for (let i = 0; i < buf.length; i += PIECE) {
          if (cancelled) break outer;
          if (!call.write({ chunk: buf.subarray(i, i + PIECE) })) await new Promise((r) => call.once('drain', r));
        }
        if (last) {
          await rows.return(undefined);
          break;
        }
      }
      call.end();
    } catch (err) {
      logger.error({ err: errorMessage(err), queue_id: queueId }, 'ReadBody failed');
      call.emit('error', new BodyReadError(errorMessage(err), err));
    }
  };
}
