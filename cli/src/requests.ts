// Command-line arguments to admin API requests. Pure functions: every
// mistake is a UsageError naming the option and what it expects.
import {
  type ApplyActionRequest,
  DomainKind,
  type Domain,
  type ListMessagesRequest,
  type MessageFilter,
  QueueAction,
  RecipientCheck,
  RecipientState,
  type Route,
  RouteKind,
  TlsPolicy,
  type User,
} from '@tern/proto';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
const MAX_DURATION_S = 3650 * 86400;

/** "90s", "15m", "2h", "5d", "1w", "1h30m" or plain seconds -> seconds. */
export function parseDuration(value: string, option: string): number {
  const v = value.trim().toLowerCase();
  let total = 0;
  if (/^\d+$/.test(v)) total = Number(v);
  else {
    const re = /(\d+)([smhdw])/gy;
    let consumed = 0;
    for (let m = re.exec(v); m; m = re.exec(v)) {
      total += Number(m[1]) * UNITS[m[2]!]!;
      consumed = re.lastIndex;
    }
    if (consumed === 0 || consumed !== v.length) {
      throw new UsageError(`${option}: "${value}" is not a duration (e.g. 90s, 15m, 2h, 5d, 1h30m)`);
    }
  }
  // Beyond any age or wait the platform has, and beyond what the API's integers carry.
  if (total > MAX_DURATION_S) throw new UsageError(`${option}: "${value}" is more than 3650d`);
  return total;
}

/** Names operators type for recipient states: queued, deferred, held ... */
export const STATE_NAMES = Object.keys(RecipientState)
  .filter((k) => k.startsWith('RECIPIENT_STATE_') && k !== 'RECIPIENT_STATE_UNSPECIFIED')
  .map((k) => k.slice('RECIPIENT_STATE_'.length).toLowerCase());

const S = RecipientState;
/** Names for several states at once: what is still to do, what is done, everything. */
export const STATE_GROUPS: Record<string, RecipientState[]> = {
  pending: [S.RECIPIENT_STATE_QUEUED, S.RECIPIENT_STATE_INFLIGHT, S.RECIPIENT_STATE_DEFERRED, S.RECIPIENT_STATE_HELD],
  final: [S.RECIPIENT_STATE_DELIVERED, S.RECIPIENT_STATE_RELAYED, S.RECIPIENT_STATE_FAILED, S.RECIPIENT_STATE_EXPIRED, S.RECIPIENT_STATE_DELETED],
};
STATE_GROUPS.all = [...STATE_GROUPS.pending!, ...STATE_GROUPS.final!];

export function parseStates(values: string[]): RecipientState[] {
  const out: RecipientState[] = [];
  for (const name of values.flatMap((v) => v.split(',')).map((s) => s.trim().toLowerCase()).filter(Boolean)) {
    const group = STATE_GROUPS[name];
    const state = RecipientState[`RECIPIENT_STATE_${name.toUpperCase()}` as keyof typeof RecipientState] as RecipientState | undefined;
    if (!group && (state === undefined || typeof state !== 'number' || state === RecipientState.RECIPIENT_STATE_UNSPECIFIED)) {
      throw new UsageError(`--state: "${name}" is not a state (one of ${STATE_NAMES.join(', ')}, or ${Object.keys(STATE_GROUPS).join(', ')})`);
    }
    for (const s of group ?? [state!]) if (!out.includes(s)) out.push(s);
  }
  return out;
}

export interface FilterOptions {
  sender?: string;
  recipient?: string;
  domain?: string;
  state?: string[];
  olderThan?: string;
  newerThan?: string;
}

/** The filter options given, or undefined when none was. */
export function buildFilter(o: FilterOptions): MessageFilter | undefined {
  const filter: MessageFilter = {
    sender: o.sender?.trim() ?? '',
    recipient: o.recipient?.trim() ?? '',
    domain: o.domain?.trim().toLowerCase() ?? '',
    states: parseStates(o.state ?? []),
    minAgeSeconds: o.olderThan !== undefined ? parseDuration(o.olderThan, '--older-than') : 0,
    maxAgeSeconds: o.newerThan !== undefined ? parseDuration(o.newerThan, '--newer-than') : 0,
  };
  if (filter.minAgeSeconds && filter.maxAgeSeconds && filter.minAgeSeconds >= filter.maxAgeSeconds) {
    throw new UsageError('--older-than must be shorter than --newer-than, or nothing can match');
  }
  const given =
    filter.sender !== '' || filter.recipient !== '' || filter.domain !== '' || filter.states.length > 0 || filter.minAgeSeconds > 0 || filter.maxAgeSeconds > 0;
  return given ? filter : undefined;
}

export interface ListOptions extends FilterOptions {
  limit?: string;
  pageToken?: string;
}

/**
 * `queue ls`: without --state, the messages with recipients still to do
 * (pending), as mailq shows; delivered history (kept for days) only when asked.
 */
export function listRequest(o: ListOptions): ListMessagesRequest {
  const limit = o.limit === undefined ? 50 : Number(o.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new UsageError(`--limit: expected a whole number from 1 to 1000 (got "${o.limit}")`);
  const filter = buildFilter({ ...o, state: o.state?.length ? o.state : ['pending'] });
  return { filter, pageSize: limit, pageToken: o.pageToken ?? '' };
}

export const ACTIONS = ['hold', 'release', 'retry', 'delete', 'bounce'] as const;
export type ActionName = (typeof ACTIONS)[number];

const ACTION_CODES: Record<ActionName, QueueAction> = {
  hold: QueueAction.QUEUE_ACTION_HOLD,
  release: QueueAction.QUEUE_ACTION_RELEASE,
  retry: QueueAction.QUEUE_ACTION_RETRY,
  delete: QueueAction.QUEUE_ACTION_DELETE,
  bounce: QueueAction.QUEUE_ACTION_BOUNCE,
};

export interface ActionOptions extends FilterOptions {
  all?: boolean;
  dryRun?: boolean;
  reason?: string;
}

/** One message by ID, or every message the filter (or --all) selects. */
export function actionRequest(action: ActionName, id: string | undefined, o: ActionOptions): ApplyActionRequest {
  const filter = buildFilter(o);
  if (id !== undefined && o.all) throw new UsageError('give either a queue ID or --all, not both');
  if (id !== undefined && filter) throw new UsageError('give either a queue ID or filter options (--sender, --recipient, --domain, --state, --older-than, --newer-than), not both');
  if (id === undefined && !filter && !o.all) {
    throw new UsageError(`which messages? give a queue ID, filter options (--sender, --recipient, --domain, --state, --older-than, --newer-than), or --all`);
  }
  if (o.all && filter) throw new UsageError('--all selects every message; drop it to use the filter options');
  return {
    action: ACTION_CODES[action],
    queueId: id ?? '',
    filter,
    all: Boolean(o.all),
    dryRun: Boolean(o.dryRun),
    operator: '',
    reason: o.reason ?? '',
  };
}

function enumValue<E extends Record<string, string | number>>(e: E, prefix: string, value: string, option: string): E[keyof E] {
  const key = `${prefix}${value.trim().toUpperCase()}`;
  const v = e[key as keyof E];
  const names = Object.keys(e)
    .filter((k) => k.startsWith(prefix) && !k.endsWith('_UNSPECIFIED'))
    .map((k) => k.slice(prefix.length).toLowerCase());
  if (typeof v !== 'number' || key.endsWith('_UNSPECIFIED')) throw new UsageError(`${option}: "${value}" is not one of ${names.join(', ')}`);
  return v;
}

export interface RouteOptions {
  kind: string;
  target?: string;
  tlsPolicy?: string;
  authUser?: string;
  authSecret?: string;
}

export function routeFromArgs(domain: string, o: RouteOptions): Route {
  const kind = enumValue(RouteKind, 'ROUTE_KIND_', o.kind, '--kind') as RouteKind;
  if (kind !== RouteKind.ROUTE_KIND_MX && !o.target) throw new UsageError(`--target is required for --kind ${o.kind.toLowerCase()} (host:port${kind === RouteKind.ROUTE_KIND_LMTP ? ' or unix:/path' : ''})`);
  if (kind === RouteKind.ROUTE_KIND_MX && o.target) throw new UsageError('--kind mx resolves the next hop by MX; drop --target or use --kind smarthost');
  if (o.authUser && !o.authSecret) throw new UsageError('--auth-user needs --auth-secret (the name of the secret holding the password)');
  return {
    domain: domain.trim().toLowerCase(),
    kind,
    target: o.target ?? '',
    tls: o.tlsPolicy ? (enumValue(TlsPolicy, 'TLS_POLICY_', o.tlsPolicy, '--tls-policy') as TlsPolicy) : TlsPolicy.TLS_POLICY_UNSPECIFIED,
    authUser: o.authUser ?? '',
    authSecret: o.authSecret ?? '',
  };
}

export interface DomainOptions {
  kind?: string;
  catchAll?: string;
  maxSize?: string;
  /** Relay domains: none, list or callout; unset keeps what the domain has. */
  recipients?: string;
}

export function domainFromArgs(name: string, o: DomainOptions): Domain {
  const kind = enumValue(DomainKind, 'DOMAIN_KIND_', o.kind ?? 'local', '--kind') as DomainKind;
  if (o.catchAll && kind !== DomainKind.DOMAIN_KIND_LOCAL) throw new UsageError('--catch-all applies to local domains only');
  let maxMessageSize = 0;
  if (o.maxSize !== undefined) maxMessageSize = parseSize(o.maxSize, '--max-size');
  let recipientCheck = RecipientCheck.RECIPIENT_CHECK_UNSPECIFIED;
  if (o.recipients !== undefined) {
    recipientCheck = enumValue(RecipientCheck, 'RECIPIENT_CHECK_', o.recipients, '--recipients') as RecipientCheck;
    if (kind !== DomainKind.DOMAIN_KIND_RELAY && recipientCheck !== RecipientCheck.RECIPIENT_CHECK_NONE) {
      throw new UsageError('--recipients applies to relay domains only (add --kind relay); a local domain knows its mailboxes and aliases');
    }
  }
  return { name, kind, catchAll: o.catchAll ?? '', maxMessageSize, recipientCheck };
}

const MAX_SIZE = 1024 ** 4;

/** "10M", "512k", "1G" or bytes. */
export function parseSize(value: string, option: string): number {
  const m = /^(\d+)\s*([kmg]?)b?$/i.exec(value.trim());
  if (!m) throw new UsageError(`${option}: "${value}" is not a size (e.g. 25M, 512k, 1048576)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  const bytes = Number(m[1]) * mult;
  if (bytes > MAX_SIZE) throw new UsageError(`${option}: "${value}" is more than 1024G`);
  return bytes;
}

export interface UserOptions {
  allowedSender?: string[];
  mayRelay?: boolean;
  disabled?: boolean;
}

export function userFromArgs(username: string, o: UserOptions): User {
  return {
    username,
    allowedSenders: (o.allowedSender ?? []).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean),
    mayRelay: Boolean(o.mayRelay),
    enabled: !o.disabled,
  };
}

/** Commander collector for repeatable options. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];
