// Queue operations for the admin API: summary (qshape-like), listing with
// filters and keyset paging, bulk actions with a dry run and an operator
// record, destinations (suspend/resume/list) and routes.
import type { Pool } from '@tern/db';
import { InvalidArgumentError, InvalidFieldError, MessageNotFoundError, UnknownDestinationError } from './errors';
import {
  LifecycleEventType,
  QueueAction,
  ReportKind,
  Route,
  type ApplyActionRequest,
  type ApplyActionResponse,
  type DeleteRouteRequest,
  type DeleteRouteResponse,
  type Destination,
  type ListDestinationsResponse,
  type ListMessagesRequest,
  type ListMessagesResponse,
  type ListRoutesResponse,
  type MessageFilter,
  type MessageSummary,
  type PutRouteRequest,
  type PutRouteResponse,
  type QueueSummaryResponse,
  type ResumeDestinationRequest,
  type ResumeDestinationResponse,
  type SuspendDestinationRequest,
  type SuspendDestinationResponse,
} from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { tx } from './db';
import { resumeDestination, suspendDestination, type DestinationLimits } from './destination';
import { idFloor, isQueueId, parseQueueId } from './ids';
import { RCPT_COLS, toRecipientStatus } from './messages';
import { PENDING_SQL, S } from './model';
import { insertOutbox } from './outbox';
import { eventRows, type EventSettings } from './events';
import { buildReports, type ReportSubject } from './reports';
import { markDone } from './results';
import { rowToRoute, validateRoute, type RouteRow, type RouteTable } from './routes';

export interface OperationsOptions {
  pool: Pool;
  logger: Logger;
  routes: RouteTable;
  limits: DestinationLimits;
  events: EventSettings;
  onOutbox(): void;
  onDue(): void;
}

/** The lifecycle event of an operator's action (retry changes no state: none). */
const ACTION_EVENTS = new Map<QueueAction, LifecycleEventType>([
  [QueueAction.QUEUE_ACTION_HOLD, LifecycleEventType.LIFECYCLE_EVENT_TYPE_HELD],
  [QueueAction.QUEUE_ACTION_RELEASE, LifecycleEventType.LIFECYCLE_EVENT_TYPE_RELEASED],
  [QueueAction.QUEUE_ACTION_DELETE, LifecycleEventType.LIFECYCLE_EVENT_TYPE_DELETED],
  [QueueAction.QUEUE_ACTION_BOUNCE, LifecycleEventType.LIFECYCLE_EVENT_TYPE_BOUNCED],
]);

const ALL_STATES = [S.queued, S.inflight, S.deferred, S.delivered, S.failed, S.held, S.expired, S.deleted, S.relayed];
const MAX_PAGE = 1000;

/** Which recipients an action moves, and to what. */
const ACTIONS: Record<number, { name: string; from: number[] }> = {
  [QueueAction.QUEUE_ACTION_HOLD]: { name: 'hold', from: [S.queued, S.deferred] },
  [QueueAction.QUEUE_ACTION_RELEASE]: { name: 'release', from: [S.held] },
  [QueueAction.QUEUE_ACTION_RETRY]: { name: 'retry', from: [S.queued, S.deferred] },
  [QueueAction.QUEUE_ACTION_DELETE]: { name: 'delete', from: [S.queued, S.deferred, S.held] },
  [QueueAction.QUEUE_ACTION_BOUNCE]: { name: 'bounce', from: [S.queued, S.deferred, S.held] },
};

class Params {
  readonly values: unknown[] = [];
  add(v: unknown): string {
    this.values.push(v);
    return `$${this.values.length}`;
  }
}

function validStates(states: number[], field: string): number[] {
  for (const s of states) {
    if (!ALL_STATES.includes(s as (typeof ALL_STATES)[number])) throw new InvalidFieldError(field, `unknown recipient state ${s}`);
  }
  return states;
}

function isEmptyFilter(f: MessageFilter | undefined): boolean {
  return !f || (!f.sender && !f.recipient && !f.domain && !f.states.length && !f.minAgeSeconds && !f.maxAgeSeconds);
}

/** Conditions on recipients `r` for a filter (state handled by the caller). */
function recipientConds(f: MessageFilter, p: Params): string[] {
  const c: string[] = [];
  if (f.domain) c.push(`r.domain = ${p.add(f.domain.trim().toLowerCase().replace(/^@/, ''))}`);
  if (f.recipient) c.push(`r.address = ${p.add(f.recipient.trim())}`);
  if (f.sender) c.push(`EXISTS (SELECT 1 FROM messages m WHERE m.id = r.message_id AND m.sender = ${p.add(f.sender.trim())})`);
  // Queue ids sort by time: an age bound is an id bound.
  if (f.minAgeSeconds) c.push(`r.message_id < ${p.add(idFloor(Date.now() - Number(f.minAgeSeconds) * 1000))}`);
  if (f.maxAgeSeconds) c.push(`r.message_id >= ${p.add(idFloor(Date.now() - Number(f.maxAgeSeconds) * 1000))}`);
  return c;
}

export class Operations {
  constructor(private readonly o: OperationsOptions) {}

  /**
   * Messages newest first (queue ids sort by time), a page at a time: the
   * token is the last id of a page and the next page holds older ones.
   * Driven by the most selective index the filter allows: the recipient's
   * address or domain, else the sender, else the recipient state; without a
   * filter, the messages themselves.
   */
  async listMessages(req: ListMessagesRequest): Promise<ListMessagesResponse> {
    const pageSize = Math.min(MAX_PAGE, req.pageSize || 50);
    const f = req.filter ?? { sender: '', recipient: '', domain: '', states: [], minAgeSeconds: 0, maxAgeSeconds: 0 };
    if (req.pageToken && !isQueueId(req.pageToken)) throw new InvalidFieldError('page_token', 'not a token from a previous response');
    // Every state named is no restriction at all (and needs no per-state scan).
    const named = validStates(f.states, 'filter.states');
    const states = ALL_STATES.every((s) => named.includes(s)) ? [] : [...new Set(named)];
    const p = new Params();
    let sql: string;
    if (f.domain || f.recipient || (states.length && !f.sender)) {
      // One ordered, limited scan per state (each on an index ending in
      // message_id), merged: the first page is fast whatever the queue size.
      const conds = recipientConds(f, p);
      if (req.pageToken) conds.push(`r.message_id < ${p.add(req.pageToken)}`);
      const lim = p.add(pageSize + 1);
      const parts = (states.length ? states : ALL_STATES).map(
        (s) => `(SELECT DISTINCT r.message_id FROM recipients r WHERE r.state = ${s}${conds.map((c) => ` AND ${c}`).join('')} ORDER BY r.message_id DESC LIMIT ${lim})`,
      );
      sql = `SELECT DISTINCT message_id AS id FROM (${parts.join(' UNION ALL ')}) x ORDER BY 1 DESC LIMIT ${lim}`;
    } else {
      const conds: string[] = [];
      if (f.sender) conds.push(`m.sender = ${p.add(f.sender.trim())}`);
      if (f.minAgeSeconds) conds.push(`m.id < ${p.add(idFloor(Date.now() - Number(f.minAgeSeconds) * 1000))}`);
      if (f.maxAgeSeconds) conds.push(`m.id >= ${p.add(idFloor(Date.now() - Number(f.maxAgeSeconds) * 1000))}`);
      if (req.pageToken) conds.push(`m.id < ${p.add(req.pageToken)}`);
      if (states.length) conds.push(`EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = ANY(${p.add(states)}::smallint[]))`);
      // (sender, id) walks the sender's index backwards; the sender is fixed, so this is id order.
      const order = f.sender ? 'm.sender DESC, m.id DESC' : 'm.id DESC';
      sql = `SELECT m.id FROM messages m ${conds.length ? `WHERE ${conds.join(' AND ')}` : ''} ORDER BY ${order} LIMIT ${p.add(pageSize + 1)}`;
    }
    const { rows } = await this.o.pool.query<{ id: string }>(sql, p.values);
    const more = rows.length > pageSize;
    const ids = rows.slice(0, pageSize).map((r) => r.id);
    if (!ids.length) return { messages: [], nextPageToken: '' };
    const [msgs, rcpts] = await Promise.all([
      this.o.pool.query<{ id: string; sender: string; size: number; created_at: Date; rcpt_count: number }>(
        'SELECT id, sender, size, created_at, rcpt_count FROM messages WHERE id = ANY($1::text[])',
        [ids],
      ),
      (() => {
        const q = new Params();
        const conds = [`r.message_id = ANY(${q.add(ids)}::text[])`];
        if (f.domain) conds.push(`r.domain = ${q.add(f.domain.trim().toLowerCase().replace(/^@/, ''))}`);
        if (f.recipient) conds.push(`r.address = ${q.add(f.recipient.trim())}`);
        if (states.length) conds.push(`r.state = ANY(${q.add(states)}::smallint[])`);
        return this.o.pool.query<Parameters<typeof toRecipientStatus>[0] & { message_id: string }>(
          `SELECT r.message_id, ${RCPT_COLS.split(', ').map((c) => `r.${c}`).join(', ')} FROM recipients r WHERE ${conds.join(' AND ')} ORDER BY r.message_id, r.idx`,
          q.values,
        );
      })(),
    ]);
    const byMsg = new Map<string, ReturnType<typeof toRecipientStatus>[]>();
    for (const r of rcpts.rows) {
      const list = byMsg.get(r.message_id) ?? [];
      byMsg.set(r.message_id, list);
      if (list.length < 100) list.push(toRecipientStatus(r));
    }
    const msgById = new Map(msgs.rows.map((m) => [m.id, m]));
    const messages: MessageSummary[] = [];
    for (const id of ids) {
      const m = msgById.get(id);
      if (!m) continue;
      messages.push({ queueId: id, sender: m.sender, size: Number(m.size), createdAt: m.created_at, recipientCount: m.rcpt_count, recipients: byMsg.get(id) ?? [] });
    }
    return { messages, nextPageToken: more ? ids[ids.length - 1]! : '' };
  }

  async summary(): Promise<QueueSummaryResponse> {
    const { rows } = await this.o.pool.query<{ domain: string; state: number; n: number; oldest: Date; last_error: string | null }>(
      `SELECT s.domain, s.state, s.n, s.oldest, d.last_error FROM (
         SELECT domain, state, count(*)::bigint AS n, min(created_at) AS oldest FROM recipients
         WHERE state IN ${PENDING_SQL} GROUP BY domain, state) s
       LEFT JOIN destinations d ON d.name = s.domain
       ORDER BY s.n DESC, s.domain, s.state LIMIT 5000`,
    );
    return { rows: rows.map((r) => ({ destination: r.domain, state: r.state, count: Number(r.n), oldest: r.oldest, lastError: r.last_error ?? '' })) };
  }

  async applyAction(req: ApplyActionRequest): Promise<ApplyActionResponse> {
    const spec = ACTIONS[req.action];
    if (!spec) throw new InvalidFieldError('action', 'must be HOLD, RELEASE, RETRY, DELETE or BOUNCE');
    // One message by id: the id as stored, and a malformed one refused rather than matching nothing.
    const byId = req.queueId.trim() ? parseQueueId(req.queueId) : '';
    const given = [byId ? 'queue_id' : '', isEmptyFilter(req.filter) ? '' : 'filter', req.all ? 'all' : ''].filter(Boolean);
    if (given.length > 1) throw new InvalidFieldError(given.join(', '), 'give exactly one of them');
    if (!given.length) {
      throw new InvalidFieldError('filter', 'give a queue_id, at least one filter field (sender, recipient, domain, states, age), or all for every message');
    }
    if (!req.operator.trim()) throw new InvalidFieldError('operator', 'required (who is acting, recorded with the action)');
    const p = new Params();
    let conds: string[];
    let from = spec.from;
    if (byId) conds = [`r.message_id = ${p.add(byId)}`];
    else if (req.all) conds = [];
    else {
      const f = req.filter!;
      conds = recipientConds(f, p);
      if (f.states.length) from = from.filter((s) => validStates(f.states, 'filter.states').includes(s));
    }
    if (byId) await this.mustExist(byId, req.queueId);
    if (!from.length) return { messages: 0, recipients: 0, dryRun: req.dryRun };
    conds.push(`r.state = ANY(${p.add(from)}::smallint[])`);
    const where = conds.join(' AND ');
    if (req.dryRun) {
      const { rows } = await this.o.pool.query<{ m: number; r: number }>(
        `SELECT count(DISTINCT r.message_id)::bigint AS m, count(*)::bigint AS r FROM recipients r WHERE ${where}`,
        p.values,
      );
      return { messages: Number(rows[0]?.m ?? 0), recipients: Number(rows[0]?.r ?? 0), dryRun: true };
    }
    const operator = req.operator.trim();
    const reason = req.reason.trim();
    let reports = 0;
    const result = await tx(this.o.pool, async (c) => {
      let set: string;
      switch (req.action) {
        case QueueAction.QUEUE_ACTION_HOLD:
          set = `state = ${S.held}, next_attempt_at = NULL`;
          break;
        case QueueAction.QUEUE_ACTION_RELEASE:
          set = `state = ${S.queued}, next_attempt_at = now()`;
          break;
        case QueueAction.QUEUE_ACTION_RETRY:
          set = 'next_attempt_at = now()';
          break;
        case QueueAction.QUEUE_ACTION_DELETE:
          set = `state = ${S.deleted}, next_attempt_at = NULL`;
          break;
        default:
          set = `state = ${S.failed}, next_attempt_at = NULL, last_code = 550, last_enhanced = '5.0.0', last_text = ${p.add(`bounced by ${operator}${reason ? `: ${reason}` : ''}`)}`;
      }
      const { rows } = await c.query<{ message_id: string; idx: number; address: string; domain: string; sender: string; trace: Record<string, string> | null }>(
        `WITH t AS (SELECT r.message_id, r.idx, m.sender, m.trace FROM recipients r JOIN messages m ON m.id = r.message_id
                    WHERE ${where} ORDER BY r.message_id, r.idx FOR UPDATE OF r)
         UPDATE recipients r SET ${set}, updated_at = now() FROM t WHERE r.message_id = t.message_id AND r.idx = t.idx
         RETURNING r.message_id, r.idx, r.address, r.domain, t.sender, t.trace`,
        p.values,
      );
      const ids = [...new Set(rows.map((r) => r.message_id))];
      if (!ids.length) return { messages: 0, recipients: 0 };
      const eventType = ACTION_EVENTS.get(req.action);
      if (eventType !== undefined) {
        const events = eventRows(
          this.o.events,
          rows.map((r) => ({ type: eventType, queueId: r.message_id, sender: r.sender, recipient: r.address, destination: r.domain, operator, reason, trace: r.trace })),
        );
        if (events.length) {
          await insertOutbox(c, events);
          reports += events.length;
        }
      }
      await c.query(
        `INSERT INTO operator_events (message_id, operator, action, reason, detail)
         SELECT m, $2, $3, $4, $5::jsonb FROM unnest($1::text[]) AS t(m)`,
        [ids, operator, spec.name, reason, JSON.stringify({ filter: byId || req.all ? undefined : req.filter, all: req.all || undefined, recipients: rows.length })],
      );
      if (req.action === QueueAction.QUEUE_ACTION_DELETE || req.action === QueueAction.QUEUE_ACTION_BOUNCE) await markDone(c, ids);
      if (req.action === QueueAction.QUEUE_ACTION_BOUNCE) {
        const { rows: subj } = await c.query<{
          message_id: string; idx: number; address: string; orcpt: string; notify: number[]; expires_at: Date;
          sender: string; origin: number; envelope: Buffer; size: number; trace: Record<string, string> | null;
        }>(
          `SELECT r.message_id, r.idx, r.address, r.orcpt, r.notify, r.expires_at, m.sender, m.origin, m.envelope, m.size, m.trace
           FROM unnest($1::text[], $2::int[]) AS t(m, i) JOIN recipients r ON r.message_id = t.m AND r.idx = t.i JOIN messages m ON m.id = r.message_id`,
          [rows.map((r) => r.message_id), rows.map((r) => r.idx)],
        );
        const subjects: ReportSubject[] = subj.map((r) => ({
          messageId: r.message_id, sender: r.sender, origin: r.origin, envelope: r.envelope, size: Number(r.size), trace: r.trace,
          idx: r.idx, address: r.address, orcpt: r.orcpt, notify: r.notify, status: '5.0.0', remoteMta: '',
          diagnostic: undefined, lastAttemptAt: undefined, willRetryUntil: undefined,
        }));
        const out = buildReports(ReportKind.REPORT_KIND_FAILED, subjects);
        await insertOutbox(c, out);
        reports += out.length;
      }
      return { messages: ids.length, recipients: rows.length };
    });
    this.o.logger.info({ action: spec.name, operator, reason, queue_id: byId || undefined, all: req.all || undefined, ...result }, 'queue action applied');
    if (reports) this.o.onOutbox();
    if (req.action === QueueAction.QUEUE_ACTION_RELEASE || req.action === QueueAction.QUEUE_ACTION_RETRY) this.o.onDue();
    return { ...result, dryRun: false };
  }

  /** An action on an id the queue has no message for is a typo or an old id: NOT_FOUND, not "0 messages". */
  private async mustExist(id: string, given: string): Promise<void> {
    const { rowCount } = await this.o.pool.query('SELECT 1 FROM messages WHERE id = $1', [id]);
    if (!rowCount) throw new MessageNotFoundError(given.trim());
  }

  private async destination(name: string): Promise<Destination> {
    const { rows } = await this.o.pool.query<DestRow>(`SELECT ${DEST_COLS} FROM destinations WHERE name = $1`, [name]);
    return rows[0] ? toDestination(rows[0]) : { name, suspended: false, suspendedReason: '', concurrencyLimit: this.o.limits.initialConcurrency, inflight: 0, lastError: '' };
  }

  /**
   * Refuses a destination the queue has never had mail for: its row is made
   * at the first enqueue and kept, so none means a name no message was ever
   * queued for, most likely a typo; suspending it would pass for done while
   * the real destination's mail goes on.
   */
  private async known(name: string, next: string): Promise<void> {
    const { rows } = await this.o.pool.query('SELECT 1 FROM destinations WHERE name = $1', [name]);
    if (rows.length) return;
    throw new UnknownDestinationError(name, next);
  }

  async suspend(req: SuspendDestinationRequest): Promise<SuspendDestinationResponse> {
    const name = normaliseDestination(req.destination);
    if (!req.operator.trim()) throw new InvalidFieldError('operator', 'required');
    if (!req.force) await this.known(name, ', or suspend it ahead of its first message with force (tern destination suspend --force)');
    await tx(this.o.pool, async (c) => {
      await suspendDestination(c, name, this.o.limits, req.reason.trim(), req.operator.trim());
      await c.query(`INSERT INTO operator_events (subject, operator, action, reason) VALUES ($1, $2, 'suspend', $3)`, [name, req.operator.trim(), req.reason.trim()]);
    });
    this.o.logger.info({ destination: name, operator: req.operator, reason: req.reason, force: req.force || undefined }, 'destination suspended');
    return { destination: await this.destination(name) };
  }

  async resume(req: ResumeDestinationRequest): Promise<ResumeDestinationResponse> {
    const name = normaliseDestination(req.destination);
    if (!req.operator.trim()) throw new InvalidFieldError('operator', 'required');
    await this.known(name, '');
    await tx(this.o.pool, async (c) => {
      await resumeDestination(c, name, this.o.limits);
      await c.query(`INSERT INTO operator_events (subject, operator, action) VALUES ($1, $2, 'resume')`, [name, req.operator.trim()]);
    });
    this.o.logger.info({ destination: name, operator: req.operator }, 'destination resumed');
    this.o.onDue();
    return { destination: await this.destination(name) };
  }

  async listDestinations(): Promise<ListDestinationsResponse> {
    const { rows } = await this.o.pool.query<DestRow>(
      `SELECT ${DEST_COLS} FROM destinations d
       WHERE d.inflight > 0 OR d.suspended OR d.dead_until IS NOT NULL
          OR EXISTS (SELECT 1 FROM recipients r WHERE r.domain = d.name AND r.state IN ${PENDING_SQL})
       ORDER BY d.name LIMIT 10000`,
    );
    return { destinations: rows.map(toDestination) };
  }

  async listRoutes(): Promise<ListRoutesResponse> {
    const { rows } = await this.o.pool.query<RouteRow>('SELECT domain, kind, target, tls, auth_user, auth_secret FROM routes ORDER BY domain');
    return { routes: rows.map(rowToRoute) };
  }

  async putRoute(req: PutRouteRequest): Promise<PutRouteResponse> {
    const problem = validateRoute(req.route);
    if (problem) throw new InvalidArgumentError(problem);
    if (!req.operator.trim()) throw new InvalidFieldError('operator', 'required');
    const r = req.route!;
    const route = Route.fromPartial({ ...r, domain: r.domain.trim().toLowerCase().replace(/\.$/, ''), target: r.target.trim() });
    await tx(this.o.pool, async (c) => {
      await c.query(
        `INSERT INTO routes (domain, kind, target, tls, auth_user, auth_secret, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (domain) DO UPDATE SET kind = $2, target = $3, tls = $4, auth_user = $5, auth_secret = $6, updated_by = $7, updated_at = now()`,
        [route.domain, route.kind, route.target, route.tls, route.authUser, route.authSecret, req.operator.trim()],
      );
      await c.query(`INSERT INTO operator_events (subject, operator, action, detail) VALUES ($1, $2, 'put_route', $3::jsonb)`, [
        route.domain,
        req.operator.trim(),
        JSON.stringify(Route.toJSON(route)),
      ]);
    });
    await this.o.routes.load().catch(() => undefined);
    return { route };
  }

  async deleteRoute(req: DeleteRouteRequest): Promise<DeleteRouteResponse> {
    const domain = req.domain.trim().toLowerCase();
    if (!domain) throw new InvalidFieldError('domain', 'required');
    if (!req.operator.trim()) throw new InvalidFieldError('operator', 'required');
    const deleted = await tx(this.o.pool, async (c) => {
      const r = await c.query('DELETE FROM routes WHERE domain = $1', [domain]);
      if (r.rowCount) await c.query(`INSERT INTO operator_events (subject, operator, action) VALUES ($1, $2, 'delete_route')`, [domain, req.operator.trim()]);
      return (r.rowCount ?? 0) > 0;
    });
    await this.o.routes.load().catch(() => undefined);
    return { deleted };
  }
}

interface DestRow {
  name: string;
  suspended: boolean;
  suspended_reason: string;
  dead: boolean;
  concurrency_limit: number;
  inflight: number;
  last_error: string;
}
const DEST_COLS = 'name, suspended, suspended_reason, dead_until IS NOT NULL AS dead, concurrency_limit, inflight, last_error';

function toDestination(r: DestRow): Destination {
  return {
    name: r.name,
    suspended: r.suspended || r.dead,
    suspendedReason: r.suspended ? r.suspended_reason || 'suspended by an operator' : r.dead ? `not responding (probing): ${r.last_error}` : '',
    concurrencyLimit: r.concurrency_limit,
    inflight: r.inflight,
    lastError: r.last_error,
  };
}

/** A destination as the queue names it: a recipient domain (U-labels allowed) or an address literal. */
const DESTINATION = /^(?:\[(?:ipv6:)?[0-9a-f.:]+\]|[\p{L}\p{N}_-]+(?:\.[\p{L}\p{N}_-]+)*)$/u;

function normaliseDestination(d: string): string {
  const name = d.trim().toLowerCase().replace(/^@/, '').replace(/\.$/, '');
  if (!DESTINATION.test(name)) {
    // "*" or "example.*" would pass for "every destination" and suspend none.
    throw new InvalidFieldError('destination', `"${d}" is not a domain: a destination is one recipient domain (example.com) or an address literal ([192.0.2.1]); tern destination ls lists them`);
  }
  return name;
}

