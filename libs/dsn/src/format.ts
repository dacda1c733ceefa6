// Small formatting helpers: RFC 5322 dates, header folding, quoted-printable,
// word wrapping and sanitising of text that came from remote servers.

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 date-time in UTC: "Thu, 01 Jan 2026 10:00:00 +0000". */
export function rfc5322Date(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${p(d.getUTCDate())} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/**
 * Replaces line breaks and other control characters with spaces and
 * collapses runs of white space. With `ascii`, non-ASCII characters become
 * "?" (for fields of a report that is not SMTPUTF8).
 */
export function sanitize(value: string, ascii: boolean): string {
  // eslint-disable-next-line no-control-regex
  let out = value.replace(/[\x00-\x1f\x7f]+/g, ' ');
  if (ascii) out = out.replace(/[^\x20-\x7e]/gu, '?');
  else out = out.replace(/[\u0080-\u009f\u2028\u2029]/g, ' ');
  return out.replace(/ {2,}/g, ' ').trim();
}

/**
 * One header field "Name: value", folded at spaces so lines stay within
 * `width` characters where the words allow (RFC 5322 2.2.3). Returns the
 * field with CRLF line ends and a final CRLF.
 */
export function foldField(name: string, value: string, width = 78): string {
  const words = value.split(' ').filter((w) => w !== '');
  let line = `${name}:`;
  const lines: string[] = [];
  for (const word of words) {
    if (line.length + 1 + word.length > width && line.trim() !== `${name}:` && line.length > 1) {
      lines.push(line);
      line = ` ${word}`;
    } else {
      line += ` ${word}`;
    }
  }
  lines.push(line);
  return lines.join('\r\n') + '\r\n';
}

/** Word-wraps `text` at `width`, continuation lines indented by `indent` spaces. */
export function wrap(text: string, width = 76, indent = 0): string[] {
  const words = text.split(' ').filter((w) => w !== '');
  const lines: string[] = [];
  let line = '';
  for (const word of words) {
    const candidate = line === '' ? word : `${line} ${word}`;
    const prefix = lines.length > 0 ? indent : 0;
    if (line !== '' && prefix + candidate.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = candidate;
    }
  }
  if (line !== '' || lines.length === 0) lines.push(line);
  const pad = ' '.repeat(indent);
  return lines.map((l, i) => (i === 0 ? l : pad + l));
}

/** Quoted-printable (RFC 2045 6.7) of UTF-8 text whose lines are separated by "\n". */
export function quotedPrintable(text: string): string {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const bytes = Buffer.from(line, 'utf8');
    let encoded = '';
    let current = '';
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i]!;
      const last = i === bytes.length - 1;
      let token: string;
      if ((b >= 0x21 && b <= 0x7e && b !== 0x3d) || ((b === 0x20 || b === 0x09) && !last)) token = String.fromCharCode(b);
      else token = `=${b.toString(16).toUpperCase().padStart(2, '0')}`;
      if (current.length + token.length > 75) {
        encoded += current + '=\r\n';
        current = '';
      }
      current += token;
    }
    out.push(encoded + current);
  }
  return out.join('\r\n');
}

/** True if every character is US-ASCII. */
export function isAscii(value: string | Buffer): boolean {
  if (typeof value === 'string') {
    for (let i = 0; i < value.length; i++) if (value.charCodeAt(i) > 0x7f) return false;
    return true;
  }
  for (const b of value) if (b > 0x7f) return false;
  return true;
}
