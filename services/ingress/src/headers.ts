// Trace and submission headers ingress adds: the Received header (RFC 5321
// 4.4, protocol names of RFC 3848/6531, TLS clause of RFC 8314), and for
// submission Message-ID and Date when the client left them out (RFC 6409 8).
import crypto from 'node:crypto';
import net from 'node:net';
import type { Envelope, SmtpSession } from '@tern/smtp';

/** "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA", "UTF8SMTPSA", ... or "SMTP" after HELO. */
export function protocolName(session: SmtpSession, envelope?: Envelope): string {
  if (!session.esmtp) return 'SMTP';
  const base = envelope?.mailFrom.params.smtputf8 ? 'UTF8SMTP' : 'ESMTP';
  return `${base}${session.tls ? 'S' : ''}${session.user ? 'A' : ''}`;
}

/** RFC 5322 date-time, e.g. "Mon, 23 Nov 2026 06:00:00 +0000". */
export function rfc5322Date(d: Date): string {
  return d.toUTCString().replace(/GMT$/, '+0000');
}

/** Keeps a name usable inside a header comment or domain slot. */
function clean(s: string): string {
  return s.replace(/[^\x21-\x7e\u00a0-\uffff]/g, '?').replace(/[()\\]/g, '?').slice(0, 255);
}

function addressLiteral(ip: string): string {
  return net.isIPv6(ip) ? `IPv6:${ip}` : ip;
}

export interface ReceivedInput {
  session: SmtpSession;
  envelope: Envelope;
  hostname: string;
  clientName: string | undefined;
  date: Date;
}

/**
 * Received: from helo (name [ip])
 *         (using TLSv1.3 with cipher X (256/256 bits))
 *         by host (Tern) with ESMTPS id SESSION
 *         for <rcpt> tls X; date
 */
export function receivedHeader(i: ReceivedInput): string {
  const { session, envelope } = i;
  const helo = clean(session.heloName ?? 'unknown');
  const name = i.clientName ? clean(i.clientName) : 'unknown';
  const lines = [`Received: from ${helo} (${name} [${addressLiteral(session.clientAddress)}])`];
  const t = session.tls;
  if (t) {
    const bits = t.bits ? ` (${t.bits}/${t.bits} bits)` : '';
    lines.push(`\t(using ${t.protocol} with cipher ${t.cipher}${bits})`);
  }
  const single = envelope.rcptTo.length === 1 ? envelope.rcptTo[0]!.address : undefined;
  let by = `\tby ${clean(i.hostname)} (Tern) with ${protocolName(session, envelope)} id ${session.id}`;
  if (single !== undefined && Buffer.byteLength(single) < 600) {
    lines.push(by);
    by = `\tfor <${single}>`;
  }
  if (t) by += ` tls ${t.cipher}`;
  lines.push(`${by}; ${rfc5322Date(i.date)}`);
  return `${lines.join('\r\n')}\r\n`;
}

export function messageId(session: SmtpSession, envelope: Envelope, hostname: string): string {
  return `<${session.id}.${envelope.seq}.${crypto.randomBytes(6).toString('hex')}@${hostname}>`;
}

/** Header section scan limit: past this the message is passed on unchanged. */
const MAX_HEADER_SCAN = 256 * 1024;

/**
 * Reads the header section of a message stream (bounded) and tells which of
 * Message-ID and Date are present. Returns the octets read so far so the
 * caller can forward them unchanged.
 */
export class HeaderScanner {
  private parts: Buffer[] = [];
  private size = 0;
  done = false;
  /** The header section ended within the scan (or with the message); false when the scan gave up. */
  ended = false;
  hasMessageId = false;
  hasDate = false;

  /** Feeds a chunk; returns true when the decision is made. */
  push(chunk: Buffer): boolean {
    if (this.done) return true;
    this.parts.push(chunk);
    this.size += chunk.length;
    const all = this.parts.length === 1 ? chunk : Buffer.concat(this.parts);
    this.parts = [all];
    // A message that starts with an empty line has an empty header section.
    const end = all.subarray(0, 2).toString('latin1') === '\r\n' ? 0 : all.indexOf('\r\n\r\n');
    if (end < 0 && this.size < MAX_HEADER_SCAN) return false;
    const head = all.subarray(0, end < 0 ? all.length : end + 2).toString('latin1');
    this.hasMessageId = /(^|\r\n)message-id[ \t]*:/i.test(head);
    this.hasDate = /(^|\r\n)date[ \t]*:/i.test(head);
    this.ended = end >= 0;
    if (end < 0) {
      // No end of headers in sight: do not guess, add nothing.
      this.hasMessageId = true;
      this.hasDate = true;
    }
    this.done = true;
    return true;
  }

  /** End of message before a decision: everything read is the header section. */
  finish(): void {
    if (this.done) return;
    const head = (this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts)).toString('latin1');
    this.hasMessageId = /(^|\r\n)message-id[ \t]*:/i.test(head);
    this.hasDate = /(^|\r\n)date[ \t]*:/i.test(head);
    this.ended = true;
    this.done = true;
  }

  /** What was read while scanning. */
  take(): Buffer {
    const b = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
    this.parts = [];
    return b;
  }
}
