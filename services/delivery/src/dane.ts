// DANE for SMTP (RFC 7672): TLSA records, published in a DNSSEC-signed zone,
// authenticate the MX host's certificate. Tern does not validate DNSSEC
// itself; it trusts the AD (authenticated data) bit of the configured
// resolver, which must therefore be a validating resolver on a trusted path
// (loopback or the pod's own). With a resolver that does not validate, AD is
// never set and DANE never applies.
//
// node:dns does not expose the AD bit, so the queries DANE needs (TLSA here;
// the MX RRset's security comes with the MX lookup in nexthop.ts) go through
// the small client in dns-client.ts.
import crypto from 'node:crypto';
import type tls from 'node:tls';
import { DnsClient, RCODE, TYPE, type DnsAnswer } from './dns-client';
import { errorMessage } from '@tern/runtime';

export interface Tlsa {
  usage: number;
  selector: number;
  matchingType: number;
  data: Buffer;
}

/** What DNS says about a next hop's TLSA records. */
export type TlsaAnswer =
  | { kind: 'records'; records: Tlsa[] } // secure TLSA RRset: DANE applies (records: the usable ones; none = TLS without authentication)
  | { kind: 'none' } // securely no TLSA, or an insecure zone: no DANE
  | { kind: 'error'; why: string }; // lookup failed under a secure MX: the host must not be used (RFC 7672 2.2.1)

export interface DaneOptions {
  /** Resolvers ("ip", "ip:port", "[ipv6]:port"); default the system's. The first must validate DNSSEC. */
  servers: string[];
  timeoutMs?: number;
}

export class DaneResolver {
  private readonly client: DnsClient;
  private readonly cache = new Map<string, { value: TlsaAnswer; expires: number }>();

  constructor(o: DaneOptions) {
    this.client = new DnsClient(o.servers, o.timeoutMs ?? 5_000);
  }

  /** TLSA of `_<port>._tcp.<host>` (RFC 7672 2.2.2), cached within its TTL. */
  async tlsa(host: string, port: number): Promise<TlsaAnswer> {
    const name = `_${port}._tcp.${host.replace(/\.$/, '')}`;
    const hit = this.cache.get(name);
    if (hit && hit.expires > Date.now()) return hit.value;
    const { value, ttl } = await this.lookup(name);
    this.cache.set(name, { value, expires: Date.now() + Math.max(1, Math.min(ttl, 3600)) * 1000 });
    if (this.cache.size > 50_000) this.cache.delete(this.cache.keys().next().value as string);
    return value;
  }

  private async lookup(name: string): Promise<{ value: TlsaAnswer; ttl: number }> {
    let a: DnsAnswer;
    try {
      a = await this.client.query(name, TYPE.TLSA);
    } catch (err) {
      return { value: { kind: 'error', why: `TLSA lookup of ${name} failed: ${errorMessage(err)}` }, ttl: 5 };
    }
    if (a.rcode !== RCODE.NOERROR && a.rcode !== RCODE.NXDOMAIN) return { value: { kind: 'error', why: `TLSA lookup of ${name} failed (rcode ${a.rcode})` }, ttl: 5 };
    const tlsa = a.records.filter((r) => r.type === TYPE.TLSA && r.data.length > 3);
    // An insecure answer, or a secure denial: no DANE for this host.
    if (!a.ad || !tlsa.length) return { value: { kind: 'none' }, ttl: 60 };
    const records = tlsa.map((r) => ({ usage: r.data[0]!, selector: r.data[1]!, matchingType: r.data[2]!, data: Buffer.from(r.data.subarray(3)) })).filter(usable);
    return { value: { kind: 'records', records }, ttl: Math.min(...tlsa.map((r) => r.ttl)) };
  }
}

/** RFC 7672 3.1: only DANE-TA(2) and DANE-EE(3), selectors 0/1, matching types 0/1/2 are used for SMTP. */
function usable(t: Tlsa): boolean {
  return (t.usage === 2 || t.usage === 3) && (t.selector === 0 || t.selector === 1) && t.matchingType <= 2;
}

function digest(t: Tlsa, der: Buffer): Buffer {
  if (t.matchingType === 1) return crypto.createHash('sha256').update(der).digest();
  if (t.matchingType === 2) return crypto.createHash('sha512').update(der).digest();
  return der;
}

function matches(t: Tlsa, cert: crypto.X509Certificate): boolean {
  const der = t.selector === 0 ? cert.raw : cert.publicKey.export({ type: 'spki', format: 'der' });
  const d = digest(t, der);
  return d.length === t.data.length && crypto.timingSafeEqual(d, t.data);
}

/** The presented chain, leaf first, as X509Certificate objects. */
function chainOf(peer: tls.DetailedPeerCertificate): crypto.X509Certificate[] {
  const out: crypto.X509Certificate[] = [];
  const seen = new Set<string>();
  let c: tls.DetailedPeerCertificate | undefined = peer;
  while (c?.raw && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    out.push(new crypto.X509Certificate(c.raw));
    c = c.issuerCertificate;
  }
  return out;
}

/**
 * Does the server's certificate satisfy one of the TLSA records? DANE-EE(3):
 * the leaf matches (no name or date checks, RFC 7672 3.1.1). DANE-TA(2): a
 * certificate of the presented chain matches, the leaf chains up to it by
 * signature, and the leaf names the host (3.1.2).
 */
export function daneVerify(records: Tlsa[], peer: tls.DetailedPeerCertificate, hostName: string): { ok: boolean; why: string } {
  const chain = chainOf(peer);
  const leaf = chain[0];
  if (!leaf) return { ok: false, why: 'no certificate presented' };
  for (const t of records) {
    if (t.usage === 3 && matches(t, leaf)) return { ok: true, why: 'DANE-EE' };
    if (t.usage === 2) {
      const ta = chain.findIndex((c) => matches(t, c));
      if (ta < 0) continue;
      let linked = true;
      for (let i = 0; i < ta; i++) if (!chain[i]!.verify(chain[i + 1]!.publicKey)) linked = false;
      if (ta === 0 && !leaf.verify(leaf.publicKey)) linked = false;
      if (linked && leaf.checkHost(hostName) !== undefined) return { ok: true, why: 'DANE-TA' };
    }
  }
  return { ok: false, why: `no TLSA record of ${hostName} matches its certificate` };
}
