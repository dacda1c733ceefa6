// The relay recipient list (policy.relay_recipients; Postfix
// relay_recipient_maps): the addresses of relay domains that exist, "user@domain"
// or "@domain" for every address of a domain. A relay domain whose
// recipient_check is `list` accepts at RCPT only what the list holds; the rest
// is refused with 550 5.1.1 in the dialogue instead of being accepted and
// bounced by the next hop (backscatter). The list can be large (imported from
// the mailbox servers behind the relay), so it is not in the in-memory
// snapshot: one primary-key lookup per RCPT to such a domain.
import { withTransaction, type Pool } from '@tern/db';
import type {
  DeleteRelayRecipientsRequest,
  ListRelayRecipientsRequest,
  PutRelayRecipientsRequest,
  RelayRecipient,
  ReplaceRelayRecipientsRequest,
  ReplaceRelayRecipientsResponse,
} from '@tern/proto';
import { invalid, precondition } from './errors';
import { domainName, domainOf, mailboxAddress } from './validate';

/** Entries per Put or Delete call (an import goes in batches of this many). */
export const MAX_BATCH = 10_000;

/**
 * Entries of one Replace (a domain's whole list in one call, so in one
 * transaction): 100000 addresses of 64 bytes fit the 8 MiB gRPC message.
 */
export const MAX_REPLACE = 100_000;

/** An entry as stored: "user@domain" (canonical), or "@domain". */
export function relayRecipientEntry(field: string, raw: string): string {
  const s = raw.trim();
  if (s.startsWith('@')) return '@' + domainName(field, s.slice(1));
  return mailboxAddress(field, s);
}

interface Row {
  address: string;
  created_at: Date;
  created_by: string;
}

const toRecipient = (r: Row): RelayRecipient => ({ address: r.address, createdAt: r.created_at, createdBy: r.created_by });

export class RelayRecipientStore {
  constructor(private readonly pool: Pool) {}

  /** Is `key` (a canonical address) listed, itself or by its domain's "@domain" entry? */
  async listed(key: string): Promise<boolean> {
    const res = await this.pool.query('SELECT 1 FROM policy.relay_recipients WHERE address = ANY($1::text[]) LIMIT 1', [[key, `@${domainOf(key)}`]]);
    return (res.rowCount ?? 0) > 0;
  }

  /** Keyset pages in address order; the token is the last address of the previous page. */
  async list(req: ListRelayRecipientsRequest): Promise<{ recipients: RelayRecipient[]; nextPageToken: string }> {
    const domain = req.domain ? domainName('domain', req.domain) : '';
    const n = Math.min(Math.max(req.limit || 100, 1), 1000);
    const res = await this.pool.query<Row>(
      `SELECT address, created_at, created_by FROM policy.relay_recipients
        WHERE ($1 = '' OR domain = $1) AND address > $2 ORDER BY address LIMIT $3`,
      [domain, req.pageToken, n + 1],
    );
    const page = res.rows.slice(0, n);
    // An empty answer for a domain that has no list at all says why, instead of "no entries".
    if (!page.length && domain && !req.pageToken) {
      const kind = await this.pool.query<{ kind: string }>('SELECT kind FROM policy.domains WHERE name = $1', [domain]);
      if (kind.rows[0]?.kind !== 'relay') throw invalid('domain', notRelayDomain(domain, kind.rows.length > 0));
    }
    return { recipients: page.map(toRecipient), nextPageToken: res.rows.length > n ? page.at(-1)!.address : '' };
  }

  /**
   * Adds entries (already listed ones are left as they are). Every entry's
   * domain must be a relay domain. With dryRun nothing is written: the
   * answer says what would be added. All or nothing: one bad entry refuses
   * the call, naming it (addresses[i]).
   */
  async put(req: PutRelayRecipientsRequest, operator: string): Promise<{ added: number; unchanged: number; dryRun: boolean }> {
    const entries = this.validate(req.addresses);
    return withTransaction(this.pool, async (c) => {
      await this.requireRelayDomains(c, entries, req.addresses);
      const known = await c.query<{ address: string }>('SELECT address FROM policy.relay_recipients WHERE address = ANY($1::text[])', [entries]);
      const added = entries.length - known.rows.length;
      if (!req.dryRun && added > 0) {
        await c.query(
          `INSERT INTO policy.relay_recipients (address, domain, created_by)
           SELECT a, CASE WHEN a LIKE '@%' THEN substr(a, 2) ELSE split_part(a, '@', 2) END, $2 FROM unnest($1::text[]) AS a
           ON CONFLICT (address) DO NOTHING`,
          [entries, operator],
        );
        await c.query('INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, $2, $3, $4, $5)', [
          operator,
          'put',
          'relay_recipient',
          entries.length === 1 ? entries[0] : `${entries.length} entries`,
          JSON.stringify({ added, addresses: entries.slice(0, 100) }),
        ]);
      }
      return { added, unchanged: entries.length - added, dryRun: req.dryRun };
    });
  }

  /** Removes the entries named, or every entry of `domain`; dryRun counts them only. */
  async delete(req: DeleteRelayRecipientsRequest, operator: string): Promise<{ deleted: number; dryRun: boolean }> {
    const domain = req.domain ? domainName('domain', req.domain) : '';
    if (!domain && !req.addresses.length) throw invalid('addresses', 'name the entries to remove, or a domain (every entry of it)');
    if (domain && req.addresses.length) throw invalid('domain', 'give either addresses or a domain, not both');
    const entries = domain ? [] : this.validate(req.addresses);
    return withTransaction(this.pool, async (c) => {
      const where = domain ? 'domain = $1' : 'address = ANY($1::text[])';
      const arg = domain || entries;
      const res = req.dryRun
        ? await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM policy.relay_recipients WHERE ${where}`, [arg])
        : await c.query(`DELETE FROM policy.relay_recipients WHERE ${where}`, [arg]);
      const deleted = req.dryRun ? ((res.rows[0] as { n: number } | undefined)?.n ?? 0) : (res.rowCount ?? 0);
      if (!req.dryRun && deleted > 0) {
        await c.query('INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, $2, $3, $4, $5)', [
          operator,
          'delete',
          'relay_recipient',
          domain ? `@${domain} (all entries)` : entries.length === 1 ? entries[0] : `${entries.length} entries`,
          JSON.stringify({ deleted, addresses: entries.slice(0, 100) }),
        ]);
      }
      return { deleted, dryRun: req.dryRun };
    });
  }

  /**
   * Replaces the list of one relay domain with `addresses` in one
   * transaction (Postfix's postmap of a fresh export): entries not given are
   * removed, new ones added, the rest kept as they are (their created_at
   * and created_by too). With dryRun only the counts. An empty list is
   * refused unless allowEmpty: an export that came out empty would otherwise
   * wipe the list. The domain row is locked FOR UPDATE, so concurrent adds
   * and replaces of the domain wait for this one.
   */
  async replace(req: ReplaceRelayRecipientsRequest, operator: string): Promise<ReplaceRelayRecipientsResponse> {
    const domain = domainName('domain', req.domain);
    if (!req.addresses.length && !req.allowEmpty) {
      throw invalid('addresses', `empty: that would remove every entry of ${domain}; to do so, set allow_empty (tern relay-recipient import --replace --allow-empty) or use tern relay-recipient rm --domain ${domain}`);
    }
    if (req.addresses.length > MAX_REPLACE) throw invalid('addresses', `at most ${MAX_REPLACE} per replace (${req.addresses.length} given)`);
    const given = req.addresses.map((a, i) => relayRecipientEntry(`addresses[${i}]`, a));
    return withTransaction(this.pool, async (c) => {
      const kind = await c.query<{ kind: string }>('SELECT kind FROM policy.domains WHERE name = $1 FOR UPDATE', [domain]);
      if (kind.rows[0]?.kind !== 'relay') {
        throw invalid('domain', notRelayDomain(domain, kind.rows.length > 0));
      }
      given.forEach((e, i) => {
        const d = e.startsWith('@') ? e.slice(1) : domainOf(e);
        if (d !== domain) throw invalid(`addresses[${i}]`, `${e} is not of ${domain} (a replace covers one domain; run one per domain)`);
      });
      const entries = [...new Set(given)];
      // Hash joins both ways: `<> ALL(array)` would compare every row with every entry.
      const counts = await c.query<{ kept: number; removed: number }>(
        `SELECT count(*) FILTER (WHERE n.a IS NOT NULL)::int AS kept, count(*) FILTER (WHERE n.a IS NULL)::int AS removed
           FROM policy.relay_recipients r LEFT JOIN unnest($2::text[]) AS n(a) ON n.a = r.address
          WHERE r.domain = $1`,
        [domain, entries],
      );
      const kept = counts.rows[0]?.kept ?? 0;
      const added = entries.length - kept;
      let removed = counts.rows[0]?.removed ?? 0;
      if (!req.dryRun && (added > 0 || removed > 0)) {
        const gone = await c.query<{ n: number; sample: string[] | null }>(
          `WITH d AS (
             DELETE FROM policy.relay_recipients r WHERE r.domain = $1 AND NOT EXISTS (SELECT 1 FROM unnest($2::text[]) AS n(a) WHERE n.a = r.address)
             RETURNING address)
           SELECT count(*)::int AS n, (array_agg(address ORDER BY address))[1:100] AS sample FROM d`,
          [domain, entries],
        );
        removed = gone.rows[0]?.n ?? 0;
        const ins = await c.query<{ address: string }>(
          `INSERT INTO policy.relay_recipients (address, domain, created_by)
           SELECT a, $2, $3 FROM unnest($1::text[]) AS a
           ON CONFLICT (address) DO NOTHING RETURNING address`,
          [entries, domain, operator],
        );
        await c.query('INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, $2, $3, $4, $5)', [
          operator,
          'replace',
          'relay_recipient',
          `@${domain} (all entries)`,
          JSON.stringify({ added: ins.rowCount ?? 0, removed, kept, addedSample: ins.rows.slice(0, 100).map((r) => r.address), removedSample: gone.rows[0]?.sample ?? [] }),
        ]);
      }
      return { added, removed, kept, dryRun: req.dryRun };
    });
  }

  private validate(addresses: string[]): string[] {
    if (!addresses.length) throw invalid('addresses', 'at least one address ("user@domain" or "@domain") is required');
    if (addresses.length > MAX_BATCH) throw invalid('addresses', `at most ${MAX_BATCH} per call (send more in batches)`);
    return [...new Set(addresses.map((a, i) => relayRecipientEntry(`addresses[${i}]`, a)))];
  }

  /** Every entry's domain is a relay domain (locked FOR SHARE until commit, like a mailbox's local domain). */
  private async requireRelayDomains(c: Pick<Pool, 'query'>, entries: string[], raw: string[]): Promise<void> {
    const domains = [...new Set(entries.map((e) => (e.startsWith('@') ? e.slice(1) : domainOf(e))))];
    const res = await c.query<{ name: string; kind: string }>('SELECT name, kind FROM policy.domains WHERE name = ANY($1::text[]) FOR SHARE', [domains]);
    const kinds = new Map(res.rows.map((r) => [r.name, r.kind]));
    for (const d of domains) {
      if (kinds.get(d) === 'relay') continue;
      const i = raw.findIndex((a) => relayRecipientEntry('addresses', a).endsWith(`@${d}`));
      throw invalid(`addresses[${Math.max(i, 0)}]`, notRelayDomain(d, kinds.has(d)));
    }
  }
}

/** A domain made local while it still has relay recipients: refused, naming the way out. */
export async function refuseLocalWithRelayRecipients(c: Pick<Pool, 'query'>, domain: string): Promise<void> {
  const res = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM policy.relay_recipients WHERE domain = $1', [domain]);
  const n = res.rows[0]?.n ?? 0;
  if (n > 0) throw precondition(`domain ${domain} still has ${n} relay recipients; remove them first (tern relay-recipient rm --domain ${domain})`);
}

/** Why a domain has no relay recipient list: it is local, or not ours at all. */
function notRelayDomain(domain: string, isLocal: boolean): string {
  return isLocal
    ? `${domain} is a local domain (its recipients are its mailboxes and aliases)`
    : `${domain} is not a relay domain; add it first: tern domain add ${domain} --kind relay --recipients list`;
}
