// `tern limit ...`: rate-limit rules through the admin API (policy keeps
// them; every policy pod applies a change within seconds). Where no rule
// applies, policy's TERN_LIMIT_* variables hold: `ls` shows both.
import type { Command } from '@commander-js/extra-typings';
import { DeleteRateLimitResponse, ListRateLimitsResponse, PutRateLimitResponse, type RateLimit, RateLimitKind } from '@tern/proto';
import type { AdminApi } from './client';
import { CliError, EXIT } from './errors';
import { enumName, json, table } from './format';
import { UsageError } from './requests';

interface LimitCtx {
  api: AdminApi;
  json: boolean;
  out(text: string): void;
}

type Run = <A extends unknown[]>(fn: (ctx: LimitCtx, ...args: A) => Promise<void>) => (...args: A) => Promise<void>;

/** The kinds as typed: messages-per-ip ... */
export const LIMIT_KINDS = Object.keys(RateLimitKind)
  .filter((k) => k.startsWith('RATE_LIMIT_KIND_') && k !== 'RATE_LIMIT_KIND_UNSPECIFIED')
  .map((k) => k.slice('RATE_LIMIT_KIND_'.length).toLowerCase().replace(/_/g, '-'));

export const kindName = (k: RateLimitKind) => enumName(RateLimitKind, 'RATE_LIMIT_KIND_', k).replace(/_/g, '-');

export function parseKind(value: string): RateLimitKind {
  const k = RateLimitKind[`RATE_LIMIT_KIND_${value.trim().toUpperCase().replace(/-/g, '_')}` as keyof typeof RateLimitKind] as RateLimitKind | undefined;
  if (typeof k !== 'number' || k === RateLimitKind.RATE_LIMIT_KIND_UNSPECIFIED) throw new UsageError(`kind: "${value}" is not one of ${LIMIT_KINDS.join(', ')}`);
  return k;
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };
const MAX_LIMIT = 2 ** 32 - 1;

/** "100/1m", "30/10s", "1000/1h", "5000/1d"; "off" or "0" = no limit. */
export function parseRate(value: string): { limit: number; windowSeconds: number } {
  const v = value.trim().toLowerCase();
  if (v === 'off' || v === '0') return { limit: 0, windowSeconds: 60 };
  const m = /^(\d+)\s*\/\s*(\d*)\s*([smhd]?)$/.exec(v);
  const limit = Number(m?.[1]);
  const windowSeconds = Number(m?.[2] || '1') * (UNITS[m?.[3] || 's'] ?? 1);
  if (!m || windowSeconds <= 0 || windowSeconds > 7 * 86400) {
    throw new UsageError(`rate: "${value}" is not N/window (e.g. 100/1m, 30/10s, 1000/1h; window at most 7d), or off`);
  }
  // The API's limit is a uint32: a larger N would fail to serialize, not be refused.
  if (limit < 1 || limit > MAX_LIMIT) throw new UsageError(`rate: N in "${value}" must be from 1 to ${MAX_LIMIT} (off for no limit)`);
  return { limit, windowSeconds };
}

export function formatRate(limit: number, windowSeconds: number): string {
  if (limit === 0) return 'off (no limit)';
  for (const [unit, s] of [['d', 86400], ['h', 3600], ['m', 60]] as const) if (windowSeconds % s === 0) return `${limit}/${windowSeconds / s}${unit}`;
  return `${limit}/${windowSeconds}s`;
}

/** Rules first, then the variables' defaults of the kinds no everyone-rule replaces. */
export function formatLimits(res: ListRateLimitsResponse): string {
  const rows = res.limits.map((l: RateLimit) => [kindName(l.kind), l.match || '(everyone)', formatRate(l.limit, l.windowSeconds), `rule by ${l.updatedBy}`]);
  const replaced = new Set(res.limits.filter((l) => !l.match).map((l) => l.kind));
  for (const d of res.defaults) {
    rows.push([kindName(d.kind), '(everyone)', formatRate(d.limit, d.windowSeconds), replaced.has(d.kind) ? `${d.updatedBy} (replaced by the rule)` : d.updatedBy]);
  }
  if (!rows.length) return 'No rate limits (no rules, no TERN_LIMIT_* defaults).\n';
  return table(['KIND', 'FOR', 'LIMIT', 'FROM'], rows);
}

export function registerLimitCommands(program: Command, run: Run): void {
  const forHelp = 'only these clients or senders: a network (203.0.113.0/24 or one address) for *-per-ip, a user for *-per-user, a domain for *-per-sender-domain; default everyone';
  const limit = program
    .command('limit')
    .description(
      "rate limits: rules over policy's TERN_LIMIT_* defaults, applied by every policy pod within seconds; the most specific rule of a kind wins (a user or domain, the longest network), then the rule for everyone, then the variable",
    );
  limit
    .command('ls')
    .alias('list')
    .description('rules, and the TERN_LIMIT_* defaults where no rule applies')
    .action(
      run(async (ctx) => {
        const res = await ctx.api.listRateLimits({});
        ctx.out(ctx.json ? json(ListRateLimitsResponse.toJSON(res)) : formatLimits(res));
      }),
    );
  limit
    .command('set')
    .description('add or change a rule')
    .argument('<kind>', LIMIT_KINDS.join(', '))
    .argument('<rate>', 'N/window: 100/1m, 30/10s, 1000/1h, 5000/1d; off for no limit (e.g. to exempt a network)')
    .option('--for <value>', forHelp)
    .action(
      run(async (ctx, kind: string, rate: string, o: { for?: string }) => {
        const res = await ctx.api.putRateLimit({ limit: { kind: parseKind(kind), match: o.for ?? '', ...parseRate(rate) } });
        const l = res.limit!;
        ctx.out(ctx.json ? json(PutRateLimitResponse.toJSON(res)) : `Rate limit ${kindName(l.kind)} for ${l.match || 'everyone'}: ${formatRate(l.limit, l.windowSeconds)}.\n`);
      }),
    );
  limit
    .command('rm')
    .alias('remove')
    .description('remove a rule (its clients or senders fall back to a broader rule, else the TERN_LIMIT_* default)')
    .argument('<kind>', LIMIT_KINDS.join(', '))
    .option('--for <value>', forHelp)
    .action(
      run(async (ctx, kind: string, o: { for?: string }) => {
        const res = await ctx.api.deleteRateLimit({ kind: parseKind(kind), match: o.for ?? '' });
        if (ctx.json) ctx.out(json(DeleteRateLimitResponse.toJSON(res)));
        else if (res.deleted) ctx.out(`Removed the ${kind} rule for ${o.for ?? 'everyone'}.\n`);
        if (!res.deleted) throw new CliError(`no ${kind} rule for ${o.for ?? 'everyone'}: nothing removed (tern limit ls lists the rules)`, EXIT.NOT_FOUND);
      }),
    );
}
