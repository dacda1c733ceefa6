// Settling: what one delivery result means for the queue, decided without
// the database. settleRecipient turns a recipient's outcome into its new
// state (delivered, relayed, failed, deferred with the next attempt by
// backoff, or expired past its lifetime) and the report it is a subject of
// (failed, relayed, or delivered for a final delivery asked NOTIFY=SUCCESS);
// jobFeedback turns a job's result into its destination's concurrency
// feedback. results.ts applies both in one statement per batch; kept apart
// here, the rules can be read and tested on their own.
import { AttemptOutcome, DsnNotify, ReportKind, type DeliveryResult, type SmtpReply } from '@tern/proto';
import { backoffMs, S, statusOf, type BackoffSettings } from './model';

/** What settling needs to know of a recipient inflight under the result's job. */
export interface InflightRecipient {
  notify: number[];
  attemptCount: number;
  expiresAt: Date;
}

/** A recipient's result as delivery reported it. */
export interface RecipientOutcome {
  outcome: AttemptOutcome;
  /** The next hop had DSN (RFC 3461): NOTIFY went on with the recipient, so success is the next hop's to report. */
  remoteDsn: boolean;
  /**
   * The next hop was a final delivery (an LMTP route): success is Tern's to
   * report ("delivered"), whatever the next hop's DSN. Absent from results
   * of delivery pods that predate it (false).
   */
  finalDelivery?: boolean;
  reply: SmtpReply | undefined;
}

export interface Settlement {
  state: number;
  /** When the recipient is due again (deferred only). */
  nextAttemptAt: Date | null;
  /**
   * The report the recipient is a subject of, with its RFC 3463 status:
   * FAILED (failed, expired), RELAYED or DELIVERED. buildReports keeps it
   * only where NOTIFY and the sender allow one.
   */
  report: { kind: ReportKind.REPORT_KIND_FAILED | ReportKind.REPORT_KIND_RELAYED | ReportKind.REPORT_KIND_DELIVERED; status: string } | undefined;
}

/**
 * The new state of a recipient from its outcome: delivered (RFC 3461 for a
 * recipient that asked NOTIFY=SUCCESS: a final delivery, LMTP, is reported
 * "delivered" by Tern whether or not the next hop had DSN; a relay to a next
 * hop with DSN passed the request on, so no report; to one without DSN,
 * "relayed"), relayed, failed, or, for a deferral (or an outcome not given), expired
 * once `now` has reached its lifetime and deferred otherwise, due again
 * after the backoff of its next attempt but not after its lifetime.
 */
export function settleRecipient(r: InflightRecipient, o: RecipientOutcome, now: Date, backoff: BackoffSettings, random = Math.random): Settlement {
  const code = o.reply?.code ?? 0;
  const enhanced = o.reply?.enhanced ?? '';
  const relayed = (): Settlement => ({ state: S.relayed, nextAttemptAt: null, report: { kind: ReportKind.REPORT_KIND_RELAYED, status: statusOf(code, enhanced, '2.0.0') } });
  switch (o.outcome) {
    case AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED: {
      const success = r.notify.includes(DsnNotify.DSN_NOTIFY_SUCCESS);
      if (success && o.finalDelivery) {
        return { state: S.delivered, nextAttemptAt: null, report: { kind: ReportKind.REPORT_KIND_DELIVERED, status: statusOf(code, enhanced, '2.0.0') } };
      }
      if (success && !o.remoteDsn) return relayed();
      return { state: S.delivered, nextAttemptAt: null, report: undefined };
    }
    case AttemptOutcome.ATTEMPT_OUTCOME_RELAYED:
      return relayed();
    case AttemptOutcome.ATTEMPT_OUTCOME_FAILED:
      return { state: S.failed, nextAttemptAt: null, report: { kind: ReportKind.REPORT_KIND_FAILED, status: statusOf(code, enhanced, '5.0.0') } };
    default: {
      const expires = new Date(r.expiresAt).getTime();
      if (now.getTime() >= expires) {
        return { state: S.expired, nextAttemptAt: null, report: { kind: ReportKind.REPORT_KIND_FAILED, status: statusOf(code, enhanced, '4.4.7') } };
      }
      const at = now.getTime() + backoffMs(r.attemptCount + 1, backoff, random);
      return { state: S.deferred, nextAttemptAt: new Date(Math.min(at, expires)), report: undefined };
    }
  }
}

const replyText = (r: SmtpReply | undefined) => (r ? [r.code || '', r.enhanced, r.text].filter(Boolean).join(' ') : '');

/**
 * A job's concurrency feedback for its destination: reached it (any reply)
 * or failed at it (421, no connection), and the error to show for the
 * destination: where the job failed there, `reply` (the reply given for its
 * first recipient settled); where a recipient was not delivered, the first
 * reply of 400 or more; '' where every recipient was delivered or relayed.
 */
export function jobFeedback(
  res: Pick<DeliveryResult, 'destinationFailure' | 'recipients'>,
  reply: SmtpReply | undefined,
  blocksDestination: (reply: SmtpReply) => boolean = () => false,
): { ok: boolean; failed: boolean; error: string } {
  const problem = res.destinationFailure || res.recipients.some((r) => r.outcome !== AttemptOutcome.ATTEMPT_OUTCOME_DELIVERED && r.outcome !== AttemptOutcome.ATTEMPT_OUTCOME_RELAYED);
  // A reputation block or rate limit concerns the destination, not these
  // recipients: it backs off the destination as a failure to reach it would.
  const blocked = res.recipients.find((r) => r.reply && r.reply.code >= 400 && blocksDestination(r.reply))?.reply;
  const failed = res.destinationFailure || blocked !== undefined;
  const bad = res.destinationFailure ? reply : (blocked ?? res.recipients.find((r) => r.reply && r.reply.code >= 400)?.reply);
  return { ok: !failed, failed, error: problem ? replyText(bad) || 'delivery failed' : '' };
}
