// DKIM signing (RFC 6376; Ed25519 by RFC 8463), relaxed/relaxed, sha256.
// The keys are chosen by the domain of the message's From: header (the one
// DMARC aligns with): the keys of that domain, or of the closest parent
// domain that has any. Keys come from the admin API (policy's key store,
// fetched by dkim-refresh.ts: setApiKeys) and from TERN_DKIM_KEYS files; at
// the same domain the API's keys win. A domain may have one active key per
// algorithm: with an RSA and an Ed25519 key the message gets both signatures
// (receivers that do not know Ed25519 ignore that one, RFC 8463 3).
//
// The signer is our own, not mailauth's: mailauth signs only the header
// fields present, and we oversign From (list it once more than it occurs,
// RFC 6376 8.15), so that a From: added on the way invalidates the signature.
import crypto from 'node:crypto';
import { errorMessage } from '@tern/runtime';

export type DkimAlgorithm = 'rsa' | 'ed25519';

export interface DkimKey {
  domain: string;
  selector: string;
  algorithm: DkimAlgorithm;
  privateKey: crypto.KeyObject;
  /** Where it came from: the admin API or a TERN_DKIM_KEYS file. */
  source: 'api' | 'file';
}

/**
 * The header fields signed when present (RFC 6376 5.4.1's list, with
 * List-Unsubscribe-Post, which RFC 8058 requires to be signed), each
 * occurrence; From once more (oversigned).
 */
export const SIGNED_HEADERS = [
  'from',
  'sender',
  'reply-to',
  'subject',
  'date',
  'message-id',
  'to',
  'cc',
  'mime-version',
  'content-type',
  'content-transfer-encoding',
  'content-id',
  'content-description',
  'resent-date',
  'resent-from',
  'resent-sender',
  'resent-to',
  'resent-cc',
  'resent-message-id',
  'in-reply-to',
  'references',
  'list-id',
  'list-help',
  'list-unsubscribe',
  'list-unsubscribe-post',
  'list-subscribe',
  'list-post',
  'list-owner',
  'list-archive',
] as const;
const OVERSIGNED = new Set(['from']);

/** Longest header section signed, and longest body line (ingress refuses far shorter ones). */
const MAX_HEADER_BYTES = 1024 * 1024;
const MAX_LINE_BYTES = 1024 * 1024;

/** A private key (PEM, PKCS#8 or PKCS#1) as a DKIM key: RSA of 1024 bits or more, or Ed25519. Throws saying what is wrong. */
export function dkimPrivateKey(pem: string | Buffer): { privateKey: crypto.KeyObject; algorithm: DkimAlgorithm } {
  const privateKey = crypto.createPrivateKey(pem);
  const type = privateKey.asymmetricKeyType;
  if (type === 'ed25519') return { privateKey, algorithm: 'ed25519' };
  if (type !== 'rsa') throw new Error(`a ${type} key cannot sign DKIM (RSA or Ed25519)`);
  // RFC 8301 3.2: verifiers do not accept shorter RSA keys.
  const bits = privateKey.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < 1024) throw new Error(`RSA key of ${bits} bits is too short for DKIM (at least 1024, 2048 recommended)`);
  return { privateKey, algorithm: 'rsa' };
}

/** "domain:selector:/path/to/key.pem" entries; `read` reads a key file. Throws naming the bad entry. */
export function parseDkimKeys(entries: string[], read: (file: string) => string): DkimKey[] {
  return entries.map((entry) => {
    const m = /^([^:\s]+):([^:\s]+):(.+)$/.exec(entry.trim());
    if (!m) throw new Error(`"${entry}": expected domain:selector:/path/to/key.pem`);
    const [, domain, selector, file] = m;
    try {
      // A bad key stops the process at start, not a message later.
      const key = dkimPrivateKey(read(file!));
      return { domain: normalizeDomain(domain!), selector: selector!, ...key, source: 'file' as const };
    } catch (err) {
      throw new Error(`"${entry}": cannot use ${file} as a private key: ${errorMessage(err)}`, { cause: err });
    }
  });
}

const normalizeDomain = (d: string) => d.toLowerCase().replace(/\.$/, '');

/** The domain of the first address in the From: field of a header section (unfolded), lower-case. */
export function fromDomain(headerSection: string): string | undefined {
  const unfolded = headerSection.replace(/\r?\n[ \t]+/g, ' ');
  const from = /^From:(.*)$/im.exec(unfolded)?.[1];
  if (!from) return undefined;
  // The angle-addr if there is one, else the bare address; comments and display names ignored.
  const addr = /<([^<>]*@[^<>]*)>/.exec(from)?.[1] ?? /([^\s<>(),;:"]+@[^\s<>(),;:"]+)/.exec(from.replace(/\([^()]*\)/g, ' '))?.[1];
  const at = addr?.lastIndexOf('@') ?? -1;
  return at > 0 ? addr!.slice(at + 1).trim().toLowerCase().replace(/\.$/, '') : undefined;
}

/** Reads up to the end of the header section (bounded), then stops reading. */
export async function readHeaderSection(body: AsyncIterable<Buffer>, max = 256 * 1024): Promise<string> {
  let head = '';
  for await (const chunk of body) {
    head += chunk.toString('latin1');
    const end = head.search(/\r?\n\r?\n/);
    if (end >= 0) return head.slice(0, end + 1);
    if (head.length > max) break;
  }
  return head;
}

interface Field {
  /** Lower-case name. */
  name: string;
  /** The field as it stands, continuation lines included, without its last line break. */
  raw: string;
}

/** The fields of a header section (latin1 text, without the empty line). */
export function parseFields(head: string): Field[] {
  const fields: Field[] = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && fields.length) fields[fields.length - 1]!.raw += `\r\n${line}`;
    else if (line.includes(':')) fields.push({ name: line.slice(0, line.indexOf(':')).replace(/[ \t]+$/, '').toLowerCase(), raw: line });
  }
  return fields;
}

/** RFC 6376 3.4.2 relaxed header canonicalization of one field, without the line break. */
function relaxedField(raw: string): string {
  const colon = raw.indexOf(':');
  const name = raw.slice(0, colon).replace(/[ \t]+$/, '').toLowerCase();
  const value = raw
    .slice(colon + 1)
    .replace(/\r?\n/g, '')
    .replace(/[ \t]+/g, ' ')
    .replace(/^ | $/g, '');
  return `${name}:${value}`;
}

/** RFC 6376 3.4.4 relaxed body canonicalization into a SHA-256, streamed: a line piece and a count of empty lines are held. */
class RelaxedBodyHash {
  private readonly hash = crypto.createHash('sha256');
  private partial = '';
  private emptyLines = 0;

  update(chunk: Buffer): void {
    const text = this.partial + chunk.toString('latin1');
    const last = text.lastIndexOf('\n');
    if (last < 0) {
      if (text.length > MAX_LINE_BYTES) throw new Error(`a body line longer than ${MAX_LINE_BYTES} bytes`);
      this.partial = text;
      return;
    }
    this.partial = text.slice(last + 1);
    // WSP runs to one SP, then no SP at a line's end; a bare LF ends a line as CRLF does.
    this.lines(
      text
        .slice(0, last + 1)
        .replace(/[ \t]+/g, ' ')
        .replace(/ ?\r?\n/g, '\r\n'),
    );
  }

  /** Canonical whole lines: empty lines at the end are held until content follows them (they are dropped at the end of the body). */
  private lines(canon: string): void {
    const tail = /(?:\r\n)+$/.exec(canon);
    const end = tail ? tail.index : canon.length;
    if (end === 0) {
      this.emptyLines += canon.length / 2;
      return;
    }
    this.flushEmpty();
    this.hash.update(canon.slice(0, end + 2), 'latin1');
    this.emptyLines = (canon.length - end - 2) / 2;
  }

  private flushEmpty(): void {
    for (; this.emptyLines > 0; this.emptyLines -= Math.min(this.emptyLines, 4096)) this.hash.update('\r\n'.repeat(Math.min(this.emptyLines, 4096)));
  }

  digest(): string {
    if (this.partial) {
      // A last line without a line break gets one (RFC 6376 3.4.4), unless it is only WSP.
      const line = this.partial.replace(/[ \t]+/g, ' ').replace(/ $/, '');
      if (line) this.lines(`${line}\r\n`);
    }
    return this.hash.digest('base64');
  }
}

/** The header section and the body's relaxed hash of a message, read once. */
async function readMessage(message: Buffer | AsyncIterable<Buffer>): Promise<{ head: string; bodyHash: string }> {
  const body = new RelaxedBodyHash();
  let head: string | undefined;
  let pending = '';
  for await (const chunk of Buffer.isBuffer(message) ? [message] : message) {
    if (head !== undefined) {
      body.update(chunk);
      continue;
    }
    pending += chunk.toString('latin1');
    const m = /\r?\n\r?\n/.exec(pending);
    if (m) {
      head = pending.slice(0, m.index);
      body.update(Buffer.from(pending.slice(m.index + m[0].length), 'latin1'));
      pending = '';
    } else if (pending.length > MAX_HEADER_BYTES) {
      throw new Error(`a header section longer than ${MAX_HEADER_BYTES} bytes`);
    }
  }
  // No empty line: the message is all header, with an empty body.
  return { head: head ?? pending.replace(/\r?\n$/, ''), bodyHash: body.digest() };
}

/** The h= list for these fields: each signed field as often as it occurs, an oversigned one once more. */
export function signedFieldNames(fields: Field[]): string[] {
  const names: string[] = [];
  for (const name of SIGNED_HEADERS) {
    const n = fields.filter((f) => f.name === name).length + (OVERSIGNED.has(name) ? 1 : 0);
    for (let i = 0; i < n; i++) names.push(name);
  }
  return names;
}

/** h= names joined, folded after a colon so that no line of the field runs past ~76 characters. */
function foldNames(names: string[], firstLineLength: number): string {
  let out = '';
  let col = firstLineLength;
  names.forEach((name, i) => {
    const piece = i < names.length - 1 ? `${name}:` : name;
    if (col + piece.length > 76 && out) {
      out += '\r\n\t';
      col = 1;
    }
    out += piece;
    col += piece.length;
  });
  return out;
}

/** b= value folded into lines of 72 (FWS is allowed inside it and ignored by verifiers). */
const foldBase64 = (b: string) => (b.match(/.{1,72}/g) ?? []).join('\r\n\t');

export interface SignOptions {
  /** Signing time (t=), seconds since the epoch; default now. */
  time?: number;
}

export class DkimSigner {
  private readonly fileKeys = new Map<string, DkimKey[]>();
  private apiKeys = new Map<string, DkimKey[]>();

  constructor(fileKeys: DkimKey[] = []) {
    for (const k of fileKeys) this.fileKeys.set(k.domain, [...(this.fileKeys.get(k.domain) ?? []), k]);
  }

  /** Replaces the keys from the admin API (the refresh gives the whole set each time). */
  setApiKeys(keys: DkimKey[]): void {
    const next = new Map<string, DkimKey[]>();
    for (const k of keys) next.set(k.domain, [...(next.get(k.domain) ?? []), k]);
    this.apiKeys = next;
  }

  /** Domains with a key, from either source. */
  get size(): number {
    return new Set([...this.fileKeys.keys(), ...this.apiKeys.keys()]).size;
  }

  /**
   * The keys for a From: domain: its own, else the closest parent's (a
   * subdomain signs as its organisation). At one domain the admin API's
   * keys win over TERN_DKIM_KEYS.
   */
  keysFor(domain: string | undefined): DkimKey[] {
    if (!domain) return [];
    const labels = domain.split('.');
    for (let i = 0; i < labels.length - 1; i++) {
      const name = labels.slice(i).join('.');
      const keys = this.apiKeys.get(name) ?? this.fileKeys.get(name);
      if (keys?.length) return keys;
    }
    return [];
  }

  /** The DKIM-Signature header fields (each ending with CRLF) for the message, read once from `message`. */
  async sign(keys: DkimKey[], message: Buffer | AsyncIterable<Buffer>, opts: SignOptions = {}): Promise<string> {
    const { head, bodyHash } = await readMessage(message);
    const fields = parseFields(head);
    if (!fields.some((f) => f.name === 'from')) throw new Error('the message has no From: field to sign (RFC 6376 5.4)');
    const names = signedFieldNames(fields);
    // The k-th occurrence of a name in h= is the k-th instance from the bottom (RFC 6376 5.4.2); one past them adds nothing.
    const used = new Map<string, number>();
    let canonical = '';
    for (const name of names) {
      const instances = fields.filter((f) => f.name === name);
      const k = used.get(name) ?? 0;
      used.set(name, k + 1);
      const f = instances[instances.length - 1 - k];
      if (f) canonical += `${relaxedField(f.raw)}\r\n`;
    }
    const time = opts.time ?? Math.floor(Date.now() / 1000);
    let out = '';
    for (const key of keys) {
      const a = key.algorithm === 'ed25519' ? 'ed25519-sha256' : 'rsa-sha256';
      const start = `DKIM-Signature: v=1; a=${a}; c=relaxed/relaxed; d=${key.domain}; s=${key.selector};\r\n\tt=${time}; h=`;
      const unsigned = `${start}${foldNames(names, 8 + 'h='.length + String(time).length + 4)};\r\n\tbh=${bodyHash};\r\n\tb=`;
      const data = Buffer.from(canonical + relaxedField(unsigned), 'latin1');
      // RFC 8463 3: Ed25519 signs the SHA-256 of the canonical data (PureEdDSA over the hash).
      const signature =
        key.algorithm === 'ed25519'
          ? crypto.sign(null, crypto.createHash('sha256').update(data).digest(), key.privateKey)
          : crypto.sign('sha256', data, key.privateKey);
      out += `${unsigned}${foldBase64(signature.toString('base64'))}\r\n`;
    }
    return out;
  }
}
