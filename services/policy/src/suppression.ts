// The suppression list (policy.suppressions): recipients a remote server
// refused permanently as addresses, fed by bounce, or listed by an operator.
// A listed address is refused at RCPT for the clients TERN_SUPPRESSION_ENFORCE
// names (by default every sender that may relay: authenticated and trusted
// clients), so a sender's bad list does not keep hurting the platform's
// reputation. An entry lasts TERN_SUPPRESSION_KEEP_S from its last listing
// (a mailbox may come back): expired, it is neither enforced nor listed, and
// the sweep removes it; an operator removes one sooner when the address works.
// The list can be large, so it is not in the in-memory snapshot: one indexed
// lookup per RCPT the list applies to, and only those.
import { CheckStage, PolicyAction, type CheckRequest, type Suppression } from '@tern/proto';
import type { Pool } from '@tern/db';
import { addressKey, formatAddress, parseAddress } from './address';
import type { SuppressionScope } from './config';
import type { Client } from './engine';
import { invalid } from './errors';
import { refuse, type Decision } from './replies';

interface Row {
  address: string;
  reason: string;
  queue_id: string;
  created_at: Date;
  expires_at: Date;
}

const toSuppression = (r: Row): Suppression => ({ address: r.address, reason: r.reason, queueId: r.queue_id, createdAt: r.created_at, expiresAt: r.expires_at });
const COLS = 'address, reason, queue_id, created_at, expires_at';

/** The lookup key of a recipient as given in RCPT or by bounce, or null when it is no plain address. */
export function suppressionKey(raw: string): string | null {
  const addr = parseAddress(raw);
  return addr ? addressKey(addr) : null;
}

export class SuppressionStore {
  private sweepTimer?: NodeJS.Timeout;

  /** keepS: how long an entry lasts from its last listing. */
  constructor(
    private readonly pool: Pool,
    private readonly keepS = 30 * 86400,
  ) {}

  /** Lists (or refreshes) addresses; returns how many were new. */
  async add(entries: Suppression[], operator: string): Promise<number> {
    const rows = entries.map((e, i) => {
      const key = suppressionKey(e.address);
      if (!key) throw invalid(`suppressions[${i}].address`, `${JSON.stringify(e.address)} is not a valid address`);
      return { key, domain: key.slice(key.lastIndexOf('@') + 1), reason: e.reason.slice(0, 500), queueId: e.queueId };
    });
    if (!rows.length) return 0;
    // xmax = 0 tells an insert from an update of an existing row.
    const res = await this.pool.query<{ inserted: boolean }>(
      `INSERT INTO policy.suppressions (address, domain, reason, queue_id, created_by, expires_at)
       SELECT t.*, now() + make_interval(secs => $6) FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t
       ON CONFLICT (address) DO UPDATE SET reason = EXCLUDED.reason, queue_id = EXCLUDED.queue_id,
         created_by = EXCLUDED.created_by, created_at = now(), expires_at = EXCLUDED.expires_at
       RETURNING (xmax = 0 OR suppressions.expires_at <= now()) AS inserted`,
      [rows.map((r) => r.key), rows.map((r) => r.domain), rows.map((r) => r.reason), rows.map((r) => r.queueId), rows.map(() => operator), this.keepS],
    );
    return res.rows.filter((r) => r.inserted).length;
  }

  async find(key: string): Promise<Suppression | undefined> {
    const res = await this.pool.query<Row>(`SELECT ${COLS} FROM policy.suppressions WHERE address = $1 AND expires_at > now()`, [key]);
    return res.rows[0] ? toSuppression(res.rows[0]) : undefined;
  }

  /** Keyset pages in address order; the token is the last address of the previous page. */
  async list(domain: string, limit: number, after: string): Promise<{ suppressions: Suppression[]; next: string }> {
    const n = Math.min(Math.max(limit || 100, 1), 1000);
    const res = await this.pool.query<Row>(
      `SELECT ${COLS} FROM policy.suppressions
        WHERE ($1 = '' OR domain = $1) AND address > $2 AND expires_at > now() ORDER BY address LIMIT $3`,
      [domain, after, n + 1],
    );
    const page = res.rows.slice(0, n);
    return { suppressions: page.map(toSuppression), next: res.rows.length > n ? page.at(-1)!.address : '' };
  }

  async delete(address: string): Promise<boolean> {
    const key = suppressionKey(address);
    if (!key) throw invalid('address', `${JSON.stringify(address)} is not a valid address`);
    const res = await this.pool.query('DELETE FROM policy.suppressions WHERE address = $1 AND expires_at > now()', [key]);
    return (res.rowCount ?? 0) > 0;
  }

  /** Removes expired entries, a bounded batch at a time; returns how many went. */
  async removeExpired(batch = 10_000): Promise<number> {
    const res = await this.pool.query(
      `DELETE FROM policy.suppressions WHERE address IN (SELECT address FROM policy.suppressions WHERE expires_at <= now() LIMIT $1)`,
      [batch],
    );
    return res.rowCount ?? 0;
  }

  /** The sweep: expired entries removed every `intervalMs` (every replica sweeps; a delete twice is harmless). */
  startSweep(intervalMs: number, onError: (err: Error) => void): void {
    this.sweepTimer = setInterval(() => void this.removeExpired().catch(onError), intervalMs);
    this.sweepTimer.unref();
  }

  stop(): void {
    clearInterval(this.sweepTimer);
  }
}

/** Whether the list applies to this client: its class is among those TERN_SUPPRESSION_ENFORCE names. */
export function enforcedFor(client: Client, scopes: ReadonlySet<SuppressionScope>): boolean {
  return scopes.has('all') || (scopes.has('authenticated') && client.user !== undefined) || (scopes.has('trusted') && client.trusted);
}

/** The policy hook: an accepted recipient that is listed is refused, naming when and why; only at RCPT, for the clients in `scopes`. */
export function suppressionHook(store: SuppressionStore, scopes: ReadonlySet<SuppressionScope>) {
  // A listed address is refused, which is never reused. An accept is reused
  // by ingress for TERN_POLICY_DECISION_CACHE_MS like any pure accept: an
  // address listed meanwhile is refused that much later, and a relay sending
  // the same recipients again and again is not one Postgres lookup per RCPT.
  const applies = (req: CheckRequest, client: Client) => req.stage === CheckStage.CHECK_STAGE_RCPT && enforcedFor(client, scopes);
  const hook = async (req: CheckRequest, client: Client, decision: Decision): Promise<Decision | undefined> => {
    if (!applies(req, client) || decision.action !== PolicyAction.POLICY_ACTION_ACCEPT) return undefined;
    const key = suppressionKey(req.recipient);
    if (!key) return undefined;
    const hit = await store.find(key);
    if (!hit) return undefined;
    const since = hit.createdAt ? hit.createdAt.toISOString().slice(0, 10) : 'earlier';
    return refuse(
      'suppressed',
      550,
      '5.1.1',
      `${formatAddress(req.recipient)}: Recipient address rejected: delivery failed permanently on ${since}${hit.reason ? ` (${hit.reason})` : ''}; not sending again`,
    );
  };
  return Object.assign(hook, { pure: () => true });
}
