// Enqueue: a client stream (header, chunks, commit). A small body stays in
// memory; a big one is spilled to body_chunks as it arrives (under a spool
// row, so an abandoned upload is reaped). At `commit`, the message joins the
// group-commit batcher: many concurrent messages are stored (message, body,
// recipients, and the outbox rows of their first jobs) in one transaction,
// and only after COMMIT does each caller get its queue id (invariant I1).
import type { Pool, PoolClient } from '@tern/db';
import { grpc } from '@tern/grpc';
import { EnqueueStreamError, InvalidArgumentError, InvalidFieldError, MessageTooLargeError, NotCommittedError, StorageError } from './errors';
import { EnqueueHeader, Envelope, LifecycleEventType, MessageOrigin, type EnqueueBatchRequest, type EnqueueCommit, type EnqueueBatchResponse, type EnqueueMessage, type EnqueueOutcome, type EnqueueStreamRequest, type EnqueueStreamResponse, type EnqueueRequest, type EnqueueResponse } from '@tern/proto';
import { enumLabel, extractContext, injectContext, type Logger } from '@tern/telemetry';
import type { QueueMetrics } from './metrics';
import { eventRows, type EventInput } from './events';
import { Batcher, errorMessage } from '@tern/runtime';
import { columns, intArrayLiteral, isLockTimeout, packBytes, q, statement, tx } from './db';
import { ensureDestinations, reserveSlots, takeFreeSlotsSql, type DestinationLimits } from './destination';
import { buildJobs, type BuiltJob, type JobRcpt } from './jobs';
import type { BodyCache } from './body-cache';
import { newId } from './ids';
import { destinationOf, S } from './model';
import { insertGrantedOutboxSql, insertOutbox, ordinalsByDestination, outboxColumns, outboxIdsSql, stored, type StoredOutboxRow } from './outbox';
import type { EnqueueSettings } from './options';
import type { RouteTable } from './routes';

/** Size of a spilled body row. */
export const SPILL_CHUNK = 256 * 1024;

/** Requests of one EnqueueStream handled at once (ingress sends a few: TERN_ENQUEUE_BATCH_CALLS). */
export const STREAM_BATCHES_READ = 8;

/** Largest EnqueueCommit.prepend. */
export const MAX_PREPEND = 64 * 1024;

export interface EnqueueItem {
  queueId: string;
  header: EnqueueHeader;
  /** The whole body when it stayed in memory; null when spilled. */
  body: Buffer | null;
  size: number;
  trace: Record<string, string>;
}

export interface EnqueueResult {
  queueId: string;
  duplicate: boolean;
}

export interface EnqueueOptions extends EnqueueSettings {
  pool: Pool;
  logger: Logger;
  routes: RouteTable;
  /** Where the bodies of messages left queued (no slot at their commit) wait for the scheduler. */
  bodyCache?: BodyCache;
  metrics: Pick<QueueMetrics, 'messages' | 'recipientsEnqueued' | 'batch' | 'destinations'>;
  /** Outbox rows were committed (handed to the relay when given). */
  onOutbox(rows?: StoredOutboxRow[]): void;
  onQueued(): void;
}

// The group commit's statements (flushWith; flushOne: ENQ_ONE).
const ENQ_MESSAGES = statement(
  'tern_enq_messages',
  `INSERT INTO messages (id, idempotency_key, sender, envelope, origin, size, trace, rcpt_count, created_at)
         SELECT i, NULLIF(k, ''), s, e, o, z, t::jsonb, n, $9 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::smallint[], $6::bigint[], $7::text[], $8::int[])
           AS x(i, k, s, e, o, z, t, n)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`,
);

const ENQ_BODIES = statement(
  'tern_enq_bodies',
  `INSERT INTO body_chunks (message_id, seq, data)
             SELECT m, 0, substring($2::bytea from o + 1 for l) FROM unnest($1::text[], $3::int[], $4::int[]) AS x(m, o, l)`,
);

const ENQ_RECIPIENTS = statement(
  'tern_enq_recipients',
  `INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, state, created_at, expires_at, next_attempt_at, job_id, lease_expires_at)
           SELECT m, i, a, d, o, n::smallint[], s, $11, $12, na, j, l
           FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::smallint[], $8::timestamptz[], $9::text[], $10::timestamptz[])
             AS x(m, i, a, d, o, n, s, na, j, l)`,
);

/** flushOne's statement; `skipLocked`: see flush. */
function enqueueOneSql(l: DestinationLimits, skipLocked: boolean): string {
  return `WITH m AS (
         INSERT INTO messages (id, sender, envelope, origin, size, trace, rcpt_count, created_at)
         SELECT i, s, e, o, z, t::jsonb, n, $9 FROM unnest($3::text[], $4::text[], $5::bytea[], $6::smallint[], $7::bigint[], $8::text[], $10::int[])
           AS x(i, s, e, o, z, t, n)
         RETURNING 1),
       b AS (
         INSERT INTO body_chunks (message_id, seq, data)
         SELECT i, 0, substring($31::bytea from bo + 1 for bl) FROM unnest($3::text[], $27::int[], $28::int[]) AS x(i, bo, bl)
         RETURNING 1),
       ${takeFreeSlotsSql(l, { skipLocked, after: ['m', 'b'] })},
       r AS (
         INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, state, created_at, expires_at, next_attempt_at, job_id, lease_expires_at)
         SELECT x.m, x.i, x.a, x.d, x.o, x.n::smallint[],
                CASE WHEN x.h THEN ${S.held} WHEN x.granted THEN ${S.inflight} ELSE ${S.queued} END,
                $9, $19, CASE WHEN x.h THEN NULL ELSE $9 END,
                CASE WHEN x.granted THEN x.j END,
                CASE WHEN x.granted THEN $20::timestamptz END
         FROM (SELECT u.*, u.j IS NOT NULL AND u.k <= (SELECT g.granted FROM g WHERE g.name = u.d) AS granted
               FROM unnest($12::text[], $13::int[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bool[], $21::text[], $32::int[]) AS u(m, i, a, d, o, n, h, j, k)) x
         RETURNING state),
       o AS (${insertGrantedOutboxSql({ subjects: 22, msgIds: 23, packed: 24, offsets: 29, lengths: 30, traces: 25, destinations: 26, bodyOf: 11, ordinals: 33 })})
       SELECT (SELECT json_object_agg(name, granted) FROM g) AS granted, (SELECT count(*)::int FROM r WHERE state = ${S.queued}) AS queued,
              ${outboxIdsSql('o')} AS outbox`;
}

const ENQ_ONE = statement('tern_enq_one', (l) => enqueueOneSql(l, false));
const ENQ_ONE_SKIP = statement('tern_enq_one_skip', (l) => enqueueOneSql(l, true));

export class Enqueuer {
  readonly batcher: Batcher<EnqueueItem, EnqueueResult>;
  /**
   * Destinations whose row is known to exist (rows are never deleted). The
   * INSERT ... ON CONFLICT DO NOTHING for them is skipped: besides the
   * statement, it waits for any transaction holding the (hot) row.
   */
  private readonly knownDestinations = new Set<string>();
  /** Open EnqueueStreams, each by its close function (see closeStreams). */
  private readonly streams = new Set<() => void>();
  private closing = false;

  constructor(private readonly o: EnqueueOptions) {
    this.batcher = new Batcher({ maxItems: o.batchMax, delayMs: o.batchDelayMs, concurrency: 2, flush: (items) => this.flush(items) });
  }

  /** The gRPC handler. */
  handler = (call: grpc.ServerReadableStream<EnqueueRequest, EnqueueResponse>, callback: grpc.sendUnaryData<EnqueueResponse>): void => {
    const trace = injectContext();
    let header: EnqueueHeader | undefined;
    let queueId = '';
    let size = 0;
    let mem: Buffer[] = [];
    let spilled = false;
    let spillSeq = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let finished = false;
    let chain = Promise.resolve();

    const finish = (err: grpc.ServiceError | null, res?: EnqueueResponse) => {
      if (finished) return;
      finished = true;
      mem = [];
      pending = [];
      if (err) {
        if (spilled) void this.dropSpool(queueId);
        callback(err);
      } else callback(null, res);
    };

    const spill = async (c: Pool | PoolClient, final: boolean) => {
      while (pendingBytes >= SPILL_CHUNK || (final && pendingBytes > 0)) {
        const all = Buffer.concat(pending);
        const piece = all.subarray(0, Math.min(SPILL_CHUNK, all.length));
        const rest = all.subarray(piece.length);
        await c.query('INSERT INTO body_chunks (message_id, seq, data) VALUES ($1, $2, $3)', [queueId, spillSeq++, piece]);
        pending = rest.length ? [Buffer.from(rest)] : [];
        pendingBytes = rest.length;
      }
    };

    const handle = async (req: EnqueueRequest) => {
      if (finished) return;
      if (req.header) {
        if (header) return finish(new EnqueueStreamError('a second header in one Enqueue stream'));
        const problem = this.validateHeader(req.header);
        if (problem) return finish(new InvalidArgumentError(problem));
        header = req.header;
        queueId = newId();
        return;
      }
      if (!header) return finish(new EnqueueStreamError('the first Enqueue request must carry the header'));
      if (req.commit) {
        if (req.commit.size !== size) {
          return finish(new EnqueueStreamError(`commit size ${req.commit.size} does not match the ${size} bytes received`));
        }
        // Lines known only at the end (Authentication-Results) go ahead of the body and count in its size.
        const prepend = req.commit.prepend;
        if (prepend.length > MAX_PREPEND) return finish(new InvalidFieldError('commit.prepend', `at most ${MAX_PREPEND} bytes`));
        const keyProblem = idempotencyKeyProblem(req.commit.idempotencyKey);
        if (keyProblem) return finish(new InvalidFieldError('commit.idempotency_key', keyProblem));
        if (spilled) {
          await spill(this.o.pool, true);
          // Into the first row, so that every reader still finds the message from seq 0.
          if (prepend.length) await this.o.pool.query('UPDATE body_chunks SET data = $2 || data WHERE message_id = $1 AND seq = 0', [queueId, prepend]);
        }
        const total = size + prepend.length;
        const body = spilled ? null : prepend.length ? Buffer.concat([prepend, ...mem], total) : Buffer.concat(mem, size);
        mem = [];
        const res = await this.store(queueId, header, req.commit, body, total, trace);
        spilled = false; // stored, or removed by the batch as a duplicate
        return finish(null, { queueId: res.queueId, size: total });
      }
      if (req.chunk && req.chunk.length) {
        size += req.chunk.length;
        if (size > this.o.maxMessageSize) {
          return finish(new MessageTooLargeError(this.o.maxMessageSize));
        }
        const buf = Buffer.from(req.chunk);
        if (!spilled && size <= this.o.memoryBodyMax) {
          mem.push(buf);
          return;
        }
        if (!spilled) {
          await this.o.pool.query('INSERT INTO spools (id) VALUES ($1)', [queueId]);
          spilled = true;
          pending = mem;
          pendingBytes = size - buf.length;
          mem = [];
        }
        pending.push(buf);
        pendingBytes += buf.length;
        await spill(this.o.pool, false);
      }
    };

    call.on('data', (req: EnqueueRequest) => {
      call.pause();
      chain = chain
        .then(() => handle(req))
        .catch((err: Error) => {
          this.o.logger.error({ err: err.message, queue_id: queueId }, 'enqueue failed');
          finish(new StorageError(err.message, err));
        })
        .finally(() => call.resume());
    });
    // Every stream ends, most of them after their commit: build the error
    // (and its stack) only when there is still someone to tell.
    const abandon = (why: string) => {
      void chain.then(() => {
        if (!finished) finish(new NotCommittedError(why));
      });
    };
    call.on('end', () => abandon('stream ended without commit; nothing stored'));
    call.on('cancelled', () => abandon('cancelled by the client; nothing stored'));
    call.on('error', () => abandon('stream failed; nothing stored'));
  };

  /** EnqueueBatch: whole messages, answered with every outcome (see outcomesOf). */
  batchHandler = (call: grpc.ServerUnaryCall<EnqueueBatchRequest, EnqueueBatchResponse>, callback: grpc.sendUnaryData<EnqueueBatchResponse>): void => {
    void this.outcomesOf(call.request.messages, injectContext()).then((outcomes) => callback(null, { outcomes }));
  };

  /**
   * EnqueueStream: each request is a batch handled as EnqueueBatch handles
   * its call, answered with its seq once its outcomes are known. At most
   * STREAM_BATCHES_READ requests of one stream are handled at once (the
   * stream is not read further meanwhile: HTTP/2 flow control holds the
   * sender back). When the client half-closes, the stream ends after the
   * last answer; when the queue shuts down (closeStreams) it stops reading
   * and ends each stream with OK once every request read is answered, which
   * tells the client that the unanswered ones were never read.
   */
  streamHandler = (call: grpc.ServerDuplexStream<EnqueueStreamRequest, EnqueueStreamResponse>): void => {
    const callTrace = injectContext();
    let handling = 0;
    let clientDone = false;
    let closing = false;
    let ended = false;
    const finishIfDone = () => {
      if (ended || handling > 0 || !(clientDone || closing)) return;
      ended = true;
      this.streams.delete(close);
      call.end();
    };
    const close = () => {
      closing = true;
      call.pause();
      finishIfDone();
    };
    this.streams.add(close);
    if (this.closing) return close();
    call.on('data', (req: EnqueueStreamRequest) => {
      handling++;
      if (handling >= STREAM_BATCHES_READ) call.pause();
      void this.outcomesOf(req.messages, callTrace).then((outcomes) => {
        handling--;
        if (!ended && !call.cancelled) call.write({ seq: req.seq, outcomes });
        if (!closing && handling < STREAM_BATCHES_READ) call.resume();
        finishIfDone();
      });
    });
    call.on('end', () => {
      clientDone = true;
      finishIfDone();
    });
    // A cancelled or broken stream: the batches already read still commit (their outcomes are lost with the stream, as a failed call's).
    const gone = () => {
      ended = true;
      this.streams.delete(close);
    };
    call.on('cancelled', gone);
    call.on('error', gone);
  };

  /** Shutdown: every EnqueueStream stops reading and ends once its requests read are answered (see streamHandler). */
  closeStreams(): void {
    this.closing = true;
    for (const close of [...this.streams]) close();
  }

  /**
   * The outcomes of a batch of whole messages, in order: each checked like
   * an Enqueue stream and given to the group commit on its own; known after
   * all the stored ones are committed (I1). The messages of one batch may
   * land in different group commits, so a storage failure is an outcome too
   * (UNAVAILABLE) for the messages it hit: a message that was stored is
   * never answered as failed (its client would send it again).
   */
  private outcomesOf(messages: EnqueueMessage[], callTrace: Record<string, string>): Promise<EnqueueOutcome[]> {
    return Promise.all(
      messages.map(async (m, i): Promise<EnqueueOutcome> => {
        const refused = (code: grpc.status, why: string): EnqueueOutcome => ({ queueId: '', size: 0, errorCode: code, error: `messages[${i}]: ${why}` });
        const problem = this.checkWhole(m);
        if (problem) return refused(problem.code, problem.why);
        const header = m.header!;
        const prepend = m.commit!.prepend;
        const total = m.body.length + prepend.length;
        const body = prepend.length ? Buffer.concat([prepend, m.body], total) : Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength);
        // Re-serialized through the W3C propagator: only a well-formed context
        // goes into the row (a stray byte would fail the whole group commit).
        const trace = Object.keys(m.trace).length ? injectContext(extractContext(m.trace)) : callTrace;
        try {
          const res = await this.store(newId(), header, m.commit!, body, total, trace);
          return { queueId: res.queueId, size: total, errorCode: 0, error: '' };
        } catch (err) {
          this.o.logger.error({ err: errorMessage(err) }, 'enqueue failed');
          return refused(grpc.status.UNAVAILABLE, `queue storage failed: ${errorMessage(err)}`);
        }
      }),
    );
  }

  /**
   * A committed message into the group commit (commit.hold holds it too;
   * commit.idempotency_key is its key when the header has none: ingress
   * knows the key of a split message's part only at its end); counted unless
   * it was a duplicate.
   */
  private async store(queueId: string, header: EnqueueHeader, commit: EnqueueCommit, body: Buffer | null, size: number, trace: Record<string, string>): Promise<EnqueueResult> {
    let h = commit.hold && !header.hold ? { ...header, hold: true } : header;
    if (commit.idempotencyKey && !h.idempotencyKey) h = { ...h, idempotencyKey: commit.idempotencyKey };
    const res = await this.batcher.add({ queueId, header: h, body, size, trace });
    if (!res.duplicate) {
      const m = this.o.metrics;
      m.messages.add(1, { origin: enumLabel(MessageOrigin[header.origin], 'MESSAGE_ORIGIN_') });
      for (const r of header.recipients) m.recipientsEnqueued.add(1, { destination: m.destinations.label(destinationOf(r.address)) });
    }
    return res;
  }

  /** The checks an Enqueue stream makes, for a whole message. */
  private checkWhole(m: EnqueueMessage): { code: grpc.status; why: string } | undefined {
    if (!m.header) return { code: grpc.status.INVALID_ARGUMENT, why: 'header: required' };
    const problem = this.validateHeader(m.header);
    if (problem) return { code: grpc.status.INVALID_ARGUMENT, why: problem };
    if (!m.commit) return { code: grpc.status.INVALID_ARGUMENT, why: 'commit: required' };
    if (m.commit.size !== m.body.length) return { code: grpc.status.INVALID_ARGUMENT, why: `commit size ${m.commit.size} does not match the ${m.body.length} bytes of body` };
    if (m.commit.prepend.length > MAX_PREPEND) return { code: grpc.status.INVALID_ARGUMENT, why: `commit.prepend: at most ${MAX_PREPEND} bytes` };
    const keyProblem = idempotencyKeyProblem(m.commit.idempotencyKey);
    if (keyProblem) return { code: grpc.status.INVALID_ARGUMENT, why: `commit.idempotency_key: ${keyProblem}` };
    if (m.body.length > this.o.maxMessageSize) return { code: grpc.status.RESOURCE_EXHAUSTED, why: `message exceeds the maximum size of ${this.o.maxMessageSize} bytes` };
    if (m.body.length > this.o.memoryBodyMax) {
      return { code: grpc.status.INVALID_ARGUMENT, why: `body of ${m.body.length} bytes: EnqueueBatch takes bodies up to ${this.o.memoryBodyMax} bytes (TERN_QUEUE_MEMORY_BODY_MAX); use Enqueue` };
    }
    return undefined;
  }

  private validateHeader(h: EnqueueHeader): string | undefined {
    if (!h.envelope) return 'header.envelope: required';
    // Text that Postgres cannot store (NUL) would fail the whole group
    // commit, every other message of it included: refuse it here.
    if (h.envelope.sender.includes('\0')) return 'header.envelope.sender: contains NUL';
    if (!h.recipients.length) return 'header.recipients: at least one recipient is required';
    if (h.recipients.length > this.o.maxRecipients) return `header.recipients: more than ${this.o.maxRecipients}`;
    for (const [i, r] of h.recipients.entries()) {
      if (!r.address || r.address.length > 512) return `header.recipients[${i}].address: required, at most 512 characters`;
      if (r.address.includes('\0')) return `header.recipients[${i}].address: contains NUL`;
      if (r.orcpt.includes('\0')) return `header.recipients[${i}].orcpt: contains NUL`;
    }
    const keyProblem = idempotencyKeyProblem(h.idempotencyKey);
    if (keyProblem) return `header.idempotency_key: ${keyProblem}`;
    return undefined;
  }

  private async dropSpool(queueId: string): Promise<void> {
    try {
      await tx(this.o.pool, async (c) => {
        await c.query('DELETE FROM body_chunks WHERE message_id = $1', [queueId]);
        await c.query('DELETE FROM spools WHERE id = $1', [queueId]);
      });
    } catch {
      // The reaper removes it later.
    }
  }

  /**
   * One group commit. It waits for a destination row another transaction
   * holds (see reserveSlots), up to the lock timeout; then it is made again
   * skipping that row (nothing of the first try was stored: one statement,
   * or one transaction, rolled back).
   */
  async flush(items: EnqueueItem[]): Promise<EnqueueResult[]> {
    this.o.metrics.batch.record(items.length);
    try {
      return await this.flushWith(items, false);
    } catch (err) {
      if (!isLockTimeout(err)) throw err;
      this.o.logger.warn({ messages: items.length }, 'a destination row stayed locked past TERN_QUEUE_LOCK_TIMEOUT_MS; storing the messages for the scheduler');
      return this.flushWith(items, true);
    }
  }

  private async flushWith(items: EnqueueItem[], skipLocked: boolean): Promise<EnqueueResult[]> {
    if (items.every((i) => i.body !== null && !i.header.idempotencyKey && i.header.recipients.every((r) => this.knownDestinations.has(destinationOf(r.address))))) {
      return this.flushOne(items, skipLocked);
    }
    const now = new Date();
    const expires = new Date(now.getTime() + this.o.lifetimeS * 1000);
    const leaseExpiresAt = new Date(now.getTime() + this.o.leaseS * 1000);
    let outboxRows = 0;
    let queued = 0;
    let ensured: string[] = [];
    let committed: StoredOutboxRow[] = [];
    const results = await tx(this.o.pool, async (c) => {
      outboxRows = 0;
      queued = 0;
      ensured = [];
      committed = [];
      const ins = await q<{ id: string }>(
        c,
        ENQ_MESSAGES,
        [
          items.map((i) => i.queueId),
          items.map((i) => i.header.idempotencyKey),
          items.map((i) => i.header.envelope!.sender),
          items.map((i) => Buffer.from(Envelope.encode(i.header.envelope!).finish())),
          items.map((i) => i.header.origin),
          items.map((i) => i.size),
          items.map((i) => JSON.stringify(i.trace)),
          items.map((i) => i.header.recipients.length),
          now,
        ],
      );
      const stored = new Set(ins.rows.map((r) => r.id));
      const live = items.filter((i) => stored.has(i.queueId));
      const dups = items.filter((i) => !stored.has(i.queueId));
      const existing = new Map<string, string>();
      if (dups.length) {
        const { rows } = await c.query<{ id: string; idempotency_key: string }>(
          'SELECT id, idempotency_key FROM messages WHERE idempotency_key = ANY($1::text[])',
          [dups.map((d) => d.header.idempotencyKey)],
        );
        for (const r of rows) existing.set(r.idempotency_key, r.id);
        const spilledDups = dups.filter((d) => d.body === null).map((d) => d.queueId);
        if (spilledDups.length) {
          await c.query('DELETE FROM body_chunks WHERE message_id = ANY($1::text[])', [spilledDups]);
          await c.query('DELETE FROM spools WHERE id = ANY($1::text[])', [spilledDups]);
        }
      }
      if (live.length) {
        const inMem = live.filter((i) => i.body !== null);
        if (inMem.length) {
          const bodies = packBytes(inMem.map((i) => i.body!));
          await q(
            c,
            ENQ_BODIES,
            [inMem.map((i) => i.queueId), bodies.packed, bodies.offsets, bodies.lengths],
          );
        }
        const spilledLive = live.filter((i) => i.body === null).map((i) => i.queueId);
        if (spilledLive.length) await c.query('DELETE FROM spools WHERE id = ANY($1::text[])', [spilledLive]);

        // First dispatch in the same transaction, where the destination has room.
        const perMessage = live.map((i) => recipientsByDestination(i.header));
        const wanted = new Map<string, number>();
        live.forEach((i, n) => {
          if (i.header.hold) return;
          for (const [d, rcpts] of perMessage[n]!) wanted.set(d, (wanted.get(d) ?? 0) + Math.ceil(rcpts.length / this.o.jobMaxRecipients));
        });
        const allDests = new Set<string>();
        for (const m of perMessage) for (const d of m.keys()) allDests.add(d);
        ensured = [...allDests].filter((d) => !this.knownDestinations.has(d)).sort();
        await ensureDestinations(c, ensured, this.o.limits);
        const granted = await reserveSlots(c, wanted, this.o.limits, skipLocked);

        const jobs: BuiltJob[] = [];
        const jobOf = new Map<string, string>();
        live.forEach((i, n) => {
          if (i.header.hold) return;
          for (const [d, rcpts] of perMessage[n]!) {
            if (!granted.has(d)) continue;
            const built = buildJobs({ id: i.queueId, envelope: i.header.envelope!, size: i.size, trace: i.trace, body: i.body && i.size <= this.o.inlineBodyMax ? i.body : undefined }, d, rcpts, this.o.jobMaxRecipients, leaseExpiresAt, this.o.routes);
            for (const b of built) {
              jobs.push(b);
              for (const idx of b.idxs) jobOf.set(`${i.queueId}.${idx}`, b.jobId);
            }
          }
        });

        const recipients: Array<NewRecipient & { state: number; nextAttemptAt: Date | null; jobId: string | null; leaseExpiresAt: Date | null }> = [];
        for (const item of live) {
          item.header.recipients.forEach((r, idx) => {
            const job = jobOf.get(`${item.queueId}.${idx}`) ?? null;
            const state = item.header.hold ? S.held : job ? S.inflight : S.queued;
            if (state === S.queued) queued++;
            recipients.push({
              ...newRecipient(item, r, idx),
              state,
              nextAttemptAt: state === S.held ? null : now,
              jobId: job,
              leaseExpiresAt: job ? leaseExpiresAt : null,
            });
          });
        }
        const recipientCols = columns(recipients, 'messageId', 'idx', 'address', 'domain', 'orcpt', 'notify', 'state', 'nextAttemptAt', 'jobId', 'leaseExpiresAt');
        await q(
          c,
          ENQ_RECIPIENTS,
          [
            recipientCols.messageId, recipientCols.idx, recipientCols.address, recipientCols.domain, recipientCols.orcpt, recipientCols.notify,
            recipientCols.state, recipientCols.nextAttemptAt, recipientCols.jobId, recipientCols.leaseExpiresAt, now, expires,
          ],
        );
        const events = eventRows(this.o.events, live.flatMap((i) => receivedEvents(i)), now);
        committed = await insertOutbox(c, [...jobs.map((b) => b.outbox), ...events]);
        outboxRows = jobs.length + events.length;
      }
      return items.map((i): EnqueueResult => {
        if (stored.has(i.queueId)) return { queueId: i.queueId, duplicate: false };
        const first = existing.get(i.header.idempotencyKey);
        if (!first) throw new Error(`idempotency key "${i.header.idempotencyKey}" conflicted but its message is gone`);
        return { queueId: first, duplicate: true };
      });
    });
    this.remember(ensured);
    if (outboxRows) this.o.onOutbox(committed);
    if (queued) this.o.onQueued();
    return results;
  }

  private remember(ensured: string[]): void {
    if (this.knownDestinations.size + ensured.length > 100_000) this.knownDestinations.clear();
    for (const d of ensured) this.knownDestinations.add(d);
  }

  /**
   * The common case as ONE statement (atomic on its own: no BEGIN/COMMIT
   * round trips): bodies in memory, no idempotency keys (so no duplicates to
   * resolve), destination rows known to exist. Data-modifying CTEs take the
   * slots (waiting for rows locked by others, like reserveSlots) after
   * inserting messages and bodies (so the destination rows are not held
   * while the bodies are written), then insert the recipients (inflight
   * under their job where the slot was granted, queued otherwise) and the
   * outbox rows of the granted jobs.
   */
  private async flushOne(items: EnqueueItem[], skipLocked: boolean): Promise<EnqueueResult[]> {
    const now = new Date();
    const expires = new Date(now.getTime() + this.o.lifetimeS * 1000);
    const leaseExpiresAt = new Date(now.getTime() + this.o.leaseS * 1000);
    const l = this.o.limits;
    const wanted = new Map<string, number>();
    const jobs: BuiltJob[] = [];
    const jobOf = new Map<string, string>();
    const recipients: Array<NewRecipient & { held: boolean; jobId: string | null }> = [];
    for (const item of items) {
      if (!item.header.hold) {
        for (const [d, rcpts] of recipientsByDestination(item.header)) {
          const body = item.size <= this.o.inlineBodyMax ? item.body! : undefined;
          const built = buildJobs({ id: item.queueId, envelope: item.header.envelope!, size: item.size, trace: item.trace, body }, d, rcpts, this.o.jobMaxRecipients, leaseExpiresAt, this.o.routes);
          wanted.set(d, (wanted.get(d) ?? 0) + built.length);
          for (const b of built) {
            jobs.push(b);
            for (const idx of b.idxs) jobOf.set(`${item.queueId}.${idx}`, b.jobId);
          }
        }
      }
      item.header.recipients.forEach((r, idx) => {
        recipients.push({ ...newRecipient(item, r, idx), held: item.header.hold, jobId: jobOf.get(`${item.queueId}.${idx}`) ?? null });
      });
    }
    const names = [...wanted.keys()].sort();
    // A destination may grant fewer slots than wanted: its first jobs (by ordinal) get them.
    const ordinals = ordinalsByDestination(jobs.map((b) => b.destination));
    const ordinalOf = new Map(jobs.map((b, n) => [b.jobId, ordinals[n]!]));
    const recipientCols = columns(recipients, 'messageId', 'idx', 'address', 'domain', 'orcpt', 'notify', 'held', 'jobId');
    const ordinalOfRecipient = recipientCols.jobId.map((j) => (j ? ordinalOf.get(j)! : null));
    // Lifecycle events ride in the same statement: rows without a destination, always inserted.
    const events = eventRows(this.o.events, items.flatMap((i) => receivedEvents(i)), now);
    const ob = outboxColumns([...jobs.map((b) => b.outbox), ...events]);
    const bodies = packBytes(items.map((i) => i.body!));
    const payloads = packBytes(ob.payloads);
    const { rows } = await q<{ granted: Record<string, number> | null; queued: number; outbox: Array<{ id: number; msg_id: string }> | null }>(
      this.o.pool,
      (skipLocked ? ENQ_ONE_SKIP : ENQ_ONE)(l),
      [
        names,
        names.map((n) => wanted.get(n)!),
        items.map((i) => i.queueId),
        items.map((i) => i.header.envelope!.sender),
        items.map((i) => Buffer.from(Envelope.encode(i.header.envelope!).finish())),
        items.map((i) => i.header.origin),
        items.map((i) => i.size),
        items.map((i) => JSON.stringify(i.trace)),
        now,
        items.map((i) => i.header.recipients.length),
        ob.bodyOf,
        recipientCols.messageId,
        recipientCols.idx,
        recipientCols.address,
        recipientCols.domain,
        recipientCols.orcpt,
        recipientCols.notify,
        recipientCols.held,
        expires,
        leaseExpiresAt,
        recipientCols.jobId,
        ob.subjects,
        ob.msgIds,
        payloads.packed,
        ob.traces,
        [...jobs.map((b): string | null => b.destination), ...events.map(() => null)],
        bodies.offsets,
        bodies.lengths,
        payloads.offsets,
        payloads.lengths,
        // The bodies last: node-pg's Bind buffer grows by half its size plus
        // what is added, so anything after the bodies copied them again.
        bodies.packed,
        ordinalOfRecipient,
        [...ordinals, ...events.map(() => null)],
      ],
    );
    // Jobs that got a slot: their ordinal within their destination is at most what it granted.
    const granted = rows[0]?.granted ?? {};
    const gotSlot = jobs.map((b, n) => ordinals[n]! <= (granted[b.destination] ?? 0));
    const sent = jobs.filter((_b, n) => gotSlot[n]);
    if (sent.length || events.length) this.o.onOutbox(stored([...sent.map((b) => b.outbox), ...events], rows[0]?.outbox ?? []));
    if (sent.length < jobs.length && this.o.bodyCache) {
      const bodyOf = new Map(items.map((i) => [i.queueId, i.body]));
      jobs.forEach((b, n) => {
        const body = bodyOf.get(b.messageId);
        if (!gotSlot[n] && body && body.length <= this.o.inlineBodyMax) this.o.bodyCache!.put(b.messageId, body);
      });
    }
    if ((rows[0]?.queued ?? 0) > 0) this.o.onQueued();
    return items.map((i) => ({ queueId: i.queueId, duplicate: false }));
  }
}

/** What is wrong with an idempotency key (of the header or the commit), if anything. */
function idempotencyKeyProblem(key: string): string | undefined {
  if (key.length > 256) return 'at most 256 characters';
  if (key.includes('\0')) return 'contains NUL';
  return undefined;
}

/** The columns of a new recipient that every group commit inserts as they are (notify as an array literal: intArrayLiteral). */
interface NewRecipient {
  messageId: string;
  idx: number;
  address: string;
  domain: string;
  orcpt: string;
  notify: string;
}

function newRecipient(item: EnqueueItem, r: EnqueueHeader['recipients'][number], idx: number): NewRecipient {
  return { messageId: item.queueId, idx, address: r.address, domain: destinationOf(r.address), orcpt: r.orcpt, notify: intArrayLiteral(r.notify) };
}

/** A message's recipients grouped by destination, as the recipients of first-attempt jobs. */
function recipientsByDestination(h: EnqueueHeader): Map<string, JobRcpt[]> {
  const byDest = new Map<string, JobRcpt[]>();
  h.recipients.forEach((r, idx) => {
    const d = destinationOf(r.address);
    const rcpt = { idx, address: r.address, orcpt: r.orcpt, notify: r.notify, attemptCount: 0 };
    const list = byDest.get(d);
    if (list) list.push(rcpt);
    else byDest.set(d, [rcpt]);
  });
  return byDest;
}

/** A stored message's events: received, and held when it was stored held. */
function receivedEvents(i: EnqueueItem): EventInput[] {
  const base = { queueId: i.queueId, sender: i.header.envelope!.sender, trace: i.trace };
  const received: EventInput = { ...base, type: LifecycleEventType.LIFECYCLE_EVENT_TYPE_RECEIVED, recipients: i.header.recipients.map((r) => r.address), size: i.size };
  if (!i.header.hold) return [received];
  return [received, { ...base, type: LifecycleEventType.LIFECYCLE_EVENT_TYPE_HELD, recipients: i.header.recipients.map((r) => r.address), operator: 'policy', reason: 'held when received' }];
}
