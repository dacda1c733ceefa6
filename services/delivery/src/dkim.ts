// DKIM signing (RFC 6376) with mailauth, for the domains that have a key.
// The key is chosen by the domain of the message's From: header (the one
// DMARC aligns with): the key of that domain, or of the closest parent domain
// that has one. Keys come from the environment (TERN_DKIM_KEYS, files named
// there): there is no DKIM key store behind the admin API yet.
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import { dkimSign } from 'mailauth';

export interface DkimKey {
  domain: string;
  selector: string;
  privateKey: string;
}

/** "domain:selector:/path/to/key.pem" entries; `read` reads a key file. Throws naming the bad entry. */
export function parseDkimKeys(entries: string[], read: (file: string) => string): DkimKey[] {
  return entries.map((entry) => {
    const m = /^([^:\s]+):([^:\s]+):(.+)$/.exec(entry.trim());
    if (!m) throw new Error(`"${entry}": expected domain:selector:/path/to/key.pem`);
    const [, domain, selector, file] = m;
    let privateKey: string;
    try {
      privateKey = read(file!);
      crypto.createPrivateKey(privateKey); // a bad key stops the process at start, not a message later
    } catch (err) {
      throw new Error(`"${entry}": cannot use ${file} as a private key: ${(err as Error).message}`, { cause: err });
    }
    return { domain: domain!.toLowerCase().replace(/\.$/, ''), selector: selector!, privateKey };
  });
}

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

export class DkimSigner {
  private readonly byDomain = new Map<string, DkimKey>();

  constructor(keys: DkimKey[]) {
    for (const k of keys) this.byDomain.set(k.domain, k);
  }

  get size(): number {
    return this.byDomain.size;
  }

  /** The key for a From: domain: its own, else the closest parent's (a subdomain signs as its organisation). */
  keyFor(domain: string | undefined): DkimKey | undefined {
    if (!domain) return undefined;
    const labels = domain.split('.');
    for (let i = 0; i < labels.length - 1; i++) {
      const k = this.byDomain.get(labels.slice(i).join('.'));
      if (k) return k;
    }
    return undefined;
  }

  /** The DKIM-Signature header field (ending with CRLF) for the message, read once from `message`. */
  async sign(key: DkimKey, message: Buffer | AsyncIterable<Buffer>): Promise<string> {
    const input = Buffer.isBuffer(message) ? message : Readable.from(message);
    const signature = { signingDomain: key.domain, selector: key.selector, privateKey: key.privateKey, canonicalization: 'relaxed/relaxed' };
    // mailauth 7 signs what is in signatureData (the top-level fields its types also show are not used for that).
    const res = await dkimSign(input, { ...signature, signatureData: [signature] });
    if (res.errors?.length || !res.signatures) {
      throw new Error(`DKIM signing for ${key.domain} (selector ${key.selector}) failed: ${res.errors?.map((e) => JSON.stringify(e)).join('; ') || 'no signature'}`);
    }
    return res.signatures;
  }
}
