// Background batches: expiry (with its report), delay warnings, body
// removal after every recipient is final, reaping abandoned spools,
// retention purge, and reconciliation of the per-destination inflight
// counters. Each step works in bounded batches with SKIP LOCKED, so several
// replicas can run it at once.
import { pg, type Pool } from '@tern/db';
import { LifecycleEventType, ReportKind } from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { tx } from './db';
import { recountInflight } from './destination';
import { destinationOf, S } from './model';
import type { QueueMetrics } from './metrics';
import { eventRows, type EventSettings } from './events';
import type { BounceClass, ClassifiedReply } from '@tern/dsn';
import { insertOutbox } from './outbox';
import { buildReports, type ReportSubject } from './reports';
import { markDone } from './results';

export interface HousekeepingOptions {
  pool: Pool;
  logger: Logger;
  batch: number;
  delayWarningS: number;
  bodyGraceS: number;
  retentionS: number;
  intervalMs: number;
  metrics: Pick<QueueMetrics, 'expired' | 'destinations'>;
  events: EventSettings;
  /** The class of a failure reply (operator rules, then libs/dsn's). */
  classify(reply: ClassifiedReply): BounceClass;
  onOutbox(): void;
}

interface SubjectRow {
  message_id: string;
  idx: number;
  address: string;
  orcpt: string;
  notify: number[];
  last_code: number | null;
  last_enhanced: string | null;
  last_text: string | null;
  expires_at: Date;
  updated_at: Date;
  sender: string;
  origin: number;
  envelope: Buffer;
  size: number;
  trace: Record<string, string> | null;
}

function subjectOf(r: SubjectRow, status: string): ReportSubject {
  const code = r.last_code ?? 0;
  return {
    messageId: r.message_id,
    sender: r.sender,
    origin: r.origin,
    envelope: r.envelope,
    size: Number(r.size),
    trace: r.trace,
    idx: r.idx,
    address: r.address,
    orcpt: r.orcpt,
    notify: r.notify,
    status: r.last_enhanced && /^[45]\.\d+\.\d+$/.test(r.last_enhanced) ? r.last_enhanced : status,
    remoteMta: '',
    diagnostic: code ? { code, enhanced: r.last_enhanced ?? '', text: r.last_text ?? '' } : undefined,
    lastAttemptAt: r.last_code ? r.updated_at : undefined,
    willRetryUntil: r.expires_at,
  };
}

const SUBJECT_COLS = `r.message_id, r.idx, r.address, r.orcpt, r.notify, r.last_code, r.last_enhanced, r.last_text, r.expires_at, r.updated_at,
  m.sender, m.origin, m.envelope, m.size, m.trace`;

/** Below this size (in 8 KiB pages) a table's plans hardly matter. */
const STATISTICS_MIN_PAGES = 16;

export class Housekeeping {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private lastSlow = 0;

  constructor(private readonly o: HousekeepingOptions) {}

  start(): void {
    const tick = () => {
      this.running = this.pass()
        .catch((err: Error) => this.o.logger.warn({ err: err.message }, 'housekeeping pass failed'))
        .finally(() => {
          this.running = undefined;
          if (this.timer !== undefined) this.timer = setTimeout(tick, this.o.intervalMs);
        });
    };
    this.timer = setTimeout(tick, Math.min(1_000, this.o.intervalMs));
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  async pass(): Promise<void> {
    await this.refreshStatistics();
    while ((await this.expire()) >= this.o.batch);
    if (this.o.delayWarningS > 0) while ((await this.delayWarnings()) >= this.o.batch);
    if (Date.now() - this.lastSlow > 30_000) {
      this.lastSlow = Date.now();
      await this.removeBodies();
      await this.reapSpools();
      await this.purge();
      await this.reconcile();
    }
  }

  /**
   * ANALYZE the queue's tables that have more than doubled since the
   * planner's statistics were taken. The statements on the message path are
   * prepared, and Postgres keeps a generic plan made from the statistics of
   * that moment: made on the near-empty tables of a fresh install, it reads
   * every row (the result batch scanned all of `recipients`, the dispatch all
   * of `messages`) until autovacuum analyzes them, which is a minute at the
   * earliest and then only after 10% more rows. An ANALYZE invalidates those
   * plans in every session. Checked every pass (one catalog query); a table
   * that keeps growing is analyzed at each doubling, a few times in all.
   * Only tables this user may analyze (it owns them: the same user runs
   * `migrate`); Postgres would skip the others with a warning every pass.
   */
  async refreshStatistics(): Promise<string[]> {
    const { rows } = await this.o.pool.query<{ name: string }>(
      `SELECT c.relname AS name FROM pg_class c
       WHERE c.relnamespace = 'queue'::regnamespace AND c.relkind = 'r'
         AND pg_has_role(c.relowner, 'MEMBER')
         AND pg_relation_size(c.oid) / current_setting('block_size')::int > GREATEST(2 * c.relpages, $1)`,
      [STATISTICS_MIN_PAGES],
    );
    const names = rows.map((r) => r.name).sort();
    for (const name of names) await this.o.pool.query(`ANALYZE queue.${pg.escapeIdentifier(name)}`);
    if (names.length) this.o.logger.debug({ tables: names }, 'planner statistics refreshed');
    return names;
  }

  /** Recipients past their lifetime: expired, with a failure report. */
  async expire(): Promise<number> {
    let reports = 0;
    let expiredAddresses: string[] = [];
    const n = await tx(this.o.pool, async (c) => {
      const { rows } = await c.query<SubjectRow>(
        `SELECT ${SUBJECT_COLS} FROM recipients r JOIN messages m ON m.id = r.message_id
         WHERE r.state IN (${S.queued}, ${S.deferred}) AND r.expires_at <= now()
         ORDER BY r.expires_at LIMIT $1 FOR UPDATE OF r, m SKIP LOCKED`,
        [this.o.batch],
      );
      if (!rows.length) return 0;
      await c.query(
        `UPDATE recipients r SET state = ${S.expired}, next_attempt_at = NULL, updated_at = now()
         FROM unnest($1::text[], $2::int[]) AS t(m, i) WHERE r.message_id = t.m AND r.idx = t.i`,
        [rows.map((r) => r.message_id), rows.map((r) => r.idx)],
      );
      await markDone(c, [...new Set(rows.map((r) => r.message_id))]);
      const out = buildReports(ReportKind.REPORT_KIND_FAILED, rows.map((r) => subjectOf(r, '4.4.7')));
      const expiredEvents = eventRows(
        this.o.events,
        rows.map((r) => ({
          type: LifecycleEventType.LIFECYCLE_EVENT_TYPE_EXPIRED,
          queueId: r.message_id,
          sender: r.sender,
          recipient: r.address,
          destination: destinationOf(r.address),
          reply: r.last_code ? { code: r.last_code, enhanced: r.last_enhanced ?? '', text: r.last_text ?? '' } : undefined,
          bounceClass: r.last_code ? this.o.classify({ code: r.last_code, enhanced: r.last_enhanced ?? '', text: r.last_text ?? '' }) : 'other',
          trace: r.trace,
        })),
      );
      await insertOutbox(c, [...out, ...expiredEvents]);
      reports = out.length;
      expiredAddresses = rows.map((r) => r.address);
      return rows.length;
    });
    const m = this.o.metrics;
    for (const a of expiredAddresses) m.expired.add(1, { destination: m.destinations.peek(destinationOf(a)) });
    if (n) this.o.logger.info({ recipients: n, reports }, 'recipients expired');
    if (n) this.o.onOutbox();
    return n;
  }

  /** Deferred recipients older than the warning time: one delay report where NOTIFY allows. */
  async delayWarnings(): Promise<number> {
    let reports = 0;
    const n = await tx(this.o.pool, async (c) => {
      const { rows } = await c.query<SubjectRow>(
        `SELECT ${SUBJECT_COLS} FROM recipients r JOIN messages m ON m.id = r.message_id
         WHERE r.state = ${S.deferred} AND NOT r.delay_warned AND r.created_at <= now() - make_interval(secs => $2)
         ORDER BY r.created_at LIMIT $1 FOR UPDATE OF r SKIP LOCKED`,
        [this.o.batch, this.o.delayWarningS],
      );
      if (!rows.length) return 0;
      await c.query(
        `UPDATE recipients r SET delay_warned = true FROM unnest($1::text[], $2::int[]) AS t(m, i) WHERE r.message_id = t.m AND r.idx = t.i`,
        [rows.map((r) => r.message_id), rows.map((r) => r.idx)],
      );
      const out = buildReports(ReportKind.REPORT_KIND_DELAYED, rows.map((r) => subjectOf(r, '4.0.0')));
      await insertOutbox(c, out);
      reports = out.length;
      return rows.length;
    });
    if (reports) this.o.onOutbox();
    return n;
  }

  /** Bodies of messages final for longer than the grace period. */
  async removeBodies(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await tx(this.o.pool, async (c) => {
        const { rows } = await c.query<{ id: string }>(
          `SELECT id FROM messages WHERE done_at IS NOT NULL AND NOT body_removed AND done_at <= now() - make_interval(secs => $2)
           LIMIT $1 FOR UPDATE SKIP LOCKED`,
          [this.o.batch, this.o.bodyGraceS],
        );
        if (!rows.length) return 0;
        const ids = rows.map((r) => r.id);
        await c.query('DELETE FROM body_chunks WHERE message_id = ANY($1::text[])', [ids]);
        await c.query('UPDATE messages SET body_removed = true WHERE id = ANY($1::text[])', [ids]);
        return ids.length;
      });
      total += n;
      if (n < this.o.batch) break;
    }
    if (total) this.o.logger.debug({ messages: total }, 'bodies removed');
    return total;
  }

  /** Spilled bodies of uploads that never committed. */
  async reapSpools(maxAgeS = 3600): Promise<number> {
    return tx(this.o.pool, async (c) => {
      const { rows } = await c.query<{ id: string }>(
        `SELECT id FROM spools WHERE created_at <= now() - make_interval(secs => $2) LIMIT $1 FOR UPDATE SKIP LOCKED`,
        [this.o.batch, maxAgeS],
      );
      if (!rows.length) return 0;
      const ids = rows.map((r) => r.id);
      await c.query('DELETE FROM body_chunks WHERE message_id = ANY($1::text[])', [ids]);
      await c.query('DELETE FROM spools WHERE id = ANY($1::text[])', [ids]);
      return ids.length;
    });
  }

  /** Records of messages finished longer than the retention, in batches. */
  async purge(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await tx(this.o.pool, async (c) => {
        const { rows } = await c.query<{ id: string }>(
          `SELECT id FROM messages WHERE done_at IS NOT NULL AND done_at <= now() - make_interval(secs => $2)
           ORDER BY done_at LIMIT $1 FOR UPDATE SKIP LOCKED`,
          [this.o.batch, this.o.retentionS],
        );
        if (!rows.length) return 0;
        const ids = rows.map((r) => r.id);
        await c.query('DELETE FROM attempts WHERE message_id = ANY($1::text[])', [ids]);
        await c.query('DELETE FROM recipients WHERE message_id = ANY($1::text[])', [ids]);
        await c.query('DELETE FROM body_chunks WHERE message_id = ANY($1::text[])', [ids]);
        await c.query('DELETE FROM operator_events WHERE message_id = ANY($1::text[])', [ids]);
        await c.query('DELETE FROM messages WHERE id = ANY($1::text[])', [ids]);
        return ids.length;
      });
      total += n;
      if (n < this.o.batch) break;
    }
    if (total) this.o.logger.info({ messages: total }, 'purged finished messages past retention');
    return total;
  }

  /** Recounts inflight jobs per destination (a safety net: every transition keeps the counter, this repairs drift). */
  async reconcile(): Promise<void> {
    await tx(this.o.pool, recountInflight);
  }
}
