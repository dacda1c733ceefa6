// The relay recipient list (policy.relay_recipients; Postfix
// relay_recipient_maps): the addresses of relay domains that exist, "user@domain"
// or "@domain" for every address of a domain. A relay domain whose
// recipient_check is `list` accepts at RCPT only what the list holds; the rest
// is refused with 550 5.1.1 in the dialogue instead of being accepted and
// bounced by the next hop (backscatter). The list can be large (imported from
// the mailbox servers behind the relay), so it is not in the in-memory
// snapshot: one primary-key lookup per RCPT to such a domain.
import { withTransaction, type Pool } from '@tern/db';
import type { DeleteRelayRecipientsRequest, ListRelayRecipientsRequest, PutRelayRecipientsRequest, RelayRecipient } from '@tern/proto';
import { invalid, precondition } from './errors';
import { domainName, domainOf, mailboxAddress } from './validate';

/** Entries per Put or Delete call (an import goes in batches of this many). */
export const MAX_BATCH = 10_000;

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
      const why = kinds.has(d)
        ? `${d} is a local domain (its recipients are its mailboxes and aliases)`
        : `${d} is not a relay domain; add it first: tern domain add ${d} --kind relay --recipients list`;
      throw invalid(`addresses[${Math.max(i, 0)}]`, why);
    }
  }
}

/** A domain made local while it still has relay recipients: refused, naming the way out. */
export async function refuseLocalWithRelayRecipients(c: Pick<Pool, 'query'>, domain: string): Promise<void> {
  const res = await c.query<{ n: number }>('SELECT count(*)::int AS n FROM policy.relay_recipients WHERE domain = $1', [domain]);
  const n = res.rows[0]?.n ?? 0;
  if (n > 0) throw precondition(`domain ${domain} still has ${n} relay recipients; remove them first (tern relay-recipient rm --domain ${domain})`);
}
