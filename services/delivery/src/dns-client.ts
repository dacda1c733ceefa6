// A small DNS client for the lookups where node:dns falls short: it gives no
// TTL for MX and hides the AD bit (DNSSEC validated by the resolver, which
// DANE needs). Queries go over UDP with EDNS0 (DO set, AD asked for), over TCP
// when truncated; each configured server is tried in turn, twice over.
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import dns from 'node:dns';
import net from 'node:net';

export const TYPE = { A: 1, CNAME: 5, MX: 15, TXT: 16, AAAA: 28, TLSA: 52 } as const;
export const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;

export interface ResourceRecord {
  type: number;
  ttl: number;
  data: Buffer;
  /** Where `data` starts in `message` (names in rdata may point back into it). */
  offset: number;
  message: Buffer;
}

export interface DnsAnswer {
  rcode: number;
  /** Authenticated data: the resolver validated the answer with DNSSEC. */
  ad: boolean;
  records: ResourceRecord[];
}

/** A domain name at `off` (with compression pointers), and where the name ends. */
export function readName(msg: Buffer, off: number): { name: string; end: number } {
  const labels: string[] = [];
  let end = -1;
  for (let hops = 0; hops < 128; hops++) {
    const len = msg[off];
    if (len === undefined) throw new Error('truncated name');
    if (len === 0) {
      if (end < 0) end = off + 1;
      return { name: labels.join('.'), end };
    }
    if ((len & 0xc0) === 0xc0) {
      if (end < 0) end = off + 2;
      off = ((len & 0x3f) << 8) | msg[off + 1]!;
      continue;
    }
    labels.push(msg.toString('latin1', off + 1, off + 1 + len));
    off += len + 1;
  }
  throw new Error('name compression loop');
}

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

function decode(msg: Buffer, id: number): DnsAnswer & { tc: boolean } {
  if (msg.length < 12 || msg.readUInt16BE(0) !== id || (msg.readUInt16BE(2) & 0x8000) === 0) throw new Error('not our answer');
  const flags = msg.readUInt16BE(2);
  const qd = msg.readUInt16BE(4);
  const an = msg.readUInt16BE(6);
  let off = 12;
  for (let i = 0; i < qd; i++) off = readName(msg, off).end + 4;
  const records: ResourceRecord[] = [];
  for (let i = 0; i < an; i++) {
    off = readName(msg, off).end;
    const type = msg.readUInt16BE(off);
    const ttl = msg.readUInt32BE(off + 4);
    const len = msg.readUInt16BE(off + 8);
    off += 10;
    if (off + len > msg.length) throw new Error('truncated record');
    records.push({ type, ttl, data: msg.subarray(off, off + len), offset: off, message: msg });
    off += len;
  }
  return { rcode: flags & 0x0f, ad: (flags & 0x0020) !== 0, tc: (flags & 0x0200) !== 0, records };
}

function parseServer(s: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
  if (m) return { host: m[1]!, port: Number(m[2] ?? 53) };
  return { host: s, port: 53 }; // a bare IPv6 address
}

const timeoutError = () => Object.assign(new Error('DNS query timed out'), { code: 'ETIMEOUT' });

export class DnsClient {
  private readonly servers: { host: string; port: number }[];

  constructor(
    servers: string[],
    private readonly timeoutMs = 5_000,
    private readonly tries = 2,
  ) {
    const list = servers.length ? servers : dns.getServers();
    this.servers = (list.length ? list : ['127.0.0.1']).map(parseServer);
  }

  /**
   * The first answer that is not SERVFAIL/REFUSED from any server (those are
   * returned only when every server gave one); throws ETIMEOUT when none answered.
   */
  async query(name: string, type: number): Promise<DnsAnswer> {
    let last: DnsAnswer | undefined;
    let error: Error | undefined;
    for (let round = 0; round < this.tries; round++) {
      for (const server of this.servers) {
        try {
          const a = await this.once(server, name, type);
          if (a.rcode !== RCODE.SERVFAIL && a.rcode !== RCODE.REFUSED) return a;
          last = a;
        } catch (err) {
          error = err as Error;
        }
      }
      if (last) return last;
    }
    throw error ?? timeoutError();
  }

  private async once(server: { host: string; port: number }, name: string, type: number): Promise<DnsAnswer> {
    const id = crypto.randomInt(0, 65536);
    const msg = encodeQuery(id, name, type);
    const udp = await this.udp(server, msg, id);
    return udp.tc ? this.tcp(server, msg, id) : udp;
  }

  private udp(server: { host: string; port: number }, msg: Buffer, id: number): Promise<DnsAnswer & { tc: boolean }> {
    const sock = dgram.createSocket(net.isIPv6(server.host) ? 'udp6' : 'udp4');
    return new Promise<DnsAnswer & { tc: boolean }>((resolve, reject) => {
      const timer = setTimeout(() => reject(timeoutError()), this.timeoutMs);
      sock.on('message', (buf, rinfo) => {
        if (rinfo.port !== server.port) return;
        try {
          const a = decode(buf, id);
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
      sock.send(msg, server.port, server.host);
    }).finally(() => sock.close());
  }

  private tcp(server: { host: string; port: number }, msg: Buffer, id: number): Promise<DnsAnswer> {
    return new Promise<DnsAnswer>((resolve, reject) => {
      const s = net.connect({ host: server.host, port: server.port });
      const timer = setTimeout(() => (s.destroy(), reject(timeoutError())), this.timeoutMs);
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
            resolve(decode(buf.subarray(2, 2 + buf.readUInt16BE(0)), id));
          } catch (err) {
            reject(err as Error);
          }
        }
      });
      s.on('error', (err) => (clearTimeout(timer), reject(err)));
    });
  }
}
