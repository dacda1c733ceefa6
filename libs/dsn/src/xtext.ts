// xtext (RFC 3461 section 4) and the RFC 6533 utf-8 address forms, for the
// ENVID and ORCPT values that travel from the SMTP envelope into a report or
// on to the next hop (delivery's MAIL and RCPT parameters). The one encoder
// of them in Tern.

/** Encodes a value as xtext: "+" "=" controls, space and non-ASCII become "+XX" (UTF-8 bytes). */
export function xtextEncode(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    if (byte >= 0x21 && byte <= 0x7e && byte !== 0x2b && byte !== 0x3d) out += String.fromCharCode(byte);
    else out += `+${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** Decodes xtext; throws on a malformed "+XX" escape. */
export function xtextDecode(value: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x2b) {
      const hex = value.slice(i + 1, i + 3);
      if (!/^[0-9A-F]{2}$/.test(hex)) throw new Error(`invalid xtext escape at offset ${i}`);
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (c >= 0x21 && c <= 0x7e && c !== 0x3d) {
      bytes.push(c);
    } else {
      throw new Error(`invalid xtext character at offset ${i}`);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Printable US-ASCII, spaces allowed inside (a field value that needs no encoding). */
export function isPrintableAscii(value: string): boolean {
  return /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(value);
}

/**
 * RFC 6533 utf-8-addr-unitext (`unicode`: raw UTF-8 kept, for
 * message/global-delivery-status) or utf-8-addr-xtext (everything
 * non-ASCII as \x{HEX}, for message/delivery-status). "+", "=", "\",
 * controls and spaces are always escaped.
 */
export function utf8AddrEncode(value: string, unicode: boolean): string {
  let out = '';
  for (const ch of value) {
    const cp = ch.codePointAt(0)!;
    const plain = cp >= 0x21 && cp <= 0x7e && ch !== '+' && ch !== '=' && ch !== '\\';
    if (plain || (unicode && cp > 0x7f && !(cp >= 0x80 && cp <= 0x9f))) out += ch;
    else out += `\\x{${cp.toString(16).toUpperCase()}}`;
  }
  return out;
}

/**
 * An ORCPT as stored ("type;decoded-address") as the value of the ORCPT
 * parameter to a next hop: a utf-8 address (RFC 6533 3) as
 * utf-8-addr-unitext in a transaction that uses SMTPUTF8, else as
 * utf-8-addr-xtext (ASCII only); any other type as xtext of the address'
 * UTF-8 bytes (RFC 3461 4). Undefined for a value without a type.
 */
export function orcptParam(orcpt: string, smtputf8: boolean): string | undefined {
  const semi = orcpt.indexOf(';');
  if (semi <= 0 || semi === orcpt.length - 1) return undefined;
  const type = orcpt.slice(0, semi);
  const address = orcpt.slice(semi + 1);
  return type.toLowerCase() === 'utf-8' ? `${type};${utf8AddrEncode(address, smtputf8)}` : `${type};${xtextEncode(address)}`;
}
