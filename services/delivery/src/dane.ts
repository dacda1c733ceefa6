// DANE for SMTP (RFC 7672): TLSA records, published in a DNSSEC-signed zone,
// authenticate the MX host's certificate. Tern does not validate DNSSEC
// itself; it trusts the AD (authenticated data) bit of the configured
// resolver, which must therefore be a validating resolver on a trusted path
// (loopback or the pod's own). With a resolver that does not validate, AD is
// never set and DANE never applies.
//
// node:dns does not expose the AD bit, so the few queries DANE needs (the MX
// RRset's security, TLSA) are made here over UDP (TCP when truncated).
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import dns from 'node:dns';
import net from 'node:net';
import type tls from 'node:tls';

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

interface DnsAnswer {
  rcode: number;
  ad: boolean;
  records: { type: number; ttl: number; data: Buffer }[];
}

const TYPE = { MX: 15, TLSA: 52, A: 1 } as const;
const RCODE_NOERROR = 0;
const RCODE_NXDOMAIN = 3;

function encodeQuery(id: number, name: string, type: number): Buffer {
  const labels = name.replace(/\.$/, '').split('.').filter(Boolean);
  const qname = Buffer.concat([...labels.map((l) => Buffer.concat([Buffer.from([Buffer.byteLength(l)]), Buffer.from(l, 'ascii')])), Buffer.from([0])]);
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100 | 0x0020, 2); // RD, and AD: ask for the AD bit in the answer (RFC 6840 5.7)
  header.writeUInt16BE(1, 4); // QDCOUNT
  header.writeUInt16BE(1, 10); // ARCOUNT: the OPT record
  const q = Buffer.alloc(4);
  q.writeUInt16BE(type, 0);
  q.writeUInt16BE(1, 2);
  // EDNS0 OPT: root name, type 41, payload 1232, DO bit set.
  const opt = Buffer.from([0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
  return Buffer.concat([header, qname, q, opt]);
}

function skipName(buf: Buffer, off: number): number {
  for (;;) {
    const len = buf[off];
    if (len === undefined) throw new Error('truncated name');
    if (len === 0) return off + 1;
    if ((len & 0xc0) === 0xc0) return off + 2;
    off += len + 1;
  }
}

function decodeAnswer(buf: Buffer, id: number): DnsAnswer & { tc: boolean } {
  if (buf.length < 12 || buf.readUInt16BE(0) !== id) throw new Error('not our answer');
  const flags = buf.readUInt16BE(2);
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  let off = 12;
  for (let i = 0; i < qd; i++) off = skipName(buf, off) + 4;
  const records: DnsAnswer['records'] = [];
  for (let i = 0; i < an; i++) {
    off = skipName(buf, off);
    const type = buf.readUInt16BE(off);
    const ttl = buf.readUInt32BE(off + 4);
    const len = buf.readUInt16BE(off + 8);
    off += 10;
    records.push({ type, ttl, data: buf.subarray(off, off + len) });
    off += len;
  }
  return { rcode: flags & 0x0f, ad: (flags & 0x0020) !== 0, tc: (flags & 0x0200) !== 0, records };
}

function parseServer(s: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
  if (m) return { host: m[1]!, port: Number(m[2] ?? 53) };
  return { host: s, port: 53 }; // a bare IPv6 address
}

export interface DaneOptions {
  /** Resolvers ("ip", "ip:port", "[ipv6]:port"); default the system's. Only the first is asked. */
  servers: string[];
  timeoutMs?: number;
}

export class DaneResolver {
  private readonly server: { host: string; port: number };
  private readonly timeoutMs: number;
  private readonly cache = new Map<string, { value: unknown; expires: number }>();

  constructor(o: DaneOptions) {
    this.server = parseServer(o.servers[0] ?? dns.getServers()[0] ?? '127.0.0.1');
    this.timeoutMs = o.timeoutMs ?? 5_000;
  }

  private async query(name: string, type: number): Promise<DnsAnswer> {
    const id = crypto.randomInt(0, 65536);
    const msg = encodeQuery(id, name, type);
    const udp = await this.udp(msg, id);
    return udp.tc ? this.tcp(msg, id) : udp;
  }

  private udp(msg: Buffer, id: number): Promise<DnsAnswer & { tc: boolean }> {
    const sock = dgram.createSocket(net.isIPv6(this.server.host) ? 'udp6' : 'udp4');
    return new Promise<DnsAnswer & { tc: boolean }>((resolve, reject) => {
      const timer = setTimeout(() => reject(Object.assign(new Error('DNS timeout'), { code: 'ETIMEOUT' })), this.timeoutMs);
      sock.on('message', (buf) => {
        try {
          const a = decodeAnswer(buf, id);
          clearTimeout(timer);
          resolve(a);
        } catch {
          /* not ours: keep waiting */
        }
      });
      sock.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      sock.send(msg, this.server.port, this.server.host);
    }).finally(() => sock.close());
  }

  private tcp(msg: Buffer, id: number): Promise<DnsAnswer> {
    return new Promise<DnsAnswer>((resolve, reject) => {
      const s = net.connect({ host: this.server.host, port: this.server.port });
      const timer = setTimeout(() => (s.destroy(), reject(Object.assign(new Error('DNS timeout'), { code: 'ETIMEOUT' }))), this.timeoutMs);
      let buf = Buffer.alloc(0);
      s.on('connect', () => {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(msg.length);
        s.write(Buffer.concat([len, msg]));
      });
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          clearTimeout(timer);
          s.destroy();
          try {
            resolve(decodeAnswer(buf.subarray(2, 2 + buf.readUInt16BE(0)), id));
          } catch (err) {
            reject(err as Error);
          }
        }
      });
      s.on('error', (err) => (clearTimeout(timer), reject(err)));
    });
  }

  private async cached<T>(key: string, load: () => Promise<{ value: T; ttl: number }>): Promise<T> {
    const hit = this.cache.get(key);
    if (hit && hit.expires > Date.now()) return hit.value as T;
    const { value, ttl } = await load();
    this.cache.set(key, { value, expires: Date.now() + Math.max(1, Math.min(ttl, 3600)) * 1000 });
    if (this.cache.size > 50_000) this.cache.delete(this.cache.keys().next().value as string);
    return value;
  }

  /**
   * Is the domain's MX RRset (or its secure absence, for the implicit MX)
   * DNSSEC-validated? DANE applies only then (RFC 7672 2.2.1). A failed
   * lookup counts as insecure here: the MX resolution itself reports DNS failures.
   */
  async mxSecure(domain: string): Promise<boolean> {
    return this.cached(`mx:${domain}`, async () => {
      try {
        const a = await this.query(domain, TYPE.MX);
        const ttl = a.records.length ? Math.min(...a.records.map((r) => r.ttl)) : 60;
        return { value: a.ad && (a.rcode === RCODE_NOERROR || a.rcode === RCODE_NXDOMAIN), ttl };
      } catch {
        return { value: false, ttl: 30 }; // a resolver that drops these queries is not asked again at once
      }
    });
  }

  /** TLSA of `_<port>._tcp.<host>` (RFC 7672 2.2.2). */
  async tlsa(host: string, port: number): Promise<TlsaAnswer> {
    const name = `_${port}._tcp.${host.replace(/\.$/, '')}`;
    return this.cached(`tlsa:${name}`, async () => {
      let a: DnsAnswer;
      try {
        a = await this.query(name, TYPE.TLSA);
      } catch (err) {
        return { value: { kind: 'error', why: `TLSA lookup of ${name} failed: ${(err as Error).message}` } as TlsaAnswer, ttl: 5 };
      }
      if (a.rcode !== RCODE_NOERROR && a.rcode !== RCODE_NXDOMAIN) return { value: { kind: 'error', why: `TLSA lookup of ${name} failed (rcode ${a.rcode})` } as TlsaAnswer, ttl: 5 };
      const tlsa = a.records.filter((r) => r.type === TYPE.TLSA && r.data.length > 3);
      // An insecure answer, or a secure denial: no DANE for this host.
      if (!a.ad || !tlsa.length) return { value: { kind: 'none' } as TlsaAnswer, ttl: 60 };
      const records = tlsa.map((r) => ({ usage: r.data[0]!, selector: r.data[1]!, matchingType: r.data[2]!, data: Buffer.from(r.data.subarray(3)) })).filter(usable);
      return { value: { kind: 'records', records } as TlsaAnswer, ttl: Math.min(...tlsa.map((r) => r.ttl)) };
    });
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
