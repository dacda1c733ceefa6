// The bench's DNS: sink.test has MX mx.sink.test, which is the sink's
// address; every other name is NXDOMAIN (so nothing resolves to the
// internet). Uses @tern/devkit's DnsServer when it is there, else a minimal
// UDP+TCP server with dns-packet.
import dgram from 'node:dgram';
import net from 'node:net';
import * as packet from 'dns-packet';

export interface BenchDns {
  address: string; // host:port
  stop(): Promise<void>;
}

export async function startDns(host: string, port: number, domain: string, mxAddress: string): Promise<BenchDns> {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const devkit = require('@tern/devkit') as {
      DnsServer?: new (o: { host: string; port: number }) => {
        start(): Promise<unknown>;
        close(): Promise<void>;
        address: string;
        mx(name: string, exchange: string, preference?: number): unknown;
        a(name: string, ...a: string[]): unknown;
      };
    };
    if (devkit.DnsServer) {
      const dns = new devkit.DnsServer({ host, port });
      await dns.start();
      dns.mx(domain, `mx.${domain}`);
      dns.a(`mx.${domain}`, mxAddress);
      return { address: dns.address, stop: () => dns.close() };
    }
  } catch {
    /* devkit not there (yet): the minimal server below */
  }
  return startMinimalDns(host, port, domain, mxAddress);
}

function answer(query: Buffer, domain: string, mxAddress: string): Buffer {
  const q = packet.decode(query);
  const question = q.questions?.[0];
  const name = question?.name.toLowerCase() ?? '';
  const answers: packet.Answer[] = [];
  let rcode: 'NOERROR' | 'NXDOMAIN' = 'NOERROR';
  if (name === domain && question?.type === 'MX') {
    answers.push({ type: 'MX', name: question.name, ttl: 300, data: { preference: 10, exchange: `mx.${domain}` } });
  } else if (name === `mx.${domain}` && question?.type === 'A') {
    answers.push({ type: 'A', name: question.name, ttl: 300, data: mxAddress });
  } else if (name !== domain && name !== `mx.${domain}`) {
    rcode = 'NXDOMAIN';
  }
  return packet.encode({
    type: 'response',
    id: q.id,
    flags: packet.AUTHORITATIVE_ANSWER | (rcode === 'NXDOMAIN' ? 3 : 0),
    questions: q.questions,
    answers,
  });
}

async function startMinimalDns(host: string, port: number, domain: string, mxAddress: string): Promise<BenchDns> {
  const udp = dgram.createSocket('udp4');
  udp.on('message', (msg, rinfo) => {
    try {
      udp.send(answer(msg, domain, mxAddress), rinfo.port, rinfo.address);
    } catch {
      /* malformed */
    }
  });
  await new Promise<void>((resolve, reject) => {
    udp.once('error', reject);
    udp.bind(port, host, () => resolve());
  });
  const tcp = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        try {
          const out = answer(msg, domain, mxAddress);
          const lenBuf = Buffer.alloc(2);
          lenBuf.writeUInt16BE(out.length);
          sock.write(Buffer.concat([lenBuf, out]));
        } catch {
          sock.destroy();
        }
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', reject);
    tcp.listen(port, host, () => resolve());
  });
  return {
    address: `${host}:${port}`,
    stop: async () => {
      await new Promise<void>((r) => udp.close(() => r()));
      await new Promise<void>((r) => tcp.close(() => r()));
    },
  };
}
