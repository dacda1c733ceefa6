// Destinations: one row per next hop (recipient domain) in `destinations`,
// shared by every queue replica, so its limits bind all delivery pods
// together. Every rule and statement on those rows is here: the limits
// (jobs in flight under a concurrency limit, a token bucket for the rate),
// taking slots (the group commit, a dispatch), giving them back with
// concurrency feedback (a result batch, an expired lease), a dead
// destination's suspension and its probe, an operator's suspend and resume,
// the recount of jobs in flight (housekeeping), and the lock order (name
// order) that every statement locking several rows keeps. The scheduler
// (dispatch.ts) and the result applier (results.ts) compose these into their
// statements; Postfix's qmgr likewise keeps its per-destination queue and
// its feedback (qmgr_queue.c, qmgr_feedback.c) apart from the scheduler.
import type { Pool, PoolClient } from '@tern/db';
import type { Config } from './config';
import { columns, q, statement } from './db';
import { S } from './model';

export interface DestinationLimits {
  initialConcurrency: number;
  maxConcurrency: number;
  /** Jobs per minute per destination; 0 = unlimited. */
  ratePerMin: number;
  failuresToSuspend: number;
  probeS: number;
}

/** The limits the settings give (the initial concurrency at most the maximum). */
export function destinationLimits(config: Config): DestinationLimits {
  return {
    initialConcurrency: Math.min(config.TERN_QUEUE_DEST_CONCURRENCY_INIT, config.TERN_QUEUE_DEST_CONCURRENCY_MAX),
    maxConcurrency: config.TERN_QUEUE_DEST_CONCURRENCY_MAX,
    ratePerMin: config.TERN_QUEUE_DEST_RATE_PER_MIN,
    failuresToSuspend: config.TERN_QUEUE_DEST_FAILURES_TO_SUSPEND,
    probeS: config.TERN_QUEUE_DEST_PROBE_S,
  };
}

/** SQL: destination row `d` can take a job now (room under its limit, or dead and due for its one probe). */
const HAS_ROOM_SQL = '((d.dead_until IS NULL AND d.inflight < d.concurrency_limit) OR (d.dead_until <= now() AND d.inflight = 0))';

/** SQL: the destination named by the expression `name` has a recipient due now. */
export function dueAtSql(name: string): string {
  return `EXISTS (SELECT 1 FROM recipients r WHERE r.domain = ${name} AND r.state IN (${S.queued}, ${S.deferred}) AND r.next_attempt_at <= now())`;
}

/** Token bucket size: ten seconds' worth of the rate, at least one. */
export const burstOf = (l: DestinationLimits) => Math.max(1, Math.ceil(l.ratePerMin / 6));

/** SQL for the destination's tokens now (refilled since tokens_at). */
export function tokensNowSql(l: DestinationLimits, alias = 'd'): string {
  return `LEAST(${burstOf(l)}, ${alias}.tokens + EXTRACT(EPOCH FROM (now() - ${alias}.tokens_at)) * ${l.ratePerMin} / 60.0)`;
}

const ENSURE_DESTS = statement(
  'tern_ensure_dests',
  `INSERT INTO destinations (name, concurrency_limit, tokens)
     SELECT n, $2, $3 FROM unnest($1::text[]) AS t(n) ORDER BY n ON CONFLICT (name) DO NOTHING`,
);

/** Makes sure every destination has its row (the scheduler works from them). */
export async function ensureDestinations(c: PoolClient, names: string[], l: DestinationLimits): Promise<void> {
  if (!names.length) return;
  await q(c, ENSURE_DESTS, [names, l.initialConcurrency, burstOf(l)]);
}

/** An operator's suspension: no dispatch to the destination until resumed (its row is made if missing). */
export async function suspendDestination(c: PoolClient, name: string, l: DestinationLimits, reason: string, operator: string): Promise<void> {
  await c.query(
    `INSERT INTO destinations (name, concurrency_limit, tokens, suspended, suspended_reason, suspended_by) VALUES ($1, $2, $3, true, $4, $5)
         ON CONFLICT (name) DO UPDATE SET suspended = true, suspended_reason = $4, suspended_by = $5, updated_at = now()`,
    [name, l.initialConcurrency, burstOf(l), reason, operator],
  );
}

/** An operator's resume: not suspended, not dead, its failures forgotten, its limit at least the initial one. */
export async function resumeDestination(c: PoolClient, name: string, l: DestinationLimits): Promise<void> {
  await c.query(
    `UPDATE destinations SET suspended = false, suspended_reason = '', suspended_by = '', dead_until = NULL, failures = 0,
            concurrency_limit = GREATEST(concurrency_limit, $2), updated_at = now() WHERE name = $1`,
    [name, l.initialConcurrency],
  );
}

/**
 * Recounts inflight jobs per destination from the inflight recipients (a
 * safety net: every transition keeps the counter, this repairs drift). The
 * rows are locked first, in name order as every writer does, and counted
 * in a second statement (a snapshot taken after the locks), so the count
 * is consistent; a row another transaction holds is left for the next run.
 */
export async function recountInflight(c: PoolClient): Promise<void> {
  const { rows } = await c.query<{ name: string }>(
    `SELECT name FROM destinations
         WHERE inflight <> 0 OR name IN (SELECT DISTINCT domain FROM recipients WHERE state = ${S.inflight})
         ORDER BY name FOR UPDATE SKIP LOCKED`,
  );
  if (!rows.length) return;
  await c.query(
    `UPDATE destinations x SET inflight = (SELECT count(DISTINCT job_id) FROM recipients r WHERE r.domain = x.name AND r.state = ${S.inflight})
         WHERE x.name = ANY($1::text[])`,
    [rows.map((r) => r.name)],
  );
}

/** A destination that could take a job now, as a dispatch reads it (committed state, no lock). */
export interface DueDestination {
  name: string;
  inflight: number;
  concurrency_limit: number;
  dead: boolean;
  tokens: number;
}

const ANYTHING_DUE = statement(
  'tern_anything_due',
  `SELECT 1 FROM destinations d
       WHERE NOT d.suspended
         AND ${HAS_ROOM_SQL}
         AND ${dueAtSql('d.name')}
       LIMIT 1`,
);

/** Is any recipient due at a destination that could take a job now (committed state, no locks)? */
export async function anyDestinationDue(pool: Pool): Promise<boolean> {
  const { rows } = await q(pool, ANYTHING_DUE);
  return rows.length > 0;
}

/**
 * The destinations (all, or those in `only`) that have a recipient due and
 * could take a job now: not suspended, with room (or due for their probe)
 * and a token; least recently updated first. Read without a lock: the
 * statement that takes the slots decides (reserveSlotsSql).
 */
export async function dueDestinations(c: PoolClient, l: DestinationLimits, only?: string[]): Promise<DueDestination[]> {
  const { rows } = await q<DueDestination>(c, (only ? DUE_DESTS_ONLY : DUE_DESTS)(l), only ? [only] : []);
  return rows;
}

/** dueDestinations' statement; `only`: those named by $1. */
function dueDestinationsSql(l: DestinationLimits, only: boolean): string {
  const tokens = tokensNowSql(l);
  return `SELECT d.name, d.inflight, d.concurrency_limit, d.dead_until IS NOT NULL AS dead, ${tokens} AS tokens
     FROM destinations d
     WHERE NOT d.suspended ${only ? 'AND d.name = ANY($1::text[])' : ''}
       AND ${HAS_ROOM_SQL}
       AND (${l.ratePerMin} = 0 OR ${tokens} >= 1)
       AND ${dueAtSql('d.name')}
     ORDER BY d.updated_at
     LIMIT 500`;
}

const DUE_DESTS = statement('tern_due_dests', (l) => dueDestinationsSql(l, false));
const DUE_DESTS_ONLY = statement('tern_due_dests_only', (l) => dueDestinationsSql(l, true));

/** How many jobs a due destination can take now: its free slots (one probe when dead), within its tokens. */
export function jobsTakeable(d: DueDestination, l: DestinationLimits): number {
  let cap = d.dead ? 1 : d.concurrency_limit - d.inflight;
  if (l.ratePerMin > 0) cap = Math.min(cap, Math.floor(d.tokens));
  return cap;
}

/**
 * Takes `jobs` slots for each destination if all fit (concurrency, rate,
 * not suspended); returns the destinations granted. Used by enqueue to
 * dispatch new messages in their own transaction. A destination row locked
 * by another transaction (a result batch, a scheduler pass) is waited for:
 * each holds it for one statement and its commit, a millisecond or two.
 * Skipping it instead left the batch's recipients queued for the scheduler,
 * whose pass then cost a transaction more and read their bodies back
 * (docs/performance.md). Every statement locks destination rows in name
 * order, and a group commit holds no other row another transaction could
 * hold (its messages and recipients are new), so the wait cannot deadlock.
 * It is bounded (TERN_QUEUE_LOCK_TIMEOUT_MS): a holder that hangs (a stopped
 * process, a partition that leaves its connection open) makes the group
 * commit try again with `skipLocked`, storing its messages for the
 * scheduler, so acceptance goes on.
 */
export async function reserveSlots(c: PoolClient, wanted: Map<string, number>, l: DestinationLimits, skipLocked = false): Promise<Set<string>> {
  if (!wanted.size) return new Set();
  const names = [...wanted.keys()].sort();
  const { rows } = await q<{ name: string }>(c, (skipLocked ? RESERVE_SLOTS_SKIP : RESERVE_SLOTS)(l), [names, names.map((n) => wanted.get(n)!)]);
  return new Set(rows.map((r) => r.name));
}

const RESERVE_SLOTS = statement('tern_reserve_slots', (l) => reserveSlotsSql(l, { skipLocked: false, probe: false }));
const RESERVE_SLOTS_SKIP = statement('tern_reserve_slots_skip', (l) => reserveSlotsSql(l, { skipLocked: true, probe: false }));

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

/**
 * SQL: the destination row `d` is among those named by `$names`, which are
 * locked in name order (every statement that locks several destination
 * rows does, so none can deadlock with another); with `skipLocked`, a row
 * another transaction holds is left out instead of waited for.
 */
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
 * the bodies back and kept taking the slots the next commits needed
 * (docs/performance.md). `s` reads the rows FOR UPDATE, so `k` comes from
 * their latest committed version, and `g` adds exactly `k`. $1 names, $2
 * slots wanted per name (as reserveSlotsSql); `after`: CTEs to run before
 * the rows are locked (ctesFirstSql).
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
 * Per destination, in name order (the lock order), the concurrency feedback
 * of job ends as the columns of a statement's `t`: name, ok (jobs that
 * reached it), failed (jobs that failed at it), err (the last error, or '').
 */
export function feedbackColumns(ends: JobEnd[]): { name: string[]; ok: number[]; failed: number[]; err: string[] } {
  const per = feedbackByDestination(ends);
  return columns([...per.keys()].sort().map((name) => ({ name, ...per.get(name)! })), 'name', 'ok', 'failed', 'err');
}

function feedbackByDestination(ends: JobEnd[]): Map<string, { ok: number; failed: number; err: string }> {
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

/**
 * Gives back the slots of jobs that have no inflight recipient left, with
 * concurrency feedback (Postfix style: +1 on success, -1 on failure, dead
 * after N consecutive failures, then one probe at a time).
 */
export async function releaseJobs(c: PoolClient, ends: JobEnd[], l: DestinationLimits): Promise<void> {
  if (!ends.length) return;
  const jobIds = [...new Set(ends.map((e) => e.jobId))];
  const { rows } = await q<{ job_id: string }>(c, RELEASE_FINISHED, [jobIds]);
  const finished = new Set(rows.map((r) => r.job_id));
  const feedback = feedbackColumns(ends);
  const jobs = new Map<string, number>();
  const seen = new Set<string>();
  for (const e of ends) {
    if (finished.has(e.jobId) && !seen.has(e.jobId)) {
      seen.add(e.jobId);
      jobs.set(e.destination, (jobs.get(e.destination) ?? 0) + 1);
    }
  }
  await q(c, RELEASE_DESTS, [feedback.name, feedback.name.map((n) => jobs.get(n) ?? 0), feedback.ok, feedback.failed, feedback.err, l.maxConcurrency, l.failuresToSuspend, l.probeS]);
}

/** The jobs among $1 with no inflight recipient left. */
const RELEASE_FINISHED = statement(
  'tern_release_finished',
  `SELECT j AS job_id FROM unnest($1::text[]) AS t(j)
     WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.job_id = t.j AND r.state = ${S.inflight})`,
);

const RELEASE_DESTS = statement(
  'tern_release_dests',
  `UPDATE destinations d SET ${releaseSetSql('t.jobs', '$6', '$7', '$8')}
     FROM unnest($1::text[], $2::int[], $3::int[], $4::int[], $5::text[]) AS t(name, jobs, ok, failed, err)
     WHERE d.name = t.name AND ${lockDestinationsSql('$1')}`,
);

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
