// Address handling for policy decisions: a small RFC 5321 mailbox parser,
// the routing-trick detector, and the normalisation used as lookup keys.
// Kept in one module so it can be swapped for @tern/smtp's parser once that
// library exports one.
import { domainToASCII } from 'node:url';

export type RoutingTrick = 'source_route' | 'percent_hack' | 'bang_path' | 'quoted_at' | 'double_at';

export interface Address {
  /** Local part as written, without surrounding quotes (escapes resolved). */
  local: string;
  /** Domain in lower case, without a trailing dot (A-labels for IDNs); an address literal keeps its brackets. */
  domain: string;
  quoted: boolean;
}

// RFC 5322 atext; RFC 6531 adds any UTF-8 non-ASCII character.
const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10FFFF}]+$/u;
const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

function stripBrackets(raw: string): string {
  const s = raw.trim();
  return s.startsWith('<') && s.endsWith('>') ? s.slice(1, -1) : s;
}

/** Recognises the ways a local part can smuggle a second destination. */
export function detectRoutingTrick(raw: string): RoutingTrick | null {
  let s = stripBrackets(raw);
  if (s.startsWith('@')) return 'source_route';
  let local: string;
  if (s.startsWith('"')) {
    let i = 1;
    let text = '';
    for (; i < s.length && s[i] !== '"'; i++) {
      if (s[i] === '\\') i++;
      text += s[i] ?? '';
    }
    if (text.includes('@')) return 'quoted_at';
    local = text;
    s = s.slice(i + 1);
    if (s.startsWith('@') && s.slice(1).includes('@')) return 'double_at';
  } else {
    const at = s.lastIndexOf('@');
    local = at < 0 ? s : s.slice(0, at);
    if (local.includes('@')) return 'double_at';
  }
  if (local.includes('%')) return 'percent_hack';
  if (local.includes('!')) return 'bang_path';
  return null;
}

/** A valid domain name (LDH labels, IDNs as A-labels) in canonical form, or null. */
export function normalizeDomain(raw: string): string | null {
  let s = raw.trim();
  if (s.endsWith('.')) s = s.slice(0, -1);
  if (s === '' || /[\s@]/.test(s)) return null;
  const ascii = /^[\x21-\x7e]*$/.test(s) ? s.toLowerCase() : domainToASCII(s);
  if (!ascii || ascii.length > 253) return null;
  return ascii.split('.').every((l) => LABEL.test(l)) ? ascii : null;
}

function validLiteral(s: string): boolean {
  const inner = s.slice(1, -1);
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(inner)) return inner.split('.').every((n) => Number(n) <= 255);
  return /^IPv6:[0-9a-f:.]+$/i.test(inner);
}

/** Parses "local@domain" (angle brackets allowed). Null when it is not a plain RFC 5321 mailbox. */
export function parseAddress(raw: string): Address | null {
  const s = stripBrackets(raw);
  if (s.length > 254 + 2 || s.startsWith('@')) return null;
  let local: string;
  let rest: string;
  let quoted = false;
  if (s.startsWith('"')) {
    let i = 1;
    local = '';
    for (; i < s.length && s[i] !== '"'; i++) {
      const c = s[i] as string;
      if (c === '\\') {
        i++;
        if (i >= s.length) return null;
        local += s[i];
      } else if (/[\x20-\x7e]/.test(c) || c > '\x7f') local += c;
      else return null;
    }
    if (s[i] !== '"') return null;
    rest = s.slice(i + 1);
    quoted = true;
  } else {
    const at = s.indexOf('@');
    if (at < 0) return null;
    local = s.slice(0, at);
    rest = s.slice(at);
    if (local === '' || !local.split('.').every((atom) => ATEXT.test(atom))) return null;
  }
  if (!rest.startsWith('@') || Buffer.byteLength(local) > 64) return null;
  const domainPart = rest.slice(1);
  if (domainPart.startsWith('[') && domainPart.endsWith(']')) {
    return validLiteral(domainPart) ? { local, domain: domainPart.toLowerCase(), quoted } : null;
  }
  const domain = normalizeDomain(domainPart);
  return domain ? { local, domain, quoted } : null;
}

/** The lookup key of an address: lower-cased local part @ canonical domain. */
export function addressKey(addr: Address): string {
  return `${addr.local.toLowerCase()}@${addr.domain}`;
}

/** A display form for replies: <local@domain>. */
export function formatAddress(raw: string): string {
  return `<${stripBrackets(raw)}>`;
}

/** Canonicalises an operator-given mailbox address (dot-atom local part only). */
export function normalizeMailboxAddress(raw: string): string | null {
  const addr = parseAddress(raw);
  if (!addr || addr.quoted || addr.domain.startsWith('[') || detectRoutingTrick(raw)) return null;
  return addressKey(addr);
}
