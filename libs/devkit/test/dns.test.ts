import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import dns from 'node:dns';
import net from 'node:net';
import * as packet from 'dns-packet';
import { DnsServer } from '../src/index';

function resolverFor(server: DnsServer, timeout = 300): dns.promises.Resolver {
  const r = new dns.promises.Resolver({ timeout, tries: 1 });
  r.setServers([server.address]);
  return r;
}

const plain = (mx: { exchange: string; priority: number }[]) => mx.map(({ exchange, priority }) => ({ exchange, priority }));

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
}

/** One raw query over TCP (dns-packet stream framing). */
function tcpQuery(server: DnsServer, name: string, type: packet.RecordType): Promise<packet.DecodedPacket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(server.port, server.host);
    let buf = Buffer.alloc(0);
    s.on('connect', () => s.write(packet.streamEncode({ type: 'query', id: 4242, flags: packet.RECURSION_DESIRED, questions: [{ type, name }] })));
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        s.end();
        resolve(packet.streamDecode(buf) as packet.DecodedPacket);
      }
    });
    s.on('error', reject);
  });
}

function udpQuery(server: DnsServer, name: string, type: packet.RecordType): Promise<packet.DecodedPacket & { rcode?: string }> {
  return new Promise((resolve, reject) => {
    import('node:dgram').then(({ default: dgram }) => {
      const sock = dgram.createSocket('udp4');
      sock.on('message', (m) => {
        sock.close();
        resolve(packet.decode(m) as packet.DecodedPacket & { rcode?: string });
      });
      sock.on('error', reject);
      sock.send(packet.encode({ type: 'query', id: 7, flags: packet.RECURSION_DESIRED, questions: [{ type, name }] }), server.port, server.host);
    }, reject);
  });
}

describe('DnsServer', () => {
  const server = new DnsServer({ host: '127.0.0.2' });
  before(async () => {
    await server.start();
    server
      .mx('example.test', 'mx1.example.test', 10)
      .mx('example.test', 'mx2.example.test', 20)
      .a('mx1.example.test', '127.0.0.3')
      .aaaa('mx1.example.test', '::1')
      .nullMx('nomail.test')
      .txt('example.test', 'v=spf1 ip4:127.0.0.0/8 -all')
      .txt('long.example.test', 'k'.repeat(600))
      .cname('alias.example.test', 'mx1.example.test')
      .tlsa('_25._tcp.mx1.example.test', { usage: 3, selector: 1, matchingType: 1, data: 'ab'.repeat(32) })
      .servfail('broken.test')
      .timeout('slow.test')
      .servfail('mxfail.test', ['MX'])
      .a('mxfail.test', '127.0.0.9')
      .a('gone.test', '127.0.0.1')
      .nxdomain('gone.test');
  });
  after(() => server.close());

  test('binds the asked address, same port for UDP and TCP', () => {
    assert.equal(server.host, '127.0.0.2');
    assert.ok(server.port > 0);
    assert.equal(server.address, `127.0.0.2:${server.port}`);
  });

  test('MX, A, AAAA, TXT, CNAME', async () => {
    const r = resolverFor(server);
    const mx = plain(await r.resolveMx('example.test'));
    assert.deepEqual(mx.sort((a, b) => a.priority - b.priority), [
      { exchange: 'mx1.example.test', priority: 10 },
      { exchange: 'mx2.example.test', priority: 20 },
    ]);
    assert.deepEqual(await r.resolve4('mx1.example.test'), ['127.0.0.3']);
    assert.deepEqual(await r.resolve4('MX1.Example.TEST'), ['127.0.0.3']);
    assert.deepEqual(await r.resolve6('mx1.example.test'), ['::1']);
    assert.deepEqual(await r.resolveTxt('example.test'), [['v=spf1 ip4:127.0.0.0/8 -all']]);
    const long = await r.resolveTxt('long.example.test');
    assert.equal(long[0]!.join(''), 'k'.repeat(600));
    assert.equal(long[0]!.length, 3, 'split into 255-byte character-strings');
    assert.deepEqual(await r.resolve4('alias.example.test'), ['127.0.0.3']);
    assert.deepEqual(await r.resolveCname('alias.example.test'), ['mx1.example.test']);
  });

  test('null MX', async () => {
    const mx = plain(await resolverFor(server).resolveMx('nomail.test'));
    assert.deepEqual(mx, [{ exchange: '', priority: 0 }]);
  });

  test('NXDOMAIN, NODATA, SERVFAIL, timeout', async () => {
    const r = resolverFor(server);
    assert.equal(await code(r.resolveMx('unknown.test')), 'ENOTFOUND');
    assert.equal(await code(r.resolve4('gone.test')), 'ENOTFOUND');
    assert.equal(await code(r.resolveMx('mx1.example.test')), 'ENODATA');
    assert.equal(await code(r.resolveMx('broken.test')), 'ESERVFAIL');
    assert.equal(await code(r.resolveMx('mxfail.test')), 'ESERVFAIL');
    assert.deepEqual(await r.resolve4('mxfail.test'), ['127.0.0.9'], 'behaviour limited to MX');
    const t0 = Date.now();
    assert.equal(await code(r.resolve4('slow.test')), 'ETIMEOUT');
    assert.ok(Date.now() - t0 >= 250);
  });

  test('rcodes, AA flag, TTL and question on the wire (UDP)', async () => {
    const ok = await udpQuery(server, 'Example.Test', 'MX');
    assert.equal(ok.id, 7);
    assert.equal(ok.flag_aa, true);
    assert.equal(ok.flag_rd, true);
    assert.equal(ok.rcode, 'NOERROR');
    assert.equal(ok.questions?.[0]?.name, 'Example.Test');
    assert.equal(ok.answers?.length, 2);
    assert.equal(ok.answers?.[0]?.name, 'Example.Test');
    assert.equal((ok.answers?.[0] as packet.MxAnswer).ttl, 60);
    const nx = await udpQuery(server, 'nothing.test', 'A');
    assert.equal(nx.rcode, 'NXDOMAIN');
    assert.equal(nx.flag_aa, true);
    assert.equal(nx.authorities?.[0]?.type, 'SOA');
    const sf = await udpQuery(server, 'broken.test', 'A');
    assert.equal(sf.rcode, 'SERVFAIL');
  });

  test('TLSA and TCP', async () => {
    const res = await tcpQuery(server, '_25._tcp.mx1.example.test', 'TLSA');
    assert.equal(res.id, 4242);
    assert.equal((res as packet.DecodedPacket & { rcode: string }).rcode, 'NOERROR');
    const tlsa = res.answers?.[0] as packet.TlsaAnswer;
    assert.equal(tlsa.type, 'TLSA');
    assert.equal(tlsa.data.usage, 3);
    assert.equal(tlsa.data.certificate.toString('hex'), 'ab'.repeat(32));
    const mx = await tcpQuery(server, 'example.test', 'MX');
    assert.equal(mx.answers?.length, 2);
    assert.ok(server.queries.some((q) => q.transport === 'tcp' && q.name === 'example.test' && q.type === 'MX'));
  });

  test('records change at run time', async () => {
    const r = resolverFor(server);
    server.a('late.test', '127.0.0.5');
    assert.deepEqual(await r.resolve4('late.test'), ['127.0.0.5']);
    server.set('late.test', [{ type: 'A', data: '127.0.0.6', ttl: 5 }], 'A');
    assert.deepEqual(await r.resolve4('late.test', { ttl: true }), [{ address: '127.0.0.6', ttl: 5 }]);
    server.remove('late.test');
    assert.equal(await code(r.resolve4('late.test')), 'ENOTFOUND');
    server.servfail('late.test');
    assert.equal(await code(r.resolve4('late.test')), 'ESERVFAIL');
    server.behave('late.test', null);
    assert.equal(await code(r.resolve4('late.test')), 'ENOTFOUND');
  });

  test('mailSuffix rule for the demo', async () => {
    const demo = await new DnsServer().start();
    try {
      demo.mailSuffix('test', { address: '127.0.0.7' });
      demo.mx('special.test', 'elsewhere.example', 5);
      const r = resolverFor(demo);
      assert.deepEqual(plain(await r.resolveMx('anything.test')), [{ exchange: 'mx.anything.test', priority: 10 }]);
      assert.deepEqual(await r.resolve4('mx.anything.test'), ['127.0.0.7']);
      assert.equal(await code(r.resolve6('mx.anything.test')), 'ENODATA');
      assert.deepEqual(plain(await r.resolveMx('special.test')), [{ exchange: 'elsewhere.example', priority: 5 }], 'explicit records win');
      assert.equal(await code(r.resolveMx('anything.example')), 'ENOTFOUND', 'outside the suffix');
    } finally {
      await demo.close();
    }
  });
});
