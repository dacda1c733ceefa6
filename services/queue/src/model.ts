// Shared vocabulary: recipient states as stored (RecipientState numbers),
// destinations, backoff, and the report decision.
import crypto from 'node:crypto';
import { reportOwed as dsnReportOwed } from '@tern/dsn';
import { domainOf } from '@tern/smtp';
import { AttemptOutcome, MessageOrigin, RecipientState, ReportKind, type DsnNotify } from '@tern/proto';

export const S = {
  queued: RecipientState.RECIPIENT_STATE_QUEUED,
  inflight: RecipientState.RECIPIENT_STATE_INFLIGHT,
  deferred: RecipientState.RECIPIENT_STATE_DEFERRED,
  delivered: RecipientState.RECIPIENT_STATE_DELIVERED,
  failed: RecipientState.RECIPIENT_STATE_FAILED,
  held: RecipientState.RECIPIENT_STATE_HELD,
  expired: RecipientState.RECIPIENT_STATE_EXPIRED,
  deleted: RecipientState.RECIPIENT_STATE_DELETED,
  relayed: RecipientState.RECIPIENT_STATE_RELAYED,
} as const;

/** The name of a stored state ("delivered"), for metric labels and logs. */
const STATE_NAMES = new Map<number, string>(Object.entries(S).map(([name, n]) => [n, name]));
export function stateName(state: number): string {
  return STATE_NAMES.get(state) ?? `state_${state}`;
}

/** States that still need work (the message's body must be kept). */
export const PENDING_STATES: readonly number[] = [S.queued, S.inflight, S.deferred, S.held];
export const FINAL_STATES: readonly number[] = [S.delivered, S.failed, S.expired, S.deleted, S.relayed];
export const PENDING_SQL = `(${PENDING_STATES.join(',')})`;

/** The destination of an address: its domain, lowercased (the job subject and the concurrency key). */
export const destinationOf = domainOf;

export interface BackoffSettings {
  minS: number;
  maxS: number;
  jitter: number;
}

/** Delay before attempt number `attempts + 1` after `attempts` failed ones (>= 1): min * 2^(n-1), capped, with jitter. */
export function backoffMs(attempts: number, b: BackoffSettings, random = Math.random): number {
  const base = Math.min(b.maxS, b.minS * 2 ** Math.max(0, attempts - 1));
  const spread = base * b.jitter * (2 * random() - 1);
  return Math.max(1000, Math.round((base + spread) * 1000));
}

/**
 * Whether a recipient is owed a report of `kind` under its NOTIFY (RFC 3461),
 * decided by @tern/dsn (the same rule bounce applies): NEVER: nothing; no
 * NOTIFY: failures only; otherwise only the listed events. The sender rule is
 * applied by messageMayReport.
 */
export function reportOwed(kind: ReportKind, notify: readonly number[]): boolean {
  return dsnReportOwed('-', notify as DsnNotify[], kind);
}

/** No report ever goes to the null sender or about a report. */
export function messageMayReport(sender: string, origin: number): boolean {
  return sender !== '' && origin !== MessageOrigin.MESSAGE_ORIGIN_REPORT;
}

/** Deterministic report event id: the same message, event and recipients give the same id (a replay is deduplicated). */
export function reportEventId(queueId: string, kind: ReportKind, idxs: readonly number[]): string {
  const h = crypto.createHash('sha256').update([...idxs].sort((a, b) => a - b).join(',')).digest('hex').slice(0, 16);
  return `${queueId}.${ReportKind[kind].replace('REPORT_KIND_', '').toLowerCase()}.${h}`;
}

export const REPORT_ACTION: Record<number, string> = {
  [ReportKind.REPORT_KIND_FAILED]: 'failed',
  [ReportKind.REPORT_KIND_DELAYED]: 'delayed',
  [ReportKind.REPORT_KIND_DELIVERED]: 'delivered',
  [ReportKind.REPORT_KIND_RELAYED]: 'relayed',
  [ReportKind.REPORT_KIND_EXPANDED]: 'expanded',
};

/** RFC 3463 status for a reply: its enhanced code, else the class of its basic code. */
export function statusOf(code: number, enhanced: string, fallback: string): string {
  if (/^[245]\.\d{1,3}\.\d{1,3}$/.test(enhanced)) return enhanced;
  if (code >= 200 && code < 600) return `${Math.floor(code / 100)}.0.0`;
  return fallback;
}

export const OUTCOME = AttemptOutcome;
