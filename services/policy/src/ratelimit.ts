// Rate limits that hold across every policy pod (and so across every ingress
// pod): counters in Postgres, one row per key and fixed window, read as a
// sliding window (the previous window weighted by how much of it still
// overlaps). Answered with 4.7.x so well-behaved clients come back later.
import type { Pool } from '@tern/db';
import { CheckStage, PolicyAction, type CheckRequest } from '@tern/proto';
import { parseAddress } from './address';
import type { Client } from './engine';
import type { LimitKind } from './limits';
import { refuse, type Decision } from './replies';

export interface Rate {
  limit: number;
  windowSec: number;
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** Parses "100/1m", "30/10s", "1000/1h", "5000/1d", "60/60" (seconds). Throws on garbage. */
export function parseRate(value: string): Rate | undefined {
  const v = value.trim();
  if (v === '' || v === '0' || v === 'off') return undefined;
  const m = /^(\d+)\s*\/\s*(\d*)\s*([smhd]?)$/i.exec(v);
  if (!m) throw new Error('expected N/window, e.g. 100/1m, 30/10s or 1000/1h (or "off")');
  const limit = Number(m[1]);
  const windowSec = Number(m[2] || '1') * (UNITS[(m[3] || 's').toLowerCase()] ?? 1);
  if (limit <= 0 || windowSec <= 0 || windowSec > 7 * 86400) throw new Error('limit and window must be positive, window at most 7d');
  return { limit, windowSec };
}

export interface RateLimits {
  connectionsPerIp?: Rate;
  messagesPerIp?: Rate;
  messagesPerUser?: Rate;
  recipientsPerUser?: Rate;
  messagesPerSenderDomain?: Rate;
  recipientsPerSenderDomain?: Rate;
  /** Failed AUTH attempts per client IP; beyond it logins are refused unverified. */
  authFailuresPerIp?: Rate;
}

/** Where a limit comes from: the admin API's rules over the TERN_LIMIT_* defaults (limits.ts). */
export interface LimitSource {
  rate(kind: LimitKind, subject: string | undefined): Rate | undefined;
}

const FIELDS: Record<LimitKind, keyof RateLimits> = {
  connections_per_ip: 'connectionsPerIp',
  messages_per_ip: 'messagesPerIp',
  messages_per_user: 'messagesPerUser',
  recipients_per_user: 'recipientsPerUser',
  messages_per_sender_domain: 'messagesPerSenderDomain',
  recipients_per_sender_domain: 'recipientsPerSenderDomain',
  auth_failures_per_ip: 'authFailuresPerIp',
};

export class RateLimiter {
  private cleanupTimer: NodeJS.Timeout | undefined;
  private readonly source: LimitSource;

  /** `limits` alone: fixed limits (the variables); with `source`, its answer (rules, then those defaults). */
  constructor(
    private readonly pool: Pool,
    limits: RateLimits | LimitSource,
    private readonly now: () => number = Date.now,
  ) {
    this.source = 'rate' in limits && typeof limits.rate === 'function' ? (limits as LimitSource) : { rate: (kind) => (limits as RateLimits)[FIELDS[kind]] };
  }

  /** Counts `n` events for `key`; true when the sliding-window estimate exceeds the limit. */
  async hit(key: string, rate: Rate, n = 1): Promise<{ exceeded: boolean; estimate: number }> {
    const nowSec = this.now() / 1000;
    const start = Math.floor(nowSec / rate.windowSec) * rate.windowSec;
    const res = await this.pool.query<{ cur: number; prev: number }>(
      `WITH up AS (
         INSERT INTO policy.rate_counters (key, window_start, count, expires_at)
         VALUES ($1, $2::bigint, $3::int, to_timestamp($2::bigint + 2 * $4::int))
         ON CONFLICT (key, window_start) DO UPDATE SET count = policy.rate_counters.count + EXCLUDED.count
         RETURNING count)
       SELECT (SELECT count FROM up) AS cur,
              COALESCE((SELECT count FROM policy.rate_counters WHERE key = $1 AND window_start = $2::bigint - $4::int), 0) AS prev`,
      [`${key}/${rate.windowSec}`, start, n, rate.windowSec],
    );
    const row = res.rows[0] ?? { cur: n, prev: 0 };
    const overlap = 1 - (nowSec - start) / rate.windowSec;
    const estimate = row.cur + row.prev * overlap;
    return { exceeded: estimate > rate.limit, estimate };
  }

  /** The sliding-window estimate for `key` without counting anything. */
  async peek(key: string, rate: Rate): Promise<number> {
    const nowSec = this.now() / 1000;
    const start = Math.floor(nowSec / rate.windowSec) * rate.windowSec;
    const res = await this.pool.query<{ cur: number; prev: number }>(
      `SELECT COALESCE(sum(count) FILTER (WHERE window_start = $2::bigint), 0)::int AS cur,
              COALESCE(sum(count) FILTER (WHERE window_start = $2::bigint - $3::int), 0)::int AS prev
         FROM policy.rate_counters WHERE key = $1 AND window_start IN ($2::bigint, $2::bigint - $3::int)`,
      [`${key}/${rate.windowSec}`, start, rate.windowSec],
    );
    const row = res.rows[0] ?? { cur: 0, prev: 0 };
    return row.cur + row.prev * (1 - (nowSec - start) / rate.windowSec);
  }

  /** AUTH brute-force guard: true when the client already failed too often. */
  async authBlocked(ip: string): Promise<boolean> {
    const rate = this.source.rate('auth_failures_per_ip', ip);
    return rate ? (await this.peek(`authfail:ip:${ip}`, rate)) >= rate.limit : false;
  }

  async authFailed(ip: string): Promise<void> {
    const rate = this.source.rate('auth_failures_per_ip', ip);
    if (rate) await this.hit(`authfail:ip:${ip}`, rate);
  }

  startCleanup(intervalMs = 60_000): void {
    this.cleanupTimer = setInterval(() => {
      this.pool.query('DELETE FROM policy.rate_counters WHERE expires_at < now()').catch(() => undefined);
    }, intervalMs);
    this.cleanupTimer.unref();
  }

  stop(): void {
    clearInterval(this.cleanupTimer);
  }

  /** The Check hook: counts connections at CONNECT, messages at MAIL and recipients at RCPT. */
  hook = async (req: CheckRequest, client: Client, decision: Decision): Promise<Decision | undefined> => {
    if (decision.action !== PolicyAction.POLICY_ACTION_ACCEPT) return undefined;
    for (const [key, rate, refusal] of this.checks(req, client)) {
      if (!rate) continue;
      const { exceeded } = await this.hit(key, rate);
      if (exceeded) return refusal();
    }
    return undefined;
  };

  /** True when no configured limit applies to this request: the hook neither counts nor refuses. */
  pure = (req: CheckRequest, client: Client): boolean => this.checks(req, client).every(([, rate]) => !rate);

  private checks(req: CheckRequest, client: Client): Array<[string, Rate | undefined, () => Decision]> {
    const L = (kind: LimitKind, subject: string | undefined) => this.source.rate(kind, subject);
    const ip = client.address;
    const user = client.user?.username;
    const senderDomain = req.sender ? parseAddress(req.sender)?.domain : undefined;
    const checks: Array<[string, Rate | undefined, () => Decision]> = [];
    if (req.stage === CheckStage.CHECK_STAGE_CONNECT && !client.trusted) {
      checks.push([`conn:ip:${ip}`, L('connections_per_ip', ip), () => refuse('rate_limit_connections_ip', 421, '4.7.0', `Error: too many connections from ${ip}`)]);
    }
    if (req.stage === CheckStage.CHECK_STAGE_MAIL) {
      if (!client.trusted && !user) {
        checks.push([`msg:ip:${ip}`, L('messages_per_ip', ip), () => refuse('rate_limit_messages_ip', 450, '4.7.1', `Error: too much mail from ${ip}`)]);
      }
      if (user) {
        checks.push([`msg:user:${user}`, L('messages_per_user', user), () => refuse('rate_limit_messages_user', 450, '4.7.1', `Error: too much mail from user ${user}`)]);
      }
      if (senderDomain) {
        checks.push([
          `msg:dom:${senderDomain}`,
          L('messages_per_sender_domain', senderDomain),
          () => refuse('rate_limit_messages_sender_domain', 450, '4.7.1', `Error: too much mail from sender domain ${senderDomain}`),
        ]);
      }
    }
    if (req.stage === CheckStage.CHECK_STAGE_RCPT) {
      const to = req.recipient.trim();
      if (user) {
        checks.push([
          `rcpt:user:${user}`,
          L('recipients_per_user', user),
          () => refuse('rate_limit_recipients_user', 450, '4.7.1', `<${to}>: Recipient address rejected: too many recipients from user ${user}`),
        ]);
      }
      if (senderDomain) {
        checks.push([
          `rcpt:dom:${senderDomain}`,
          L('recipients_per_sender_domain', senderDomain),
          () => refuse('rate_limit_recipients_sender_domain', 450, '4.7.1', `<${to}>: Recipient address rejected: too many recipients from sender domain ${senderDomain}`),
        ]);
      }
    }
    return checks;
  }
}
