// What ingress tells policy and the queue about a session and a message, in
// their protobuf form: SessionInfo (every policy call), the Envelope and its
// recipients (the Enqueue header), and the client's name that goes in both,
// looked up (forward-confirmed) when reverse DNS is on.
import crypto from 'node:crypto';
import dns from 'node:dns';
import { BodyType, DsnNotify, DsnRet, Listener, SessionInfo, type Envelope as ProtoEnvelope, type EnvelopeRecipient } from '@tern/proto';
import type { Envelope, RcptTo, SmtpSession } from '@tern/smtp';
import { protocolName } from './headers';
import { st } from './session-state';

const LISTENERS: Record<string, Listener> = {
  mx: Listener.LISTENER_MX,
  submission: Listener.LISTENER_SUBMISSION,
  submissions: Listener.LISTENER_SUBMISSIONS,
};

const NOTIFY: Record<string, DsnNotify> = {
  NEVER: DsnNotify.DSN_NOTIFY_NEVER,
  SUCCESS: DsnNotify.DSN_NOTIFY_SUCCESS,
  FAILURE: DsnNotify.DSN_NOTIFY_FAILURE,
  DELAY: DsnNotify.DSN_NOTIFY_DELAY,
};

/** The session as policy sees it (in every call ingress makes to policy). */
export function sessionInfo(s: SmtpSession, hostname: string): SessionInfo {
  return SessionInfo.fromPartial({
    sessionId: s.id,
    clientAddress: s.clientAddress,
    clientPort: s.clientPort,
    clientName: st(s).clientName ?? '',
    heloName: s.heloName ?? '',
    listener: LISTENERS[s.listener] ?? Listener.LISTENER_UNSPECIFIED,
    tls: s.tls ? { used: true, version: s.tls.protocol, cipher: s.tls.cipher, verified: false } : undefined,
    authUser: s.user ?? '',
    serverName: hostname,
  });
}

/** The Enqueue header's envelope: MAIL FROM (as policy's sender canonical rules left it) and its parameters, the client, the protocol and the arrival time. */
export function toProtoEnvelope(s: SmtpSession, e: Envelope, arrival: Date): ProtoEnvelope {
  const p = e.mailFrom.params;
  return {
    sender: st(s).mail?.sender || e.mailFrom.address,
    envid: p.envid ?? '',
    ret: p.ret === 'FULL' ? DsnRet.DSN_RET_FULL : p.ret === 'HDRS' ? DsnRet.DSN_RET_HDRS : DsnRet.DSN_RET_UNSPECIFIED,
    smtputf8: p.smtputf8,
    bodyType: p.body === '8BITMIME' ? BodyType.BODY_TYPE_8BITMIME : p.body === 'BINARYMIME' ? BodyType.BODY_TYPE_BINARYMIME : BodyType.BODY_TYPE_UNSPECIFIED,
    requiretls: p.requiretls,
    clientAddress: s.clientAddress,
    clientName: st(s).clientName ?? '',
    heloName: s.heloName ?? '',
    authUser: s.user ?? '',
    arrivalTime: arrival,
    protocol: protocolName(s, e),
    listener: LISTENERS[s.listener] ?? Listener.LISTENER_UNSPECIFIED,
    declaredSize: p.size ?? 0,
  };
}

/**
 * The addresses an accepted RCPT stands for in the stored message: the
 * targets of the virtual alias it is (policy's expansion at RCPT,
 * CheckResponse.alias_targets, kept in `rcpt.state.aliasTargets`), else itself.
 */
export function storedAddresses(r: RcptTo): readonly string[] {
  const targets = r.state?.aliasTargets as readonly string[] | undefined;
  return targets?.length ? targets : [r.address];
}

/** Duplicates are the same address but for case. */
const recipientKey = (address: string) => address.toLowerCase();

/** How many recipients these RCPTs store, duplicates after alias expansion counted once. */
export function storedCount(rcpts: readonly RcptTo[]): number {
  const keys = new Set<string>();
  for (const r of rcpts) for (const a of storedAddresses(r)) keys.add(recipientKey(a));
  return keys.size;
}

/** `type;address` for an original address: utf-8 when it has non-ASCII characters (RFC 6533), else rfc822. */
const orcptOf = (address: string) => `${/[^ -~]/.test(address) ? 'utf-8' : 'rfc822'};${address}`;

/**
 * The Enqueue header's recipients, with ORCPT as `type;decoded-address` and
 * NOTIFY. An alias is stored as its targets, each with the client's ORCPT,
 * else the alias's own address as ORCPT (`rfc822;<alias>`), and the alias's
 * NOTIFY; an address met twice (two aliases, or an alias and a RCPT naming
 * the same target) is stored once, the first time it is met. Archive copies
 * (policy's bcc maps: `senderBcc` from MAIL, each RCPT's own) come last,
 * with NOTIFY=NEVER: no report about them goes to the sender.
 */
export function toProtoRecipients(e: Envelope, senderBcc: readonly string[] = []): EnvelopeRecipient[] {
  return storedRecipients(e, senderBcc).recipients;
}

/**
 * toProtoRecipients, and which of them are forwarded with an SRS sender
 * (address key -> SRS address; policy's srs_targets, the first RCPT that
 * stored them deciding).
 */
export function storedRecipients(e: Envelope, senderBcc: readonly string[] = []): { recipients: EnvelopeRecipient[]; forwarded: Map<string, string> } {
  const out: EnvelopeRecipient[] = [];
  const forwarded = new Map<string, string>();
  const seen = new Set<string>();
  const bcc: string[] = [...senderBcc];
  for (const r of e.rcptTo) {
    const given = r.params.orcpt ? `${r.params.orcpt.type};${r.params.orcpt.address}` : '';
    const notify = (r.params.notify ?? []).map((n) => NOTIFY[n]!);
    const targets = storedAddresses(r);
    const expanded = targets.length !== 1 || targets[0] !== r.address;
    const srsSender = r.state?.srsSender as string | undefined;
    const srsTargets = new Set(((r.state?.srsTargets as string[] | undefined) ?? []).map(recipientKey));
    for (const address of targets) {
      const key = recipientKey(address);
      if (seen.has(key)) continue;
      seen.add(key);
      out.push({ address, orcpt: given || (expanded ? orcptOf(r.address) : ''), notify: [...notify] });
      if (srsSender && srsTargets.has(key)) forwarded.set(key, srsSender);
    }
    bcc.push(...((r.state?.bcc as string[] | undefined) ?? []));
  }
  for (const address of bcc) {
    const key = recipientKey(address);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ address, orcpt: '', notify: [DsnNotify.DSN_NOTIFY_NEVER] });
  }
  return { recipients: out, forwarded };
}

/**
 * The messages one transaction is stored as: normally one; when some
 * recipients are forwarded with an SRS sender and others are not, one for
 * the others (the sender as stored) and one per SRS sender, with the same
 * body. The queue keeps one envelope per message, and the MAIL FROM a
 * recipient is delivered with is its message's.
 */
export function splitBySender<H extends { envelope?: ProtoEnvelope; recipients: EnvelopeRecipient[] }>(header: H, forwarded: ReadonlyMap<string, string>): H[] {
  if (!forwarded.size) return [header];
  const groups = new Map<string, EnvelopeRecipient[]>();
  const own: EnvelopeRecipient[] = [];
  for (const r of header.recipients) {
    const srs = forwarded.get(recipientKey(r.address));
    if (srs === undefined) own.push(r);
    else groups.set(srs, [...(groups.get(srs) ?? []), r]);
  }
  const out: H[] = own.length ? [{ ...header, recipients: own }] : [];
  for (const [sender, recipients] of groups) out.push({ ...header, envelope: { ...header.envelope!, sender }, recipients });
  return out;
}

/**
 * The idempotency key of each part of a split message (splitBySender): the
 * same whenever the client sends the same message again, so the queue
 * answers a part it already stored with that part's queue id instead of
 * storing it twice. A SHA-256 of the message as the client sent it
 * (`digest`), the message's MAIL FROM and DSN parameters, and the part's
 * recipients with theirs. The message's sender rather than the part's: an
 * SRS sender carries the day, and a message sent again after midnight is
 * still the same message (the recipients tell its parts apart).
 */
export function partKeys(digest: Buffer, envelope: ProtoEnvelope, parts: readonly { recipients: EnvelopeRecipient[] }[]): string[] {
  return parts.map((p) => {
    const identity = JSON.stringify([
      digest.toString('hex'),
      envelope.sender,
      envelope.envid,
      envelope.ret,
      p.recipients.map((r) => [r.address, r.orcpt, r.notify]),
    ]);
    return `smtp-split:${crypto.createHash('sha256').update(identity).digest('hex')}`;
  });
}

/** The client's name by PTR, when that name resolves back to the address; undefined otherwise. */
export async function reverseName(ip: string, timeoutMs: number): Promise<string | undefined> {
  const resolver = new dns.promises.Resolver({ timeout: timeoutMs, tries: 1 });
  try {
    const names = await resolver.reverse(ip);
    const name = names[0];
    if (!name) return undefined;
    // Forward-confirmed only (Postfix's "unknown" otherwise).
    const addrs = ip.includes(':') ? await resolver.resolve6(name) : await resolver.resolve4(name);
    return addrs.includes(ip) ? name.replace(/\.$/, '') : undefined;
  } catch {
    return undefined;
  } finally {
    resolver.cancel();
  }
}
