// Who is owed a delivery status notification (RFC 3461 section 4.1 and 6.2).
// Pure functions: the queue calls them before it emits a ReportRequest, and
// bounce applies the null-sender rule again before it builds anything.
import { DsnNotify, ReportKind } from '@tern/proto';

/** RFC 3464 Action values. */
export type DsnAction = 'failed' | 'delayed' | 'delivered' | 'relayed' | 'expanded';

export const DSN_ACTIONS: readonly DsnAction[] = ['failed', 'delayed', 'delivered', 'relayed', 'expanded'];

export function isDsnAction(value: string): value is DsnAction {
  return (DSN_ACTIONS as readonly string[]).includes(value);
}

/** The Action a report of this kind carries for its recipients. */
export function actionForKind(kind: ReportKind): DsnAction {
  switch (kind) {
    case ReportKind.REPORT_KIND_DELAYED:
      return 'delayed';
    case ReportKind.REPORT_KIND_DELIVERED:
      return 'delivered';
    case ReportKind.REPORT_KIND_RELAYED:
      return 'relayed';
    case ReportKind.REPORT_KIND_EXPANDED:
      return 'expanded';
    default:
      return 'failed';
  }
}

export function kindForAction(action: DsnAction): ReportKind {
  switch (action) {
    case 'delayed':
      return ReportKind.REPORT_KIND_DELAYED;
    case 'delivered':
      return ReportKind.REPORT_KIND_DELIVERED;
    case 'relayed':
      return ReportKind.REPORT_KIND_RELAYED;
    case 'expanded':
      return ReportKind.REPORT_KIND_EXPANDED;
    default:
      return ReportKind.REPORT_KIND_FAILED;
  }
}

/**
 * Whether a recipient with these NOTIFY keywords is owed a report for an
 * event with this action, for a message from `sender`.
 *
 * - The null sender ("<>", `sender === ""`) never gets a report: a report is
 *   itself sent with the null sender, so reports never cause reports.
 * - NEVER suppresses every report (RFC 3461 requires it alone; if it appears
 *   with other keywords anyway, NEVER wins).
 * - No NOTIFY given (an empty list, or only UNSPECIFIED): failures only.
 * - failed needs FAILURE, delayed needs DELAY, delivered/relayed/expanded
 *   need SUCCESS (RFC 3461 6.2: a "relayed" DSN goes to a SUCCESS request
 *   once the message leaves DSN-aware hands).
 */
export function reportOwed(sender: string, notify: readonly DsnNotify[], action: DsnAction | ReportKind): boolean {
  if (sender === '' || sender === '<>') return false;
  const a = typeof action === 'string' ? action : actionForKind(action);
  const given = notify.filter((n) => n !== DsnNotify.DSN_NOTIFY_UNSPECIFIED);
  if (given.includes(DsnNotify.DSN_NOTIFY_NEVER)) return false;
  if (given.length === 0) return a === 'failed';
  switch (a) {
    case 'failed':
      return given.includes(DsnNotify.DSN_NOTIFY_FAILURE);
    case 'delayed':
      return given.includes(DsnNotify.DSN_NOTIFY_DELAY);
    case 'delivered':
    case 'relayed':
    case 'expanded':
      return given.includes(DsnNotify.DSN_NOTIFY_SUCCESS);
  }
}

/** The recipients of `recipients` that are owed a report (order kept). */
export function recipientsOwedReport<R extends { notify: readonly DsnNotify[] }>(
  sender: string,
  action: DsnAction | ReportKind,
  recipients: readonly R[],
): R[] {
  return recipients.filter((r) => reportOwed(sender, r.notify, action));
}
