// Mail addresses as RFC 5321 (section 4.1.2) and RFC 6531 (SMTPUTF8) define
// them: dot-string or quoted local parts, domains or address literals,
// source routes accepted and stripped, "<>" and bare "<postmaster>".
// Strict where it matters: no spaces outside quotes, no missing angle
// brackets, no empty labels, no control characters, non-ASCII only with
// SMTPUTF8. Policy and delivery reuse these functions.
import net from 'node:net';
import { domainToASCII } from 'node:url';

export interface ParsedAddress {
  /**
   * Canonical form "local@domain": the local part is quoted only when it has
   * to be. "" is the null reverse-path; "postmaster" the bare postmaster.
   */
  address: string;
  /** The local part without quoting (quoted pairs resolved). */
  local: string;
  /** Domain as given (an address literal keeps its brackets); "" for null/bare postmaster. */
  domain: string;
  /** Lower-case ASCII form of the domain (IDNA A-labels); literals as given. */
  asciiDomain: string;
  /** Whether the address contains non-ASCII characters. */
  utf8: boolean;
  isNull: boolean;
  /** Bare "postmaster" without a domain (RCPT only). */
  isPostmaster: boolean;
  /** The domain is an address literal. */
  literal?: 'ipv4' | 'ipv6';
  /** Whether the local part was written as a quoted string. */
  quoted: boolean;
}

export interface AddressOptions {
  /** Allow non-ASCII (RFC 6531); MAIL with SMTPUTF8. */
  utf8?: boolean;
  /** Accept "<>" (MAIL FROM). */
  allowNull?: boolean;
  /** Accept a bare "<postmaster>" (RCPT TO). */
  allowPostmaster?: boolean;
}

export type AddressErrorKind = 'syntax' | 'non_ascii' | 'too_long';

export type PathResult =
  | { ok: true; address: ParsedAddress; /** index just after ">" */ end: number }
  | { ok: false; kind: AddressErrorKind; message: string };

export type AddressResult = { ok: true; address: ParsedAddress } | { ok: false; kind: AddressErrorKind; message: string };

const MAX_PATH_OCTETS = 256;
const MAX_DOMAIN_OCTETS = 255;
const MAX_LABEL_OCTETS = 63;

// atext per RFC 5322: ALPHA / DIGIT / "!#$%&'*+-/=?^_`{|}~"
const ATEXT = new Uint8Array(128);
for (const c of "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~") ATEXT[c.charCodeAt(0)] = 1;

function isAtext(code: number, utf8: boolean): boolean {
  if (code < 128) return ATEXT[code] === 1;
  return utf8 && isUtf8NonAscii(code);
}

// Non-ASCII code points allowed in addresses: no C1 controls, no lone surrogates
// (a surrogate pair is checked as two halves that must pair up).
function isUtf8NonAscii(code: number): boolean {
  return code >= 0xa0 && code !== 0xfffd;
}

function fail(kind: AddressErrorKind, message: string): { ok: false; kind: AddressErrorKind; message: string } {
  return { ok: false, kind, message };
}

function hasLoneSurrogate(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c > 0xdbff) return true;
    const n = s.charCodeAt(i + 1);
    if (!(n >= 0xdc00 && n <= 0xdfff)) return true;
    i++;
  }
  return false;
}

function isDotString(s: string, utf8: boolean): boolean {
  if (s.length === 0) return false;
  let prevDot = true;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2e) {
      if (prevDot) return false;
      prevDot = true;
    } else if (isAtext(c, utf8)) prevDot = false;
    else return false;
  }
  return !prevDot;
}

/** Parses a domain or address literal; returns the A-label form or an error. */
export function parseDomain(
  domain: string,
  utf8 = false,
): { ok: true; ascii: string; literal?: 'ipv4' | 'ipv6' } | { ok: false; kind: AddressErrorKind; message: string } {
  if (domain.length === 0) return fail('syntax', 'empty domain');
  if (domain.charCodeAt(0) === 0x5b /* [ */) {
    if (!domain.endsWith(']')) return fail('syntax', 'unterminated address literal');
    const inner = domain.slice(1, -1);
    if (net.isIPv4(inner) && /^\d{1,3}(\.\d{1,3}){3}$/.test(inner)) return { ok: true, ascii: domain, literal: 'ipv4' };
    if (/^ipv6:/i.test(inner) && net.isIPv6(inner.slice(5)) && !inner.includes('%')) {
      return { ok: true, ascii: `[IPv6:${inner.slice(5).toLowerCase()}]`, literal: 'ipv6' };
    }
    return fail('syntax', 'invalid address literal');
  }
  if (Buffer.byteLength(domain) > MAX_DOMAIN_OCTETS) return fail('too_long', 'domain too long');
  let nonAscii = false;
  const labels = domain.split('.');
  for (const label of labels) {
    if (label.length === 0) return fail('syntax', 'empty domain label');
    let ascii = true;
    for (let i = 0; i < label.length; i++) {
      const c = label.charCodeAt(i);
      if (c >= 128) {
        ascii = false;
        continue;
      }
      const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2d;
      if (!ok) return fail('syntax', 'invalid character in domain');
    }
    if (ascii) {
      if (label.length > MAX_LABEL_OCTETS) return fail('too_long', 'domain label too long');
      if (label.charCodeAt(0) === 0x2d || label.charCodeAt(label.length - 1) === 0x2d) {
        return fail('syntax', 'domain label starts or ends with a hyphen');
      }
    } else nonAscii = true;
  }
  if (nonAscii && !utf8) return fail('non_ascii', 'non-ASCII domain requires SMTPUTF8');
  if (nonAscii && hasLoneSurrogate(domain)) return fail('syntax', 'invalid character in domain');
  const needsIdna = nonAscii || /(^|\.)xn--/i.test(domain);
  if (!needsIdna) return { ok: true, ascii: domain.toLowerCase() };
  const ascii = domainToASCII(domain);
  if (!ascii || ascii.split('.').some((l) => l.length === 0 || l.length > MAX_LABEL_OCTETS)) {
    return fail('syntax', 'invalid internationalized domain name');
  }
  return { ok: true, ascii: ascii.toLowerCase() };
}

function canonicalLocal(local: string, utf8: boolean): string {
  if (isDotString(local, utf8)) return local;
  return `"${local.replace(/(["\\])/g, '\\$1')}"`;
}

/**
 * Parses a mailbox without angle brackets ("local@domain"), e.g. from
 * configuration or an ORCPT value. No source route, no null address.
 */
export function parseAddress(input: string, opts: AddressOptions = {}): AddressResult {
  const utf8 = opts.utf8 ?? false;
  if (opts.allowPostmaster && input.toLowerCase() === 'postmaster') {
    return {
      ok: true,
      address: { address: 'postmaster', local: input, domain: '', asciiDomain: '', utf8: false, isNull: false, isPostmaster: true, quoted: false },
    };
  }
  if (input.length === 0) return fail('syntax', 'empty address');
  if (hasLoneSurrogate(input)) return fail('syntax', 'invalid character in address');
  let i: number;
  let local: string;
  let quoted = false;
  let sawNonAscii = false;
  if (input.charCodeAt(0) === 0x22 /* " */) {
    quoted = true;
    let out = '';
    i = 1;
    for (;;) {
      if (i >= input.length) return fail('syntax', 'unterminated quoted string');
      const c = input.charCodeAt(i);
      if (c === 0x22) break;
      if (c === 0x5c /* \ */) {
        const n = input.charCodeAt(i + 1);
        if (!(n >= 32 && n <= 126)) return fail('syntax', 'invalid quoted pair');
        out += input[i + 1];
        i += 2;
        continue;
      }
      if (c >= 128) {
        if (!utf8) return fail('non_ascii', 'non-ASCII local part requires SMTPUTF8');
        if (!isUtf8NonAscii(c)) return fail('syntax', 'invalid character in local part');
        sawNonAscii = true;
      } else if (!(c === 32 || c === 33 || (c >= 35 && c <= 91) || (c >= 93 && c <= 126))) {
        return fail('syntax', 'invalid character in quoted local part');
      }
      out += input[i];
      i++;
    }
    i++; // closing quote
    local = out;
    if (input.charCodeAt(i) !== 0x40 /* @ */) return fail('syntax', 'expected @ after the local part');
  } else {
    const at = input.lastIndexOf('@');
    if (at <= 0) return fail('syntax', at === 0 ? 'empty local part' : 'missing domain');
    local = input.slice(0, at);
    for (let k = 0; k < local.length; k++) {
      const c = local.charCodeAt(k);
      if (c >= 128) {
        if (!utf8) return fail('non_ascii', 'non-ASCII local part requires SMTPUTF8');
        sawNonAscii = true;
      }
    }
    if (!isDotString(local, utf8)) return fail('syntax', 'invalid local part');
    i = at;
  }
  const domain = input.slice(i + 1);
  const d = parseDomain(domain, utf8);
  if (!d.ok) return d;
  if (Buffer.byteLength(input) > MAX_PATH_OCTETS - 2) return fail('too_long', 'address too long');
  const canonical = `${canonicalLocal(local, utf8)}@${d.literal === 'ipv6' ? d.ascii : domain}`;
  // eslint-disable-next-line no-control-regex
  const nonAscii = sawNonAscii || /[^\x00-\x7f]/.test(domain);
  const address: ParsedAddress = {
    address: canonical,
    local,
    domain: d.literal === 'ipv6' ? d.ascii : domain,
    asciiDomain: d.ascii,
    utf8: nonAscii,
    isNull: false,
    isPostmaster: false,
    quoted,
  };
  if (d.literal) address.literal = d.literal;
  return { ok: true, address };
}

/** Finds the ">" closing a path that starts at `start` ("<"), honouring quotes. */
function findPathEnd(s: string, start: number): number {
  let inQuote = false;
  for (let i = start + 1; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (inQuote) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inQuote = false;
    } else if (c === 0x22) inQuote = true;
    else if (c === 0x3e /* > */) return i;
    else if (c === 0x20 || c === 0x09 || c === 0x3c) return -1; // space or "<" outside quotes
  }
  return -1;
}

/**
 * Parses "<path>" starting at `start` of `s` (as in "MAIL FROM:<a@b> SIZE=1"):
 * the reverse- or forward-path, source route stripped.
 */
export function parsePath(s: string, start = 0, opts: AddressOptions = {}): PathResult {
  if (s.charCodeAt(start) !== 0x3c /* < */) return fail('syntax', 'address must be enclosed in <>');
  const end = findPathEnd(s, start);
  if (end < 0) return fail('syntax', 'address must be enclosed in <> without spaces');
  let inner = s.slice(start + 1, end);
  if (Buffer.byteLength(inner) > MAX_PATH_OCTETS - 2) return fail('too_long', 'path too long');
  if (inner.length === 0) {
    if (!opts.allowNull) return fail('syntax', 'null address not allowed here');
    return {
      ok: true,
      end: end + 1,
      address: { address: '', local: '', domain: '', asciiDomain: '', utf8: false, isNull: true, isPostmaster: false, quoted: false },
    };
  }
  // Source route "@a,@b:mailbox" (RFC 5321 A-d-l): checked, then ignored.
  if (inner.charCodeAt(0) === 0x40 /* @ */) {
    const colon = inner.indexOf(':');
    if (colon < 0) return fail('syntax', 'invalid source route');
    for (const hop of inner.slice(0, colon).split(',')) {
      if (hop.charCodeAt(0) !== 0x40) return fail('syntax', 'invalid source route');
      const d = parseDomain(hop.slice(1), opts.utf8 ?? false);
      if (!d.ok) return fail(d.kind, `invalid source route: ${d.message}`);
    }
    inner = inner.slice(colon + 1);
  }
  const r = parseAddress(inner, opts);
  if (!r.ok) return r;
  return { ok: true, address: r.address, end: end + 1 };
}

/**
 * Splits "local@domain" at the "@" that separates the domain (the last one;
 * a quoted local part may contain "@"). The local part is returned as written.
 */
export function splitAddress(address: string): { local: string; domain: string } {
  const at = address.lastIndexOf('@');
  if (at < 0) return { local: address, domain: '' };
  return { local: address.slice(0, at), domain: address.slice(at + 1) };
}

/** The domain of an address, lowercased ("" without an "@"): a queue destination, a policy domain key. */
export function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase();
}

export type RoutingTrick = 'percent_hack' | 'bang_path' | 'quoted_at' | 'multiple_at' | 'source_route';

/**
 * Detects local parts that ask a relay to route further ("a%b@c" percent
 * hack, "b!a@c" bang path, a quoted local part holding "@", "u@d@e", "@a:u@b").
 * Policy treats such recipients as relaying, never as local.
 */
export function detectRoutingTrick(address: string): RoutingTrick | undefined {
  if (address.startsWith('@')) return 'source_route';
  const { local } = splitAddress(address);
  let unquoted = local;
  let wasQuoted = false;
  if (local.length >= 2 && local.startsWith('"') && local.endsWith('"')) {
    wasQuoted = true;
    unquoted = local.slice(1, -1).replace(/\\(.)/g, '$1');
  }
  if (unquoted.includes('@')) return wasQuoted ? 'quoted_at' : 'multiple_at';
  if (unquoted.includes('%')) return 'percent_hack';
  if (unquoted.includes('!')) return 'bang_path';
  return undefined;
}
