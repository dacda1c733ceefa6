// Header address rewriting (policy's canonical and masquerade rules that
// ask for headers): the addresses of From, Sender and Reply-To (as senders,
// Postfix's class for them) and To and Cc (as recipients) are sent to
// PolicyService.RewriteAddresses in one call, and each one policy changes is
// replaced where it stands. Only the address is replaced: display names,
// comments, groups, folding and every other field stay as the client wrote
// them. The header section is rewritten before the queue commit; delivery
// signs (DKIM) what is stored, so its signature covers the rewritten fields.
import { AddressRole, RewriteAddressesRequest } from '@tern/proto';
import { call, type PolicyClient } from './clients';

const ROLES: Record<string, AddressRole> = {
  from: AddressRole.ADDRESS_ROLE_SENDER,
  sender: AddressRole.ADDRESS_ROLE_SENDER,
  'reply-to': AddressRole.ADDRESS_ROLE_SENDER,
  to: AddressRole.ADDRESS_ROLE_RECIPIENT,
  cc: AddressRole.ADDRESS_ROLE_RECIPIENT,
};

/** Addresses asked about per message at most (RewriteAddresses takes 1000): the rest stay as they are. */
const MAX_ADDRESSES = 1000;

interface Span {
  /** Offsets in the header section text. */
  start: number;
  end: number;
  address: string;
  role: AddressRole;
}

/** The spans of the addresses in one address-list field value starting at `base` (RFC 5322 3.4: angle addresses, bare addr-specs, groups). */
export function addressSpans(value: string, base: number, role: AddressRole): Span[] {
  const out: Span[] = [];
  let quoted = false;
  let comment = 0;
  let segStart = 0;
  let lt = -1;
  let gt = -1;
  const close = (end: number) => {
    if (lt >= 0 && gt > lt) {
      const inner = value.slice(lt + 1, gt);
      const trimmed = inner.trim();
      // A source route (<@a,@b:user@d>) is left alone.
      if (trimmed.includes('@') && !trimmed.startsWith('@')) {
        const s = lt + 1 + inner.indexOf(trimmed);
        out.push({ start: base + s, end: base + s + trimmed.length, address: trimmed, role });
      }
    } else if (lt < 0) {
      // A bare addr-spec: the segment without comments and whitespace.
      const seg = value.slice(segStart, end).replace(/\([^()]*\)/g, (m) => ' '.repeat(m.length));
      const m = /[^\s<>(),;:"@]+@[^\s<>(),;:"@]+/.exec(seg);
      if (m && seg.trim() === m[0]) out.push({ start: base + segStart + m.index, end: base + segStart + m.index + m[0].length, address: m[0], role });
    }
    lt = -1;
    gt = -1;
  };
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch === '\\' && (quoted || comment)) {
      i++;
      continue;
    }
    if (quoted) {
      if (ch === '"') quoted = false;
      continue;
    }
    if (comment) {
      if (ch === '(') comment++;
      else if (ch === ')') comment--;
      continue;
    }
    if (ch === '"') quoted = true;
    else if (ch === '(') comment = 1;
    else if (ch === '<' && lt < 0) lt = i;
    else if (ch === '>' && lt >= 0 && gt < 0) gt = i;
    else if (lt >= 0 && gt < 0) continue;
    else if (ch === ',' || ch === ';') {
      close(i);
      segStart = i + 1;
    } else if (ch === ':') {
      // A group's display name ends here; its members follow.
      lt = -1;
      segStart = i + 1;
    }
  }
  close(value.length);
  return out;
}

/** The address spans of the rewritable fields of a header section (latin1 text, CRLF lines). */
export function headerAddressSpans(head: string): Span[] {
  const spans: Span[] = [];
  const re = /(^|\r\n)([!-9;-~]+)[ \t]*:((?:[^\r]|\r(?!\n)|\r\n[ \t])*)/g;
  for (let m = re.exec(head); m; m = re.exec(head)) {
    const role = ROLES[m[2]!.toLowerCase()];
    if (role === undefined) continue;
    const valueStart = m.index + m[0].length - m[3]!.length;
    spans.push(...addressSpans(m[3]!, valueStart, role));
    if (spans.length >= MAX_ADDRESSES) return spans.slice(0, MAX_ADDRESSES);
  }
  return spans;
}

/**
 * `buf` (the start of a message: its header section and maybe some body)
 * with the header addresses policy rewrites replaced. Throws when policy
 * does not answer (the caller answers 451: nothing unrewritten is stored).
 */
export async function rewriteHeaderSection(buf: Buffer, policy: PolicyClient, deadlineMs: number): Promise<Buffer> {
  const text = buf.toString('latin1');
  let end = text.indexOf('\r\n\r\n');
  if (text.startsWith('\r\n')) return buf;
  if (end < 0) end = text.length;
  const head = text.slice(0, end + 2);
  const spans = headerAddressSpans(head);
  if (!spans.length) return buf;
  const req = RewriteAddressesRequest.fromPartial({
    // The header is latin1 here; policy gets the address as UTF-8.
    addresses: spans.map((s) => ({ address: Buffer.from(s.address, 'latin1').toString('utf8'), role: s.role })),
  });
  const res = await call(policy.rewriteAddresses, policy, req, deadlineMs);
  let out = head;
  for (let i = spans.length - 1; i >= 0; i--) {
    const s = spans[i]!;
    const got = res.addresses[i];
    if (got === undefined || got === req.addresses[i]!.address) continue;
    out = out.slice(0, s.start) + Buffer.from(got, 'utf8').toString('latin1') + out.slice(s.end);
  }
  if (out === head) return buf;
  return Buffer.concat([Buffer.from(out, 'latin1'), buf.subarray(Buffer.byteLength(head, 'latin1'))]);
}
