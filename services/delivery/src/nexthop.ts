// Next-hop resolution per RFC 5321 section 5.1 and RFC 7505: MX records by
// preference (equal preferences shuffled), the implicit MX (the domain's own
// A/AAAA) when there is none, null MX refused at once, temporary DNS failure
// deferred. A small cache honours TTLs.
import { promises as dnsp, type MxRecord } from 'node:dns';
import { DnsClient, RCODE, TYPE, readName } from './dns-client';
import net from 'node:net';
import type { SmtpReply } from '@tern/proto';
import type { Tlsa } from './dane';

export interface NextHop {
  /** Host name (for logs, Remote-MTA, TLS name). */
  name: string;
  addresses: string[];
  port: number;
  /** DANE: the host's secure TLSA records (usable ones; empty = TLS required, not authenticated). */
  dane?: Tlsa[];
  /** The host must not be used (DANE: its TLSA lookup failed under a secure MX); the reason. */
  unusable?: SmtpReply;
}

/** secure: the MX answer (or its absence, for the implicit MX) was DNSSEC-validated by the resolver (AD), which DANE needs. */
export type Resolution = { ok: true; hops: NextHop[]; secure?: boolean } | { ok: false; temporary: boolean; reply: SmtpReply };

const reply = (code: number, enhanced: string, text: string): SmtpReply => ({ code, enhanced, text });

interface CacheEntry<T> {
  value: T;
  expires: number;
}

export interface ResolverOptions {
  servers: string[];
  port: number;
  /** Our own names: an MX pointing back at us is a loop. */
  ownNames: string[];
  timeoutMs?: number;
}

export class NextHopResolver {
  private readonly resolver: dnsp.Resolver;
  /** MX lookups: node:dns gives neither their TTL nor the AD bit. */
  private readonly client: DnsClient;
  private readonly cache = new Map<string, CacheEntry<unknown>>();

  constructor(private readonly opts: ResolverOptions) {
    this.resolver = new dnsp.Resolver({ timeout: opts.timeoutMs ?? 5_000, tries: 2 });
    if (opts.servers.length) this.resolver.setServers(opts.servers);
    this.client = new DnsClient(opts.servers, opts.timeoutMs ?? 5_000);
  }

  /** MX records with their TTL and whether the answer was validated; errors carry node:dns codes. */
  private async mx(domain: string): Promise<{ records: MxRecord[]; ttl: number; secure: boolean }> {
    const a = await this.client.query(domain, TYPE.MX);
    if (a.rcode === RCODE.NXDOMAIN) throw Object.assign(new Error(`${domain}: NXDOMAIN`), { code: 'ENOTFOUND' });
    if (a.rcode !== RCODE.NOERROR) throw Object.assign(new Error(`${domain}: rcode ${a.rcode}`), { code: a.rcode === RCODE.SERVFAIL ? 'ESERVFAIL' : a.rcode === RCODE.REFUSED ? 'EREFUSED' : `RCODE${a.rcode}` });
    const mx = a.records.filter((r) => r.type === TYPE.MX && r.data.length >= 3);
    const records = mx.map((r) => ({ priority: r.data.readUInt16BE(0), exchange: readName(r.message, r.offset + 2).name }));
    // NODATA is cached like a negative answer would be: briefly.
    return { records, ttl: mx.length ? Math.min(...mx.map((r) => r.ttl)) : 60, secure: a.ad };
  }

  private async cached<T>(key: string, ttlSeconds: (v: T) => number, load: () => Promise<T>): Promise<T> {
    const hit = this.cache.get(key);
    if (hit && hit.expires > Date.now()) return hit.value as T;
    const value = await load();
    this.cache.set(key, { value, expires: Date.now() + Math.max(1, Math.min(ttlSeconds(value), 3600)) * 1000 });
    if (this.cache.size > 50_000) this.cache.delete(this.cache.keys().next().value as string);
    return value;
  }

  /**
   * A and AAAA of a host, with TTLs honoured; empty when it has none. One
   * family failing temporarily is tolerated when the other gave addresses
   * (a broken AAAA server must not stop IPv4 delivery); both failing throws.
   */
  private async addresses(host: string): Promise<string[]> {
    return this.cached(
      `addr:${host}`,
      (v: { ttl: number; list: string[] }) => v.ttl,
      async () => {
        const [v4, v6] = await Promise.allSettled([
          this.resolver.resolve4(host, { ttl: true }).catch(notFoundAsEmpty),
          this.resolver.resolve6(host, { ttl: true }).catch(notFoundAsEmpty),
        ]);
        const all = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])];
        const failed = [v4, v6].find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed && !all.length) throw failed.reason;
        // A partial answer is cached briefly, so the failed family is asked again soon.
        const ttl = failed ? 5 : all.length ? Math.min(...all.map((a) => a.ttl)) : 60;
        return { ttl, list: all.map((a) => a.address) };
      },
    ).then((v) => v.list);
  }

  /** TXT records of a name (strings of each record), through the configured resolvers; errors as node:dns gives them. */
  resolveTxt(name: string): Promise<string[][]> {
    return this.resolver.resolveTxt(name);
  }

  /** A and AAAA of a host (cached), for other lookups than MX (the MTA-STS policy host). */
  hostAddresses(host: string): Promise<string[]> {
    return this.addresses(host.toLowerCase());
  }

  /**
   * A host named directly (smart host, LMTP server): its addresses only, no
   * MX lookup. Failures defer: a route that does not resolve is the
   * operator's to fix, never a reason to bounce mail.
   */
  async resolveHost(host: string, port: number): Promise<Resolution> {
    const ip = host.replace(/^\[|\]$/g, '').replace(/^ipv6:/i, '');
    if (net.isIP(ip)) return { ok: true, hops: [{ name: host, addresses: [ip], port }] };
    try {
      const addrs = await this.addresses(host.toLowerCase());
      if (addrs.length) return { ok: true, hops: [{ name: host.toLowerCase(), addresses: addrs, port }] };
      return { ok: false, temporary: true, reply: reply(451, '4.4.3', `Host or domain name not found. Name service error for name=${host} type=A: Host not found`) };
    } catch (err) {
      return { ok: false, temporary: true, reply: reply(451, '4.4.3', `DNS lookup of ${host} failed, try again (${(err as NodeJS.ErrnoException).code})`) };
    }
  }

  async resolve(domain: string): Promise<Resolution> {
    if (net.isIP(domain.replace(/^\[|\]$/g, '').replace(/^ipv6:/i, ''))) {
      const ip = domain.replace(/^\[|\]$/g, '').replace(/^ipv6:/i, '');
      return { ok: true, hops: [{ name: `[${ip}]`, addresses: [ip], port: this.opts.port }] };
    }
    let mx: MxRecord[];
    let secure: boolean;
    try {
      const answer = await this.cached(`mx:${domain}`, (v: { ttl: number }) => v.ttl, () => this.mx(domain));
      mx = answer.records;
      secure = answer.secure;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOTFOUND') return { ok: false, temporary: false, reply: reply(550, '5.1.2', `Host or domain name not found. Name service error for name=${domain} type=MX: Host not found`) };
      return { ok: false, temporary: true, reply: reply(451, '4.4.3', `Host or domain name not found. Name service error for name=${domain} type=MX: Host not found, try again (${code})`) };
    }
    // RFC 7505: a null MX ("0 .") says the domain takes no mail. A domain must
    // not publish it beside other MX records; if one does, the null MX is
    // still the domain's statement, so it wins.
    if (mx.some((r) => r.exchange === '' || r.exchange === '.')) {
      return { ok: false, temporary: false, reply: reply(556, '5.1.10', `Domain ${domain} does not accept mail (null MX)`) };
    }
    if (mx.length === 0) {
      // Implicit MX: the domain itself (RFC 5321 5.1).
      try {
        const addrs = await this.addresses(domain);
        if (!addrs.length) return { ok: false, temporary: false, reply: reply(550, '5.1.2', `Host or domain name not found. Name service error for name=${domain} type=A: Host not found`) };
        return { ok: true, hops: [{ name: domain, addresses: addrs, port: this.opts.port }], secure };
      } catch (err) {
        return { ok: false, temporary: true, reply: reply(451, '4.4.3', `DNS lookup of ${domain} failed, try again (${(err as NodeJS.ErrnoException).code})`) };
      }
    }
    let sorted = shuffleEqualPreferences(mx);
    // RFC 5321 5.1: when we are one of the MX hosts, only hosts more preferred
    // than us may be used; none left means the mail would loop back to us.
    const self = sorted.find((r) => this.opts.ownNames.includes(r.exchange.replace(/\.$/, '').toLowerCase()));
    if (self) {
      sorted = sorted.filter((r) => r.priority < self.priority);
      if (!sorted.length) return { ok: false, temporary: false, reply: reply(554, '5.4.6', `mail for ${domain} loops back to myself`) };
    }
    const hops: NextHop[] = [];
    let temporaryFailure = false;
    let ipNamed = 0;
    for (const record of sorted) {
      const name = record.exchange.replace(/\.$/, '').toLowerCase();
      // An MX must name a host, not an address (RFC 5321 5.1; Postfix refuses it too).
      if (net.isIP(name)) {
        ipNamed++;
        continue;
      }
      try {
        const addrs = await this.addresses(name);
        if (addrs.length) hops.push({ name, addresses: addrs, port: this.opts.port });
      } catch {
        temporaryFailure = true;
      }
    }
    if (hops.length) return { ok: true, hops, secure };
    if (temporaryFailure) return { ok: false, temporary: true, reply: reply(451, '4.4.3', `MX hosts of ${domain} could not be resolved, try again`) };
    if (ipNamed === sorted.length) return { ok: false, temporary: false, reply: reply(550, '5.4.4', `MX records of ${domain} name IP addresses, not hosts (RFC 5321 5.1)`) };
    return { ok: false, temporary: false, reply: reply(550, '5.4.4', `No usable MX host for ${domain} (MX records name no address)`) };
  }
}

function notFoundAsEmpty(err: NodeJS.ErrnoException): { address: string; ttl: number }[] {
  if (err.code === 'ENODATA' || err.code === 'ENOTFOUND') return [];
  throw err;
}

/** Sorted by preference; hosts of equal preference in random order. */
export function shuffleEqualPreferences(records: MxRecord[]): MxRecord[] {
  const keyed = records.map((r) => ({ r, k: Math.random() }));
  keyed.sort((a, b) => a.r.priority - b.r.priority || a.k - b.k);
  return keyed.map((x) => x.r);
}
