// Rate-limit rules (policy.rate_limits), managed through the admin API
// (tern limit ...): the limit of one kind for everyone (match "") or for the
// clients or senders `match` names (a network for the *_per_ip kinds, a user
// for *_per_user, a domain for *_per_sender_domain). For a request the most
// specific rule of its kind applies (an exact user or domain; the longest
// network holding the client address), else the kind's rule for everyone,
// else the TERN_LIMIT_* variable of that kind: the variables are the
// defaults. A limit of 0 means no limit for those it matches. Each pod keeps
// the rules in memory, reloaded with the policy data (the table NOTIFYs
// tern_policy_changed), so a change holds on every pod within moments; the
// counters stay in Postgres (ratelimit.ts), shared by every pod.
import ipaddr from 'ipaddr.js';
import { withTransaction, type Pool } from '@tern/db';
import type { grpc } from '@tern/grpc';
import {
  RateLimitKind,
  type DeleteRateLimitRequest,
  type DeleteRateLimitResponse,
  type ListRateLimitsResponse,
  type PutRateLimitRequest,
  type PutRateLimitResponse,
  type RateLimit,
} from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import { invalid } from './errors';
import { parseIp } from './networks';
import type { Rate, RateLimits } from './ratelimit';
import { domainName } from './validate';

export const KINDS = [
  'connections_per_ip',
  'messages_per_ip',
  'messages_per_user',
  'recipients_per_user',
  'messages_per_sender_domain',
  'recipients_per_sender_domain',
  'auth_failures_per_ip',
] as const;
export type LimitKind = (typeof KINDS)[number];

/** Each kind's field in RateLimits (the TERN_LIMIT_* defaults), its variable, and what `match` names. */
const KIND_INFO: Record<LimitKind, { field: keyof RateLimits; variable: string; subject: 'network' | 'user' | 'domain'; proto: RateLimitKind }> = {
  connections_per_ip: { field: 'connectionsPerIp', variable: 'TERN_LIMIT_CONNECTIONS_PER_IP', subject: 'network', proto: RateLimitKind.RATE_LIMIT_KIND_CONNECTIONS_PER_IP },
  messages_per_ip: { field: 'messagesPerIp', variable: 'TERN_LIMIT_MESSAGES_PER_IP', subject: 'network', proto: RateLimitKind.RATE_LIMIT_KIND_MESSAGES_PER_IP },
  messages_per_user: { field: 'messagesPerUser', variable: 'TERN_LIMIT_MESSAGES_PER_USER', subject: 'user', proto: RateLimitKind.RATE_LIMIT_KIND_MESSAGES_PER_USER },
  recipients_per_user: { field: 'recipientsPerUser', variable: 'TERN_LIMIT_RECIPIENTS_PER_USER', subject: 'user', proto: RateLimitKind.RATE_LIMIT_KIND_RECIPIENTS_PER_USER },
  messages_per_sender_domain: {
    field: 'messagesPerSenderDomain',
    variable: 'TERN_LIMIT_MESSAGES_PER_SENDER_DOMAIN',
    subject: 'domain',
    proto: RateLimitKind.RATE_LIMIT_KIND_MESSAGES_PER_SENDER_DOMAIN,
  },
  recipients_per_sender_domain: {
    field: 'recipientsPerSenderDomain',
    variable: 'TERN_LIMIT_RECIPIENTS_PER_SENDER_DOMAIN',
    subject: 'domain',
    proto: RateLimitKind.RATE_LIMIT_KIND_RECIPIENTS_PER_SENDER_DOMAIN,
  },
  auth_failures_per_ip: { field: 'authFailuresPerIp', variable: 'TERN_LIMIT_AUTH_FAILURES_PER_IP', subject: 'network', proto: RateLimitKind.RATE_LIMIT_KIND_AUTH_FAILURES_PER_IP },
};

const MAX_WINDOW_S = 7 * 86400;

interface Row {
  kind: LimitKind;
  match: string;
  limit_count: number;
  window_seconds: number;
  updated_at: Date;
  updated_by: string;
}

function kindOf(k: RateLimitKind): LimitKind {
  const found = KINDS.find((name) => KIND_INFO[name].proto === k);
  if (!found) throw invalid('limit.kind', `required: one of ${KINDS.join(', ')}`);
  return found;
}

/** A rule's match in its canonical form (the network address of a CIDR, a lower-case user, an A-label domain); "" = everyone. */
export function canonicalMatch(kind: LimitKind, raw: string, field = 'limit.match'): string {
  const v = raw.trim();
  if (!v) return '';
  switch (KIND_INFO[kind].subject) {
    case 'network': {
      try {
        const [addr, bits] = v.includes('/') ? ipaddr.parseCIDR(v) : [ipaddr.parse(v), ipaddr.parse(v).kind() === 'ipv4' ? 32 : 128];
        const net = addr.kind() === 'ipv4' ? ipaddr.IPv4.networkAddressFromCIDR(`${addr.toString()}/${bits}`) : ipaddr.IPv6.networkAddressFromCIDR(`${addr.toString()}/${bits}`);
        return `${net.toString()}/${bits}`;
      } catch {
        throw invalid(field, `${JSON.stringify(raw)} is not an address or CIDR network (${kind} rules name clients by network, e.g. 203.0.113.0/24)`);
      }
    }
    case 'user':
      if (v.length > 320 || /\s/.test(v)) throw invalid(field, `${JSON.stringify(raw)} is not a user name`);
      return v.toLowerCase();
    case 'domain':
      return domainName(field, v);
  }
}

const toProto = (r: Row): RateLimit => ({
  kind: KIND_INFO[r.kind].proto,
  match: r.match,
  limit: r.limit_count,
  windowSeconds: r.window_seconds,
  updatedAt: r.updated_at,
  updatedBy: r.updated_by,
});

interface Compiled {
  all?: Rate | null;
  exact: Map<string, Rate | null>;
  /** Longest prefix first. */
  networks: Array<{ net: ipaddr.IPv4 | ipaddr.IPv6; bits: number; rate: Rate | null }>;
}

/** A rule's rate; null = no limit (limit 0). */
const rateOf = (r: Row): Rate | null => (r.limit_count === 0 ? null : { limit: r.limit_count, windowSec: r.window_seconds });

export class RateLimitRules {
  private compiled = new Map<LimitKind, Compiled>();

  constructor(
    private readonly pool: Pool,
    /** The TERN_LIMIT_* variables: what holds where no rule applies. */
    readonly defaults: RateLimits,
  ) {}

  /** Reads every rule (at start, after a change here, and with every policy data reload). */
  async load(): Promise<void> {
    const rows = (await this.pool.query<Row>('SELECT kind, match, limit_count, window_seconds, updated_at, updated_by FROM policy.rate_limits')).rows;
    const next = new Map<LimitKind, Compiled>();
    for (const r of rows) {
      const c: Compiled = next.get(r.kind) ?? { exact: new Map(), networks: [] };
      next.set(r.kind, c);
      if (r.match === '') c.all = rateOf(r);
      else if (KIND_INFO[r.kind].subject === 'network') {
        const [net, bits] = ipaddr.parseCIDR(r.match);
        c.networks.push({ net, bits, rate: rateOf(r) });
      } else c.exact.set(r.match, rateOf(r));
    }
    for (const c of next.values()) c.networks.sort((a, b) => b.bits - a.bits);
    this.compiled = next;
  }

  /** The rate of `kind` for `subject` (client address, user, sender domain); undefined = no limit. */
  rate(kind: LimitKind, subject: string | undefined): Rate | undefined {
    const c = this.compiled.get(kind);
    const fallback = this.defaults[KIND_INFO[kind].field];
    if (!c) return fallback;
    if (subject !== undefined) {
      if (KIND_INFO[kind].subject === 'network') {
        const ip = parseIp(subject);
        const hit = ip && c.networks.find((n) => n.net.kind() === ip.kind() && ip.match(n.net, n.bits));
        if (hit) return hit.rate ?? undefined;
      } else {
        const hit = c.exact.get(subject.toLowerCase());
        if (hit !== undefined) return hit ?? undefined;
      }
    }
    return c.all === undefined ? fallback : (c.all ?? undefined);
  }

  async list(): Promise<ListRateLimitsResponse> {
    const rows = (
      await this.pool.query<Row>('SELECT kind, match, limit_count, window_seconds, updated_at, updated_by FROM policy.rate_limits ORDER BY kind, match')
    ).rows;
    const defaults: RateLimit[] = [];
    for (const kind of KINDS) {
      const d = this.defaults[KIND_INFO[kind].field];
      if (d) defaults.push({ kind: KIND_INFO[kind].proto, match: '', limit: d.limit, windowSeconds: d.windowSec, updatedAt: undefined, updatedBy: KIND_INFO[kind].variable });
    }
    return { limits: rows.map(toProto), defaults };
  }

  async put(req: PutRateLimitRequest, operator: string): Promise<PutRateLimitResponse> {
    const l = req.limit;
    if (!l) throw invalid('limit', 'required');
    const kind = kindOf(l.kind);
    const match = canonicalMatch(kind, l.match);
    if (!Number.isInteger(l.limit) || l.limit < 0 || l.limit > 2_147_483_647) throw invalid('limit.limit', 'a whole number, 0 for no limit');
    if (!Number.isInteger(l.windowSeconds) || l.windowSeconds < 1 || l.windowSeconds > MAX_WINDOW_S) {
      throw invalid('limit.window_seconds', `between 1 and ${MAX_WINDOW_S} (7 days)`);
    }
    const row = await withTransaction(this.pool, async (c) => {
      const res = await c.query<Row>(
        `INSERT INTO policy.rate_limits (kind, match, limit_count, window_seconds, updated_by) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (kind, match) DO UPDATE SET limit_count = EXCLUDED.limit_count, window_seconds = EXCLUDED.window_seconds,
           updated_by = EXCLUDED.updated_by, updated_at = now()
         RETURNING kind, match, limit_count, window_seconds, updated_at, updated_by`,
        [kind, match, l.limit, l.windowSeconds, operator],
      );
      await c.query("INSERT INTO policy.audit (operator, action, entity, key, detail) VALUES ($1, 'put', 'rate_limit', $2, $3)", [
        operator,
        `${kind}/${match}`,
        JSON.stringify({ limit: l.limit, windowSeconds: l.windowSeconds }),
      ]);
      return res.rows[0]!;
    });
    await this.load();
    return { limit: toProto(row) };
  }

  async delete(req: DeleteRateLimitRequest, operator: string): Promise<DeleteRateLimitResponse> {
    const kind = kindOf(req.kind);
    const match = canonicalMatch(kind, req.match, 'match');
    const deleted = await withTransaction(this.pool, async (c) => {
      const res = await c.query('DELETE FROM policy.rate_limits WHERE kind = $1 AND match = $2', [kind, match]);
      if (res.rowCount) await c.query("INSERT INTO policy.audit (operator, action, entity, key) VALUES ($1, 'delete', 'rate_limit', $2)", [operator, `${kind}/${match}`]);
      return (res.rowCount ?? 0) > 0;
    });
    await this.load();
    return { deleted };
  }
}

/** The PolicyService handlers of the rate-limit rules, over `unary` (service.ts: error mapping). */
export function rateLimitHandlers(
  rules: RateLimitRules,
  unary: <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) => (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void,
  logger: Logger,
) {
  const op = (operator: string) => operator.trim() || 'unknown';
  const log = (action: string, key: string, operator: string, extra: Record<string, unknown> = {}) =>
    logger.info({ event: 'policy_change', entity: 'rate_limit', action, key, operator: op(operator), ...extra }, `rate_limit ${action} ${key}`);
  return {
    listRateLimits: unary('ListRateLimits', () => rules.list()),
    putRateLimit: unary('PutRateLimit', async (req: PutRateLimitRequest) => {
      const res = await rules.put(req, op(req.operator));
      log('put', `${kindOf(res.limit!.kind)}/${res.limit!.match}`, req.operator, { limit: res.limit!.limit, windowSeconds: res.limit!.windowSeconds });
      return res;
    }),
    deleteRateLimit: unary('DeleteRateLimit', async (req: DeleteRateLimitRequest) => {
      const res = await rules.delete(req, op(req.operator));
      if (res.deleted) log('delete', `${kindOf(req.kind)}/${req.match.trim()}`, req.operator);
      return res;
    }),
  };
}
