// The suppression list (policy.suppressions): recipients whose delivery failed
// permanently, fed by bounce. Authenticated submission to a listed address is
// refused at RCPT, so a sender's bad list does not keep hurting the platform's
// reputation; an operator removes an entry when the address works again.
// The list can be large, so it is not in the in-memory snapshot: one indexed
// lookup per RCPT of an authenticated session, and only those.
import { CheckStage, PolicyAction, type CheckRequest, type Suppression } from '@tern/proto';
import type { Pool } from '@tern/db';
import { addressKey, formatAddress, parseAddress } from './address';
import type { Client } from './engine';
import { invalid } from './errors';
import { refuse, type Decision } from './replies';

interface Row {
  address: string;
  reason: string;
  queue_id: string;
  created_at: Date;
}

const toSuppression = (r: Row): Suppression => ({ address: r.address, reason: r.reason, queueId: r.queue_id, createdAt: r.created_at });

/** The lookup key of a recipient as given in RCPT or by bounce, or null when it is no plain address. */
export function suppressionKey(raw: string): string | null {
  const addr = parseAddress(raw);
  return addr ? addressKey(addr) : null;
}

export class SuppressionStore {
  constructor(private readonly pool: Pool) {}

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
      `INSERT INTO policy.suppressions (address, domain, reason, queue_id, created_by)
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
       ON CONFLICT (address) DO UPDATE SET reason = EXCLUDED.reason, queue_id = EXCLUDED.queue_id,
         created_by = EXCLUDED.created_by, created_at = now()
       RETURNING (xmax = 0) AS inserted`,
      [rows.map((r) => r.key), rows.map((r) => r.domain), rows.map((r) => r.reason), rows.map((r) => r.queueId), rows.map(() => operator)],
    );
    return res.rows.filter((r) => r.inserted).length;
  }

  async find(key: string): Promise<Suppression | undefined> {
    const res = await this.pool.query<Row>('SELECT address, reason, queue_id, created_at FROM policy.suppressions WHERE address = $1', [key]);
    return res.rows[0] ? toSuppression(res.rows[0]) : undefined;
  }

  /** Keyset pages in address order; the token is the last address of the previous page. */
  async list(domain: string, limit: number, after: string): Promise<{ suppressions: Suppression[]; next: string }> {
    const n = Math.min(Math.max(limit || 100, 1), 1000);
    const res = await this.pool.query<Row>(
      `SELECT address, reason, queue_id, created_at FROM policy.suppressions
        WHERE ($1 = '' OR domain = $1) AND address > $2 ORDER BY address LIMIT $3`,
      [domain, after, n + 1],
    );
    const page = res.rows.slice(0, n);
    return { suppressions: page.map(toSuppression), next: res.rows.length > n ? page.at(-1)!.address : '' };
  }

  async delete(address: string): Promise<boolean> {
    const key = suppressionKey(address);
    if (!key) throw invalid('address', `${JSON.stringify(address)} is not a valid address`);
    const res = await this.pool.query('DELETE FROM policy.suppressions WHERE address = $1', [key]);
    return (res.rowCount ?? 0) > 0;
  }
}

/** Only RCPT of an authenticated submission session is checked (and is therefore not cacheable). */
const applies = (req: CheckRequest, client: Client) => req.stage === CheckStage.CHECK_STAGE_RCPT && client.user !== undefined;

/** The policy hook: an accepted recipient that is listed is refused, naming when and why. */
export function suppressionHook(store: SuppressionStore) {
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
  return Object.assign(hook, { pure: (req: CheckRequest, client: Client) => !applies(req, client) });
}
