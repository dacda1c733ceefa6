// Postgres access to the policy data (schema `policy`). Every change runs in
// one transaction with its audit row; the table triggers NOTIFY the change to
// every policy pod (see migrations/001_policy_data.sql).
import { withTransaction, type Pool, type PoolClient } from '@tern/db';
import { invalid, precondition } from './errors';
import { refuseLocalWithRelayRecipients } from './relay-recipients';
import type { AliasRow, DomainRow, MailboxRow, UserRow } from './validate';

export const NOTIFY_CHANNEL = 'tern_policy_changed';

export interface PolicyData {
  domains: DomainRow[];
  mailboxes: MailboxRow[];
  aliases: AliasRow[];
  users: UserRow[];
}

type Queryable = Pick<PoolClient, 'query'>;

const DOMAIN_COLS = 'name, kind, catch_all AS "catchAll", max_message_size AS "maxMessageSize", recipient_check AS "recipientCheck"';
const USER_COLS =
  'username, password_hash AS "passwordHash", allowed_senders AS "allowedSenders", may_relay AS "mayRelay", enabled';

async function audit(c: Queryable, operator: string, action: string, entity: string, key: string, detail: object): Promise<void> {
  await c.query('INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, $2, $3, $4, $5)', [
    operator,
    action,
    entity,
    key,
    JSON.stringify(detail),
  ]);
}

export class PolicyStore {
  constructor(private readonly pool: Pool) {}

  /** Everything, read in one consistent snapshot. */
  async loadAll(): Promise<PolicyData> {
    return withTransaction(this.pool, async (c) => {
      await c.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const domains = (await c.query<DomainRow>(`SELECT ${DOMAIN_COLS} FROM policy.domains`)).rows;
      const mailboxes = (await c.query<MailboxRow>('SELECT address, domain, enabled FROM policy.mailboxes')).rows;
      const aliases = (await c.query<AliasRow>('SELECT address, domain, targets FROM policy.aliases')).rows;
      const users = (await c.query<UserRow>(`SELECT ${USER_COLS} FROM policy.users`)).rows;
      return { domains, mailboxes, aliases, users };
    });
  }

  async listDomains(): Promise<DomainRow[]> {
    return (await this.pool.query<DomainRow>(`SELECT ${DOMAIN_COLS} FROM policy.domains ORDER BY name`)).rows;
  }

  /** recipientCheck undefined: an existing relay domain keeps its mode; a local domain has none. */
  async putDomain(d: Omit<DomainRow, 'recipientCheck'> & { recipientCheck: DomainRow['recipientCheck'] | undefined }, operator: string): Promise<DomainRow> {
    return withTransaction(this.pool, async (c) => {
      const row = await c.query<DomainRow>(
        `INSERT INTO policy.domains (name, kind, catch_all, max_message_size, recipient_check) VALUES ($1, $2, $3, $4, COALESCE($5, 'none'))
         ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, catch_all = EXCLUDED.catch_all,
           max_message_size = EXCLUDED.max_message_size,
           recipient_check = CASE WHEN EXCLUDED.kind = 'local' THEN 'none' ELSE COALESCE($5, policy.domains.recipient_check) END,
           updated_at = now()
         RETURNING ${DOMAIN_COLS}`,
        [d.name, d.kind, d.catchAll, d.maxMessageSize, d.recipientCheck ?? null],
      );
      // After the row lock: a concurrent PutMailbox (or PutRelayRecipients) holding FOR SHARE has committed by now.
      if (d.kind === 'local') await refuseLocalWithRelayRecipients(c, d.name);
      if (d.kind !== 'local') {
        const used = await c.query<{ n: number }>(
          'SELECT (SELECT count(*) FROM policy.mailboxes WHERE domain = $1) + (SELECT count(*) FROM policy.aliases WHERE domain = $1) AS n',
          [d.name],
        );
        if ((used.rows[0]?.n ?? 0) > 0) {
          throw precondition(`domain ${d.name} still has ${used.rows[0]?.n} mailboxes and aliases; delete them before making it a relay domain`);
        }
      }
      await audit(c, operator, 'put', 'domain', d.name, d);
      return row.rows[0] as DomainRow;
    });
  }

  async deleteDomain(name: string, operator: string): Promise<boolean> {
    return withTransaction(this.pool, async (c) => {
      const used = await c.query<{ m: number; a: number }>(
        'SELECT (SELECT count(*) FROM policy.mailboxes WHERE domain = $1) AS m, (SELECT count(*) FROM policy.aliases WHERE domain = $1) AS a',
        [name],
      );
      const { m = 0, a = 0 } = used.rows[0] ?? {};
      if (m + a > 0) throw precondition(`domain ${name} still has ${m} mailboxes and ${a} aliases; delete them first (tern mailbox ls --domain ${name}, tern alias ls --domain ${name})`);
      const res = await c.query('DELETE FROM policy.domains WHERE name = $1', [name]);
      if (res.rowCount) await audit(c, operator, 'delete', 'domain', name, {});
      return (res.rowCount ?? 0) > 0;
    });
  }

  private async requireLocalDomain(c: Queryable, field: string, domain: string): Promise<void> {
    const res = await c.query<{ kind: string }>('SELECT kind FROM policy.domains WHERE name = $1 FOR SHARE', [domain]);
    const kind = res.rows[0]?.kind;
    if (kind === undefined) throw invalid(field, `domain "${domain}" is not one of ours: add it first (tern domain add ${domain})`);
    if (kind !== 'local') throw invalid(field, `domain "${domain}" is a ${kind} domain: mailboxes and aliases belong to local domains (tern domain ls)`);
  }

  async listMailboxes(domain: string): Promise<MailboxRow[]> {
    const res = domain
      ? await this.pool.query<MailboxRow>('SELECT address, domain, enabled FROM policy.mailboxes WHERE domain = $1 ORDER BY address', [domain])
      : await this.pool.query<MailboxRow>('SELECT address, domain, enabled FROM policy.mailboxes ORDER BY address');
    return res.rows;
  }

  async putMailbox(m: MailboxRow, operator: string): Promise<MailboxRow> {
    return withTransaction(this.pool, async (c) => {
      await this.requireLocalDomain(c, 'mailbox.address', m.domain);
      const row = await c.query<MailboxRow>(
        `INSERT INTO policy.mailboxes (address, domain, enabled) VALUES ($1, $2, $3)
         ON CONFLICT (address) DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now()
         RETURNING address, domain, enabled`,
        [m.address, m.domain, m.enabled],
      );
      await audit(c, operator, 'put', 'mailbox', m.address, { enabled: m.enabled });
      return row.rows[0] as MailboxRow;
    });
  }

  async deleteMailbox(address: string, operator: string): Promise<boolean> {
    return this.deleteOne('mailboxes', 'mailbox', 'address', address, operator);
  }

  async listAliases(domain: string): Promise<AliasRow[]> {
    const res = domain
      ? await this.pool.query<AliasRow>('SELECT address, domain, targets FROM policy.aliases WHERE domain = $1 ORDER BY address', [domain])
      : await this.pool.query<AliasRow>('SELECT address, domain, targets FROM policy.aliases ORDER BY address');
    return res.rows;
  }

  async putAlias(a: AliasRow, operator: string): Promise<AliasRow> {
    return withTransaction(this.pool, async (c) => {
      await this.requireLocalDomain(c, 'alias.address', a.domain);
      const row = await c.query<AliasRow>(
        `INSERT INTO policy.aliases (address, domain, targets) VALUES ($1, $2, $3)
         ON CONFLICT (address) DO UPDATE SET targets = EXCLUDED.targets, updated_at = now()
         RETURNING address, domain, targets`,
        [a.address, a.domain, a.targets],
      );
      await audit(c, operator, 'put', 'alias', a.address, { targets: a.targets });
      return row.rows[0] as AliasRow;
    });
  }

  async deleteAlias(address: string, operator: string): Promise<boolean> {
    return this.deleteOne('aliases', 'alias', 'address', address, operator);
  }

  async listUsers(): Promise<UserRow[]> {
    return (await this.pool.query<UserRow>(`SELECT ${USER_COLS} FROM policy.users ORDER BY username`)).rows;
  }

  /** Upserts a user; `passwordHash` undefined keeps the stored one. */
  async putUser(u: Omit<UserRow, 'passwordHash'>, passwordHash: string | undefined, operator: string): Promise<UserRow> {
    return withTransaction(this.pool, async (c) => {
      // No password keeps the stored one; a new user has none to keep, and could never log in.
      if (passwordHash === undefined && !(await c.query('SELECT 1 FROM policy.users WHERE username = $1 FOR UPDATE', [u.username])).rowCount) {
        throw invalid('password', `required for a new user ("${u.username}" does not exist yet): give one (tern user add ${u.username} --password-stdin, or at the prompt); keeping the password applies to an existing user`);
      }
      const row = await c.query<UserRow>(
        `INSERT INTO policy.users (username, password_hash, allowed_senders, may_relay, enabled) VALUES ($1, COALESCE($2, ''), $3, $4, $5)
         ON CONFLICT (username) DO UPDATE SET password_hash = COALESCE($2, policy.users.password_hash),
           allowed_senders = EXCLUDED.allowed_senders, may_relay = EXCLUDED.may_relay, enabled = EXCLUDED.enabled, updated_at = now()
         RETURNING ${USER_COLS}`,
        [u.username, passwordHash ?? null, u.allowedSenders, u.mayRelay, u.enabled],
      );
      await audit(c, operator, 'put', 'user', u.username, { ...u, passwordChanged: passwordHash !== undefined });
      return row.rows[0] as UserRow;
    });
  }

  async deleteUser(username: string, operator: string): Promise<boolean> {
    return this.deleteOne('users', 'user', 'username', username, operator);
  }

  private async deleteOne(table: string, entity: string, keyCol: string, key: string, operator: string): Promise<boolean> {
    return withTransaction(this.pool, async (c) => {
      const res = await c.query(`DELETE FROM policy.${table} WHERE ${keyCol} = $1`, [key]);
      if (res.rowCount) await audit(c, operator, 'delete', entity, key, {});
      return (res.rowCount ?? 0) > 0;
    });
  }
}
