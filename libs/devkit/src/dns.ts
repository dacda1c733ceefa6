// An authoritative DNS server for tests and the demo, on UDP and TCP (same
// port), with records and failure behaviours changed at run time.
//
//   const dns = await new DnsServer({ host: '127.0.0.2' }).start();
//   dns.mx('example.test', 'mx.example.test').a('mx.example.test', '127.0.0.3');
//   dns.nullMx('nomail.test');
//   dns.behave('broken.test', 'servfail');
//   dns.mailSuffix('test', { address: '127.0.0.1' });   // demo: any *.test has mail
//   ... resolver at dns.address ("127.0.0.2:<port>")
//
// Answers are authoritative (AA): the records of the type asked for (CNAMEs
// followed within the server's data), NODATA (NOERROR, no answers, SOA in the
// authority section) when the name exists with other types, NXDOMAIN when it
// does not. Names are case-insensitive; answers use the case asked.
import dgram from 'node:dgram';
import net from 'node:net';
import * as packet from 'dns-packet';

export interface TlsaRecordData {
  usage: number;
  selector: number;
  matchingType: number;
  /** Certificate association data, as a Buffer or hex. */
  data: Buffer | string;
}

export interface DnsRecordData {
  A: string;
  AAAA: string;
  CNAME: string;
  NS: string;
  PTR: string;
  /** exchange "." (or "") with preference 0 is a null MX (RFC 7505). */
  MX: { preference: number; exchange: string };
  /** A string longer than 255 bytes is split into several character-strings. */
  TXT: string | string[];
  TLSA: TlsaRecordData;
  SRV: { priority: number; weight: number; port: number; target: string };
}
export type DnsRecordType = keyof DnsRecordData;

export interface DnsRecord<T extends DnsRecordType = DnsRecordType> {
  type: T;
  data: DnsRecordData[T];
  /** Seconds; defaults to the server's defaultTtl. */
  ttl?: number;
}

/**
 * servfail: rcode 2. nxdomain: rcode 3 even if records exist. refused: rcode 5.
 * timeout: no answer at all (UDP dropped, TCP connection left open).
 */
export type DnsBehaviour = 'servfail' | 'nxdomain' | 'refused' | 'timeout';

/** What a rule says about a name: records (possibly none = NODATA), or a behaviour. */
export type DnsRuleResult = DnsRecord[] | DnsBehaviour | undefined;
export type DnsRule = (name: string, type: string) => DnsRuleResult;

export interface DnsQueryLog {
  name: string;
  type: string;
  transport: 'udp' | 'tcp';
  rcode: string;
  at: number;
}

export interface DnsServerOptions {
  /** 127.0.0.x (or ::1); default 127.0.0.1. */
  host?: string;
  /** 0 (default) = ephemeral; the same port is used for UDP and TCP. */
  port?: number;
  /** TTL of records without their own; default 60. */
  defaultTtl?: number;
  /** SOA minimum (negative-caching TTL) in NXDOMAIN/NODATA answers; default 30. */
  negativeTtl?: number;
}

interface Entry {
  records: DnsRecord[];
}

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = keyof typeof RCODE;

export function normalizeName(name: string): string {
  return name.trim().toLowerCase().replace(/\.+$/, '');
}

export class DnsServer {
  private readonly opts: Required<DnsServerOptions>;
  private readonly entries = new Map<string, Entry>();
  private readonly behaviours = new Map<string, { behaviour: DnsBehaviour; types?: Set<string> }>();
  private readonly rules: { suffix: string; rule: DnsRule }[] = [];
  private udp?: dgram.Socket;
  private tcp?: net.Server;
  private readonly tcpSockets = new Set<net.Socket>();
  private boundPort = 0;
  /** Every query received, in order. */
  readonly queries: DnsQueryLog[] = [];

  constructor(opts: DnsServerOptions = {}) {
    this.opts = {
      host: opts.host ?? '127.0.0.1',
      port: opts.port ?? 0,
      defaultTtl: opts.defaultTtl ?? 60,
      negativeTtl: opts.negativeTtl ?? 30,
    };
  }

  get host(): string {
    return this.opts.host;
  }
  get port(): number {
    return this.boundPort;
  }
  /** "host:port", for a resolver's setServers() or a service's resolver setting. */
  get address(): string {
    return this.opts.host.includes(':') ? `[${this.opts.host}]:${this.boundPort}` : `${this.opts.host}:${this.boundPort}`;
  }

  // ---------------------------------------------------------------- records

  /** Adds a record (keeps existing ones). */
  add<T extends DnsRecordType>(name: string, type: T, data: DnsRecordData[T], ttl?: number): this {
    const key = normalizeName(name);
    const entry = this.entries.get(key) ?? { records: [] };
    entry.records.push({ type, data, ttl });
    this.entries.set(key, entry);
    return this;
  }

  /** Replaces every record of `name` (of `type` only, when given) with `records`. */
  set(name: string, records: DnsRecord[], type?: DnsRecordType): this {
    const key = normalizeName(name);
    const kept = type ? (this.entries.get(key)?.records ?? []).filter((r) => r.type !== type) : [];
    this.entries.set(key, { records: [...kept, ...records] });
    return this;
  }

  /** Removes the records of `name` (of `type` only, when given), and its behaviour. */
  remove(name: string, type?: DnsRecordType): this {
    const key = normalizeName(name);
    if (!type) {
      this.entries.delete(key);
      this.behaviours.delete(key);
      return this;
    }
    const entry = this.entries.get(key);
    if (entry) {
      entry.records = entry.records.filter((r) => r.type !== type);
      if (entry.records.length === 0) this.entries.delete(key);
    }
    return this;
  }

  /** Removes all records, behaviours and rules, and the query log. */
  clear(): this {
    this.entries.clear();
    this.behaviours.clear();
    this.rules.length = 0;
    this.queries.length = 0;
    return this;
  }

  a(name: string, ...addresses: string[]): this {
    for (const a of addresses) this.add(name, 'A', a);
    return this;
  }
  aaaa(name: string, ...addresses: string[]): this {
    for (const a of addresses) this.add(name, 'AAAA', a);
    return this;
  }
  mx(name: string, exchange: string, preference = 10, ttl?: number): this {
    return this.add(name, 'MX', { preference, exchange }, ttl);
  }
  /** RFC 7505 null MX: `0 .` */
  nullMx(name: string): this {
    return this.add(name, 'MX', { preference: 0, exchange: '.' });
  }
  txt(name: string, text: string | string[], ttl?: number): this {
    return this.add(name, 'TXT', text, ttl);
  }
  cname(name: string, target: string, ttl?: number): this {
    return this.add(name, 'CNAME', target, ttl);
  }
  tlsa(name: string, data: TlsaRecordData, ttl?: number): this {
    return this.add(name, 'TLSA', data, ttl);
  }

  /**
   * A failure for `name` (all types, or only `types`); `null` removes it.
   * Takes precedence over records and rules.
   */
  behave(name: string, behaviour: DnsBehaviour | null, types?: DnsRecordType[]): this {
    const key = normalizeName(name);
    if (behaviour === null) this.behaviours.delete(key);
    else this.behaviours.set(key, { behaviour, types: types ? new Set(types) : undefined });
    return this;
  }
  servfail(name: string, types?: DnsRecordType[]): this {
    return this.behave(name, 'servfail', types);
  }
  nxdomain(name: string, types?: DnsRecordType[]): this {
    return this.behave(name, 'nxdomain', types);
  }
  timeout(name: string, types?: DnsRecordType[]): this {
    return this.behave(name, 'timeout', types);
  }

  /**
   * A rule for every name at or under `suffix` ("" = every name) that has no
   * records of its own. Rules added later win over earlier ones; a rule that
   * returns undefined passes the name on.
   */
  rule(suffix: string, rule: DnsRule): this {
    this.rules.unshift({ suffix: normalizeName(suffix), rule });
    return this;
  }

  /**
   * Demo rule: every domain under `suffix` receives mail. `<domain>` MX ->
   * `<mxLabel>.<domain>` (preference 10); `<mxLabel>.<anything>` A ->
   * `address` (default 127.0.0.1), AAAA -> `address6` if given; other types
   * are NODATA.
   */
  mailSuffix(suffix: string, opts: { address?: string; address6?: string; mxLabel?: string; ttl?: number } = {}): this {
    const label = (opts.mxLabel ?? 'mx').toLowerCase();
    const ttl = opts.ttl;
    return this.rule(suffix, (name, type) => {
      const isHost = name.startsWith(`${label}.`);
      if (isHost) {
        if (type === 'A') return [{ type: 'A', data: opts.address ?? '127.0.0.1', ttl }];
        if (type === 'AAAA' && opts.address6) return [{ type: 'AAAA', data: opts.address6, ttl }];
        return [];
      }
      if (type === 'MX') return [{ type: 'MX', data: { preference: 10, exchange: `${label}.${name}` }, ttl }];
      return [];
    });
  }

  /** Queries received for `name` (and `type`). */
  queryCount(name?: string, type?: string): number {
    const key = name === undefined ? undefined : normalizeName(name);
    return this.queries.filter((q) => (key === undefined || q.name === key) && (type === undefined || q.type === type)).length;
  }

  // -------------------------------------------------------------- lifecycle

  async start(): Promise<this> {
    const family = this.opts.host.includes(':') ? 'udp6' : 'udp4';
    for (let attempt = 0; ; attempt++) {
      const udp = dgram.createSocket({ type: family });
      try {
        await new Promise<void>((resolve, reject) => {
          udp.once('error', reject);
          udp.bind(this.opts.port, this.opts.host, () => {
            udp.off('error', reject);
            resolve();
          });
        });
        const port = udp.address().port;
        const tcp = net.createServer((s) => this.onTcp(s));
        await new Promise<void>((resolve, reject) => {
          tcp.once('error', reject);
          tcp.listen(port, this.opts.host, () => {
            tcp.off('error', reject);
            resolve();
          });
        });
        udp.on('message', (msg, rinfo) => this.onUdp(udp, msg, rinfo));
        udp.on('error', () => undefined);
        tcp.on('error', () => undefined);
        this.udp = udp;
        this.tcp = tcp;
        this.boundPort = port;
        return this;
      } catch (err) {
        udp.close();
        // An ephemeral UDP port whose TCP twin is taken: try another.
        if (this.opts.port !== 0 || attempt >= 20) throw err;
      }
    }
  }

  async close(): Promise<void> {
    for (const s of this.tcpSockets) s.destroy();
    await Promise.all([
      new Promise<void>((resolve) => (this.udp ? this.udp.close(() => resolve()) : resolve())),
      new Promise<void>((resolve) => (this.tcp ? this.tcp.close(() => resolve()) : resolve())),
    ]);
    this.udp = undefined;
    this.tcp = undefined;
  }

  // ------------------------------------------------------------- transport

  private onUdp(udp: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    const response = this.respond(msg, 'udp');
    if (!response) return;
    udp.send(response, rinfo.port, rinfo.address);
  }

  private onTcp(socket: net.Socket): void {
    this.tcpSockets.add(socket);
    socket.setTimeout(30_000, () => socket.destroy());
    socket.on('close', () => this.tcpSockets.delete(socket));
    socket.on('error', () => undefined);
    let buf: Buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        const response = this.respond(msg, 'tcp');
        if (!response) continue;
        const framed = Buffer.alloc(2 + response.length);
        framed.writeUInt16BE(response.length, 0);
        response.copy(framed, 2);
        socket.write(framed);
      }
    });
  }

  // --------------------------------------------------------------- answers

  /** The encoded response to a query, or null for no answer. */
  private respond(msg: Buffer, transport: 'udp' | 'tcp'): Buffer | null {
    let query: packet.DecodedPacket;
    try {
      query = packet.decode(msg);
    } catch {
      if (msg.length < 12) return null;
      // Undecodable: FORMERR with the id, nothing else.
      const header = Buffer.alloc(12);
      msg.copy(header, 0, 0, 2);
      header.writeUInt16BE(0x8000 | RCODE.FORMERR, 2);
      return header;
    }
    if (query.type === 'response') return null;
    const opcode = ((query.flags ?? 0) >> 11) & 0xf;
    const rd = (query.flags ?? 0) & packet.RECURSION_DESIRED;
    const edns = (query.additionals ?? []).find((a) => a.type === 'OPT') as packet.OptAnswer | undefined;
    const q = query.questions?.[0];
    const reply = (rcode: Rcode, answers: packet.Answer[] = [], authorities: packet.Answer[] = []): Buffer => {
      const flags = packet.AUTHORITATIVE_ANSWER | rd | (opcode << 11) | RCODE[rcode];
      const base: packet.Packet = {
        id: query.id,
        type: 'response',
        flags,
        questions: query.questions,
        answers,
        authorities,
        additionals: edns ? [{ type: 'OPT', name: '.', udpPayloadSize: 1232, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }] : [],
      };
      let out = packet.encode(base);
      const limit = transport === 'tcp' ? 65535 : Math.max(512, Math.min(edns?.udpPayloadSize ?? 512, 1232));
      if (out.length > limit) {
        out = packet.encode({ ...base, flags: flags | packet.TRUNCATED_RESPONSE, answers: [], authorities: [] });
      }
      return out;
    };
    if (opcode !== 0) return reply('NOTIMP');
    if (!q || (query.questions?.length ?? 0) !== 1) return reply('FORMERR');
    const log: DnsQueryLog = { name: normalizeName(q.name), type: q.type, transport, rcode: 'NOERROR', at: Date.now() };
    this.queries.push(log);

    const result = this.lookup(q.name, q.type);
    if (result.behaviour === 'timeout') {
      log.rcode = 'TIMEOUT';
      return null;
    }
    log.rcode = result.rcode;
    return reply(result.rcode, result.answers, result.authorities);
  }

  private lookup(qname: string, qtype: string): { rcode: Rcode; answers: packet.Answer[]; authorities: packet.Answer[]; behaviour?: DnsBehaviour } {
    const answers: packet.Answer[] = [];
    let name = qname;
    const seen = new Set<string>();
    for (let hop = 0; hop < 16; hop++) {
      const key = normalizeName(name);
      if (seen.has(key)) return { rcode: 'SERVFAIL', answers: [], authorities: [] };
      seen.add(key);
      const res = this.resolveName(key, qtype);
      if (res.kind === 'behaviour') {
        if (res.behaviour === 'timeout') return { rcode: 'SERVFAIL', answers: [], authorities: [], behaviour: 'timeout' };
        // A failure partway down a CNAME chain fails the whole answer.
        const rcode: Rcode = res.behaviour === 'servfail' ? 'SERVFAIL' : res.behaviour === 'refused' ? 'REFUSED' : 'NXDOMAIN';
        return { rcode, answers: rcode === 'NXDOMAIN' ? answers : [], authorities: rcode === 'NXDOMAIN' ? [this.soa(key)] : [] };
      }
      if (res.kind === 'nxdomain') return { rcode: 'NXDOMAIN', answers, authorities: [this.soa(key)] };
      const matching = res.records.filter((r) => r.type === qtype || qtype === 'ANY');
      if (matching.length > 0) {
        answers.push(...matching.map((r) => this.toAnswer(name, r)));
        return { rcode: 'NOERROR', answers, authorities: [] };
      }
      const cname = res.records.find((r) => r.type === 'CNAME') as DnsRecord<'CNAME'> | undefined;
      if (cname && qtype !== 'CNAME') {
        answers.push(this.toAnswer(name, cname));
        name = cname.data;
        continue;
      }
      return { rcode: 'NOERROR', answers, authorities: [this.soa(key)] };
    }
    return { rcode: 'SERVFAIL', answers: [], authorities: [] };
  }

  private resolveName(
    key: string,
    qtype: string,
  ): { kind: 'records'; records: DnsRecord[] } | { kind: 'nxdomain' } | { kind: 'behaviour'; behaviour: DnsBehaviour } {
    const b = this.behaviours.get(key);
    if (b && (!b.types || b.types.has(qtype))) return { kind: 'behaviour', behaviour: b.behaviour };
    const entry = this.entries.get(key);
    if (entry) return { kind: 'records', records: entry.records };
    for (const { suffix, rule } of this.rules) {
      if (suffix !== '' && key !== suffix && !key.endsWith(`.${suffix}`)) continue;
      const out = rule(key, qtype);
      if (out === undefined) continue;
      if (typeof out === 'string') return out === 'nxdomain' ? { kind: 'nxdomain' } : { kind: 'behaviour', behaviour: out };
      return { kind: 'records', records: out };
    }
    // An empty non-terminal (a name with records below it) exists: NODATA.
    for (const k of this.entries.keys()) if (k.endsWith(`.${key}`)) return { kind: 'records', records: [] };
    return { kind: 'nxdomain' };
  }

  private toAnswer(name: string, r: DnsRecord): packet.Answer {
    const ttl = r.ttl ?? this.opts.defaultTtl;
    switch (r.type) {
      case 'TXT': {
        const parts = (Array.isArray(r.data) ? r.data : [r.data]) as string[];
        const chunks: Buffer[] = [];
        for (const p of parts) {
          const b = Buffer.from(p, 'utf8');
          if (b.length === 0) chunks.push(b);
          for (let i = 0; i < b.length; i += 255) chunks.push(b.subarray(i, i + 255));
        }
        return { type: 'TXT', name, ttl, class: 'IN', data: chunks };
      }
      case 'MX': {
        const d = r.data as DnsRecordData['MX'];
        return { type: 'MX', name, ttl, class: 'IN', data: { preference: d.preference, exchange: d.exchange === '' ? '.' : d.exchange } };
      }
      case 'TLSA': {
        const d = r.data as TlsaRecordData;
        const certificate = typeof d.data === 'string' ? Buffer.from(d.data, 'hex') : d.data;
        return { type: 'TLSA', name, ttl, class: 'IN', data: { usage: d.usage, selector: d.selector, matchingType: d.matchingType, certificate } };
      }
      case 'SRV':
        return { type: 'SRV', name, ttl, class: 'IN', data: r.data as DnsRecordData['SRV'] };
      default:
        return { type: r.type as packet.StringRecordType, name, ttl, class: 'IN', data: r.data as string };
    }
  }

  /** SOA of the zone a name is in (its registered-domain-like last two labels). */
  private soa(key: string): packet.Answer {
    const labels = key.split('.').filter(Boolean);
    const zone = labels.slice(-2).join('.') || '.';
    const min = this.opts.negativeTtl;
    return {
      type: 'SOA',
      name: zone,
      ttl: min,
      class: 'IN',
      data: { mname: `ns.${zone}`, rname: `hostmaster.${zone}`, serial: 1, refresh: 3600, retry: 600, expire: 86400, minimum: min },
    };
  }
}
