// Jobs: a DeliveryJob is one message to one destination with up to
// TERN_QUEUE_JOB_MAX_RECIPIENTS of its recipients. buildJobs makes them (the
// group commit for a new message's first attempt, a dispatch pass for due
// recipients), each with the outbox row that publishes it; loadJobMessages
// reads the messages of claimed recipients for a pass, with the bodies small
// enough to travel in the job. Which recipients get a job, and when, is the
// scheduler's (dispatch.ts) and the destination's (destination.ts).
import { jobSubject } from '@tern/bus';
import type { PoolClient } from '@tern/db';
import { DeliveryJob, Envelope, JobRecipient } from '@tern/proto';
import type { BodyCache } from './body-cache';
import { q, statement } from './db';
import { newId, recipientId } from './ids';
import type { OutboxRow } from './outbox';
import type { RouteTable } from './routes';

export interface JobMessage {
  id: string;
  envelope: Envelope;
  size: number;
  trace: Record<string, string> | null;
  /** The whole body, when small enough to travel in the job (DeliveryJob.body). */
  body?: Buffer;
}

export interface JobRcpt {
  idx: number;
  address: string;
  orcpt: string;
  notify: number[];
  attemptCount: number;
}

export interface BuiltJob {
  jobId: string;
  destination: string;
  messageId: string;
  idxs: number[];
  outbox: OutboxRow;
  /** Claimed by a dispatch pass: seconds its recipients had been due (metrics). */
  dueLagS?: number;
}

/** Splits one message's recipients for one destination into jobs of at most `max`. */
export function buildJobs(
  msg: JobMessage,
  destination: string,
  rcpts: JobRcpt[],
  max: number,
  leaseExpiresAt: Date,
  routes: RouteTable,
): BuiltJob[] {
  const out: BuiltJob[] = [];
  const route = routes.match(destination);
  for (let i = 0; i < rcpts.length; i += max) {
    const part = rcpts.slice(i, i + max);
    const jobId = newId();
    const job = DeliveryJob.fromPartial({
      jobId,
      queueId: msg.id,
      destination,
      envelope: msg.envelope,
      recipients: part.map((r) =>
        JobRecipient.fromPartial({ recipientId: recipientId(msg.id, r.idx), address: r.address, orcpt: r.orcpt, notify: r.notify }),
      ),
      size: msg.size,
      route,
      leaseExpiresAt,
      attempt: Math.max(...part.map((r) => r.attemptCount)) + 1,
    });
    out.push({
      jobId,
      destination,
      messageId: msg.id,
      idxs: part.map((r) => r.idx),
      outbox: {
        subject: jobSubject(destination),
        msgId: jobId,
        // Stored without the body (it is in body_chunks); published with it.
        payload: DeliveryJob.encode(job).finish(),
        body: msg.body?.length ? { of: msg.id, data: msg.body } : undefined,
        trace: msg.trace,
        span: 'queue.dispatch',
        attrs: { 'tern.queue_id': msg.id, 'tern.job_id': jobId, 'tern.destination': destination, 'tern.recipients': part.length },
      },
    });
  }
  return out;
}

interface MessageRow {
  id: string;
  envelope: Buffer;
  size: number;
  trace: Record<string, string> | null;
  inline: boolean;
  body: Buffer | null;
}

const LOAD_JOB_MESSAGES = statement(
  'tern_load_job_messages',
  `SELECT m.id, m.envelope, m.size, m.trace, m.size <= $2 AND NOT m.body_removed AS inline,
            CASE WHEN m.size <= $2 AND NOT m.body_removed AND NOT m.id = ANY($3::text[])
                 THEN (SELECT data FROM body_chunks b WHERE b.message_id = m.id AND b.seq = 0) END AS body
       FROM messages m WHERE m.id = ANY($1::text[])`,
);

/** The messages of claimed recipients; bodies up to `inlineBodyMax` bytes (one row) come along for the job. */
export async function loadJobMessages(c: PoolClient, ids: string[], inlineBodyMax = 0, cache?: BodyCache): Promise<Map<string, JobMessage>> {
  const cached = cache ? ids.filter((id) => cache.has(id)) : [];
  const { rows } = await q<MessageRow>(
    c,
    LOAD_JOB_MESSAGES,
    [ids, inlineBodyMax, cached],
  );
  return new Map(
    rows.map((r) => {
      const size = Number(r.size);
      // A body of several rows (spilled) is never inline: the first row alone is not the body.
      const read = r.inline ? (r.body ?? cache?.get(r.id)) : undefined;
      const body = read && read.length === size ? read : undefined;
      return [r.id, { id: r.id, envelope: Envelope.decode(r.envelope), size, trace: r.trace, body }];
    }),
  );
}
