// RFC 3464 delivery status notifications (RFC 6522 multipart/report, RFC 6533
// for SMTPUTF8 messages), built as a stream: the report's own parts are
// small and made up front, the original message is copied from its source
// into the third part chunk by chunk.
import { randomBytes } from 'node:crypto';
import { libmime } from './mime';
import { BodyType, DsnRet, ReportKind, type ReportRecipient, type ReportRequest, type SmtpReply } from '@tern/proto';
import { foldField, isAscii, quotedPrintable, rfc5322Date, sanitize, wrap } from './format';
import { actionForKind, isDsnAction, type DsnAction } from './notify';
import type { OriginalMessage } from './original';
import { isPrintableAscii, utf8AddrEncode, xtextEncode } from './xtext';

/** What of the original goes into the report's third part. */
export type ReturnMode = 'full' | 'headers';

export interface ReturnPolicy {
  /**
   * When the sender gave no RET: a message larger than this (octets) is
   * returned as headers only, a smaller one in full.
   */
  fullReturnLimit: number;
}

/**
 * Decides what to return (RFC 3461 4.3): RET=FULL the whole message and
 * RET=HDRS the headers, for "failed" reports; without RET, the whole
 * message up to `fullReturnLimit` octets, headers beyond. Delay, success
 * and relay reports carry headers only, and so does a BINARYMIME message
 * (a report part may not be binary).
 */
export function returnMode(req: Pick<ReportRequest, 'kind' | 'envelope' | 'size'>, policy: ReturnPolicy): ReturnMode {
  if (actionForKind(req.kind) !== 'failed') return 'headers';
  const env = req.envelope;
  if (env?.bodyType === BodyType.BODY_TYPE_BINARYMIME) return 'headers';
  if (env?.ret === DsnRet.DSN_RET_FULL) return 'full';
  if (env?.ret === DsnRet.DSN_RET_HDRS) return 'headers';
  return req.size > policy.fullReturnLimit ? 'headers' : 'full';
}

/** Why no report may be made, or undefined when one may. */
export type NoReportReason = 'null-sender' | 'original-is-report' | 'no-recipients';

export function whyNoReport(req: Pick<ReportRequest, 'envelope' | 'recipients'>, original?: Pick<OriginalMessage, 'isDeliveryReport'>): NoReportReason | undefined {
  const sender = req.envelope?.sender ?? '';
  if (sender === '' || sender === '<>') return 'null-sender';
  if (original?.isDeliveryReport) return 'original-is-report';
  if (req.recipients.length === 0) return 'no-recipients';
  return undefined;
}

export class NoReportError extends Error {
  constructor(readonly reason: NoReportReason) {
    super(`no report may be made: ${reason}`);
    this.name = 'NoReportError';
  }
}

export interface ReportOptions {
  /** Our host name: Reporting-MTA, From, the text part. */
  reportingMta: string;
  /** From address of the report. Default MAILER-DAEMON@<reportingMta>. */
  from?: string;
  /** Display name of From. Default "Mail Delivery System". */
  fromName?: string;
  /** Address the text part names for help. Default postmaster@<reportingMta>. */
  postmaster?: string;
  /**
   * The original message (openOriginal), or undefined when it is no longer
   * available (the report then says so in its third part).
   */
  original?: OriginalMessage;
  /** What to return; see returnMode(). Default "headers". */
  ret?: ReturnMode;
  /** Arrival-Date. Default envelope.arrival_time. */
  arrivalDate?: Date;
  /** Domain of the generated Message-ID. Default reportingMta. */
  messageIdDomain?: string;
  /** A Message-ID to use ("<...>") instead of a generated one. */
  messageId?: string;
  /** MIME boundary; default random. */
  boundary?: string;
  now?: () => Date;
  /** Product name in the text part. Default "Tern". */
  productName?: string;
}

export interface Report {
  readonly messageId: string;
  readonly subject: string;
  /** The report's recipient: the original sender. */
  readonly to: string;
  readonly action: DsnAction;
  /** RFC 6533 types were used (the original was SMTPUTF8): send it with SMTPUTF8. */
  readonly global: boolean;
  /** The report has 8bit content: send it with BODY=8BITMIME. */
  readonly eightBit: boolean;
  /** What of the original the third part holds. */
  readonly returned: ReturnMode | 'unavailable';
  /** The report message, CRLF line ends. Iterate once. */
  stream(): AsyncGenerator<Buffer>;
}

const SEVERITY: Record<DsnAction, number> = { failed: 4, delayed: 3, delivered: 1, relayed: 2, expanded: 1 };

function effectiveAction(req: ReportRequest): DsnAction {
  if (req.kind !== ReportKind.REPORT_KIND_UNSPECIFIED) return actionForKind(req.kind);
  let best: DsnAction = 'failed';
  let sev = -1;
  for (const r of req.recipients) {
    if (isDsnAction(r.action) && SEVERITY[r.action] > sev) {
      best = r.action;
      sev = SEVERITY[r.action];
    }
  }
  return best;
}

const SUBJECTS: Record<DsnAction, string> = {
  failed: 'Undelivered Mail Returned to Sender',
  delayed: 'Delayed Mail (still being retried)',
  delivered: 'Successful Mail Delivery Report',
  relayed: 'Mail Delivery Status Report',
  expanded: 'Mail Delivery Status Report',
};

const STATUS_RE = /^[245]\.\d{1,3}\.\d{1,3}$/;

function recipientAction(r: ReportRecipient, fallback: DsnAction): DsnAction {
  const a = r.action.trim().toLowerCase();
  return isDsnAction(a) ? a : fallback;
}

/** The RFC 3463 status of a recipient: as given, else from the reply, else from the action. */
export function recipientStatus(r: Pick<ReportRecipient, 'status' | 'diagnostic'>, action: DsnAction): string {
  if (STATUS_RE.test(r.status.trim())) return r.status.trim();
  const enhanced = r.diagnostic?.enhanced?.trim() ?? '';
  if (STATUS_RE.test(enhanced)) return enhanced;
  const code = r.diagnostic?.code ?? 0;
  if (code >= 500 && code < 600) return '5.0.0';
  if (code >= 400 && code < 500) return action === 'failed' ? '5.0.0' : '4.0.0';
  if (action === 'failed') return '5.0.0';
  if (action === 'delayed') return '4.0.0';
  return '2.0.0';
}

/** "550 5.1.1 text" from an SMTP reply (the enhanced code once). */
export function replyText(reply: SmtpReply, ascii: boolean): string {
  const text = sanitize(reply.text, ascii);
  const enhanced = reply.enhanced.trim();
  const withEnhanced = enhanced && !text.startsWith(enhanced) ? `${enhanced} ${text}` : text;
  return reply.code > 0 ? `${reply.code} ${withEnhanced}`.trim() : withEnhanced;
}

/** Address as a DSN address-type;value pair (Final-Recipient, X-Tern-Sender). */
function typedAddress(address: string, global: boolean): string {
  if (isAscii(address)) return `rfc822; ${sanitize(address, true)}`;
  return `utf-8; ${utf8AddrEncode(address, global)}`;
}

/** ORCPT as stored ("type;decoded value") to the Original-Recipient field value. */
function originalRecipient(orcpt: string, global: boolean): string | undefined {
  const semi = orcpt.indexOf(';');
  if (semi <= 0) return undefined;
  const type = orcpt.slice(0, semi).trim();
  const value = orcpt.slice(semi + 1).trim();
  if (!/^[A-Za-z0-9-]+$/.test(type) || value === '') return undefined;
  if (type.toLowerCase() === 'utf-8') return `${type};${utf8AddrEncode(value, global)}`;
  // Anything that cannot stand in a header field as is goes back to xtext.
  return `${type};${isPrintableAscii(value) ? value : xtextEncode(value)}`;
}

function envelopeId(envid: string): string {
  return isPrintableAscii(envid) ? envid : xtextEncode(envid);
}

function hostName(value: string): string {
  return sanitize(value, false).replace(/[\s;]/g, '');
}

interface Advice {
  match: (status: string) => boolean;
  text: string;
}

const ADVICE: Advice[] = [
  { match: (s) => /^5\.1\.[0-9]+$/.test(s) && s !== '5.1.8', text: 'The recipient address was not accepted by the receiving system: check it for typing mistakes, or reach the recipient some other way.' },
  { match: (s) => s.endsWith('.2.2'), text: "The recipient's mailbox is full. Try again later, or reach the recipient some other way." },
  { match: (s) => s.endsWith('.3.4') || s.endsWith('.2.3'), text: 'The message is larger than the receiving system accepts: send it again with smaller attachments, or share them by a link.' },
  { match: (s) => /^\d\.7\./.test(s) || s === '5.1.8', text: 'The receiving system refused the message by policy (for example as suspected spam, or because the sending domain is not authorised). Ask the recipient or your postmaster to look into it.' },
  { match: (s) => /^\d\.4\./.test(s), text: "The recipient's mail system could not be reached, or kept failing, until the message expired. Check that the domain name is right; if it is, try again later." },
];

function humanText(args: {
  action: DsnAction;
  mta: string;
  product: string;
  postmaster: string;
  returned: ReturnMode | 'unavailable';
  recipients: Array<{ r: ReportRecipient; action: DsnAction; status: string }>;
}): string {
  const { action, mta, product, returned } = args;
  const out: string[] = [];
  const para = (text: string) => {
    out.push(...wrap(text, 76), '');
  };
  para(`This is the mail system at host ${mta}.`);
  const attached =
    returned === 'full'
      ? 'The message is attached below.'
      : returned === 'headers'
        ? 'The header of the message is attached below.'
        : 'The message itself is no longer available.';
  switch (action) {
    case 'failed':
      para(`I'm sorry to have to tell you that your message could not be delivered to one or more recipients. ${attached}`);
      break;
    case 'delayed': {
      out.push('#####################################################################');
      out.push('# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE.  #');
      out.push('#####################################################################', '');
      const until = args.recipients.map((x) => x.r.willRetryUntil).find((d): d is Date => d instanceof Date);
      para(
        `Your message has not been delivered yet to the recipients listed below. The mail system keeps trying${until ? ` until ${rfc5322Date(until)}` : ''}, and will tell you again if it finally gives up. ${attached}`,
      );
      break;
    }
    case 'delivered':
      para(`Your message was delivered to the recipients listed below, as you asked. ${attached}`);
      break;
    case 'relayed':
      para(
        `Your message was passed on to a mail system that does not send delivery reports. This is the last report you will get for the recipients listed below; it does not prove that the message reached their mailboxes. ${attached}`,
      );
      break;
    case 'expanded':
      para(`Your message reached a mailing list or alias and was passed on to its members. ${attached}`);
      break;
  }
  if (action === 'failed' || action === 'delayed') {
    const statuses = args.recipients.map((x) => x.status);
    const seen = new Set<string>();
    for (const s of statuses) {
      const advice = ADVICE.find((a) => a.match(s));
      if (advice && !seen.has(advice.text)) {
        seen.add(advice.text);
        para(advice.text);
      }
    }
    para(
      `For further assistance, please send mail to <${args.postmaster}>. If you do so, please include this problem report. You can delete your own text from the attached returned message.`,
    );
  }
  out.push(`                   The ${product} mail system`, '');
  for (const { r, action: a } of args.recipients) {
    const who = `<${r.address}>`;
    const reply = r.diagnostic;
    const remote = hostName(r.remoteMta);
    let what: string;
    if (reply && reply.code > 0) {
      what = `${remote ? `host ${remote}` : 'the remote server'} said: ${replyText(reply, false)}`;
    } else if (reply && reply.text.trim()) {
      what = sanitize(reply.text, false);
    } else {
      what = { failed: 'delivery failed', delayed: 'delivery is being retried', delivered: 'delivered', relayed: 'relayed to a system without delivery reports', expanded: 'expanded' }[a];
    }
    const orig = originalRecipient(r.orcpt, true);
    const origNote = orig && orig.slice(orig.indexOf(';') + 1).toLowerCase() !== r.address.toLowerCase() ? ` (originally ${orig.slice(orig.indexOf(';') + 1)})` : '';
    out.push(...wrap(`${who}${origNote}: ${what}`, 76, 4), '');
  }
  return out.join('\n');
}

function deliveryStatus(args: {
  req: ReportRequest;
  mta: string;
  global: boolean;
  arrival: Date | undefined;
  recipients: Array<{ r: ReportRecipient; action: DsnAction; status: string }>;
}): string {
  const { req, global } = args;
  const ascii = !global;
  let out = '';
  out += foldField('Reporting-MTA', `dns; ${args.mta}`);
  if (req.queueId) out += foldField('X-Tern-Queue-ID', sanitize(req.queueId, true));
  out += foldField('X-Tern-Sender', typedAddress(req.envelope?.sender ?? '', global));
  const envid = req.envelope?.envid ?? '';
  if (envid) out += foldField('Original-Envelope-Id', envelopeId(envid));
  if (args.arrival) out += foldField('Arrival-Date', rfc5322Date(args.arrival));
  for (const { r, action, status } of args.recipients) {
    out += '\r\n';
    const orig = originalRecipient(r.orcpt, global);
    if (orig) out += foldField('Original-Recipient', orig);
    out += foldField('Final-Recipient', typedAddress(r.address, global));
    out += foldField('Action', action);
    out += foldField('Status', status);
    const remote = hostName(r.remoteMta);
    if (remote) out += foldField('Remote-MTA', `dns; ${remote}`);
    const d = r.diagnostic;
    if (d && d.code > 0) out += foldField('Diagnostic-Code', `smtp; ${replyText(d, ascii)}`);
    else if (d && d.text.trim()) out += foldField('Diagnostic-Code', `X-Tern; ${sanitize(d.text, ascii)}`);
    if (r.lastAttemptAt) out += foldField('Last-Attempt-Date', rfc5322Date(r.lastAttemptAt));
    if (action === 'delayed' && r.willRetryUntil) out += foldField('Will-Retry-Until', rfc5322Date(r.willRetryUntil));
  }
  return out;
}

/** Strips the blank line that ends a header section; cuts an incomplete one at its last line end. */
function headerPartContent(original: OriginalMessage): Buffer {
  let h = original.header;
  if (!original.complete) {
    const lastLf = h.lastIndexOf(0x0a);
    h = lastLf >= 0 ? h.subarray(0, lastLf + 1) : Buffer.alloc(0);
  }
  if (h.length >= 2 && h[h.length - 1] === 0x0a && h[h.length - 2] === 0x0a) h = h.subarray(0, h.length - 1);
  else if (h.length >= 4 && h.subarray(h.length - 4).equals(Buffer.from('\r\n\r\n'))) h = h.subarray(0, h.length - 2);
  else if (h.length === 2 && h.equals(Buffer.from('\r\n'))) h = Buffer.alloc(0);
  if (h.length > 0 && h[h.length - 1] !== 0x0a) h = Buffer.concat([h, Buffer.from('\r\n')]);
  return h;
}

/**
 * Builds the report for `req`. Throws NoReportError when no report may be
 * made (null sender, the original is itself a report, no recipients).
 */
export function buildReport(req: ReportRequest, opts: ReportOptions): Report {
  const reason = whyNoReport(req, opts.original);
  if (reason) throw new NoReportError(reason);
  const envelope = req.envelope!;
  const now = (opts.now ?? (() => new Date()))();
  const mta = hostName(opts.reportingMta);
  if (!mta) throw new Error('reportingMta is required');
  const global = envelope.smtputf8;
  const action = effectiveAction(req);
  const recipients = req.recipients.map((r) => {
    const a = recipientAction(r, action);
    return { r, action: a, status: recipientStatus(r, a) };
  });
  const original = opts.original;
  const returned: Report['returned'] = original ? (opts.ret ?? 'headers') : 'unavailable';
  const domain = opts.messageIdDomain ?? mta;
  const messageId = opts.messageId ?? `<${now.getTime().toString(36)}.${randomBytes(9).toString('hex')}@${domain}>`;
  const boundary = opts.boundary ?? `=_tern_${randomBytes(15).toString('hex')}`;
  const from = opts.from ?? `MAILER-DAEMON@${mta}`;
  const fromName = opts.fromName ?? 'Mail Delivery System';
  const postmaster = opts.postmaster ?? `postmaster@${mta}`;
  const subject = SUBJECTS[action];
  const sender = envelope.sender;

  const text = humanText({ action, mta, product: opts.productName ?? 'Tern', postmaster, returned, recipients });
  const textIsAscii = isAscii(text) && text.split('\n').every((l) => l.length <= 998);
  const dsn = deliveryStatus({ req, mta, global, arrival: opts.arrivalDate ?? envelope.arrivalTime, recipients });

  // 8bit content: the returned original (declared 8BITMIME, or raw bytes in its
  // header), or anything UTF-8 in a global report.
  const headerBytes = original?.header;
  const originalEightBit =
    returned === 'full'
      ? envelope.bodyType === BodyType.BODY_TYPE_8BITMIME || (headerBytes !== undefined && !isAscii(headerBytes))
      : returned === 'headers'
        ? headerBytes !== undefined && !isAscii(headerBytes)
        : false;
  const eightBit = originalEightBit || (global && (!isAscii(dsn) || !isAscii(sender)));

  const displayName = isAscii(fromName) ? (/^[\w !#$%&'*+\-/=?^`{|}~]*$/.test(fromName) ? fromName : `"${fromName.replace(/["\\]/g, '\\$&')}"`) : libmime().encodeWord(fromName, 'Q');
  let head = '';
  head += `From: ${displayName} <${from}>\r\n`;
  head += `To: <${sender}>\r\n`;
  head += `Subject: ${subject}\r\n`;
  head += `Date: ${rfc5322Date(now)}\r\n`;
  head += `Message-ID: ${messageId}\r\n`;
  if (original?.messageId) {
    head += `In-Reply-To: ${original.messageId}\r\n`;
    head += `References: ${original.messageId}\r\n`;
  }
  head += 'Auto-Submitted: auto-replied\r\n';
  head += 'MIME-Version: 1.0\r\n';
  head += `Content-Type: multipart/report; report-type=${global ? 'global-delivery-status' : 'delivery-status'};\r\n\tboundary="${boundary}"\r\n`;
  if (eightBit) head += 'Content-Transfer-Encoding: 8bit\r\n';
  head += '\r\nThis is a MIME-encapsulated message.\r\n';

  head += `\r\n--${boundary}\r\n`;
  head += 'Content-Description: Notification\r\n';
  if (textIsAscii) {
    head += 'Content-Type: text/plain; charset=us-ascii\r\n\r\n';
    head += text.replace(/\n/g, '\r\n');
  } else {
    head += 'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n';
    head += quotedPrintable(text);
  }

  head += `\r\n--${boundary}\r\n`;
  head += 'Content-Description: Delivery report\r\n';
  head += `Content-Type: ${global ? 'message/global-delivery-status' : 'message/delivery-status'}\r\n`;
  if (global && !isAscii(dsn)) head += 'Content-Transfer-Encoding: 8bit\r\n';
  head += '\r\n' + dsn;

  const undelivered = action === 'failed' || action === 'delayed' ? 'Undelivered ' : '';
  head += `\r\n--${boundary}\r\n`;
  if (returned === 'unavailable') {
    head += `Content-Description: ${undelivered}Message\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n`;
    head += '--- The original message is no longer available ---\r\n';
  } else {
    const type = returned === 'full' ? (global ? 'message/global' : 'message/rfc822') : global ? 'message/global-headers' : 'text/rfc822-headers';
    head += `Content-Description: ${undelivered}${returned === 'full' ? 'Message' : 'Message Headers'}\r\n`;
    head += `Content-Type: ${type}\r\n`;
    if (originalEightBit) head += 'Content-Transfer-Encoding: 8bit\r\n';
    head += '\r\n';
  }
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'utf8');

  let started = false;
  return {
    messageId,
    subject,
    to: sender,
    action,
    global,
    eightBit,
    returned,
    async *stream() {
      if (started) throw new Error('a report stream can be read only once');
      started = true;
      yield Buffer.from(head, 'utf8');
      if (original && returned === 'headers') {
        yield headerPartContent(original);
        await original.close();
      } else if (original && returned === 'full') {
        if (original.header.length > 0) yield original.header;
        for await (const chunk of original.body) yield chunk;
      }
      yield tail;
    },
  };
}

/** Reads a whole report into one Buffer (tests, small reports). */
export async function reportToBuffer(report: Report): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of report.stream()) parts.push(chunk);
  return Buffer.concat(parts);
}
