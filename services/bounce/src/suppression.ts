// Feeds policy's suppression list: every recipient of a FAILED report whose
// status is permanent (5.x.x) is listed, so that authenticated submission to
// it is refused from then on. Best effort: the list is advice, the report is
// the obligation, so a policy outage is logged and counted and the report goes
// on. A redelivered request feeds again, which only refreshes the entries.
import { PolicyServiceClient, ReportKind, SuppressRequest, type ReportRequest, type Suppression } from '@tern/proto';
import { createClient, unary } from '@tern/grpc';
import type { Logger, Meter } from '@tern/telemetry';

/** The recipients a failed-delivery report proves undeliverable. */
export function hardFailures(req: ReportRequest): Suppression[] {
  if (req.kind !== ReportKind.REPORT_KIND_FAILED) return [];
  return req.recipients
    .filter((r) => r.action === 'failed' && r.status.startsWith('5.'))
    .map((r) => ({
      address: r.address,
      reason: r.diagnostic ? `${r.diagnostic.code} ${r.diagnostic.enhanced} ${r.diagnostic.text}`.replace(/\s+/g, ' ').trim() : `status ${r.status}`,
      queueId: req.queueId,
      createdAt: undefined,
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
    } catch (err) {
      this.fed.add(suppressions.length, { result: 'error' });
      this.logger.warn(
        { event: 'suppressions_feed_failed', queue_id: req.queueId, addresses: suppressions.map((s) => s.address), err: (err as Error).message },
        'could not add hard failures to the suppression list (policy unreachable?); the report goes on',
      );
    }
  }

  close(): void {
    this.client.close();
  }
}
