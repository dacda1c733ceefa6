// Validation and canonicalisation of operator-given policy data. Each error
// names the field in the request, so the CLI can show what to fix.
import { domainOf } from '@tern/smtp';
import { DomainKind, RecipientCheck, type Alias, type Domain, type Mailbox, type User } from '@tern/proto';
import { normalizeDomain, normalizeMailboxAddress } from './address';
import { invalid } from './errors';

export type Kind = 'local' | 'relay';
/** How RCPT to a relay domain is checked: not at all, against the relay recipient list, or by a callout to the next hop. */
export type RecipientCheckMode = 'none' | 'list' | 'callout';

export interface DomainRow {
  name: string;
  kind: Kind;
  catchAll: string;
  maxMessageSize: number;
  recipientCheck: RecipientCheckMode;
}

export interface MailboxRow {
  address: string;
  domain: string;
  enabled: boolean;
}

export interface AliasRow {
  address: string;
  domain: string;
  targets: string[];
}

export interface UserRow {
  username: string;
  passwordHash: string;
  allowedSenders: string[];
  mayRelay: boolean;
  enabled: boolean;
}

const MAX_TARGETS = 1000;
const MAX_SENDERS = 1000;

export function domainName(field: string, raw: string): string {
  if (!raw) throw invalid(field, 'required');
  const name = normalizeDomain(raw);
  if (!name) throw invalid(field, `${JSON.stringify(raw)} is not a valid domain name`);
  return name;
}

export function mailboxAddress(field: string, raw: string): string {
  if (!raw) throw invalid(field, 'required');
  const address = normalizeMailboxAddress(raw);
  if (!address) throw invalid(field, `${JSON.stringify(raw)} is not a valid mailbox address (local@domain)`);
  return address;
}

/** An alias's address: a mailbox address, or "@domain" for the domain's catch-all alias. */
export function aliasAddress(field: string, raw: string): string {
  if (!raw) throw invalid(field, 'required');
  const s = raw.trim();
  if (s.startsWith('@')) return '@' + domainName(field, s.slice(1));
  const address = normalizeMailboxAddress(s);
  if (!address) throw invalid(field, `${JSON.stringify(raw)} is neither a mailbox address (local@domain) nor an @domain catch-all`);
  return address;
}

export { domainOf };

const CHECK_MODES: Partial<Record<RecipientCheck, RecipientCheckMode>> = {
  [RecipientCheck.RECIPIENT_CHECK_NONE]: 'none',
  [RecipientCheck.RECIPIENT_CHECK_LIST]: 'list',
  [RecipientCheck.RECIPIENT_CHECK_CALLOUT]: 'callout',
};

/**
 * A domain to store. recipientCheck undefined (RECIPIENT_CHECK_UNSPECIFIED)
 * keeps what an existing relay domain has (none for a new one), so that a
 * put changing the size limit does not turn verification off.
 */
export function validateDomain(d: Domain | undefined, globalMaxSize = Infinity): Omit<DomainRow, 'recipientCheck'> & { recipientCheck: RecipientCheckMode | undefined } {
  if (!d) throw invalid('domain', 'required');
  const name = domainName('domain.name', d.name);
  let kind: Kind;
  if (d.kind === DomainKind.DOMAIN_KIND_LOCAL) kind = 'local';
  else if (d.kind === DomainKind.DOMAIN_KIND_RELAY) kind = 'relay';
  else throw invalid('domain.kind', 'must be DOMAIN_KIND_LOCAL or DOMAIN_KIND_RELAY');
  let catchAll = '';
  if (d.catchAll) {
    if (kind !== 'local') throw invalid('domain.catch_all', 'only a local domain can have a catch-all');
    catchAll = mailboxAddress('domain.catch_all', d.catchAll);
  }
  if (!Number.isSafeInteger(d.maxMessageSize) || d.maxMessageSize < 0) throw invalid('domain.max_message_size', 'must be a byte count');
  if (d.maxMessageSize > globalMaxSize) {
    // The global limit refuses first (MAIL SIZE=, and RCPT), so a larger domain limit would never apply.
    const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
    throw invalid(
      'domain.max_message_size',
      `${d.maxMessageSize} bytes (${mib(d.maxMessageSize)}) is above policy's TERN_MAX_MESSAGE_SIZE, ${globalMaxSize} bytes (${mib(globalMaxSize)}), which applies first: give at most that, or raise TERN_MAX_MESSAGE_SIZE (policy and ingress)`,
    );
  }
  let recipientCheck: RecipientCheckMode | undefined;
  if (d.recipientCheck !== RecipientCheck.RECIPIENT_CHECK_UNSPECIFIED) {
    recipientCheck = CHECK_MODES[d.recipientCheck];
    if (!recipientCheck) throw invalid('domain.recipient_check', 'must be RECIPIENT_CHECK_NONE, RECIPIENT_CHECK_LIST or RECIPIENT_CHECK_CALLOUT');
    if (kind !== 'relay' && recipientCheck !== 'none') {
      throw invalid('domain.recipient_check', 'only a relay domain checks its recipients this way (a local domain knows its mailboxes and aliases)');
    }
  }
  return { name, kind, catchAll, maxMessageSize: d.maxMessageSize, recipientCheck };
}

export function validateMailbox(m: Mailbox | undefined): MailboxRow {
  if (!m) throw invalid('mailbox', 'required');
  const address = mailboxAddress('mailbox.address', m.address);
  return { address, domain: domainOf(address), enabled: m.enabled };
}

export function validateAlias(a: Alias | undefined): AliasRow {
  if (!a) throw invalid('alias', 'required');
  const address = aliasAddress('alias.address', a.address);
  if (a.targets.length === 0) throw invalid('alias.targets', 'at least one target is required');
  if (a.targets.length > MAX_TARGETS) throw invalid('alias.targets', `at most ${MAX_TARGETS} targets`);
  // An alias may name itself among its targets: the address then keeps its
  // mail besides the others (Postfix: `a -> a, b` delivers to both).
  const targets = [...new Set(a.targets.map((t, i) => mailboxAddress(`alias.targets[${i}]`, t)))];
  return { address, domain: domainOf(address), targets };
}

export function validateUsername(field: string, raw: string): string {
  if (!raw) throw invalid(field, 'required');
  const name = raw.trim().toLowerCase();
  if (name.length > 255 || !/^[^\s\p{Cc}]+$/u.test(name)) {
    throw invalid(field, `${JSON.stringify(raw)} is not a valid user name (1-255 characters, no spaces or control characters)`);
  }
  return name;
}

/** A MAIL FROM pattern a user may use: an address, or "@domain" for any address in it. */
export function senderPattern(field: string, raw: string): string {
  const s = raw.trim();
  if (s.startsWith('@')) return '@' + domainName(field, s.slice(1));
  const address = normalizeMailboxAddress(s);
  if (!address) throw invalid(field, `${JSON.stringify(raw)} is neither an address nor an @domain pattern`);
  return address;
}

export function validateUser(u: User | undefined): Omit<UserRow, 'passwordHash'> {
  if (!u) throw invalid('user', 'required');
  const username = validateUsername('user.username', u.username);
  if (u.allowedSenders.length > MAX_SENDERS) throw invalid('user.allowed_senders', `at most ${MAX_SENDERS} entries`);
  const allowedSenders = [...new Set(u.allowedSenders.map((s, i) => senderPattern(`user.allowed_senders[${i}]`, s)))];
  return { username, allowedSenders, mayRelay: u.mayRelay, enabled: u.enabled };
}

export function validatePassword(password: string): void {
  if (password.length > 1024) throw invalid('password', 'at most 1024 characters');
  if (/[\0\r\n]/.test(password)) throw invalid('password', 'must not contain NUL, CR or LF');
}

export function toDomain(row: DomainRow): Domain {
  return {
    name: row.name,
    kind: row.kind === 'local' ? DomainKind.DOMAIN_KIND_LOCAL : DomainKind.DOMAIN_KIND_RELAY,
    catchAll: row.catchAll,
    maxMessageSize: row.maxMessageSize,
    recipientCheck:
      row.recipientCheck === 'list' ? RecipientCheck.RECIPIENT_CHECK_LIST : row.recipientCheck === 'callout' ? RecipientCheck.RECIPIENT_CHECK_CALLOUT : RecipientCheck.RECIPIENT_CHECK_NONE,
  };
}

export const toUser = (row: UserRow): User => ({
  username: row.username,
  allowedSenders: row.allowedSenders,
  mayRelay: row.mayRelay,
  enabled: row.enabled,
});
