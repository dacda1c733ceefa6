// Message body decoding for DATA (dot-unstuffing, end-of-data detection) and
// checking for DATA and text BDAT chunks. Only CR LF "." CR LF ends DATA; a
// bare CR or LF anywhere, a NUL, an over-long line or too many octets is a
// violation: the decoder stops emitting, keeps scanning for the real end of
// data, and the session answers 5xx there (SMTP smuggling, CVE-2023-51764).
//
// The scan works on whole buffers with indexOf (native), one pass per chunk;
// emitted data are zero-copy slices of the input except where a stuffed dot
// is removed.

export type Violation = 'bare_line_ending' | 'nul' | 'line_too_long' | 'size';

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

/** "\n." : where a line starting with a dot begins (stuffed dot or the end marker). */
const LF_DOT = Buffer.from('\n.', 'latin1');
/** A CR not followed by LF, an LF not preceded by CR. */
const BARE_LINE_ENDING = /\r(?!\n)|(?<!\r)\n/;
/** Shorter runs of lines are walked: the regular expression's setup would cost more. */
const FAST_LINES_MIN = 256;

const enum State {
  /** At the start of a line (after CR LF, or at the start of the body). */
  LineStart,
  /** Saw "." at the start of a line (DATA only); the dot is dropped. */
  Dot,
  /** Saw "." CR at the start of a line (DATA only). */
  DotCr,
  /** Inside a line. */
  InLine,
  /** Inside a line; the last octet of the previous buffer was CR. */
  InLineCr,
}

export interface BodyLimits {
  /** Longest line, CR LF included (RFC 5321: 1000). 0 = unlimited. */
  maxLineLength: number;
  /** Largest body (after unstuffing). 0 = unlimited. */
  maxSize: number;
  /** Refuse NUL octets. */
  rejectNul: boolean;
}

export class BodyDecoder {
  private state = State.LineStart;
  private lineLen = 0;
  /** Octets of body accepted so far (after unstuffing). */
  size = 0;
  /** Octets seen in total, even after a violation. */
  seen = 0;
  /** The first violation, if any; nothing is emitted after it. */
  violation: Violation | undefined;
  private readonly maxContent: number;

  /**
   * @param dotStuffed DATA (dot-stuffing and end marker) rather than a BDAT chunk.
   */
  constructor(
    private readonly dotStuffed: boolean,
    private readonly limits: BodyLimits,
  ) {
    this.maxContent = limits.maxLineLength > 0 ? limits.maxLineLength - 2 : Number.MAX_SAFE_INTEGER;
  }

  /**
   * Whether feed() passes runs of ordinary lines with cleanLinesEnd (true)
   * or walks every line (false: only for tests, which compare the two).
   */
  static fastLines = true;

  /**
   * From a line start `i`, the end (just after its LF) of the longest run of
   * whole lines that need nothing but passing on: no line starting with "."
   * (DATA), every line ending CR LF with no other CR or LF, none longer than
   * allowed. `i` when there is no such run or it is too short to be worth it;
   * feed() then walks the lines one by one, and finds and records any
   * violation itself. Walking the lines costs two native searches and a few
   * state changes per line (a 64 KiB body is ~860 lines); this is one search
   * for "\n.", one regular expression over a latin1 view and a stride of
   * about a line limit between line length checks per read, about half the
   * cost (docs/performance.md).
   */
  private cleanLinesEnd(buf: Buffer, i: number): number {
    let limit = buf.length;
    if (this.dotStuffed) {
      const dotLine = buf.indexOf(LF_DOT, i);
      if (dotLine !== -1) limit = dotLine + 1;
    }
    const stop = buf.lastIndexOf(LF, limit - 1) + 1;
    if (stop - i < FAST_LINES_MIN) return i;
    if (BARE_LINE_ENDING.test(buf.toString('latin1', i, stop))) return i;
    if (this.limits.maxLineLength > 0) {
      // Line by line only every ~maxLineLength bytes: from a line start p,
      // the last LF at or before p + maxContent + 1 ends a line that fits
      // (CR LF pairs are known good here); none there means one does not.
      const reach = this.maxContent + 1;
      for (let p = i; stop - p > reach + 1; ) {
        const lf = buf.lastIndexOf(LF, p + reach);
        if (lf < p) return i;
        p = lf + 1;
      }
    }
    return stop;
  }

  private violate(v: Violation): void {
    if (this.violation === undefined) this.violation = v;
  }

  /**
   * Feeds `buf`; calls `emit` with body segments (slices of `buf`). Returns
   * the index just after the end-of-data marker (DATA), or -1 when the whole
   * buffer was consumed without reaching it.
   */
  feed(buf: Buffer, emit: (segment: Buffer) => void): number {
    const n = buf.length;
    const dot = this.dotStuffed;
    let i = 0;
    let segStart = 0;
    let nextLf = -2;
    let nextCr = -2;
    let end = -1;
    const nul = this.limits.rejectNul && this.violation === undefined ? buf.indexOf(0) : -1;

    const flush = (to: number) => {
      if (to > segStart && this.violation === undefined) {
        const len = to - segStart;
        if (this.limits.maxSize > 0 && this.size + len > this.limits.maxSize) {
          this.violate('size');
        } else {
          this.size += len;
          emit(buf.subarray(segStart, to));
        }
      }
    };

    scan: while (i < n) {
      switch (this.state) {
        case State.LineStart: {
          if (dot && buf[i] === DOT) {
            flush(i);
            i++;
            segStart = i;
            this.state = State.Dot;
            continue;
          }
          const clean = BodyDecoder.fastLines && this.violation === undefined ? this.cleanLinesEnd(buf, i) : i;
          if (clean > i) {
            i = clean; // still at a line start
            continue;
          }
          this.state = State.InLine;
          continue;
        }
        case State.Dot:
          if (buf[i] === CR) {
            this.state = State.DotCr;
            i++;
            continue;
          }
          this.state = State.InLine;
          continue;
        case State.DotCr:
          if (buf[i] === LF) {
            end = i + 1;
            this.state = State.LineStart;
            break scan;
          }
          this.violate('bare_line_ending'); // "." CR not followed by LF
          this.state = State.InLine;
          continue;
        case State.InLineCr:
          if (buf[i] === LF) {
            i++;
            this.lineLen = 0;
            this.state = State.LineStart;
          } else {
            this.violate('bare_line_ending');
            this.state = State.InLine;
          }
          continue;
        case State.InLine: {
          if (nextLf < i && nextLf !== -1) nextLf = buf.indexOf(LF, i);
          if (nextCr < i && nextCr !== -1) nextCr = buf.indexOf(CR, i);
          if (nextLf === -1) {
            // The line goes on past this buffer.
            if (buf[n - 1] === CR) {
              if (nextCr < n - 1) this.violate('bare_line_ending');
              this.lineLen += n - 1 - i;
              this.state = State.InLineCr;
            } else {
              if (nextCr !== -1) this.violate('bare_line_ending');
              this.lineLen += n - i;
            }
            if (this.lineLen > this.maxContent) this.violate('line_too_long');
            i = n;
            break;
          }
          const lf = nextLf;
          if (lf === i || buf[lf - 1] !== CR) {
            // Bare LF: not a line end for us, so a following "." is not a line start.
            this.violate('bare_line_ending');
            this.lineLen = 0;
            i = lf + 1;
            continue;
          }
          if (nextCr !== -1 && nextCr < lf - 1) this.violate('bare_line_ending');
          this.lineLen += lf - 1 - i;
          if (this.lineLen > this.maxContent) this.violate('line_too_long');
          this.lineLen = 0;
          i = lf + 1;
          this.state = State.LineStart;
          continue;
        }
      }
    }

    if (end >= 0) {
      // The segment before the terminating "." was flushed when the dot was seen.
      this.seen += end;
      if (nul >= 0 && nul < end) this.violate('nul');
      return end;
    }
    if (nul >= 0) this.violate('nul');
    this.seen += n;
    // Hold back a CR that may be the start of the end marker's ".\r\n".
    flush(this.state === State.DotCr ? n - 1 : n);
    return -1;
  }

  /** For BDAT: the body must not end in the middle of a CR LF pair. */
  finish(): void {
    if (this.state === State.InLineCr) this.violate('bare_line_ending');
  }
}
