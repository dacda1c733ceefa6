// Address handling for policy decisions, on top of @tern/smtp's RFC 5321
// parser and routing-trick detector (the same code ingress parses with), plus
// the normalisation used as lookup keys.
import { detectRoutingTrick as smtpRoutingTrick, parseAddress as smtpParseAddress, parseDomain, type RoutingTrick } from '@tern/smtp';

export type { RoutingTrick };

export interface Address {
  /** Local part as written, without surrounding quotes (escapes resolved). */
  local: string;
  /** Domain in lower case (A-labels for IDNs); an address literal keeps its brackets. */
  domain: string;
  quoted: boolean;
}

function stripBrackets(raw: string): string {
  const s = raw.trim();
  return s.startsWith('<') && s.endsWith('>') ? s.slice(1, -1) : s;
}

/** Recognises the ways an address can smuggle a second destination (percent hack, bang path, quoted @, a@b@c, source route). */
export function detectRoutingTrick(raw: string): RoutingTrick | null {
  return smtpRoutingTrick(stripBrackets(raw)) ?? null;
}

/** A valid domain name (LDH labels, IDNs as A-labels, no literals) in canonical form, or null. */
export function normalizeDomain(raw: string): string | null {
  let s = raw.trim();
  if (s.endsWith('.')) s = s.slice(0, -1);
  if (s === '' || /[\s@]/.test(s)) return null;
  const d = parseDomain(s, true);
  if (!d.ok || d.literal) return null;
  return d.ascii;
}

/** Parses "local@domain" (angle brackets allowed). Null when it is not a plain RFC 5321 mailbox. */
export function parseAddress(raw: string): Address | null {
  const r = smtpParseAddress(stripBrackets(raw), { utf8: true });
  if (!r.ok) return null;
  return { local: r.address.local, domain: r.address.asciiDomain, quoted: r.address.quoted };
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
  const addr = parseAddress(raw.trim());
  if (!addr || addr.quoted || addr.domain.startsWith('[') || detectRoutingTrick(raw)) return null;
  return addressKey(addr);
}
