// Inspection of one message: envelope, size, origin, recipients with every
// attempt, operator events, and (when asked) the stored header section.
import type { Pool } from '@tern/db';
import { Envelope, MessageDetail, RecipientStatus, type Attempt, type OperatorEvent } from '@tern/proto';
import { readHeaders } from './body';

interface MsgRow {
  id: string;
  envelope: Buffer;
  size: number;
  origin: number;
  created_at: Date;
  body_removed: boolean;
}

interface RcptRow {
  idx: number;
  address: string;
  domain: string;
  orcpt: string;
  notify: number[];
  state: number;
  next_attempt_at: Date | null;
  attempt_count: number;
  last_code: number | null;
  last_enhanced: string | null;
  last_text: string | null;
}

interface AttemptRow {
  idx: number;
  started_at: Date;
  duration_ms: number;
  remote_host: string;
  remote_ip: string;
  code: number;
  enhanced: string;
  text: string;
  outcome: number;
  tls_used: boolean;
  tls_version: string;
  tls_cipher: string;
  tls_verified: boolean;
  worker: string;
  bounce_class: string;
}

export function toRecipientStatus(r: RcptRow, attempts: Attempt[] = []): RecipientStatus {
  return RecipientStatus.fromPartial({
    address: r.address,
    orcpt: r.orcpt,
    notify: r.notify,
    state: r.state,
    destination: r.domain,
    nextAttemptAt: r.next_attempt_at ?? undefined,
    attemptCount: r.attempt_count,
    lastReply: r.last_code ? { code: r.last_code, enhanced: r.last_enhanced ?? '', text: r.last_text ?? '' } : undefined,
    attempts,
  });
}

export const RCPT_COLS = 'idx, address, domain, orcpt, notify, state, next_attempt_at, attempt_count, last_code, last_enhanced, last_text';

export async function getMessage(pool: Pool, queueId: string, includeHeaders: boolean): Promise<MessageDetail | undefined> {
  const { rows } = await pool.query<MsgRow>('SELECT id, envelope, size, origin, created_at, body_removed FROM messages WHERE id = $1', [queueId]);
  const m = rows[0];
  if (!m) return undefined;
  const [rcpts, attempts, events, headers] = await Promise.all([
    pool.query<RcptRow>(`SELECT ${RCPT_COLS} FROM recipients WHERE message_id = $1 ORDER BY idx`, [queueId]),
    pool.query<AttemptRow>('SELECT * FROM attempts WHERE message_id = $1 ORDER BY started_at, id', [queueId]),
    pool.query<{ at: Date; operator: string; action: string; reason: string }>(
      'SELECT at, operator, action, reason FROM operator_events WHERE message_id = $1 ORDER BY at, id',
      [queueId],
    ),
    includeHeaders && !m.body_removed ? readHeaders(pool, queueId) : Promise.resolve(undefined),
  ]);
  const byIdx = new Map<number, Attempt[]>();
  for (const a of attempts.rows) {
    const list = byIdx.get(a.idx) ?? [];
    byIdx.set(a.idx, list);
    list.push({
      startedAt: a.started_at,
      durationMs: a.duration_ms,
      remoteHost: a.remote_host,
      remoteIp: a.remote_ip,
      reply: { code: a.code, enhanced: a.enhanced, text: a.text },
      outcome: a.outcome,
      tls: { used: a.tls_used, version: a.tls_version, cipher: a.tls_cipher, verified: a.tls_verified },
      worker: a.worker,
      bounceClass: a.bounce_class,
    });
  }
  return MessageDetail.fromPartial({
    queueId: m.id,
    envelope: Envelope.decode(m.envelope),
    size: Number(m.size),
    origin: m.origin,
    createdAt: m.created_at,
    recipients: rcpts.rows.map((r) => toRecipientStatus(r, byIdx.get(r.idx))),
    headers: headers ?? '',
    operatorEvents: events.rows.map((e): OperatorEvent => ({ at: e.at, operator: e.operator, action: e.action, reason: e.reason })),
    bodyRemoved: m.body_removed,
  });
}
