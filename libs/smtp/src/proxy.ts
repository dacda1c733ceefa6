// HAProxy PROXY protocol v1 (text) and v2 (binary) header parsing. The
// engine accepts a header only from configured CIDRs (the load balancer)
// and then requires it; anyone else talking "PROXY" gets an SMTP error.
import net from 'node:net';
import ipaddr from 'ipaddr.js';

export interface ProxyEndpoint {
  address: string;
  port: number;
}

export type ProxyParse =
  | { status: 'incomplete' }
  | { status: 'error'; message: string }
  | {
      status: 'ok';
      /** Octets of the header (what follows is the client's stream). */
      consumed: number;
      /** Absent for v1 UNKNOWN and v2 LOCAL: use the socket's own addresses. */
      source?: ProxyEndpoint;
      destination?: ProxyEndpoint;
    };

const V2_SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const V1_MAX = 107;
const V2_MAX_BODY = 4096;

function isPrefixOf(buf: Buffer, sig: Buffer): boolean {
  const n = Math.min(buf.length, sig.length);
  return buf.subarray(0, n).equals(sig.subarray(0, n));
}

function port(s: string): number | undefined {
  if (!/^(0|[1-9]\d{0,4})$/.test(s)) return undefined;
  const n = Number(s);
  return n <= 65535 ? n : undefined;
}

function parseV1(buf: Buffer): ProxyParse {
  const lf = buf.indexOf(0x0a);
  if (lf < 0) return buf.length >= V1_MAX ? { status: 'error', message: 'PROXY v1 header too long' } : { status: 'incomplete' };
  if (lf + 1 > V1_MAX || buf[lf - 1] !== 0x0d) return { status: 'error', message: 'malformed PROXY v1 header' };
  const line = buf.subarray(0, lf - 1).toString('latin1');
  const parts = line.split(' ');
  if (parts[1] === 'UNKNOWN') return { status: 'ok', consumed: lf + 1 };
  if (parts.length !== 6) return { status: 'error', message: 'malformed PROXY v1 header' };
  const [, proto, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  const family = proto === 'TCP4' ? 4 : proto === 'TCP6' ? 6 : 0;
  if (family === 0 || net.isIP(src) !== family || net.isIP(dst) !== family) {
    return { status: 'error', message: 'malformed PROXY v1 addresses' };
  }
  const sp = port(sport);
  const dp = port(dport);
  if (sp === undefined || dp === undefined) return { status: 'error', message: 'malformed PROXY v1 ports' };
  return { status: 'ok', consumed: lf + 1, source: { address: src, port: sp }, destination: { address: dst, port: dp } };
}

function parseV2(buf: Buffer): ProxyParse {
  if (buf.length < 16) return { status: 'incomplete' };
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return { status: 'error', message: 'unsupported PROXY v2 version' };
  const cmd = verCmd & 0x0f;
  const fam = buf[13]!;
  const len = buf.readUInt16BE(14);
  if (len > V2_MAX_BODY) return { status: 'error', message: 'PROXY v2 header too long' };
  if (buf.length < 16 + len) return { status: 'incomplete' };
  const consumed = 16 + len;
  if (cmd === 0) return { status: 'ok', consumed }; // LOCAL: health check from the proxy itself
  if (cmd !== 1) return { status: 'error', message: 'unsupported PROXY v2 command' };
  const body = buf.subarray(16, 16 + len);
  if (fam === 0x11) {
    if (len < 12) return { status: 'error', message: 'short PROXY v2 IPv4 block' };
    const src = [...body.subarray(0, 4)].join('.');
    const dst = [...body.subarray(4, 8)].join('.');
    return {
      status: 'ok',
      consumed,
      source: { address: src, port: body.readUInt16BE(8) },
      destination: { address: dst, port: body.readUInt16BE(10) },
    };
  }
  if (fam === 0x21) {
    if (len < 36) return { status: 'error', message: 'short PROXY v2 IPv6 block' };
    const src = ipaddr.fromByteArray([...body.subarray(0, 16)]).toString();
    const dst = ipaddr.fromByteArray([...body.subarray(16, 32)]).toString();
    return {
      status: 'ok',
      consumed,
      source: { address: normalizeIp(src), port: body.readUInt16BE(32) },
      destination: { address: normalizeIp(dst), port: body.readUInt16BE(34) },
    };
  }
  if (fam === 0x00) return { status: 'ok', consumed }; // UNSPEC
  return { status: 'error', message: 'unsupported PROXY v2 address family' };
}

/** Parses a PROXY v1 or v2 header at the start of `buf`. */
export function parseProxyHeader(buf: Buffer): ProxyParse {
  if (buf.length === 0) return { status: 'incomplete' };
  if (buf[0] === 0x0d) {
    if (!isPrefixOf(buf, V2_SIG)) return { status: 'error', message: 'not a PROXY protocol header' };
    return buf.length < V2_SIG.length ? { status: 'incomplete' } : parseV2(buf);
  }
  if (!isPrefixOf(buf, V1_PREFIX)) return { status: 'error', message: 'not a PROXY protocol header' };
  return buf.length < V1_PREFIX.length ? { status: 'incomplete' } : parseV1(buf);
}

/** Dotted-quad IPv4 as the kernel writes it (no leading zeros): already canonical. */
const CANONICAL_IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** "::ffff:1.2.3.4" becomes "1.2.3.4"; other addresses are returned in canonical form. */
export function normalizeIp(address: string): string {
  // Every session's peer goes through here: the common case without a parse (docs/performance.md).
  if (CANONICAL_IPV4.test(address)) return address;
  try {
    return ipaddr.process(address).toString();
  } catch {
    return address;
  }
}

/** A set of CIDRs ("10.0.0.0/8", "::1/128", or a bare address). */
export class CidrSet {
  private readonly ranges: Array<[ipaddr.IPv4 | ipaddr.IPv6, number]> = [];

  constructor(cidrs: readonly string[]) {
    for (const raw of cidrs) {
      const c = raw.trim();
      if (!c) continue;
      if (c.includes('/')) this.ranges.push(ipaddr.parseCIDR(c));
      else {
        const a = ipaddr.parse(c);
        this.ranges.push([a, a.kind() === 'ipv4' ? 32 : 128]);
      }
    }
  }

  get size(): number {
    return this.ranges.length;
  }

  has(address: string): boolean {
    if (this.ranges.length === 0 || !ipaddr.isValid(address)) return false;
    const a = ipaddr.process(address);
    for (const [range, bits] of this.ranges) {
      if (range.kind() === a.kind() && a.match(range, bits)) return true;
    }
    return false;
  }
}
