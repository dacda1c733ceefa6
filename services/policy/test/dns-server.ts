// A tiny authoritative DNS server for tests (UDP on loopback), until
// @tern/devkit's DnsServer lands: A, AAAA, TXT and MX from a map.
import dgram from 'node:dgram';
import type { AddressInfo } from 'node:net';
import * as packet from 'dns-packet';

type Rec = { type: 'A' | 'AAAA' | 'TXT' | 'MX'; data: string | string[] | { preference: number; exchange: string } };

export class TestDns {
  private readonly records = new Map<string, Rec[]>();
  private readonly socket = dgram.createSocket('udp4');
  queries: string[] = [];

  add(name: string, type: Rec['type'], data: Rec['data']): this {
    const key = name.toLowerCase().replace(/\.$/, '');
    const list = this.records.get(key) ?? [];
    list.push({ type, data });
    this.records.set(key, list);
    return this;
  }

  txt(name: string, text: string): this {
    const chunks: string[] = [];
    for (let i = 0; i < text.length; i += 255) chunks.push(text.slice(i, i + 255));
    return this.add(name, 'TXT', chunks);
  }

  async start(): Promise<string> {
    this.socket.on('message', (msg, rinfo) => {
      let query: packet.Packet;
      try {
        query = packet.decode(msg);
      } catch {
        return;
      }
      const q = query.questions?.[0];
      if (!q) return;
      const name = q.name.toLowerCase().replace(/\.$/, '');
      this.queries.push(`${name} ${q.type}`);
      const recs = this.records.get(name);
      const answers = (recs ?? [])
        .filter((r) => r.type === q.type)
        .map((r) => ({ type: r.type, name: q.name, ttl: 60, class: 'IN', data: r.data }) as packet.Answer);
      const response = packet.encode({
        id: query.id,
        type: 'response',
        flags: packet.AUTHORITATIVE_ANSWER | (recs ? 0 : 3), // rcode 3 = NXDOMAIN
        questions: query.questions,
        answers,
      });
      this.socket.send(response, rinfo.port, rinfo.address);
    });
    await new Promise<void>((resolve) => this.socket.bind(0, '127.0.0.1', resolve));
    return `127.0.0.1:${(this.socket.address() as AddressInfo).port}`;
  }

  close(): void {
    this.socket.close();
  }
}
