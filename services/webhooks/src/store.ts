// The webhooks schema (services/webhooks/migrations): endpoints and the
// outbox of deliveries. Only this service reads or writes it.
import crypto from 'node:crypto';
import { KekError, seal, unseal } from '@tern/config';
import { withTransaction, type Pool } from '@tern/db';
import type { LifecycleEvent } from '@tern/proto';
import { eventTypeName, matches, payloadOf } from './events';

export type EndpointState = 'active' | 'suspended';
export type DeliveryState = 'pending' | 'delivered' | 'dropped';

export interface EndpointRow {
  id: string;
  url: string;
  description: string;
  event_types: string[];
  batch: boolean;
  state: EndpointState;
  suspended_reason: string;
  suspended_at: Date | null;
  consecutive_failures: number;
  retry_after: Date | null;
  last_success_at: Date | null;
  last_error: string;
  pending: number;
  created_at: Date;
  created_by: string;
}

/** An endpoint as the sender needs it: the secret opened. */
export interface SendableEndpoint extends EndpointRow {
  secretBytes: Buffer;
}

export interface DeliveryRow {
  id: number;
  endpoint_id: string;
  event_id: string;
  event_type: string;
  queue_id: string;
  state: DeliveryState;
  attempts: number;
  created_at: Date;
  next_attempt_at: Date;
  expires_at: Date;
  finished_at: Date | null;
  last_status: number;
  last_error: string;
  dropped_reason: string;
}

export interface ClaimedDelivery {
  id: number;
  endpoint_id: string;
  event_id: string;
  payload: string;
  attempts: number;
}

const ENDPOINT_COLUMNS =
  'id, url, description, event_types, batch, state, suspended_reason, suspended_at, consecutive_failures, retry_after, last_success_at, last_error, pending, created_at, created_by';
const DELIVERY_COLUMNS =
  'id, endpoint_id, event_id, event_type, queue_id, state, attempts, created_at, next_attempt_at, expires_at, finished_at, last_status, last_error, dropped_reason';

/** The authenticated data a sealed secret is bound to: a sealed value copied to another endpoint does not open. */
const aad = (id: string) => `webhook:${id}`;

export function newEndpointId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = crypto.randomBytes(20);
  let s = 'wh_';
  for (const b of bytes) s += alphabet[b % alphabet.length];
  return s;
}

export interface EnqueueOutcome {
  /** Rows written (an event already queued for an endpoint is not written again). */
  inserted: number;
  /** Per endpoint, events not queued because it had TERN_WEBHOOKS_MAX_PENDING pending. */
  overflow: Map<string, number>;
  /** Events whose JSON was over the size bound. */
  tooLarge: LifecycleEvent[];
}

export class WebhookStore {
  constructor(
    private readonly pool: Pool,
    private readonly kek: Buffer | undefined,
  ) {}

  /**
   * At start: every stored secret must open, or the service must not run
   * (an endpoint whose secret is lost could never be signed for again).
   * The message names the variable to fix.
   */
  async checkSecrets(): Promise<number> {
    const { rows } = await this.pool.query<{ id: string; secret: Buffer }>('SELECT id, secret FROM webhooks.endpoints WHERE secret_sealed');
    if (rows.length && !this.kek) {
      throw new KekError(
        `TERN_WEBHOOKS_KEK: not set, but ${rows.length} webhook endpoint secret(s) are stored sealed with a key-encryption key; set it to that key (base64 of 32 bytes, from the Secret it was made for)`,
      );
    }
    for (const r of rows) {
      try {
        unseal(this.kek!, r.secret, aad(r.id));
      } catch (err) {
        throw new KekError(`TERN_WEBHOOKS_KEK: does not open the secret of webhook endpoint ${r.id}: it is not the key the secrets were stored with; set that one`, { cause: err });
      }
    }
    return rows.length;
  }

  async countEndpoints(): Promise<number> {
    const { rows } = await this.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM webhooks.endpoints');
    return rows[0]!.n;
  }

  async createEndpoint(e: { url: string; description: string; eventTypes: string[]; batch: boolean; createdBy: string; secret: Buffer }): Promise<EndpointRow> {
    const id = newEndpointId();
    const stored = this.kek ? seal(this.kek, e.secret, aad(id)) : e.secret;
    const { rows } = await this.pool.query<EndpointRow>(
      `INSERT INTO webhooks.endpoints (id, url, description, event_types, batch, secret, secret_sealed, created_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ${ENDPOINT_COLUMNS}`,
      [id, e.url, e.description, e.eventTypes, e.batch, stored, Boolean(this.kek), e.createdBy],
    );
    return rows[0]!;
  }

  async listEndpoints(): Promise<EndpointRow[]> {
    return (await this.pool.query<EndpointRow>(`SELECT ${ENDPOINT_COLUMNS} FROM webhooks.endpoints ORDER BY created_at, id`)).rows;
  }

  async getEndpoint(id: string): Promise<EndpointRow | undefined> {
    return (await this.pool.query<EndpointRow>(`SELECT ${ENDPOINT_COLUMNS} FROM webhooks.endpoints WHERE id = $1`, [id])).rows[0];
  }

  async updateEndpoint(id: string, u: { url?: string; description?: string; eventTypes?: string[]; batch?: boolean }): Promise<EndpointRow | undefined> {
    const { rows } = await this.pool.query<EndpointRow>(
      `UPDATE webhooks.endpoints SET url = COALESCE($2, url), description = COALESCE($3, description), event_types = COALESCE($4, event_types),
         batch = COALESCE($5, batch), updated_at = now()
       WHERE id = $1 RETURNING ${ENDPOINT_COLUMNS}`,
      [id, u.url ?? null, u.description ?? null, u.eventTypes ?? null, u.batch ?? null],
    );
    return rows[0];
  }

  /** Removes the endpoint and every delivery of it. */
  async deleteEndpoint(id: string): Promise<boolean> {
    return ((await this.pool.query('DELETE FROM webhooks.endpoints WHERE id = $1', [id])).rowCount ?? 0) > 0;
  }

  /** Active again: failures forgotten, its pending deliveries due now. */
  async resumeEndpoint(id: string): Promise<EndpointRow | undefined> {
    return withTransaction(this.pool, async (c) => {
      const { rows } = await c.query<EndpointRow>(
        `UPDATE webhooks.endpoints SET state = 'active', suspended_reason = '', suspended_at = NULL, consecutive_failures = 0, retry_after = NULL, updated_at = now()
         WHERE id = $1 RETURNING ${ENDPOINT_COLUMNS}`,
        [id],
      );
      if (!rows[0]) return undefined;
      await c.query(`UPDATE webhooks.deliveries SET next_attempt_at = now() WHERE endpoint_id = $1 AND state = 'pending'`, [id]);
      return rows[0];
    });
  }

  async listDeliveries(q: { endpointId: string; state?: DeliveryState; limit: number; beforeId?: number }): Promise<DeliveryRow[]> {
    const { rows } = await this.pool.query<DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM webhooks.deliveries
       WHERE endpoint_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::bigint IS NULL OR id < $3)
       ORDER BY id DESC LIMIT $4`,
      [q.endpointId, q.state ?? null, q.beforeId ?? null, q.limit],
    );
    return rows;
  }

  /** Every endpoint with its secret opened, for the sender. */
  async sendableEndpoints(): Promise<SendableEndpoint[]> {
    const { rows } = await this.pool.query<EndpointRow & { secret: Buffer; secret_sealed: boolean }>(`SELECT ${ENDPOINT_COLUMNS}, secret, secret_sealed FROM webhooks.endpoints`);
    return rows.map(({ secret, secret_sealed, ...r }) => ({
      ...r,
      secretBytes: secret_sealed ? unseal(this.kek ?? Buffer.alloc(32), secret, aad(r.id)) : secret,
    }));
  }

  /**
   * The deliveries of one NATS message of events, in one transaction: a row
   * per event per active endpoint whose filter takes it, each endpoint's
   * pending count raised with them. A redelivered message writes nothing
   * twice (unique endpoint and event id).
   */
  async enqueue(events: LifecycleEvent[], o: { lifetimeS: number; maxPending: number; eventMaxBytes: number }): Promise<EnqueueOutcome> {
    const outcome: EnqueueOutcome = { inserted: 0, overflow: new Map(), tooLarge: [] };
    const payloads = events.map((e) => ({ e, name: eventTypeName(e.type), ...payloadOf(e) }));
    const fitting = payloads.filter((p) => {
      if (Buffer.byteLength(p.json) <= o.eventMaxBytes) return true;
      outcome.tooLarge.push(p.e);
      return false;
    });
    if (!fitting.length) return outcome;
    await withTransaction(this.pool, async (c) => {
      const active = (await c.query<{ id: string; event_types: string[] }>(`SELECT id, event_types FROM webhooks.endpoints WHERE state = 'active'`)).rows;
      const wanted = active.filter((ep) => fitting.some((p) => matches(ep.event_types, p.name)));
      if (!wanted.length) return;
      // Locked in id order (no deadlock with another pod's message), and
      // only if still active.
      const locked = (
        await c.query<{ id: string; pending: number; event_types: string[] }>(
          `SELECT id, pending, event_types FROM webhooks.endpoints WHERE id = ANY($1) AND state = 'active' ORDER BY id FOR NO KEY UPDATE`,
          [wanted.map((w) => w.id)],
        )
      ).rows;
      const cols: string[][] = [[], [], [], [], []];
      for (const ep of locked) {
        let room = o.maxPending - ep.pending;
        for (const p of fitting) {
          if (!matches(ep.event_types, p.name)) continue;
          if (room <= 0) {
            outcome.overflow.set(ep.id, (outcome.overflow.get(ep.id) ?? 0) + 1);
            continue;
          }
          room--;
          cols[0]!.push(ep.id);
          cols[1]!.push(p.e.eventId);
          cols[2]!.push(p.type);
          cols[3]!.push(p.e.queueId);
          cols[4]!.push(p.json);
        }
      }
      if (!cols[0]!.length) return;
      const { rows } = await c.query<{ endpoint_id: string; n: number }>(
        `WITH ins AS (
           INSERT INTO webhooks.deliveries (endpoint_id, event_id, event_type, queue_id, payload, expires_at)
           SELECT u.e, u.ev, u.t, u.q, u.p, now() + make_interval(secs => $6)
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(e, ev, t, q, p)
           ON CONFLICT (endpoint_id, event_id) DO NOTHING
           RETURNING endpoint_id
         ), counts AS (SELECT endpoint_id, count(*)::int AS n FROM ins GROUP BY endpoint_id),
         upd AS (UPDATE webhooks.endpoints e SET pending = e.pending + counts.n FROM counts WHERE e.id = counts.endpoint_id)
         SELECT endpoint_id, n FROM counts`,
        [...cols, o.lifetimeS],
      );
      outcome.inserted = rows.reduce((s, r) => s + r.n, 0);
    });
    return outcome;
  }

  /**
   * Takes due deliveries of the given endpoints, at most `limit` each,
   * oldest first: their next attempt moves to the end of a lease and their
   * attempt count up, so no other pod takes them meanwhile, and a pod killed
   * mid-request leaves them due again when the lease ends.
   */
  async claim(wants: Array<{ endpointId: string; limit: number }>, leaseMs: number): Promise<ClaimedDelivery[]> {
    if (!wants.length) return [];
    const { rows } = await this.pool.query<ClaimedDelivery>(
      `UPDATE webhooks.deliveries d SET next_attempt_at = now() + make_interval(secs => $3::double precision / 1000), attempts = d.attempts + 1
       FROM (
         SELECT x.id FROM unnest($1::text[], $2::int[]) AS w(ep, lim)
         CROSS JOIN LATERAL (
           SELECT id FROM webhooks.deliveries
           WHERE endpoint_id = w.ep AND state = 'pending' AND next_attempt_at <= now() AND expires_at > now()
           ORDER BY next_attempt_at, id LIMIT w.lim FOR UPDATE SKIP LOCKED
         ) x
       ) c
       WHERE d.id = c.id
       RETURNING d.id, d.endpoint_id, d.event_id, d.payload, d.attempts`,
      [wants.map((w) => w.endpointId), wants.map((w) => w.limit), leaseMs],
    );
    return rows.sort((a, b) => a.id - b.id);
  }

  /** A 2xx: the deliveries are done, the endpoint's failures forgotten. Returns how many were still pending. */
  async delivered(endpointId: string, ids: number[], status: number): Promise<number> {
    return withTransaction(this.pool, async (c) => {
      const done = (
        await c.query(
          `UPDATE webhooks.deliveries SET state = 'delivered', finished_at = now(), last_status = $2, last_error = '', payload = NULL
           WHERE id = ANY($1) AND state = 'pending'`,
          [ids, status],
        )
      ).rowCount ?? 0;
      await c.query(
        `UPDATE webhooks.endpoints SET pending = GREATEST(pending - $2, 0), consecutive_failures = 0, retry_after = NULL, last_success_at = now(), last_error = ''
         WHERE id = $1`,
        [endpointId, done],
      );
      return done;
    });
  }

  /**
   * A failed attempt. Each delivery is due again after its own backoff
   * (`delays`, by id); the endpoint waits `endpointDelayMs` before any new
   * attempt, and is suspended with `suspend` as the reason when given.
   * Returns the endpoint's failures in a row and whether it is suspended now.
   */
  async failed(
    endpointId: string,
    attempt: { ids: number[]; delaysMs: number[]; status: number; error: string },
    endpoint: { delayMs: number; suspendAfter: number; suspendNow?: string },
  ): Promise<{ failures: number; suspended: boolean }> {
    return withTransaction(this.pool, async (c) => {
      await c.query(
        `UPDATE webhooks.deliveries d SET next_attempt_at = now() + make_interval(secs => u.ms / 1000), last_status = $3, last_error = $4
         FROM unnest($1::bigint[], $2::double precision[]) AS u(id, ms)
         WHERE d.id = u.id AND d.state = 'pending'`,
        [attempt.ids, attempt.delaysMs, attempt.status, attempt.error],
      );
      const { rows } = await c.query<{ consecutive_failures: number; state: EndpointState; was: EndpointState }>(
        `UPDATE webhooks.endpoints e SET consecutive_failures = e.consecutive_failures + 1,
           retry_after = now() + make_interval(secs => $2::double precision / 1000),
           last_error = $3,
           state = CASE WHEN $4::text <> '' OR e.consecutive_failures + 1 >= $5 THEN 'suspended' ELSE e.state END,
           suspended_reason = CASE WHEN e.state = 'suspended' THEN e.suspended_reason
             WHEN $4::text <> '' THEN $4
             WHEN e.consecutive_failures + 1 >= $5 THEN (e.consecutive_failures + 1) || ' failed attempts in a row; the last: ' || $3
             ELSE '' END,
           suspended_at = CASE WHEN e.state = 'suspended' THEN e.suspended_at WHEN $4::text <> '' OR e.consecutive_failures + 1 >= $5 THEN now() ELSE NULL END
         FROM (SELECT state AS was FROM webhooks.endpoints WHERE id = $1) old
         WHERE e.id = $1 RETURNING e.consecutive_failures, e.state, old.was`,
        [endpointId, endpoint.delayMs, attempt.error, endpoint.suspendNow ?? '', endpoint.suspendAfter],
      );
      const r = rows[0];
      return { failures: r?.consecutive_failures ?? 0, suspended: r !== undefined && r.state === 'suspended' && r.was === 'active' };
    });
  }

  /** Pending deliveries past their lifetime become dropped; returns how many, per endpoint. */
  async expire(limit = 10_000): Promise<Map<string, number>> {
    return withTransaction(this.pool, async (c) => {
      const { rows } = await c.query<{ endpoint_id: string; n: number }>(
        `WITH gone AS (
           UPDATE webhooks.deliveries SET state = 'dropped', dropped_reason = 'expired', finished_at = now(), payload = NULL
           WHERE id IN (SELECT id FROM webhooks.deliveries WHERE state = 'pending' AND expires_at <= now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING endpoint_id
         ), counts AS (SELECT endpoint_id, count(*)::int AS n FROM gone GROUP BY endpoint_id),
         upd AS (UPDATE webhooks.endpoints e SET pending = GREATEST(e.pending - counts.n, 0) FROM counts WHERE e.id = counts.endpoint_id)
         SELECT endpoint_id, n FROM counts`,
        [limit],
      );
      return new Map(rows.map((r) => [r.endpoint_id, r.n]));
    });
  }

  /** Delivered and dropped rows older than the history are removed. */
  async purge(historyS: number, limit = 10_000): Promise<number> {
    const r = await this.pool.query(
      `DELETE FROM webhooks.deliveries WHERE id IN (
         SELECT id FROM webhooks.deliveries WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1) LIMIT $2)`,
      [historyS, limit],
    );
    return r.rowCount ?? 0;
  }
}
