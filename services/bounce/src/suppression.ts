// Feeds policy's suppression list with the recipients a remote server
// refused permanently as addresses: a 5xx reply the queue classed
// user_unknown (or, from a queue that gives no class, one of
// SUPPRESSED_STATUSES: the mailbox does not exist, its address is bad, it has moved), so that
// sending to them stops where policy enforces the list. Policy blocks (5.7.x),
// size refusals (5.3.4), other 5.x.x, an operator's bounce and an expiry say
// nothing about the address and list nothing. The recipients of a failed
// report and its `unreported` ones (NOTIFY=NEVER, the null sender: no report,
// but the same refusal) are fed alike. Best effort: the list is advice, the
// report is the obligation, so a policy outage is logged and counted and the
// report goes on. A redelivered request feeds again, which only refreshes
// the entries.
import { isBounceClass, suppressesAddress } from '@tern/dsn';
import { encodeLifecycleEvents, eventSubject, type EventFormat } from '@tern/bus';
import { LifecycleEvent, LifecycleEventType, PolicyServiceClient, ReportKind, SuppressRequest, type ReportRecipient, type ReportRequest, type Suppression } from '@tern/proto';
import { createClient, unary } from '@tern/grpc';
import type { Logger, Meter } from '@tern/telemetry';
import { domainOf } from '@tern/smtp';
import { errorMessage } from '@tern/runtime';

/**
 * RFC 3463 statuses that prove the address itself bad: 5.1.1 bad destination
 * mailbox, 5.1.3 bad destination address syntax, 5.1.6 mailbox moved with no
 * forwarding address. Not 5.1.2 (a host or domain that does not resolve) or
 * 5.1.10 (null MX): facts about a domain, read from DNS rather than said by
 * its server, and a domain's DNS gets fixed; not 5.1.0 (unspecified), which
 * servers also give for sender problems.
 */
export const SUPPRESSED_STATUSES: readonly string[] = ['5.1.1', '5.1.3', '5.1.6'];

/**
 * A remote server (a reply came from one) refused the address for good: by
 * the bounce class the queue gave the failure (its operator's rules and
 * libs/dsn's, which read the text as well as the code), or, from a queue
 * that gives none, by the status alone.
 */
function refusedAddress(r: ReportRecipient): boolean {
  if (r.action !== 'failed' || r.remoteMta === '' || (r.diagnostic?.code ?? 0) < 500) return false;
  if (r.bounceClass) return isBounceClass(r.bounceClass) && suppressesAddress(r.bounceClass);
  return SUPPRESSED_STATUSES.includes(r.status);
}

/** The recipients a failed-delivery request proves to be bad addresses. */
export function hardFailures(req: ReportRequest): Suppression[] {
  if (req.kind !== ReportKind.REPORT_KIND_FAILED) return [];
  return [...req.recipients, ...req.unreported].filter(refusedAddress).map((r) => ({
    address: r.address,
    reason: r.diagnostic ? `${r.diagnostic.code} ${r.diagnostic.enhanced} ${r.diagnostic.text}`.replace(/\s+/g, ' ').trim() : `status ${r.status}`,
    queueId: req.queueId,
    createdAt: undefined,
    expiresAt: undefined,
  }));
}

export class SuppressionFeed {
  private readonly client: PolicyServiceClient;
  private readonly fed;

  constructor(
    target: string,
    private readonly deadlineMs: number,
    private readonly logger: Logger,
    meter: Meter,
    /** Publishes the `suppressed` lifecycle events (TERN_EVENTS) in the queue's format; absent = none. */
    private readonly events?: { publish(subject: string, data: Uint8Array, msgId: string): Promise<unknown>; format: EventFormat },
  ) {
    this.client = createClient(PolicyServiceClient, target, { deadlineMs });
    this.fed = meter.createCounter('tern_bounce_suppressions_total', { description: 'Hard-failed recipients sent to the suppression list, by result' });
  }

  async feed(req: ReportRequest): Promise<void> {
    const suppressions = hardFailures(req);
    if (!suppressions.length) return;
    try {
      const res = await unary(this.client.suppress.bind(this.client), SuppressRequest.fromPartial({ suppressions, operator: 'bounce' }), {
        deadlineMs: this.deadlineMs,
      });
      this.fed.add(suppressions.length, { result: 'ok' });
      this.logger.info({ event: 'suppressions_fed', queue_id: req.queueId, addresses: suppressions.map((s) => s.address), added: res.added }, 'hard failures added to the suppression list');
      await this.announce(req, suppressions);
    } catch (err) {
      this.fed.add(suppressions.length, { result: 'error' });
      this.logger.warn(
        { event: 'suppressions_feed_failed', queue_id: req.queueId, addresses: suppressions.map((s) => s.address), err: errorMessage(err) },
        'could not add hard failures to the suppression list (policy unreachable?); the report goes on',
      );
    }
  }

  /**
   * One `suppressed` event per address, after policy listed it. The event id
   * comes from the report request's, so a redelivered request republishes
   * the same ids (JetStream drops them within its duplicate window). Best
   * effort, like the feed: a failure is logged, the report goes on.
   */
  private async announce(req: ReportRequest, suppressions: Suppression[]): Promise<void> {
    if (!this.events) return;
    const events = suppressions.map((s) =>
      LifecycleEvent.fromPartial({
        eventId: `${req.eventId}.suppressed.${s.address}`,
        type: LifecycleEventType.LIFECYCLE_EVENT_TYPE_SUPPRESSED,
        at: new Date(),
        queueId: req.queueId,
        sender: req.envelope?.sender ?? '',
        recipient: s.address,
        destination: domainOf(s.address),
        reason: s.reason,
        operator: 'bounce',
        bounceClass: 'user_unknown',
      }),
    );
    try {
      await this.events.publish(eventSubject('suppressed'), encodeLifecycleEvents(events, this.events.format), `ev-${events[0]!.eventId}`);
    } catch (err) {
      this.logger.warn({ event: 'suppressed_event_failed', queue_id: req.queueId, err: errorMessage(err) }, 'could not publish the suppressed events');
    }
  }

  close(): void {
    this.client.close();
  }
}
