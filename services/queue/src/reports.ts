// Report requests (events.proto ReportRequest) written to the outbox for
// bounce: one per message and event, covering the recipients that reached
// it together (and, for failures, those refused for good but owed no
// report, for the suppression list), with a deterministic event id so a
// replay is deduplicated.
import { SUBJECTS } from '@tern/bus';
import { Envelope, ReportKind, ReportRequest, SmtpReply } from '@tern/proto';
import { messageMayReport, REPORT_ACTION, reportEventId, reportOwed } from './model';
import type { OutboxRow } from './outbox';

export interface ReportSubject {
  messageId: string;
  sender: string;
  origin: number;
  envelope: Buffer | Envelope;
  size: number;
  trace: Record<string, string> | null;
  idx: number;
  address: string;
  orcpt: string;
  notify: number[];
  status: string;
  remoteMta: string;
  diagnostic: SmtpReply | undefined;
  lastAttemptAt: Date | undefined;
  willRetryUntil: Date | undefined;
  /** What the failure means (libs/dsn classify); absent where no server's reply was classified. */
  bounceClass?: string;
}

/**
 * A remote server's permanent refusal: what bounce's suppression feed may
 * list. Only it travels for a recipient owed no report (an operator's
 * bounce, an expiry, our own refusals before any server answered do not).
 */
const refusedByRemote = (s: ReportSubject) => s.remoteMta !== '' && (s.diagnostic?.code ?? 0) >= 500;

/**
 * Groups by message and kind and builds the outbox rows: the recipients owed
 * a report, and (failures only) those a remote server refused for good but
 * owed none (NOTIFY=NEVER, null sender), as `unreported`, so that the
 * suppression list hears of them too.
 */
export function buildReports(kind: ReportKind, subjects: ReportSubject[]): OutboxRow[] {
  const byMessage = new Map<string, { owed: ReportSubject[]; unreported: ReportSubject[] }>();
  for (const s of subjects) {
    const owed = messageMayReport(s.sender, s.origin) && reportOwed(kind, s.notify);
    if (!owed && !(kind === ReportKind.REPORT_KIND_FAILED && refusedByRemote(s))) continue;
    let entry = byMessage.get(s.messageId);
    if (!entry) byMessage.set(s.messageId, (entry = { owed: [], unreported: [] }));
    (owed ? entry.owed : entry.unreported).push(s);
  }
  const rows: OutboxRow[] = [];
  for (const [queueId, { owed, unreported }] of byMessage) {
    const list = [...owed, ...unreported];
    const first = list[0]!;
    const eventId = reportEventId(queueId, kind, list.map((s) => s.idx));
    const recipient = (s: ReportSubject) => ({
      address: s.address,
      orcpt: s.orcpt,
      action: REPORT_ACTION[kind] ?? 'failed',
      status: s.status,
      remoteMta: s.remoteMta,
      diagnostic: s.diagnostic,
      lastAttemptAt: s.lastAttemptAt,
      willRetryUntil: s.willRetryUntil,
      bounceClass: s.bounceClass ?? '',
    });
    const req = ReportRequest.fromPartial({
      eventId,
      queueId,
      kind,
      envelope: Buffer.isBuffer(first.envelope) ? Envelope.decode(first.envelope) : first.envelope,
      size: first.size,
      recipients: owed.map(recipient),
      unreported: unreported.map(recipient),
    });
    rows.push({
      subject: SUBJECTS.reports,
      msgId: eventId,
      payload: ReportRequest.encode(req).finish(),
      trace: first.trace,
      span: 'queue.report',
      attrs: { 'tern.queue_id': queueId, 'tern.report_kind': ReportKind[kind], 'tern.recipients': owed.length, 'tern.unreported': unreported.length },
    });
  }
  return rows;
}
