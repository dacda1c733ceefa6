// Dispatch, the scheduler: turning due recipients into DeliveryJobs under
// the per-destination limits (destination.ts: the rows, their slots and
// feedback). The Scheduler loop expires leases and runs dispatch passes;
// dispatchDue is one pass (claim due recipients, build their jobs, take the
// slots, write the outbox), also run by the result applier for the
// destinations whose slots it gave back. A dispatched recipient is
// `inflight` under a job id with a lease; without a result before the lease
// ends it is due again.
import type { Pool, PoolClient } from '@tern/db';
import { Part, PollLoop, errorMessage } from '@tern/runtime';
import type { Logger } from '@tern/telemetry';
import type { QueueMetrics } from './metrics';
import { columns, packBytes, q, statement, tx } from './db';
import { anyDestinationDue, dueDestinations, jobsTakeable, releaseJobs, reserveSlotsSql, type DestinationLimits } from './destination';
import { buildJobs, loadJobMessages, type BuiltJob } from './jobs';
import { S } from './model';
import type { BodyCache } from './body-cache';
import { insertGrantedOutboxSql, ordinalsByDestination, outboxColumns, outboxIdsSql, stored, type StoredOutboxRow } from './outbox';
import type { RouteTable } from './routes';

export interface SchedulerOptions extends DispatchSettings {
  pool: Pool;
  logger: Logger;
  /** A dispatched job's lease (TERN_QUEUE_LEASE_S). */
  leaseS: number;
  /** Poll interval; lease expiry is checked this often too. */
  intervalMs: number;
  metrics: Pick<QueueMetrics, 'dispatched' | 'dispatchLag'>;
  /** Outbox rows were committed (handed to the relay when given). */
  onOutbox(rows?: StoredOutboxRow[]): void;
}

interface ClaimRow {
  message_id: string;
  idx: number;
  address: string;
  domain: string;
  orcpt: string;
  notify: number[];
  attempt_count: number;
  /** Seconds since the recipient became due. */
  due_lag_s: number;
}

/**
 * The scheduler loop: expires leases, then claims due recipients of
 * destinations with free slots and writes their jobs to the outbox. Woken by
 * commits that make work due or free slots; polls otherwise.
 */
export class Scheduler extends Part {
  private readonly loop: PollLoop;
  private lastLeaseCheck = 0;

  constructor(private readonly o: SchedulerOptions) {
    const loop = new PollLoop({
      name: 'scheduler',
      intervalMs: o.intervalMs,
      pass: () => this.pass(),
      onError: (err) => o.logger.warn({ err: errorMessage(err) }, 'scheduler pass failed; retrying'),
    });
    super('scheduler', { start: () => loop.start(), drain: () => loop.drain() });
    this.loop = loop;
  }

  wake(): void {
    this.loop.wake();
  }

  /** Expires leases (every intervalMs), then dispatches; more when it dispatched any. */
  private async pass(): Promise<boolean> {
    if (Date.now() - this.lastLeaseCheck >= this.o.intervalMs) {
      this.lastLeaseCheck = Date.now();
      await this.expireLeases();
    }
    return (await this.dispatchPass()) > 0;
  }

  /** Recipients whose job has no result by the end of its lease are due again. */
  async expireLeases(): Promise<number> {
    const n = await tx(this.o.pool, async (c) => {
      const { rows } = await c.query<{ message_id: string; idx: number; job_id: string; domain: string }>(
        `SELECT message_id, idx, job_id, domain FROM recipients
         WHERE state = ${S.inflight} AND lease_expires_at <= now()
         ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED`,
        [this.o.batch],
      );
      if (!rows.length) return 0;
      await c.query(
        `UPDATE recipients r SET state = ${S.queued}, next_attempt_at = now(), job_id = NULL, lease_expires_at = NULL, updated_at = now()
         FROM unnest($1::text[], $2::int[]) AS t(m, i) WHERE r.message_id = t.m AND r.idx = t.i`,
        [rows.map((r) => r.message_id), rows.map((r) => r.idx)],
      );
      await releaseJobs(
        c,
        rows.map((r) => ({ jobId: r.job_id, destination: r.domain, ok: false, failed: false, error: '' })),
        this.o.limits,
      );
      return rows.length;
    });
    if (n) this.o.logger.warn({ recipients: n }, 'job leases expired without a result; recipients are due again');
    return n;
  }

  /** One claim: returns the number of recipients dispatched. */
  async dispatchPass(): Promise<number> {
    // Most wake-ups (a result batch gave slots back) find nothing due: ask
    // first, in one statement without a transaction or locks, before the
    // claiming transaction (BEGIN, a locking select, ..., COMMIT). The
    // answer is advisory; the transaction decides.
    if (!(await anyDestinationDue(this.o.pool))) return 0;
    const leaseExpiresAt = new Date(Date.now() + this.o.leaseS * 1000);
    const { built: jobs, outbox } = await tx(this.o.pool, (c) => dispatchDue(c, this.o, leaseExpiresAt));
    if (jobs.length) {
      this.o.onOutbox(outbox);
      const n = jobs.reduce((a, j) => a + j.idxs.length, 0);
      countDispatched(this.o.metrics, jobs);
      return n;
    }
    return 0;
  }
}

/** Counts jobs a claim dispatched, with how long their recipients had been due. */
export function countDispatched(m: Pick<QueueMetrics, 'dispatched' | 'dispatchLag'>, jobs: BuiltJob[]): void {
  m.dispatched.add(jobs.length);
  for (const j of jobs) if (j.dueLagS !== undefined) m.dispatchLag.record(j.dueLagS);
}

export interface DispatchSettings {
  routes: RouteTable;
  limits: DestinationLimits;
  jobMaxRecipients: number;
  /** Recipients claimed at most. */
  batch: number;
  /** Bodies up to this size travel in the job (0 = never). */
  inlineBodyMax: number;
  /** Bodies of queued messages kept at their commit (not read back when here). */
  bodyCache?: BodyCache;
}

/** Due recipients of each destination $1, at most $2 of it, locked (SKIP LOCKED: another pass has them). */
const CLAIM_DUE = statement(
  'tern_claim_due',
  `SELECT r.message_id, r.idx, r.address, r.domain, r.orcpt, r.notify, r.attempt_count, extract(epoch FROM now() - r.next_attempt_at)::float8 AS due_lag_s
     FROM unnest($1::text[], $2::int[]) AS d(name, lim)
     CROSS JOIN LATERAL (
       SELECT message_id, idx, address, domain, orcpt, notify, attempt_count, next_attempt_at FROM recipients
       WHERE domain = d.name AND state IN (${S.queued}, ${S.deferred}) AND next_attempt_at <= now() AND expires_at > now()
       ORDER BY next_attempt_at LIMIT d.lim
       FOR UPDATE SKIP LOCKED) r`,
);

/** A pass's last statement: the slots where still free, the recipients of the granted jobs inflight, their outbox rows. */
const DISPATCH_TAKE = statement(
  'tern_dispatch_take',
  (l) => `WITH g AS (${reserveSlotsSql(l, { skipLocked: false, probe: true })}),
     u AS (
       UPDATE recipients r SET state = ${S.inflight}, job_id = t.j, lease_expires_at = $7, updated_at = now()
       FROM unnest($3::text[], $4::int[], $5::text[], $6::text[]) AS t(m, i, j, d)
       WHERE r.message_id = t.m AND r.idx = t.i AND t.d IN (SELECT name FROM g)),
     o AS (${insertGrantedOutboxSql({ subjects: 8, msgIds: 9, packed: 10, offsets: 11, lengths: 12, traces: 13, destinations: 14, bodyOf: 15, ordinals: 16 })})
     SELECT (SELECT array_agg(name) FROM g) AS granted, ${outboxIdsSql('o')} AS outbox`,
);

/**
 * Claims due recipients of destinations with free slots (all of them, or
 * those in `only`), marks them inflight under new jobs, takes the slots and
 * writes the jobs to the outbox, in the caller's transaction. Used by the
 * scheduler, and by the result applier for the destinations whose slots it
 * just gave back.
 *
 * The destination rows are shared by every committing transaction (each
 * group commit takes slots, each result batch gives them back), so they are
 * read without a lock and locked only by the last statement, which takes the
 * slots, marks the recipients and writes the outbox at once, and only where
 * the slots are still free. Locked from the first statement, they were held
 * through every round trip of the pass, and a group commit that found them
 * locked left its messages queued for a scheduler pass (docs/performance.md).
 */
export async function dispatchDue(c: PoolClient, o: DispatchSettings, leaseExpiresAt: Date, only?: string[]): Promise<{ built: BuiltJob[]; outbox: StoredOutboxRow[] }> {
  const none = { built: [] as BuiltJob[], outbox: [] as StoredOutboxRow[] };
  const l = o.limits;
  if (only && !only.length) return none;
  const dests = await dueDestinations(c, l, only);
  if (!dests.length) return none;
  let budget = o.batch;
  const caps = new Map<string, number>();
  const names: string[] = [];
  const limits: number[] = [];
  for (const d of dests) {
    if (budget <= 0) break;
    const cap = jobsTakeable(d, l);
    if (cap <= 0) continue;
    const rows = Math.min(budget, cap * Math.min(o.jobMaxRecipients, 4));
    budget -= rows;
    caps.set(d.name, cap);
    names.push(d.name);
    limits.push(rows);
  }
  if (!names.length) return none;
  // At most `cap` jobs leave per destination, and a job carries one
  // message: claim a few rows per job (recipients of one message are due
  // together and sit together in the index), not cap x job size rows, most
  // of which would be read and locked for nothing.
  const { rows: claimed } = await q<ClaimRow>(c, CLAIM_DUE, [names, limits]);
  if (!claimed.length) return none;
  // Group by destination then message, keeping the due order.
  const byDest = new Map<string, Map<string, ClaimRow[]>>();
  for (const r of claimed) {
    let msgs = byDest.get(r.domain);
    if (!msgs) byDest.set(r.domain, (msgs = new Map()));
    const list = msgs.get(r.message_id);
    if (list) list.push(r);
    else msgs.set(r.message_id, [r]);
  }
  // Only the messages that can have a job now are loaded (with their
  // bodies): a few rows per job are claimed, and loading every claimed
  // message read up to four bodies back per job sent.
  const wantedIds = new Set<string>();
  for (const [dest, msgs] of byDest) {
    let cap = caps.get(dest) ?? 0;
    for (const [mid, rcpts] of msgs) {
      if (cap <= 0) break;
      wantedIds.add(mid);
      cap -= Math.ceil(rcpts.length / o.jobMaxRecipients);
    }
  }
  const loaded = await loadJobMessages(c, [...wantedIds], o.inlineBodyMax, o.bodyCache);
  const built: BuiltJob[] = [];
  const used = new Map<string, number>();
  for (const [dest, msgs] of byDest) {
    let cap = caps.get(dest) ?? 0;
    for (const [mid, rcpts] of msgs) {
      const msg = loaded.get(mid);
      if (!msg || cap <= 0) continue;
      const jobRcpts = rcpts.map((r) => ({ idx: r.idx, address: r.address, orcpt: r.orcpt, notify: r.notify, attemptCount: r.attempt_count }));
      const dueLagS = Math.max(0, ...rcpts.map((r) => r.due_lag_s));
      for (const job of buildJobs(msg, dest, jobRcpts, o.jobMaxRecipients, leaseExpiresAt, o.routes)) {
        if (cap <= 0) break;
        built.push({ ...job, dueLagS });
        cap--;
        used.set(dest, (used.get(dest) ?? 0) + 1);
      }
    }
  }
  if (!built.length) return none;
  const uNames = [...used.keys()].sort();
  const recipientCols = columns(
    built.flatMap((job) => job.idxs.map((idx) => ({ messageId: job.messageId, idx, jobId: job.jobId, destination: job.destination }))),
    'messageId', 'idx', 'jobId', 'destination',
  );
  const ob = outboxColumns(built.map((b) => b.outbox));
  const payloads = packBytes(ob.payloads);
  // Slots are taken where they are still free (another replica, or a group
  // commit, may have taken them since the read above): a destination gets
  // all its jobs or none, and the recipients of one that gets none stay due.
  const { rows } = await q<{ granted: string[] | null; outbox: Array<{ id: number; msg_id: string }> | null }>(
    c,
    DISPATCH_TAKE(l),
    [
      uNames, uNames.map((n) => used.get(n)!),
      recipientCols.messageId, recipientCols.idx, recipientCols.jobId, recipientCols.destination, leaseExpiresAt,
      ob.subjects, ob.msgIds, payloads.packed, payloads.offsets, payloads.lengths, ob.traces, built.map((b) => b.destination), ob.bodyOf,
      ordinalsByDestination(built.map((b) => b.destination)),
    ],
  );
  const granted = new Set(rows[0]?.granted ?? []);
  const jobs = built.filter((b) => granted.has(b.destination));
  for (const b of jobs) o.bodyCache?.delete(b.messageId);
  return { built: jobs, outbox: stored(jobs.map((b) => b.outbox), rows[0]?.outbox ?? []) };
}
