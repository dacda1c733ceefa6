// 8-bit to 7-bit MIME conversion (RFC 6152 3, RFC 2045, RFC 2046), for a
// message received with BODY=8BITMIME that goes to a next hop without
// 8BITMIME, as Postfix does: the MIME structure is kept (multiparts, nested
// message/rfc822), headers are left alone, and each leaf part whose content
// has 8-bit bytes is re-encoded, quoted-printable for text (base64 where QP
// does not fit: more than 1 byte in 8 is 8-bit), base64 for the rest, its
// Content-Transfer-Encoding field replaced or added; a multipart or
// message/rfc822 part declared 8bit or binary is relabelled 7bit once its
// content is. What cannot be converted (8-bit bytes in a header, in a
// multipart preamble or epilogue, in a multipart without a boundary, in
// message/partial or external-body, in a part already declared
// quoted-printable or base64, or nested beyond the limit) is a DowngradeError.
//
// Two passes over the message, both streamed line by line, memory bounded by
// a line piece (64 KiB) and one header field: scan() decides, per MIME
// entity in document order, what to do (a field must be rewritten before its
// part's content is seen); convert() applies it. The decisions depend on the
// input alone, so any number of convert() runs give the same bytes (the size
// count, the DKIM signature, the transaction).

/** The message cannot be converted to 7 bit; the reason, for the 554 5.6.3 reply. */
export class DowngradeError extends Error {
  override name = 'DowngradeError';
}

/** What scan() decided: one code per MIME entity, in document order. */
export interface DowngradePlan {
  decisions: number[];
  /** Anything to convert at all (false: the message is 7-bit already and goes as it is). */
  changed: boolean;
}

export interface ScanOptions {
  /** 8-bit bytes in headers are fine (the next hop took SMTPUTF8). */
  allow8bitHeaders?: boolean;
}

const KEEP = 0;
const QP = 1;
const BASE64 = 2;
const RELABEL_7BIT = 3;
const NEW_CTE: Record<number, string | undefined> = { [QP]: 'quoted-printable', [BASE64]: 'base64', [RELABEL_7BIT]: '7bit' };

/** Longer lines are handled in pieces (ingress refuses lines over 1000 bytes anyway). */
const MAX_PIECE = 64 * 1024;
/** Nesting of multiparts and messages followed (Postfix: mime_nesting_limit 100). */
const MAX_DEPTH = 100;
/** MIME entities in one message. */
const MAX_ENTITIES = 100_000;
/** Bytes of a Content-Type or Content-Transfer-Encoding field kept for parsing. */
const MAX_FIELD = 64 * 1024;

const CR = 13;
const LF = 10;
const SP = 32;
const TAB = 9;
const DASH = 45;
const EQ = 61;

/** A line piece: a whole line with its LF, or (for a line over MAX_PIECE, or the last one without LF) a part of one. */
async function* pieces(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer[]> {
  let carry: Buffer | undefined;
  for await (const chunk of source) {
    const buf = carry ? Buffer.concat([carry, chunk]) : chunk;
    carry = undefined;
    const out: Buffer[] = [];
    let start = 0;
    for (let lf = buf.indexOf(LF, start); lf >= 0; lf = buf.indexOf(LF, start)) {
      out.push(buf.subarray(start, lf + 1));
      start = lf + 1;
    }
    let rest = buf.subarray(start);
    while (rest.length > MAX_PIECE) {
      out.push(rest.subarray(0, MAX_PIECE));
      rest = rest.subarray(MAX_PIECE);
    }
    if (rest.length) carry = rest;
    if (out.length) yield out;
  }
  if (carry?.length) yield [carry];
}

const HEX = '0123456789ABCDEF';

/**
 * Quoted-printable (RFC 2045 6.7), streamed: CRLF is a hard line break, any
 * other CR or LF is encoded; SP and TAB are literal except before a line
 * break or at the end; output lines are at most 76 characters.
 */
export class QpEncoder {
  private col = 0;
  private pendingCr = false;
  private pendingWs = -1;
  private buf = Buffer.alloc(0);
  private o = 0;

  private room(n: number): void {
    if (this.buf.length - this.o >= n) return;
    const next = Buffer.allocUnsafe(Math.max(this.o + n, this.buf.length * 2, 256));
    this.buf.copy(next, 0, 0, this.o);
    this.buf = next;
  }

  private softBreakFor(n: number): void {
    if (this.col + n > 75) {
      this.buf[this.o++] = EQ;
      this.buf[this.o++] = CR;
      this.buf[this.o++] = LF;
      this.col = 0;
    }
  }

  private literal(b: number): void {
    this.softBreakFor(1);
    this.buf[this.o++] = b;
    this.col++;
  }

  private encoded(b: number): void {
    this.softBreakFor(3);
    this.buf[this.o++] = EQ;
    this.buf[this.o++] = HEX.charCodeAt(b >> 4);
    this.buf[this.o++] = HEX.charCodeAt(b & 15);
    this.col += 3;
  }

  /** A held SP/TAB: literal when more text follows on its line, encoded at a line's end. */
  private flushWs(atLineEnd: boolean): void {
    if (this.pendingWs < 0) return;
    const ws = this.pendingWs;
    this.pendingWs = -1;
    if (atLineEnd) this.encoded(ws);
    else this.literal(ws);
  }

  private take(): Buffer {
    const out = Buffer.from(this.buf.subarray(0, this.o));
    this.o = 0;
    return out;
  }

  push(chunk: Buffer): Buffer {
    // Worst case per input byte: "=XX" plus a soft break "=\r\n" every 25 bytes.
    this.room(chunk.length * 4 + 16);
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (this.pendingCr) {
        this.pendingCr = false;
        if (b === LF) {
          this.flushWs(true);
          this.buf[this.o++] = CR;
          this.buf[this.o++] = LF;
          this.col = 0;
          continue;
        }
        this.flushWs(false);
        this.encoded(CR);
      }
      if (b === CR) {
        this.pendingCr = true;
      } else if (b === SP || b === TAB) {
        this.flushWs(false);
        this.pendingWs = b;
      } else {
        this.flushWs(false);
        if (b > 32 && b < 127 && b !== EQ) this.literal(b);
        else this.encoded(b);
      }
    }
    return this.take();
  }

  end(): Buffer {
    this.room(16);
    if (this.pendingCr) {
      this.pendingCr = false;
      this.flushWs(false);
      this.encoded(CR);
    }
    this.flushWs(true);
    return this.take();
  }
}

/** Base64 (RFC 2045 6.8), streamed, in lines of 76 characters (CRLF between them, none after the last). */
export class Base64Encoder {
  private rem = Buffer.alloc(0);
  private col = 0;

  private lines(text: string): Buffer {
    let out = '';
    let i = 0;
    while (i < text.length) {
      if (this.col === 76) {
        out += '\r\n';
        this.col = 0;
      }
      const n = Math.min(76 - this.col, text.length - i);
      out += text.slice(i, i + n);
      this.col += n;
      i += n;
    }
    return Buffer.from(out, 'latin1');
  }

  push(chunk: Buffer): Buffer {
    const all = this.rem.length ? Buffer.concat([this.rem, chunk]) : chunk;
    const whole = all.length - (all.length % 3);
    this.rem = Buffer.from(all.subarray(whole));
    return this.lines(all.subarray(0, whole).toString('base64'));
  }

  end(): Buffer {
    const out = this.lines(this.rem.toString('base64'));
    this.rem = Buffer.alloc(0);
    return out;
  }
}

type State = 'header' | 'body' | 'preamble' | 'parts' | 'epilogue' | 'nested';

interface Frame {
  index: number;
  depth: number;
  state: State;
  kind?: 'leaf' | 'multipart' | 'message';
  defaultType: string;
  /** Parsed Content-Type (lower-case "type/subtype") and boundary, Content-Transfer-Encoding token. */
  type?: string;
  boundary?: Buffer;
  cte?: string;
  childDefault?: string;
  /** The header field being read: its name (lower-case), text kept for parsing, raw pieces held back (convert). */
  field?: { name: string; text: string; held?: Buffer[] };
  mimeVersion: boolean;
  // scan
  has8bit: boolean;
  /** Bytes above 127 in the content. */
  high: number;
  length: number;
  // convert
  decision: number;
  cteWritten: boolean;
  enc?: QpEncoder | Base64Encoder;
  /** The line end of the last content line of an encoded part: the CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1). */
  held?: Buffer;
}

const FIELD_NAME = /^[!-9;-~]+[ \t]*:/;

function hasHigh(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i]! > 127) return true;
  return false;
}

function parseType(value: string): { type?: string; boundary?: string } {
  const m = /^\s*([^\s;/()"]+)\s*\/\s*([^\s;()"]+)/.exec(value);
  const b = /;\s*boundary\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]+))/i.exec(value);
  const boundary = b ? (b[1] !== undefined ? b[1].replace(/\\(.)/g, '$1') : b[2]) : undefined;
  return { type: m ? `${m[1]!.toLowerCase()}/${m[2]!.toLowerCase()}` : undefined, boundary: boundary || undefined };
}

/** The MIME walk shared by both passes (same entities, same order). */
class Walker {
  private readonly stack: Frame[] = [];
  private atLineStart = true;
  private inBoundaryLine = false;
  private entities = 0;
  /** Convert: output of the current input chunk. */
  outs: Buffer[] = [];
  /** Scan: the decisions made so far, by entity index. */
  readonly decisions: number[] = [];

  constructor(
    private readonly convert: boolean,
    private readonly plan: number[] | undefined,
    private readonly allow8bitHeaders: boolean,
  ) {
    this.stack.push(this.frame(0, 'text/plain'));
  }

  private frame(depth: number, defaultType: string): Frame {
    const index = this.entities++;
    if (this.entities > MAX_ENTITIES) throw new DowngradeError(`more than ${MAX_ENTITIES} MIME parts`);
    return {
      index,
      depth,
      state: 'header',
      defaultType,
      mimeVersion: false,
      has8bit: false,
      high: 0,
      length: 0,
      decision: this.plan?.[index] ?? KEEP,
      cteWritten: false,
    };
  }

  private out(b: Buffer | string): void {
    if (this.convert) this.outs.push(typeof b === 'string' ? Buffer.from(b, 'latin1') : b);
  }

  feed(piece: Buffer): void {
    const lineStart = this.atLineStart;
    const complete = piece[piece.length - 1] === LF;
    this.atLineStart = complete;
    if (!lineStart && this.inBoundaryLine) {
      // The rest of an (overlong) boundary line.
      this.inBoundaryLine = !complete;
      this.out(piece);
      return;
    }
    if (lineStart && piece[0] === DASH && piece[1] === DASH && this.boundary(piece)) {
      this.inBoundaryLine = !complete;
      return;
    }
    this.dispatch(piece, lineStart, complete);
  }

  private dispatch(piece: Buffer, lineStart: boolean, complete: boolean): void {
    const f = this.stack[this.stack.length - 1]!;
    switch (f.state) {
      case 'header':
        this.headerPiece(f, piece, lineStart, complete);
        return;
      case 'body':
        this.bodyPiece(f, piece, complete);
        return;
      default:
        // A multipart's preamble or epilogue: no MIME reader shows it, but it cannot be re-encoded either.
        if (!this.convert && hasHigh(piece)) throw new DowngradeError(`8-bit data in the ${f.state === 'preamble' ? 'preamble' : 'epilogue'} of a ${f.type} part`);
        this.out(piece);
    }
  }

  /** A boundary line of one of the open multiparts (innermost first): ends what is inside it. */
  private boundary(piece: Buffer): boolean {
    for (let k = this.stack.length - 1; k >= 0; k--) {
      const m = this.stack[k]!;
      if (m.kind !== 'multipart' || m.state === 'epilogue' || !m.boundary) continue;
      if (piece.length < m.boundary.length || !piece.subarray(0, m.boundary.length).equals(m.boundary)) continue;
      while (this.stack.length - 1 > k) this.end(this.stack.pop()!, true);
      this.out(piece);
      const close = piece[m.boundary.length] === DASH && piece[m.boundary.length + 1] === DASH;
      if (close) m.state = 'epilogue';
      else {
        m.state = 'parts';
        this.stack.push(this.frame(m.depth + 1, m.childDefault!));
      }
      return true;
    }
    return false;
  }

  private headerPiece(f: Frame, piece: Buffer, lineStart: boolean, complete: boolean): void {
    const blank = lineStart && complete && (piece.length === 1 || (piece.length === 2 && piece[0] === CR));
    if (blank) {
      this.finishField(f);
      this.endHeaders(f, piece);
      return;
    }
    const continuation = !lineStart || piece[0] === SP || piece[0] === TAB;
    if (continuation && f.field) {
      this.fieldPiece(f, piece);
      return;
    }
    const text = piece.toString('latin1');
    const name = FIELD_NAME.exec(text);
    if (!name || continuation) {
      // Not a header field: the header section ended without its empty line (this line is the body's first).
      this.finishField(f);
      this.endHeaders(f, undefined);
      this.dispatch(piece, lineStart, complete);
      return;
    }
    this.finishField(f);
    const fieldName = name[0].slice(0, -1).trim().toLowerCase();
    if (f.index === 0 && fieldName === 'mime-version') f.mimeVersion = true;
    f.field = { name: fieldName, text: '', held: this.convert && fieldName === 'content-transfer-encoding' ? [] : undefined };
    this.fieldPiece(f, piece);
  }

  private fieldPiece(f: Frame, piece: Buffer): void {
    const field = f.field!;
    if (!this.convert && !this.allow8bitHeaders && hasHigh(piece)) throw new DowngradeError(`8-bit data in a header field (${field.name}) cannot be converted to 7 bit`);
    if ((field.name === 'content-type' || field.name === 'content-transfer-encoding') && field.text.length < MAX_FIELD) field.text += piece.toString('latin1');
    // Held back whole until it ends (to be replaced): so it must stay small.
    if (field.name === 'content-transfer-encoding' && field.text.length >= MAX_FIELD) throw new DowngradeError('an overlong Content-Transfer-Encoding field');
    if (field.held) field.held.push(piece);
    else this.out(piece);
  }

  private finishField(f: Frame): void {
    const field = f.field;
    if (!field) return;
    f.field = undefined;
    if (field.name === 'content-type' || field.name === 'content-transfer-encoding') {
      const value = field.text.slice(field.text.indexOf(':') + 1).replace(/\r?\n[ \t]/g, ' ');
      if (field.name === 'content-type' && f.type === undefined) {
        const t = parseType(value);
        f.type = t.type ?? f.defaultType;
        if (t.boundary) f.boundary = Buffer.from(`--${t.boundary}`, 'latin1');
      }
      if (field.name === 'content-transfer-encoding' && f.cte === undefined) f.cte = /^\s*([^\s;()]*)/.exec(value)![1]!.toLowerCase();
    }
    if (field.held) {
      const cte = NEW_CTE[f.decision];
      if (!cte) for (const p of field.held) this.out(p);
      else if (!f.cteWritten) {
        // The part's content is re-encoded: its label says so (one field, where the first one was).
        this.out(`Content-Transfer-Encoding: ${cte}\r\n`);
        f.cteWritten = true;
      }
    }
  }

  private endHeaders(f: Frame, blank: Buffer | undefined): void {
    const cte = NEW_CTE[f.decision];
    let inserted = false;
    if (this.convert && cte && !f.cteWritten) {
      // RFC 2045 4: a top-level entity is MIME only with MIME-Version.
      if (f.index === 0 && !f.mimeVersion) this.out('MIME-Version: 1.0\r\n');
      this.out(`Content-Transfer-Encoding: ${cte}\r\n`);
      f.cteWritten = true;
      inserted = true;
    }
    if (blank) this.out(blank);
    else if (inserted) this.out('\r\n');
    const type = f.type ?? f.defaultType;
    f.type = type;
    const encoded = f.cte === 'quoted-printable' || f.cte === 'base64';
    if (type.startsWith('multipart/') && f.boundary && f.depth < MAX_DEPTH && !encoded) {
      f.kind = 'multipart';
      f.state = 'preamble';
      f.childDefault = type === 'multipart/digest' ? 'message/rfc822' : 'text/plain';
    } else if (type === 'message/rfc822' && f.depth < MAX_DEPTH && !encoded) {
      f.kind = 'message';
      f.state = 'nested';
      this.stack.push(this.frame(f.depth + 1, 'text/plain'));
    } else {
      f.kind = 'leaf';
      f.state = 'body';
      if (this.convert && f.decision === QP) f.enc = new QpEncoder();
      if (this.convert && f.decision === BASE64) f.enc = new Base64Encoder();
    }
  }

  private bodyPiece(f: Frame, piece: Buffer, complete: boolean): void {
    if (!this.convert) {
      f.length += piece.length;
      for (let i = 0; i < piece.length; i++) if (piece[i]! > 127) f.high++;
      if (f.high) f.has8bit = true;
      return;
    }
    if (!f.enc) {
      this.out(piece);
      return;
    }
    if (f.held) {
      this.out(f.enc.push(f.held));
      f.held = undefined;
    }
    if (complete) {
      const term = piece.length >= 2 && piece[piece.length - 2] === CR ? 2 : 1;
      this.out(f.enc.push(piece.subarray(0, piece.length - term)));
      f.held = piece.subarray(piece.length - term);
    } else this.out(f.enc.push(piece));
  }

  /** An entity ends: at a boundary of an enclosing multipart, or at the end of the message. */
  private end(f: Frame, byBoundary: boolean): void {
    // A part that ends within its header section has no content: nothing to convert in it.
    if (f.state === 'header') this.finishField(f);
    if (this.convert) {
      if (f.enc) {
        // At the end of the message the last line end is content; before a boundary it is the boundary's.
        if (f.held && !byBoundary) this.out(f.enc.push(f.held));
        this.out(f.enc.end());
        if (f.held && byBoundary) this.out(f.held);
        else if (!byBoundary && f.enc instanceof Base64Encoder) this.out('\r\n');
      }
      return;
    }
    this.decisions[f.index] = decide(f);
    const parent = this.stack[this.stack.length - 1];
    if (f.has8bit && parent && parent !== f) parent.has8bit = true;
  }

  finish(): void {
    while (this.stack.length) {
      const f = this.stack.pop()!;
      // The parent gets the child's 8-bit flag before its own end (end() looks at the top of the stack).
      this.end(f, false);
    }
  }
}

function decide(f: Frame): number {
  if (!f.has8bit) return KEEP;
  const cte = f.cte || '7bit';
  const type = f.type ?? f.defaultType;
  if (f.kind === 'multipart' || f.kind === 'message') return cte === '8bit' || cte === 'binary' ? RELABEL_7BIT : KEEP;
  if (type.startsWith('multipart/')) throw new DowngradeError(`8-bit data in a ${type} part that cannot be parsed (no boundary, encoded, or nested too deeply)`);
  if (type === 'message/rfc822') throw new DowngradeError(`8-bit data in a message/rfc822 part that cannot be parsed (declared ${cte}, or nested too deeply)`);
  if (type === 'message/partial' || type === 'message/external-body') throw new DowngradeError(`8-bit data in a ${type} part (RFC 2046 allows it 7bit only)`);
  if (cte === 'quoted-printable' || cte === 'base64') throw new DowngradeError(`8-bit data in a part declared ${cte}`);
  if (cte !== '7bit' && cte !== '8bit' && cte !== 'binary') throw new DowngradeError(`8-bit data in a part with the unknown transfer encoding "${cte}"`);
  if (cte === 'binary') return BASE64;
  const major = type.split('/')[0];
  // Text stays readable as QP unless more than 1 byte in 8 is 8-bit (sendmail's
  // rule: mostly non-Latin text, where QP would be far larger than base64).
  if (major === 'text' || major === 'message') return f.high * 8 > f.length ? BASE64 : QP;
  return BASE64;
}

/** Pass 1: what to convert, or the DowngradeError that says why the message cannot be. */
export async function scan(source: AsyncIterable<Buffer>, o: ScanOptions = {}): Promise<DowngradePlan> {
  const w = new Walker(false, undefined, !!o.allow8bitHeaders);
  for await (const batch of pieces(source)) for (const p of batch) w.feed(p);
  w.finish();
  return { decisions: w.decisions, changed: w.decisions.some((d) => d !== KEEP) };
}

/** Pass 2: the message converted by `plan` (from scan() over the same bytes). */
export async function* convert(source: AsyncIterable<Buffer>, plan: DowngradePlan): AsyncGenerator<Buffer> {
  const w = new Walker(true, plan.decisions, true);
  for await (const batch of pieces(source)) {
    for (const p of batch) w.feed(p);
    if (w.outs.length) {
      yield Buffer.concat(w.outs);
      w.outs = [];
    }
  }
  w.finish();
  if (w.outs.length) yield Buffer.concat(w.outs);
}
