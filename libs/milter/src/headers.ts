// A message's header section as milters see and change it: fields in order,
// each kept byte for byte until a milter changes it, with the milter
// protocol's rules for changes (CHGHEADER counts occurrences of a name from
// 1, an empty value deletes, an index past the last occurrence adds;
// INSHEADER counts positions from 0 at the top).
import type { Modification } from './session';

export interface HeaderField {
  name: string;
  /** The text after the colon: CRLF folds, no final CRLF. */
  raw: string;
  /** The field as it arrived (latin1, with its CRLF); dropped once changed. */
  original?: string;
}

const FIELD = /^([!-9;-~]+)[ \t]*:/;

/**
 * The fields at the start of `buf` and where the body starts (after the
 * blank line, `blankLine` true, or at the first line that is not a field). Only whole lines
 * count: a line cut off at the end of `buf` is left to the body.
 */
export function parseHeaderSection(buf: Buffer): { fields: HeaderField[]; bodyStart: number; blankLine: boolean } {
  const fields: HeaderField[] = [];
  let pos = 0;
  for (;;) {
    const eol = buf.indexOf('\r\n', pos);
    if (eol < 0) return { fields, bodyStart: pos, blankLine: false };
    if (eol === pos) return { fields, bodyStart: pos + 2, blankLine: true };
    const first = buf[pos];
    if (first === 0x20 || first === 0x09) {
      const last = fields[fields.length - 1];
      // A continuation with no field before it: not a header section.
      if (!last) return { fields, bodyStart: pos, blankLine: false };
      const line = buf.toString('latin1', pos, eol + 2);
      last.raw += `\r\n${line.slice(0, -2)}`;
      last.original += line;
    } else {
      const line = buf.toString('latin1', pos, eol + 2);
      const m = FIELD.exec(line);
      if (!m) return { fields, bodyStart: pos, blankLine: false };
      fields.push({ name: m[1]!, raw: line.slice(m[0].length, -2), original: line });
    }
    pos = eol + 2;
  }
}

/** The fields as stored: unchanged ones byte for byte, others as "Name:" + raw + CRLF. */
export function serializeHeaders(fields: readonly HeaderField[]): Buffer {
  return Buffer.from(fields.map((f) => f.original ?? `${f.name}:${f.raw}\r\n`).join(''), 'latin1');
}

/** Applies a header modification in place; other modifications are not its business. */
export function applyHeaderChange(fields: HeaderField[], m: Modification): void {
  switch (m.type) {
    case 'addheader':
      fields.push({ name: m.name, raw: m.raw });
      return;
    case 'insheader':
      fields.splice(Math.min(m.index, fields.length), 0, { name: m.name, raw: m.raw });
      return;
    case 'chgheader': {
      const key = m.name.toLowerCase();
      let seen = 0;
      // Index 0 is taken as 1, as Sendmail does.
      const want = Math.max(1, m.index);
      for (let i = 0; i < fields.length; i++) {
        if (fields[i]!.name.toLowerCase() !== key || ++seen !== want) continue;
        if (m.raw === undefined) fields.splice(i, 1);
        else fields[i] = { name: fields[i]!.name, raw: m.raw };
        return;
      }
      if (m.raw !== undefined) fields.push({ name: m.name, raw: m.raw });
      return;
    }
    default:
      return;
  }
}
