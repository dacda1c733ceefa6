// Results: DeliveryResults from the `queue` consumer (one per message on
// tern.results, several per message on tern.results.batch) are applied in batches,
// idempotently (only recipients still inflight under the result's job
// change), with an attempt row each, destination feedback, the next attempt
// by backoff, and report requests in the same transaction. What each result
// means (new state, backoff, report, feedback) is decided in settle.ts; this
// file reads and locks the recipients, writes the decisions in one statement
// and dispatches into the slots given back. NATS messages are acknowledged
// only after COMMIT.
import { SUBJECTS, type Bus, type BusMessage, type Consumption } from '@tern/bus';
import type { Pool, PoolClient } from '@tern/db';
import { AttemptOutcome, DeliveryResult, DeliveryResults, LifecycleEventType, ReportKind, type SmtpReply } from '@tern/proto';
import { backsOffDestination, type BounceClass, type ClassifiedReply } from '@tern/dsn';
import type { Logger } from '@tern/telemetry';
import type { QueueMetrics } from './metrics';
import { eventRows, type EventInput, type EventSettings } from './events';
import { Batcher, errorMessage } from '@tern/runtime';
import type { BodyCache } from './body-cache';
import { columns, q, statement, tx } from './db';
import { ctesFirstSql, dueAtSql, feedbackColumns, lockDestinationsSql, releaseSetSql, type DestinationLimits, type JobEnd } from './destination';
import { countDispatched, dispatchDue } from './dispatch';
import { parseRecipientId } from './ids';
import { S, PENDING_SQL, stateName, type BackoffSettings } from './model';
import { insertOutbox, type OutboxRow, type StoredOutboxRow } from './outbox';
import { buildReports, type ReportSubject } from './reports';
import { jobFeedback, settleRecipient } from './settle';
import type { RouteTable } from './routes';

/** The lifecycle event of a recipient's new state after a result (none while it stays queued). */
const RESULT_EVENTS = new Map<number, LifecycleEventType>([
  [S.delivered, LifecycleEventType.LIFECYCLE_EVENT_TYPE_DELIVERED],
  [S.relayed, LifecycleEventType.LIFECYCLE_EVENT_TYPE_RELAYED],
  [S.deferred, LifecycleEventType.LIFECYCLE_EVENT_TYPE_DEFERRED],
  [S.failed, LifecycleEventType.LIFECYCLE_EVENT_TYPE_BOUNCED],
  [S.expired, LifecycleEventType.LIFECYCLE_EVENT_TYPE_EXPIRED],
]);

export interface ResultsOptions {
  pool: Pool;
  bus: Bus;
  logger: Logger;
  limits: DestinationLimits;
  backoff: BackoffSettings;
  batchMax: number;
  /** How long the first result of a batch waits for others. */
  batchDelayMs: number;
  metrics: Pick<QueueMetrics, 'applied' | 'resultLag' | 'destinations' | 'dispatched' | 'dispatchLag'>;
  events: EventSettings;
  /** The class of a failure reply (operator rules, then libs/dsn's). */
  classify(reply: ClassifiedReply): BounceClass;
  /** Dispatch of the next jobs for the destinations whose slots a batch gives back. */
  dispatch: { routes: RouteTable; jobMaxRecipients: number; batch: number; inlineBodyMax: number; bodyCache?: BodyCache; leaseS: number };
  /** Outbox rows were committed (handed to the relay when given). */
  onOutbox(rows?: StoredOutboxRow[]): void;
  onSlotsFreed(): void;
}

interface ActiveRow {
  /** The row's physical address: it stays put while this transaction holds the row (FOR UPDATE). */
  tid: string;
  message_id: string;
  idx: number;
  job_id: string;
  address: string;
  domain: string;
  orcpt: string;
  notify: number[];
  attempt_count: number;
  expires_at: Date;
  sender: string;
  origin: number;
  envelope: Buffer;
  size: number;
  trace: Record<string, string> | null;
}

/** A recipient's new state: the rows of tern_results_apply's `u` ($1-$6). */
interface RecipientUpdate {
  tid: string;
  state: number;
  nextAttemptAt: Date | null;
  code: number;
  enhanced: string;
  text: string;
  /** Metrics only (not a column): the recipient's destination and when its attempt ended (ms). */
  destination: string;
  attemptEndedMs: number;
}

/** One attempt: the rows of tern_results_apply's `a` ($7-$22, the columns of `attempts`). */
interface AttemptRow {
  messageId: string;
  idx: number;
  jobId: string;
  startedAt: Date;
  durationMs: number;
  remoteHost: string;
  remoteIp: string;
  code: number;
  enhanced: string;
  text: string;
  outcome: number;
  tlsUsed: boolean;
  tlsVersion: string;
  tlsCipher: string;
  tlsVerified: boolean;
  worker: string;
  /** '' unless the attempt failed. */
  bounceClass: string;
}

/** How long the last applied result message may wait for its ack (HeldAck). */
export const RESULT_ACK_HOLD_MS = 200;

/**
 * Acknowledges applied messages one behind: the newest is held until the
 * next one is applied, or for `holdMs`. A work-queue stream removes a
 * message at its ack, and a file stream whose last block empties replaces
 * the block file (a create and an unlink, nats-server #6789); results are
 * applied within milliseconds, so acking each at once emptied TERN_RESULTS
 * between most batches (docs/performance.md). Holding one keeps the block
 * in use while results flow. A held ack lost in a crash only means a
 * redelivery, which applies nothing twice (only recipients still inflight
 * under the job change).
 */
export class HeldAck {
  private held: { ack(): void } | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly holdMs: number) {}

  hold(msg: { ack(): void }): void {
    const previous = this.held;
    this.held = msg;
    previous?.ack();
    if (this.timer) this.timer.refresh();
    else this.timer = setTimeout(() => this.release(), this.holdMs).unref(); // stop() releases; a lost ack is a redelivery
  }

  /** Acks the held message now. */
  release(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const m = this.held;
    this.held = undefined;
    m?.ack();
  }
}

/** The batch's recipients still inflight under the result's job ($1-$3: message, idx, job), locked with their messages. */
const RESULTS_ACTIVE = statement(
  'tern_results_active',
  `SELECT r.ctid::text AS tid, r.message_id, r.idx, r.job_id, r.address, r.domain, r.orcpt, r.notify, r.attempt_count, r.expires_at,
                m.sender, m.origin, m.envelope, m.size, m.trace
         FROM unnest($1::text[], $2::int[], $3::text[]) AS t(m, i, j)
         JOIN recipients r ON r.message_id = t.m AND r.idx = t.i AND r.job_id = t.j AND r.state = ${S.inflight}
         JOIN messages m ON m.id = r.message_id
         ORDER BY r.message_id, r.idx
         FOR UPDATE OF r, m`,
);

/** The state change of a result batch, in one statement (see ResultApplier.flush). */
const RESULTS_APPLY = statement(
  'tern_results_apply',
  `WITH u AS (
           UPDATE recipients r SET state = t.s, next_attempt_at = t.na, job_id = NULL, lease_expires_at = NULL,
               attempt_count = r.attempt_count + 1, last_code = t.c, last_enhanced = t.e, last_text = t.x, updated_at = now()
           FROM unnest($1::tid[], $2::smallint[], $3::timestamptz[], $4::int[], $5::text[], $6::text[]) AS t(tid, s, na, c, e, x)
           WHERE r.ctid = ANY($1::tid[]) AND r.ctid = t.tid
           RETURNING r.message_id, r.idx, r.state),
         a AS (
           INSERT INTO attempts (message_id, idx, job_id, started_at, duration_ms, remote_host, remote_ip, code, enhanced, text, outcome, tls_used, tls_version, tls_cipher, tls_verified, worker, bounce_class)
           SELECT * FROM unnest($7::text[], $8::int[], $9::text[], $10::timestamptz[], $11::int[], $12::text[], $13::text[], $14::int[], $15::text[], $16::text[],
                                $17::smallint[], $18::bool[], $19::text[], $20::text[], $21::bool[], $22::text[], $32::text[])
           RETURNING 1),
         done AS (
           UPDATE messages m SET done_at = now()
           WHERE m.id IN (SELECT message_id FROM u) AND m.done_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM u WHERE u.message_id = m.id AND u.state IN ${PENDING_SQL})
             AND (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.state IN ${PENDING_SQL}
                    AND NOT EXISTS (SELECT 1 FROM u WHERE u.message_id = r.message_id AND u.idx = r.idx)) = 0
           RETURNING 1),
         fin AS (
           SELECT DISTINCT t.j, t.d FROM unnest($23::text[], $24::text[]) AS t(j, d)
           WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.job_id = t.j AND r.state = ${S.inflight}
                               AND NOT EXISTS (SELECT 1 FROM u WHERE u.message_id = r.message_id AND u.idx = r.idx))),
         rel AS (
           UPDATE destinations d SET ${releaseSetSql('(SELECT count(*) FROM fin WHERE fin.d = d.name)', '$29', '$30', '$31')}
           FROM unnest($25::text[], $26::int[], $27::int[], $28::text[]) AS t(name, ok, failed, err)
           WHERE ${ctesFirstSql('a', 'done')}
             AND d.name = t.name
             AND ${lockDestinationsSql('$25')}
           RETURNING d.name)
         SELECT array_agg(rel.name) AS due FROM rel
         WHERE ${dueAtSql('rel.name')}`,
);

export class ResultApplier {
  readonly batcher: Batcher<DeliveryResult, number>;
  private consumption: Consumption | undefined;
  private readonly heldAck = new HeldAck(RESULT_ACK_HOLD_MS);

  constructor(private readonly o: ResultsOptions) {
    this.batcher = new Batcher({ maxItems: o.batchMax, delayMs: o.batchDelayMs, concurrency: 1, flush: (items) => this.flush(items) });
  }

  start(): void {
    this.consumption = this.o.bus.consume(
      'queue',
      async (msg: BusMessage) => {
        let results: DeliveryResult[];
        try {
          results = msg.subject === SUBJECTS.resultsBatch ? DeliveryResults.decode(msg.data).results : [DeliveryResult.decode(msg.data)];
        } catch (err) {
          this.o.logger.error({ err: errorMessage(err), subject: msg.subject }, 'undecodable delivery result message dropped');
          msg.term('undecodable DeliveryResult');
          return;
        }
        await Promise.all(results.map((r) => this.batcher.add(r)));
        this.heldAck.hold(msg);
      },
      { concurrency: this.o.batchMax * 2, retryDelayMs: 2_000 },
    );
  }

  async stop(): Promise<void> {
    await this.consumption?.stop();
    await this.batcher.drain();
    this.heldAck.release();
  }

  /** Applies a batch; returns per result how many recipients changed. */
  async flush(results: DeliveryResult[]): Promise<number[]> {
    const now = new Date();
    let reports = 0;
    let ends = 0;
    let jobs = 0;
    let committed: StoredOutboxRow[] = [];
    let due: string[] = [];
    const leaseExpiresAt = new Date(now.getTime() + this.o.dispatch.leaseS * 1000);
    const changed = await tx(this.o.pool, async (c) => {
      reports = 0;
      ends = 0;
      jobs = 0;
      committed = [];
      due = [];
      // Unique (message, idx, job) keys, first result wins.
      const keyed = new Map<string, { result: number; rr: DeliveryResult['recipients'][number]; messageId: string; idx: number; jobId: string }>();
      results.forEach((res, n) => {
        for (const rr of res.recipients) {
          const id = parseRecipientId(rr.recipientId);
          if (!id) continue;
          const k = `${id.queueId}.${id.idx}.${res.jobId}`;
          if (!keyed.has(k)) keyed.set(k, { result: n, rr, messageId: id.queueId, idx: id.idx, jobId: res.jobId });
        }
      });
      const counts = results.map(() => 0);
      if (!keyed.size) return counts;
      const keys = columns([...keyed.values()], 'messageId', 'idx', 'jobId');
      const { rows } = await q<ActiveRow>(
        c,
        RESULTS_ACTIVE,
        [keys.messageId, keys.idx, keys.jobId],
      );
      if (!rows.length) return counts;

      const updates: RecipientUpdate[] = [];
      const attempts: AttemptRow[] = [];
      const jobEnds: JobEnd[] = [];
      const seenJobs = new Set<string>();
      const failedSubjects: ReportSubject[] = [];
      const relayedSubjects: ReportSubject[] = [];
      const deliveredSubjects: ReportSubject[] = [];
      const lifecycle: EventInput[] = [];
      // A reply is classed once: for its attempt, report and event, and again by the job's feedback.
      const classes = new Map<SmtpReply, BounceClass>();
      const classOf = (r: SmtpReply): BounceClass => {
        let c = classes.get(r);
        if (c === undefined) classes.set(r, (c = this.o.classify(r)));
        return c;
      };
      for (const row of rows) {
        const k = keyed.get(`${row.message_id}.${row.idx}.${row.job_id}`)!;
        const res = results[k.result]!;
        counts[k.result]!++;
        const reply = k.rr.reply;
        const code = reply?.code ?? 0;
        const { state, nextAttemptAt: next, report } = settleRecipient(
          { notify: row.notify, attemptCount: row.attempt_count, expiresAt: row.expires_at },
          k.rr,
          now,
          this.o.backoff,
        );
        // The class of a failure, by the operator's rules and libs/dsn's: on the attempt, in the report and the event.
        const bounceClass = reply && state !== S.delivered && state !== S.relayed && code >= 400 ? classOf(reply) : '';
        if (report) {
          const subjects = report.kind === ReportKind.REPORT_KIND_RELAYED ? relayedSubjects : report.kind === ReportKind.REPORT_KIND_DELIVERED ? deliveredSubjects : failedSubjects;
          subjects.push({
            messageId: row.message_id,
            sender: row.sender,
            origin: row.origin,
            envelope: row.envelope,
            size: Number(row.size),
            trace: row.trace,
            idx: row.idx,
            address: row.address,
            orcpt: row.orcpt,
            notify: row.notify,
            status: report.status,
            remoteMta: res.remoteHost,
            diagnostic: reply,
            lastAttemptAt: res.startedAt ?? now,
            willRetryUntil: undefined,
            bounceClass,
          });
        }
        const enhanced = reply?.enhanced ?? '';
        const text = (reply?.text ?? '').slice(0, 2000);
        const eventType = RESULT_EVENTS.get(state);
        if (eventType !== undefined && this.o.events.enabled) {
          const failed = eventType !== LifecycleEventType.LIFECYCLE_EVENT_TYPE_DELIVERED && eventType !== LifecycleEventType.LIFECYCLE_EVENT_TYPE_RELAYED;
          lifecycle.push({
            type: eventType,
            queueId: row.message_id,
            sender: row.sender,
            recipient: row.address,
            destination: row.domain,
            reply,
            remoteHost: res.remoteHost,
            bounceClass: failed ? bounceClass : '',
            attemptCount: row.attempt_count + 1,
            trace: row.trace,
          });
        }
        updates.push({ tid: row.tid, state, nextAttemptAt: next, code, enhanced, text, destination: row.domain, attemptEndedMs: (res.startedAt ?? now).getTime() + res.durationMs });
        attempts.push({
          messageId: row.message_id,
          idx: row.idx,
          jobId: row.job_id,
          startedAt: res.startedAt ?? now,
          durationMs: res.durationMs,
          remoteHost: res.remoteHost,
          remoteIp: res.remoteIp,
          code,
          enhanced,
          text,
          outcome: k.rr.outcome || AttemptOutcome.ATTEMPT_OUTCOME_DEFERRED,
          tlsUsed: res.tls?.used ?? false,
          tlsVersion: res.tls?.version ?? '',
          tlsCipher: res.tls?.cipher ?? '',
          tlsVerified: res.tls?.verified ?? false,
          worker: res.worker,
          bounceClass,
        });
        if (!seenJobs.has(row.job_id)) {
          seenJobs.add(row.job_id);
          jobEnds.push({ jobId: row.job_id, destination: row.domain, ...jobFeedback(res, reply, (r) => backsOffDestination(classOf(r))) });
        }
      }
      // Per destination: concurrency feedback (the last error wins); per job: its destination.
      const feedback = feedbackColumns(jobEnds);
      const updated = columns(updates, 'tid', 'state', 'nextAttemptAt', 'code', 'enhanced', 'text');
      const attempted = columns(
        attempts,
        'messageId', 'idx', 'jobId', 'startedAt', 'durationMs', 'remoteHost', 'remoteIp', 'code', 'enhanced', 'text',
        'outcome', 'tlsUsed', 'tlsVersion', 'tlsCipher', 'tlsVerified', 'worker', 'bounceClass',
      );
      const ended = columns(jobEnds, 'jobId', 'destination');
      const l = this.o.limits;
      // ONE statement for the state change: recipients, their attempts, the
      // messages now done, and the slots of the jobs now finished given
      // back. Sibling CTEs see the rows as they were before the statement,
      // so "done" and "finished" count the other pending / inflight
      // recipients and take this batch's new states from u. The recipients
      // are found by their row addresses (tids, from the locking select;
      // "= ANY" makes it a TID scan whatever the table's size: a join on the
      // key, or on the tid alone, let the planner scan the whole table while
      // it was small). Destination rows are locked
      // last and briefly (they are shared by every dispatching transaction
      // and by the group commit, which waits for them): the attempts and
      // "done" are written before (the one-time filter below runs them
      // first), in name order as every statement that locks several does (no
      // deadlock with a dispatch); the statement also says which of them
      // have due recipients waiting, the only ones worth a dispatch.
      const { rows: relRows } = await q<{ due: string[] | null }>(
        c,
        RESULTS_APPLY,
        [
          updated.tid, updated.state, updated.nextAttemptAt, updated.code, updated.enhanced, updated.text,
          attempted.messageId, attempted.idx, attempted.jobId, attempted.startedAt, attempted.durationMs, attempted.remoteHost, attempted.remoteIp,
          attempted.code, attempted.enhanced, attempted.text, attempted.outcome,
          attempted.tlsUsed, attempted.tlsVersion, attempted.tlsCipher, attempted.tlsVerified, attempted.worker,
          ended.jobId, ended.destination,
          feedback.name, feedback.ok, feedback.failed, feedback.err,
          l.maxConcurrency, l.failuresToSuspend, l.probeS,
          attempted.bounceClass,
        ],
      );
      const outbox: OutboxRow[] = [
        ...buildReports(ReportKind.REPORT_KIND_FAILED, failedSubjects),
        ...buildReports(ReportKind.REPORT_KIND_RELAYED, relayedSubjects),
        ...buildReports(ReportKind.REPORT_KIND_DELIVERED, deliveredSubjects),
        ...eventRows(this.o.events, lifecycle, now),
      ];
      committed = await insertOutbox(c, outbox);
      reports = outbox.length;
      ends = jobEnds.length;
      due = (relRows[0]?.due ?? []).sort();
      const m = this.o.metrics;
      const committedAt = Date.now();
      for (const r of updates) {
        m.applied.add(1, { state: stateName(r.state), destination: m.destinations.peek(r.destination) });
        m.resultLag.record(Math.max(0, committedAt - r.attemptEndedMs) / 1000);
      }
      return counts;
    });
    if (reports) this.o.onOutbox(committed);
    // Fill the slots just given back with due recipients of the same
    // destinations right away (Postfix's qmgr style), instead of waiting for
    // a scheduler pass. In a transaction of its own: inside this one it kept
    // the destination rows locked from the release to the commit.
    if (due.length) {
      try {
        const next = await tx(this.o.pool, (c) => dispatchDue(c, { ...this.o.dispatch, limits: this.o.limits }, leaseExpiresAt, due));
        jobs = next.built.length;
        if (jobs) {
          countDispatched(this.o.metrics, next.built);
          this.o.onOutbox(next.outbox);
        }
      } catch (err) {
        this.o.logger.warn({ err: errorMessage(err), destinations: due }, 'dispatch after results failed; the scheduler takes over');
      }
    }
    // Slots left free (nothing due here, or claimed by a scheduler pass): the scheduler looks again.
    if (ends > jobs) this.o.onSlotsFreed();
    return changed;
  }
}

/**
 * Marks messages whose recipients are all final (their bodies can go after the
 * grace period). The pending check is a per-message subplan on the primary
 * key on purpose: written as NOT EXISTS, the planner turned it into an anti
 * join that read every pending recipient of the queue, a cost that grows
 * with the queue (docs/performance.md).
 */
const MARK_DONE = statement(
  'tern_mark_done',
  `UPDATE messages m SET done_at = now() WHERE m.id = ANY($1::text[]) AND m.done_at IS NULL
       AND (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.state IN ${PENDING_SQL}) = 0`,
);

export async function markDone(c: PoolClient, ids: string[]): Promise<void> {
  if (!ids.length) return;
  await q(
    c,
    MARK_DONE,
    [ids],
  );
}
