// Report requests (events.proto ReportRequest) written to the outbox for
// bounce: one per message and event, covering the recipients that reached
// it together, with a deterministic event id so a replay is deduplicated.
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
}

/** Groups by message and kind, keeps the recipients owed a report, and builds the outbox rows. */
export function buildReports(kind: ReportKind, subjects: ReportSubject[]): OutboxRow[] {
  const byMessage = new Map<string, ReportSubject[]>();
  for (const s of subjects) {
    if (!messageMayReport(s.sender, s.origin) || !reportOwed(kind, s.notify)) continue;
    const list = byMessage.get(s.messageId);
    if (list) list.push(s);
    else byMessage.set(s.messageId, [s]);
  }
  const rows: OutboxRow[] = [];
  for (const [queueId, list] of byMessage) {
    const first = list[0]!;
    const eventId = reportEventId(queueId, kind, list.map((s) => s.idx));
    const req = ReportRequest.fromPartial({
      eventId,
      queueId,
      kind,
      envelope: Buffer.isBuffer(first.envelope) ? Envelope.decode(first.envelope) : first.envelope,
      size: first.size,
      recipients: list.map((s) => ({
        address: s.address,
        orcpt: s.orcpt,
        action: REPORT_ACTION[kind] ?? 'failed',
        status: s.status,
        remoteMta: s.remoteMta,
        diagnostic: s.diagnostic,
        lastAttemptAt: s.lastAttemptAt,
        willRetryUntil: s.willRetryUntil,
      })),
    });
    rows.push({
      subject: SUBJECTS.reports,
      msgId: eventId,
      payload: ReportRequest.encode(req).finish(),
      trace: first.trace,
      span: 'queue.report',
      attrs: { 'tern.queue_id': queueId, 'tern.report_kind': ReportKind[kind], 'tern.recipients': list.length },
    });
  }
  return rows;
}
