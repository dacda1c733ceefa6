// The original message, read as a stream: only its header section is held
// in memory (bounded), the body stays in the source until the report's last
// part is written.
import { libmime } from './mime';

export type ByteSource = AsyncIterable<Uint8Array>;

export interface OpenOriginalOptions {
  /** Bound on the header section held in memory (I4). Default 256 KiB. */
  maxHeaderBytes?: number;
}

export interface OriginalMessage {
  /**
   * The header section as read, through its terminating blank line when
   * `complete`; otherwise up to the bound (or the end of the source).
   */
  readonly header: Buffer;
  /** The header section ended with a blank line within the bound. */
  readonly complete: boolean;
  /** Message-ID of the original ("<...>"), when it has one. */
  readonly messageId: string | undefined;
  /** Subject, MIME words decoded. */
  readonly subject: string | undefined;
  /**
   * The original is itself a delivery status notification
   * (multipart/report; report-type=delivery-status or global-delivery-status):
   * no report may be made about it.
   */
  readonly isDeliveryReport: boolean;
  /** Header fields (names lower-cased, values unfolded), in order. */
  readonly fields: ReadonlyArray<{ name: string; value: string }>;
  /** The rest of the message after `header`. Iterate at most once. */
  readonly body: AsyncIterable<Buffer>;
  /** Stops reading the source (when the body is not wanted). */
  close(): Promise<void>;
}

const CRLFCRLF = Buffer.from('\r\n\r\n');
const LFLF = Buffer.from('\n\n');

/** Where the header section ends (index after the blank line), or -1. */
function headerEnd(buf: Buffer): number {
  // A message that starts with an empty line has no header fields at all.
  if (buf.length >= 2 && buf[0] === 0x0d && buf[1] === 0x0a) return 2;
  if (buf.length >= 1 && buf[0] === 0x0a) return 1;
  const crlf = buf.indexOf(CRLFCRLF);
  const lf = buf.indexOf(LFLF);
  if (crlf < 0 && lf < 0) return -1;
  if (crlf >= 0 && (lf < 0 || crlf + 2 <= lf)) return crlf + 4;
  return lf + 2;
}

/** Splits a header section into unfolded fields. */
export function parseHeaderFields(header: Buffer): Array<{ name: string; value: string }> {
  const text = header.toString('utf8');
  const fields: Array<{ name: string; value: string }> = [];
  for (const line of text.split(/\r?\n/)) {
    if (line === '') continue;
    if ((line[0] === ' ' || line[0] === '\t') && fields.length > 0) {
      fields[fields.length - 1]!.value += ' ' + line.trim();
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    fields.push({ name: line.slice(0, colon).trim().toLowerCase(), value: line.slice(colon + 1).trim() });
  }
  return fields;
}

function firstMsgId(value: string | undefined): string | undefined {
  if (!value) return undefined;
  const m = /<[^<>\s]+>/.exec(value);
  return m ? m[0] : undefined;
}

/** True for multipart/report; report-type=delivery-status (or the RFC 6533 global type). */
export function isDeliveryStatusContentType(value: string | undefined): boolean {
  if (!value) return false;
  const parsed = libmime().parseHeaderValue(value);
  if (parsed.value.trim().toLowerCase() !== 'multipart/report') return false;
  const type = String(parsed.params['report-type'] ?? '').trim().toLowerCase();
  return type === 'delivery-status' || type === 'global-delivery-status';
}

/**
 * Reads the header section of `source` and returns it with the rest still
 * unread. Works as well for a source that holds only the headers
 * (QueueService.ReadBody with headers_only).
 */
export async function openOriginal(source: ByteSource, opts: OpenOriginalOptions = {}): Promise<OriginalMessage> {
  const max = opts.maxHeaderBytes ?? 256 * 1024;
  const it = source[Symbol.asyncIterator]();
  let held = Buffer.alloc(0);
  let ended = false;
  let end = -1;
  while (end < 0 && !ended) {
    const next = await it.next();
    if (next.done) {
      ended = true;
      break;
    }
    held = held.length === 0 ? Buffer.from(next.value) : Buffer.concat([held, Buffer.from(next.value)]);
    // Search a little before the new data too, for a blank line split across chunks.
    end = headerEnd(held);
    if (end < 0 && held.length > max) break;
  }
  let header: Buffer;
  let rest: Buffer;
  let complete: boolean;
  if (end >= 0 && end <= max) {
    header = held.subarray(0, end);
    rest = held.subarray(end);
    complete = true;
  } else if (end >= 0 || held.length > max) {
    header = held.subarray(0, max);
    rest = held.subarray(max);
    complete = false;
  } else {
    // The source ended inside (or right after) the header section.
    header = held;
    rest = Buffer.alloc(0);
    complete = ended;
  }

  const fields = parseHeaderFields(header);
  const get = (name: string) => fields.find((f) => f.name === name)?.value;
  const subjectRaw = get('subject');
  let subject: string | undefined;
  if (subjectRaw !== undefined) {
    try {
      subject = libmime().decodeWords(subjectRaw);
    } catch {
      subject = subjectRaw;
    }
  }

  let consumed = false;
  let closed = false;
  const body: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: async function* () {
      if (consumed) throw new Error('the original body can be read only once');
      consumed = true;
      if (rest.length > 0) yield rest;
      if (ended || closed) return;
      while (true) {
        const next = await it.next();
        if (next.done) return;
        yield Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
      }
    },
  };

  return {
    header,
    complete,
    messageId: firstMsgId(get('message-id')),
    subject,
    isDeliveryReport: isDeliveryStatusContentType(get('content-type')),
    fields,
    body,
    async close() {
      if (closed) return;
      closed = true;
      if (!ended) await it.return?.();
    },
  };
}
