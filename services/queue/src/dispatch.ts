// Dispatch: turning due recipients into DeliveryJobs under per-destination
// limits held in Postgres (shared by every queue replica, so they bind all
// delivery pods together). A dispatched recipient is `inflight` under a job
// id with a lease; without a result before the lease ends it is due again.
import { jobSubject } from '@tern/bus';
import type { Pool, PoolClient } from '@tern/db';
import { DeliveryJob, Envelope, JobRecipient } from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import type { Counter } from './metrics';
import { packBytes, q, tx } from './db';
import { newId, recipientId } from './ids';
import { S } from './model';
import type { BodyCache } from './body-cache';
import { insertGrantedOutboxSql, ordinalsByDestination, outboxColumns, outboxIdsSql, stored, type OutboxRow, type StoredOutboxRow } from './outbox';
import type { RouteTable } from './routes';

/** SQL: destination row `d` can take a job now (room under its limit, or dead and due for its one probe). */
const HAS_ROOM_SQL = '((d.dead_until IS NULL AND d.inflight < d.concurrency_limit) OR (d.dead_until <= now() AND d.inflight = 0))';

/** SQL: the destination named by the expression `name` has a recipient due now. */
export function dueAtSql(name: string): string {
  return `EXISTS (SELECT 1 FROM recipients r WHERE r.domain = ${name} AND r.state IN (${S.queued}, ${S.deferred}) AND r.next_attempt_at <= now())`;
}

export interface DestinationLimits {
  initialConcurrency: number;
  maxConcurrency: number;
  /** Jobs per minute per destination; 0 = unlimited. */
  ratePerMin: number;
  failuresToSuspend: number;
  probeS: number;
}

/** Token bucket size: ten seconds' worth of the rate, at least one. */
export const burstOf = (l: DestinationLimits) => Math.max(1, Math.ceil(l.ratePerMin / 6));

/** SQL for the destination's tokens now (refilled since tokens_at). */
export function tokensNowSql(l: DestinationLimits, alias = 'd'): string {
  return `LEAST(${burstOf(l)}, ${alias}.tokens + EXTRACT(EPOCH FROM (now() - ${alias}.tokens_at)) * ${l.ratePerMin} / 60.0)`;
}

export interface JobMessage {
  id: string;
  envelope: Envelope;
  size: number;
  trace: Record<string, string> | null;
  /** The whole body, when small enough to travel in the job (DeliveryJob.body). */
  body?: Buffer;
}

export interface JobRcpt {
  idx: number;
  address: string;
  orcpt: string;
  notify: number[];
  attemptCount: number;
}

export interface BuiltJob {
  jobId: string;
  destination: string;
  messageId: string;
  idxs: number[];
  outbox: OutboxRow;
}

/** Splits one message's recipients for one destination into jobs of at most `max`. */
export function buildJobs(
  msg: JobMessage,
  destination: string,
  rcpts: JobRcpt[],
  max: number,
  leaseExpiresAt: Date,
  routes: RouteTable,
): BuiltJob[] {
  const out: BuiltJob[] = [];
  const route = routes.match(destination);
  for (let i = 0; i < rcpts.length; i += max) {
    const part = rcpts.slice(i, i + max);
    const jobId = newId();
    const job = DeliveryJob.fromPartial({
      jobId,
      queueId: msg.id,
      destination,
      envelope: msg.envelope,
      recipients: part.map((r) =>
        JobRecipient.fromPartial({ recipientId: recipientId(msg.id, r.idx), address: r.address, orcpt: r.orcpt, notify: r.notify }),
      ),
      size: msg.size,
      route,
      leaseExpiresAt,
      attempt: Math.max(...part.map((r) => r.attemptCount)) + 1,
    });
    out.push({
      jobId,
      destination,
      messageId: msg.id,
      idxs: part.map((r) => r.idx),
      outbox: {
        subject: jobSubject(destination),
        msgId: jobId,
        // Stored without the body (it is in body_chunks); published with it.
        payload: DeliveryJob.encode(job).finish(),
        body: msg.body?.length ? { of: msg.id, data: msg.body } : undefined,
        trace: msg.trace,
        span: 'queue.dispatch',
        attrs: { 'tern.queue_id': msg.id, 'tern.job_id': jobId, 'tern.destination': destination, 'tern.recipients': part.length },
      },
    });
  }
  return out;
}

/** Makes sure every destination has its row (the scheduler works from them). */
export async function ensureDestinations(c: PoolClient, names: string[], l: DestinationLimits): Promise<void> {
  if (!names.length) return;
  await q(
    c,
    'tern_ensure_dests',
    `INSERT INTO destinations (name, concurrency_limit, tokens)
     SELECT n, $2, $3 FROM unnest($1::text[]) AS t(n) ORDER BY n ON CONFLICT (name) DO NOTHING`,
    [names, l.initialConcurrency, burstOf(l)],
  );
}

/**
 * Takes `jobs` slots for each destination if all fit (concurrency, rate,
 * not suspended); returns the destinations granted. Used by enqueue to
 * dispatch new messages in their own transaction. A destination row locked
 * by another transaction (a result batch, a scheduler pass) is waited for:
 * each holds it for one statement and its commit, a millisecond or two.
 * Skipping it instead left the batch's recipients queued for the scheduler,
 * whose pass then cost a transaction more and read their bodies back (18%
 * of the messages at 64k-10; statements per message 1.5-1.8 against
 * 1.0-1.4 waiting, and a lower p99, measured in session 7). Every statement
 * locks destination rows in name order, and a group commit holds no other
 * row another transaction could hold (its messages and recipients are new),
 * so the wait cannot deadlock. It is bounded (TERN_QUEUE_LOCK_TIMEOUT_MS):
 * a holder that hangs (a stopped process, a partition that leaves its
 * connection open) makes the group commit try again with `skipLocked`,
 * storing its messages for the scheduler, so acceptance goes on.
 */
export async function reserveSlots(c: PoolClient, wanted: Map<string, number>, l: DestinationLimits, skipLocked = false): Promise<Set<string>> {
  if (!wanted.size) return new Set();
  const names = [...wanted.keys()].sort();
  const { rows } = await q<{ name: string }>(
    c,
    skipLocked ? 'tern_reserve_slots_skip' : 'tern_reserve_slots',
    reserveSlotsSql(l, { skipLocked, probe: false }),
    [names, names.map((n) => wanted.get(n)!)],
  );
  return new Set(rows.map((r) => r.name));
}

/**
 * SQL: the destination row `d` is among those named by `$names`, which are
 * locked in name order (every statement that locks several destination
 * rows does, so none can deadlock with another); with `skipLocked`, a row
 * another transaction holds is left out instead of waited for.
 */
/**
 * A condition that is always true and makes the named data-modifying CTEs
 * (each with a RETURNING clause) run before the rest of the statement's
 * WHERE: Postgres evaluates it once, as a one-time filter, ahead of the
 * scan. Put beside lockDestinationsSql, it keeps the destination rows
 * (shared by every commit and result) locked for as little of the
 * statement as possible.
 */
export function ctesFirstSql(...ctes: string[]): string {
  return `${ctes.map((c) => `(SELECT count(*) FROM ${c})`).join(' + ')} >= 0`;
}

export function lockDestinationsSql(names: string, skipLocked = false): string {
  return `d.name IN (SELECT name FROM destinations WHERE name = ANY(${names}::text[]) ORDER BY name FOR UPDATE${skipLocked ? ' SKIP LOCKED' : ''})`;
}

/**
 * Takes slots as SQL ($1 destination names, $2 jobs wanted per name;
 * returns the names granted, each with `granted` = its jobs wanted): a
 * destination gets all its jobs or none, under its concurrency limit and
 * rate, not suspended. `skipLocked`: a row held by another transaction is
 * not waited for (enqueue, after a lock timeout: see reserveSlots).
 * `probe`: a dead destination due for its probe takes one job (dispatch;
 * new messages for a dead destination wait for the scheduler instead).
 */
export function reserveSlotsSql(l: DestinationLimits, o: { skipLocked: boolean; probe: boolean }): string {
  const tokens = tokensNowSql(l);
  const room = o.probe
    ? '((d.dead_until IS NULL AND d.inflight + t.n <= d.concurrency_limit) OR (d.dead_until <= now() AND d.inflight = 0 AND t.n = 1))'
    : 'd.dead_until IS NULL AND d.inflight + t.n <= d.concurrency_limit';
  return `UPDATE destinations d SET inflight = d.inflight + t.n,
        tokens = CASE WHEN ${l.ratePerMin} = 0 THEN d.tokens ELSE ${tokens} - t.n END,
        tokens_at = now(), updated_at = now()
     FROM unnest($1::text[], $2::int[]) AS t(name, n)
     WHERE d.name = t.name AND NOT d.suspended
       AND ${lockDestinationsSql('$1', o.skipLocked)}
       AND ${room}
       AND (${l.ratePerMin} = 0 OR ${tokens} >= t.n)
     RETURNING d.name, t.n AS granted`;
}

/**
 * The group commit's slots as two CTEs, `s` (the destination rows, locked
 * in name order, with the slots each can give: `k`) and `g` (the slots
 * taken: name, granted). Unlike reserveSlotsSql a destination gives what it
 * has free, up to what is wanted: all-or-nothing made a group commit that
 * wanted more slots than were free (at 50 sessions a batch can hold 50
 * messages for one destination while its concurrency limit is still
 * growing) leave every message of it to the scheduler, whose passes read
 * the bodies back and kept taking the slots the next commits needed (64k-50:
 * 1,500 messages queued, end to end halved). `s` reads the rows FOR UPDATE,
 * so `k` comes from their latest committed version, and `g` adds exactly
 * `k`. $1 names, $2 slots wanted per name (as reserveSlotsSql); `after`:
 * CTEs to run before the rows are locked (ctesFirstSql).
 */
export function takeFreeSlotsSql(l: DestinationLimits, o: { skipLocked: boolean; after: string[] }): string {
  const tokens = tokensNowSql(l);
  const free = `LEAST(t.n, d.concurrency_limit - d.inflight, CASE WHEN ${l.ratePerMin} = 0 THEN t.n ELSE floor(${tokens})::int END)`;
  return `s AS (
       SELECT d.name, ${free} AS k
       FROM destinations d JOIN unnest($1::text[], $2::int[]) AS t(name, n) ON d.name = t.name
       WHERE ${ctesFirstSql(...o.after)} AND NOT d.suspended AND d.dead_until IS NULL AND ${free} > 0
       ORDER BY d.name
       FOR UPDATE OF d${o.skipLocked ? ' SKIP LOCKED' : ''}),
     g AS (
       UPDATE destinations d SET inflight = d.inflight + s.k,
              tokens = CASE WHEN ${l.ratePerMin} = 0 THEN d.tokens ELSE ${tokens} - s.k END,
              tokens_at = now(), updated_at = now()
       FROM s WHERE d.name = s.name
       RETURNING d.name, s.k AS granted)`;
}

/** Per destination, the concurrency feedback of job ends: reached, failed at it, the last error. */
export function feedbackByDestination(ends: JobEnd[]): Map<string, { ok: number; failed: number; err: string }> {
  const per = new Map<string, { ok: number; failed: number; err: string }>();
  for (const e of ends) {
    const p = per.get(e.destination) ?? { ok: 0, failed: 0, err: '' };
    per.set(e.destination, p);
    if (e.failed) p.failed++;
    else if (e.ok) p.ok++;
    if (e.error) p.err = e.error;
  }
  return per;
}

export interface JobEnd {
  jobId: string;
  destination: string;
  /** The job reached the destination (any reply): grow concurrency. */
  ok: boolean;
  /** The destination failed (421, no connection): shrink, maybe suspend. */
  failed: boolean;
  error: string;
}

/**
 * Gives back the slots of jobs that have no inflight recipient left, with
 * concurrency feedback (Postfix style: +1 on success, -1 on failure, dead
 * after N consecutive failures, then one probe at a time).
 */
export async function releaseJobs(c: PoolClient, ends: JobEnd[], l: DestinationLimits): Promise<void> {
  if (!ends.length) return;
  const jobIds = [...new Set(ends.map((e) => e.jobId))];
  const { rows } = await q<{ job_id: string }>(
    c,
    'tern_release_finished',
    `SELECT j AS job_id FROM unnest($1::text[]) AS t(j)
     WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.job_id = t.j AND r.state = ${S.inflight})`,
    [jobIds],
  );
  const finished = new Set(rows.map((r) => r.job_id));
  const per = feedbackByDestination(ends);
  const jobs = new Map<string, number>();
  const seen = new Set<string>();
  for (const e of ends) {
    if (finished.has(e.jobId) && !seen.has(e.jobId)) {
      seen.add(e.jobId);
      jobs.set(e.destination, (jobs.get(e.destination) ?? 0) + 1);
    }
  }
  const names = [...per.keys()].sort();
  const v = names.map((n) => per.get(n)!);
  await q(
    c,
    'tern_release_dests',
    `UPDATE destinations d SET ${releaseSetSql('t.jobs', '$6', '$7', '$8')}
     FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::text[]) AS t(name, jobs, ok, failed, err)
     WHERE d.name = t.name AND ${lockDestinationsSql('$1')}`,
    [names, names.map((n) => jobs.get(n) ?? 0), v.map((x) => x.ok), v.map((x) => x.failed), v.map((x) => x.err), l.maxConcurrency, l.failuresToSuspend, l.probeS],
  );
}

/**
 * The SET list that gives slots back to a destination row `d` with
 * concurrency feedback, from `t` (ok, failed: job ends that reached / failed
 * at the destination; err: the last error or ''): `jobs` is the SQL for the
 * number of finished jobs; max, failuresToSuspend and probeS are parameters.
 */
export function releaseSetSql(jobs: string, max: string, failuresToSuspend: string, probeS: string): string {
  return `inflight = GREATEST(0, d.inflight - ${jobs}),
        concurrency_limit = CASE WHEN t.failed > 0 THEN GREATEST(1, d.concurrency_limit - t.failed)
                                 WHEN t.ok > 0 THEN LEAST(${max}, d.concurrency_limit + 1)
                                 ELSE d.concurrency_limit END,
        failures = CASE WHEN t.failed > 0 THEN d.failures + t.failed WHEN t.ok > 0 THEN 0 ELSE d.failures END,
        dead_until = CASE WHEN t.failed > 0 AND (d.dead_until IS NOT NULL OR d.failures + t.failed >= ${failuresToSuspend})
                            THEN now() + make_interval(secs => ${probeS})
                          WHEN t.ok > 0 THEN NULL
                          ELSE d.dead_until END,
        last_error = CASE WHEN t.err <> '' THEN t.err ELSE d.last_error END,
        last_error_at = CASE WHEN t.err <> '' THEN now() ELSE d.last_error_at END,
        updated_at = now()`;
}

interface MessageRow {
  id: string;
  envelope: Buffer;
  size: number;
  trace: Record<string, string> | null;
  inline: boolean;
  body: Buffer | null;
}

/** The messages of claimed recipients; bodies up to `inlineBodyMax` bytes (one row) come along for the job. */
export async function loadJobMessages(c: PoolClient, ids: string[], inlineBodyMax = 0, cache?: BodyCache): Promise<Map<string, JobMessage>> {
  const cached = cache ? ids.filter((id) => cache.has(id)) : [];
  const { rows } = await q<MessageRow>(
    c,
    'tern_load_job_messages',
    `SELECT m.id, m.envelope, m.size, m.trace, m.size <= $2 AND NOT m.body_removed AS inline,
            CASE WHEN m.size <= $2 AND NOT m.body_removed AND NOT m.id = ANY($3::text[])
                 THEN (SELECT data FROM body_chunks b WHERE b.message_id = m.id AND b.seq = 0) END AS body
       FROM messages m WHERE m.id = ANY($1::text[])`,
    [ids, inlineBodyMax, cached],
  );
  return new Map(
    rows.map((r) => {
      const size = Number(r.size);
      // A body of several rows (spilled) is never inline: the first row alone is not the body.
      const read = r.inline ? (r.body ?? cache?.get(r.id)) : undefined;
      const body = read && read.length === size ? read : undefined;
      return [r.id, { id: r.id, envelope: Envelope.decode(r.envelope), size, trace: r.trace, body }];
    }),
  );
}

export interface SchedulerOptions {
  pool: Pool;
  logger: Logger;
  routes: RouteTable;
  limits: DestinationLimits;
  jobMaxRecipients: number;
  batch: number;
  inlineBodyMax: number;
  bodyCache?: BodyCache;
  leaseS: number;
  intervalMs: number;
  dispatched: Counter;
  /** Outbox rows were committed (handed to the relay when given). */
  onOutbox(rows?: StoredOutboxRow[]): void;
}

interface DestRow {
  name: string;
  inflight: number;
  concurrency_limit: number;
  dead: boolean;
  tokens: number;
}

interface ClaimRow {
  message_id: string;
  idx: number;
  address: string;
  domain: string;
  orcpt: string;
  notify: number[];
  attempt_count: number;
}

/**
 * The scheduler loop: expires leases, then claims due recipients of
 * destinations with free slots and writes their jobs to the outbox. Woken by
 * commits that make work due or free slots; polls otherwise.
 */
export class Scheduler {
  private stopped = false;
  private woken = false;
  private wakeUp: (() => void) | undefined;
  private loop: Promise<void> | undefined;

  constructor(private readonly o: SchedulerOptions) {}

  start(): void {
    this.loop = this.run();
  }

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
    let lastLeaseCheck = 0;
    while (!this.stopped) {
      this.woken = false;
      let n = 0;
      try {
        if (Date.now() - lastLeaseCheck >= this.o.intervalMs) {
          lastLeaseCheck = Date.now();
          await this.expireLeases();
        }
        n = await this.dispatchPass();
        failures = 0;
      } catch (err) {
        failures++;
        this.o.logger.warn({ err: (err as Error).message }, 'scheduler pass failed; retrying');
      }
      if (this.stopped) break;
      if (failures === 0 && (n > 0 || this.woken)) continue;
      const wait = failures ? Math.min(10_000, 250 * 2 ** failures) : this.o.intervalMs;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, wait);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.wakeUp = done;
      });
      this.wakeUp = undefined;
    }
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
    if (!(await this.anythingDue())) return 0;
    const leaseExpiresAt = new Date(Date.now() + this.o.leaseS * 1000);
    const { built: jobs, outbox } = await tx(this.o.pool, (c) => dispatchDue(c, this.o, leaseExpiresAt));
    if (jobs.length) {
      this.o.onOutbox(outbox);
      const n = jobs.reduce((a, j) => a + j.idxs.length, 0);
      this.o.dispatched.add(jobs.length);
      return n;
    }
    return 0;
  }

  /** Is any recipient due at a destination that could take a job now (committed state, no locks)? */
  private async anythingDue(): Promise<boolean> {
    const { rows } = await q(
      this.o.pool,
      'tern_anything_due',
      `SELECT 1 FROM destinations d
       WHERE NOT d.suspended
         AND ${HAS_ROOM_SQL}
         AND ${dueAtSql('d.name')}
       LIMIT 1`,
    );
    return rows.length > 0;
  }
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
 * the slots are still free. Locked from the first statement (as before),
 * they were held through five round trips: a group commit that found them
 * locked left its messages queued for a scheduler pass, and at 64 KiB that
 * was 70% of them.
 */
export async function dispatchDue(c: PoolClient, o: DispatchSettings, leaseExpiresAt: Date, only?: string[]): Promise<{ built: BuiltJob[]; outbox: StoredOutboxRow[] }> {
  const none = { built: [] as BuiltJob[], outbox: [] as StoredOutboxRow[] };
  const l = o.limits;
  if (only && !only.length) return none;
  const tokens = tokensNowSql(l);
  const { rows: dests } = await c.query<DestRow>({
    name: only ? 'tern_due_dests_only' : 'tern_due_dests',
    text: `SELECT d.name, d.inflight, d.concurrency_limit, d.dead_until IS NOT NULL AS dead, ${tokens} AS tokens
     FROM destinations d
     WHERE NOT d.suspended ${only ? 'AND d.name = ANY($1::text[])' : ''}
       AND ${HAS_ROOM_SQL}
       AND (${l.ratePerMin} = 0 OR ${tokens} >= 1)
       AND ${dueAtSql('d.name')}
     ORDER BY d.updated_at
     LIMIT 500`,
    values: only ? [only] : [],
  });
  if (!dests.length) return none;
  let budget = o.batch;
  const caps = new Map<string, number>();
  const names: string[] = [];
  const limits: number[] = [];
  for (const d of dests) {
    if (budget <= 0) break;
    let cap = d.dead ? 1 : d.concurrency_limit - d.inflight;
    if (l.ratePerMin > 0) cap = Math.min(cap, Math.floor(d.tokens));
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
  const { rows: claimed } = await q<ClaimRow>(
    c,
    'tern_claim_due',
    `SELECT r.message_id, r.idx, r.address, r.domain, r.orcpt, r.notify, r.attempt_count
     FROM unnest($1::text[], $2::int[]) AS d(name, lim)
     CROSS JOIN LATERAL (
       SELECT message_id, idx, address, domain, orcpt, notify, attempt_count FROM recipients
       WHERE domain = d.name AND state IN (${S.queued}, ${S.deferred}) AND next_attempt_at <= now() AND expires_at > now()
       ORDER BY next_attempt_at LIMIT d.lim
       FOR UPDATE SKIP LOCKED) r`,
    [names, limits],
  );
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
      for (const job of buildJobs(msg, dest, jobRcpts, o.jobMaxRecipients, leaseExpiresAt, o.routes)) {
        if (cap <= 0) break;
        built.push(job);
        cap--;
        used.set(dest, (used.get(dest) ?? 0) + 1);
      }
    }
  }
  if (!built.length) return none;
  const uNames = [...used.keys()].sort();
  const rc = { m: [] as string[], i: [] as number[], j: [] as string[], d: [] as string[] };
  for (const job of built) {
    for (const idx of job.idxs) {
      rc.m.push(job.messageId);
      rc.i.push(idx);
      rc.j.push(job.jobId);
      rc.d.push(job.destination);
    }
  }
  const ob = outboxColumns(built.map((b) => b.outbox));
  const payloads = packBytes(ob.payloads);
  // Slots are taken where they are still free (another replica, or a group
  // commit, may have taken them since the read above): a destination gets
  // all its jobs or none, and the recipients of one that gets none stay due.
  const { rows } = await q<{ granted: string[] | null; outbox: Array<{ id: number; msg_id: string }> | null }>(
    c,
    'tern_dispatch_take',
    `WITH g AS (${reserveSlotsSql(l, { skipLocked: false, probe: true })}),
     u AS (
       UPDATE recipients r SET state = ${S.inflight}, job_id = t.j, lease_expires_at = $7, updated_at = now()
       FROM unnest($3::text[], $4::int[], $5::text[], $6::text[]) AS t(m, i, j, d)
       WHERE r.message_id = t.m AND r.idx = t.i AND t.d IN (SELECT name FROM g)),
     o AS (${insertGrantedOutboxSql({ subjects: 8, msgIds: 9, packed: 10, offsets: 11, lengths: 12, traces: 13, destinations: 14, bodyOf: 15, ordinals: 16 })})
     SELECT (SELECT array_agg(name) FROM g) AS granted, ${outboxIdsSql('o')} AS outbox`,
    [
      uNames, uNames.map((n) => used.get(n)!),
      rc.m, rc.i, rc.j, rc.d, leaseExpiresAt,
      ob.subjects, ob.msgIds, payloads.packed, payloads.offsets, payloads.lengths, ob.traces, built.map((b) => b.destination), ob.bodyOf,
      ordinalsByDestination(built.map((b) => b.destination)),
    ],
  );
  const granted = new Set(rows[0]?.granted ?? []);
  const jobs = built.filter((b) => granted.has(b.destination));
  for (const b of jobs) o.bodyCache?.delete(b.messageId);
  return { built: jobs, outbox: stored(jobs.map((b) => b.outbox), rows[0]?.outbox ?? []) };
}
