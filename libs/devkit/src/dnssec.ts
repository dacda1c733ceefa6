// A DNSSEC-signed test zone behind a validating resolver, for DANE tests:
// knotd (Debian package knot) serves and signs one zone (automatic signing,
// ECDSA P-256), and unbound (Debian package unbound) validates it with the
// zone's DS as trust anchor, forwarding other test zones (e.g. a DnsServer's)
// as insecure. Both run as children, with their own files in a temporary
// directory, on loopback.
//
//   const zone = await startSignedZone({ zone: 'dane.test', host: '127.0.4.110', port, records: [...] });
//   const resolver = await startValidatingResolver({ host: '127.0.4.111', port, signed: [zone], insecure: [{ zone: 'plain.test', address: dns.address }] });
//   ... resolver.address ("127.0.4.111:port") answers with AD for dane.test ...
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as packet from 'dns-packet';

export interface ZoneRecord {
  /** Owner, relative ("mx", "_25._tcp.mx", "@") or absolute (ending in "."). */
  name: string;
  type: 'A' | 'AAAA' | 'MX' | 'TLSA' | 'TXT' | 'CNAME';
  /** Presentation form of the data, e.g. "10 mx.dane.test." or "3 1 1 <hex>". */
  data: string;
  ttl?: number;
}

export interface SignedZone {
  zone: string;
  host: string;
  port: number;
  /** "host:port". */
  address: string;
  /** DS records of the zone's KSK, presentation form (the trust anchor). */
  ds: string[];
  stop(): Promise<void>;
}

export interface ValidatingResolver {
  host: string;
  port: number;
  /** "host:port", for a resolver setting. */
  address: string;
  logFile: string;
  stop(): Promise<void>;
}

/** Are knotd, keymgr and unbound installed? */
export function dnssecToolsAvailable(): boolean {
  return ['/usr/sbin/knotd', '/usr/sbin/keymgr', '/usr/sbin/unbound'].every((f) => fs.existsSync(f));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8' }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, out: `${stdout}${stderr}` }),
    );
  });
}

/** One UDP query (with the DO bit); undefined on timeout. */
export async function queryUdp(host: string, port: number, name: string, type: string, timeoutMs = 1000): Promise<packet.Packet | undefined> {
  const sock = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  try {
    const id = Math.floor(Math.random() * 65535);
    const msg = packet.encode({
      type: 'query',
      id,
      flags: packet.RECURSION_DESIRED | packet.AUTHENTIC_DATA,
      questions: [{ type: type as packet.RecordType, name }],
      additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096, flags: packet.DNSSEC_OK } as packet.Answer],
    });
    return await new Promise<packet.Packet | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), timeoutMs);
      sock.on('message', (buf) => {
        try {
          const p = packet.decode(buf);
          if (p.id === id) {
            clearTimeout(timer);
            resolve(p);
          }
        } catch {
          /* ignore */
        }
      });
      sock.on('error', () => undefined);
      sock.send(msg, port, host);
    });
  } finally {
    sock.close();
  }
}

function childStopper(child: ChildProcess, dir: string): () => Promise<void> {
  const exited = new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
  // A test process that dies must not leave a server behind on its port.
  const onExit = () => child.kill('SIGKILL');
  process.once('exit', onExit);
  let stopped = false;
  return async () => {
    if (stopped) return;
    stopped = true;
    process.off('exit', onExit);
    child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise<void>((r) => (timer = setTimeout(r, 5_000)))]);
    clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  };
}

/** knotd serving `zone`, signed automatically; resolves once the zone answers DNSKEY. */
export async function startSignedZone(o: { zone: string; host: string; port: number; records: ZoneRecord[] }): Promise<SignedZone> {
  const zone = o.zone.replace(/\.$/, '');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-knot-'));
  const conf = path.join(dir, 'knot.conf');
  fs.mkdirSync(path.join(dir, 'keys'));
  const zoneFile = [
    `$ORIGIN ${zone}.`,
    '$TTL 300',
    `@ SOA ns.${zone}. hostmaster.${zone}. 1 3600 600 86400 300`,
    `@ NS ns.${zone}.`,
    `ns A ${o.host}`,
    ...o.records.map((r) => `${r.name} ${r.ttl ?? 300} ${r.type} ${r.data}`),
    '',
  ].join('\n');
  fs.writeFileSync(path.join(dir, `${zone}.zone`), zoneFile);
  fs.writeFileSync(
    conf,
    [
      'server:',
      `    listen: ${o.host}@${o.port}`,
      `    rundir: "${dir}"`,
      'log:',
      '  - target: stderr',
      '    any: warning',
      'database:',
      `    storage: "${dir}"`,
      'keystore:',
      '  - id: pem',
      `    config: "${path.join(dir, 'keys')}"`,
      'policy:',
      '  - id: test',
      '    keystore: pem',
      '    algorithm: ecdsap256sha256',
      '    single-type-signing: on',
      'template:',
      '  - id: default',
      `    storage: "${dir}"`,
      '    file: "%s.zone"',
      '    zonefile-sync: -1',
      '    journal-content: none',
      'zone:',
      `  - domain: ${zone}`,
      '    dnssec-signing: on',
      '    dnssec-policy: test',
      '',
    ].join('\n'),
  );
  const check = await run('knotc', ['-c', conf, 'conf-check']);
  if (check.code !== 0) throw new Error(`knot configuration refused: ${check.out}`);
  const log = fs.openSync(path.join(dir, 'knotd.log'), 'a');
  const child = spawn('knotd', ['-c', conf], { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const stop = childStopper(child, dir);
  try {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const res = await queryUdp(o.host, o.port, zone, 'DNSKEY', 500);
      if (res?.answers?.some((a) => a.type === 'DNSKEY')) break;
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`knotd did not serve a signed ${zone}: ${fs.readFileSync(path.join(dir, 'knotd.log'), 'utf8').slice(-2000)}`);
      await sleep(100);
    }
    const ds = await run('keymgr', ['-c', conf, zone, 'ds']);
    const lines = ds.out.split('\n').filter((l) => /\sDS\s/.test(l)).map((l) => l.trim());
    if (ds.code !== 0 || !lines.length) throw new Error(`keymgr ds for ${zone} failed: ${ds.out}`);
    return { zone, host: o.host, port: o.port, address: `${o.host}:${o.port}`, ds: lines, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * unbound validating the `signed` zones (their DS as trust anchors, queried
 * at their servers) and forwarding the `insecure` ones as unsigned, on
 * host:port. Nothing else is resolvable (no root).
 */
export async function startValidatingResolver(o: { host: string; port: number; signed: SignedZone[]; insecure?: { zone: string; address: string }[] }): Promise<ValidatingResolver> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-unbound-'));
  const conf = path.join(dir, 'unbound.conf');
  const logFile = path.join(dir, 'unbound.log');
  const stub = (zone: string, address: string) => {
    const i = address.lastIndexOf(':');
    return ['stub-zone:', `    name: "${zone}."`, `    stub-addr: ${address.slice(0, i).replace(/^\[|\]$/g, '')}@${address.slice(i + 1)}`];
  };
  fs.writeFileSync(
    conf,
    [
      'server:',
      `    interface: ${o.host}@${o.port}`,
      `    port: ${o.port}`,
      '    do-daemonize: no',
      '    username: ""',
      '    chroot: ""',
      `    directory: "${dir}"`,
      `    pidfile: "${path.join(dir, 'unbound.pid')}"`,
      '    use-syslog: no',
      `    logfile: "${logFile}"`,
      `    verbosity: ${process.env.TERN_UNBOUND_VERBOSITY ?? '1'}`,
      '    val-log-level: 2',
      '    do-not-query-localhost: no',
      '    access-control: 127.0.0.0/8 allow',
      '    access-control: ::1 allow',
      '    module-config: "validator iterator"',
      '    qname-minimisation: no',
      '    harden-referral-path: no',
      '    target-fetch-policy: "0 0 0 0 0"',
      '    cache-max-ttl: 1',
      '    cache-max-negative-ttl: 1',
      '    do-ip6: no',
      // unbound answers NXDOMAIN for test. itself (an RFC 6761 name) unless told not to.
      '    local-zone: "test." nodefault',
      ...o.signed.flatMap((z) => z.ds.map((d) => `    trust-anchor: "${d}"`)),
      ...(o.insecure ?? []).map((z) => `    domain-insecure: "${z.zone}."`),
      ...o.signed.flatMap((z) => stub(z.zone, z.address)),
      ...(o.insecure ?? []).flatMap((z) => stub(z.zone, z.address)),
      '',
    ].join('\n'),
  );
  const check = await run('unbound-checkconf', [conf]);
  if (check.code !== 0) throw new Error(`unbound configuration refused: ${check.out}`);
  const child = spawn('unbound', ['-d', '-c', conf], { stdio: ['ignore', 'ignore', 'ignore'] });
  const stop = childStopper(child, dir);
  try {
    const probe = o.signed[0]?.zone ?? o.insecure?.[0]?.zone;
    let lastRcode = '';
    const deadline = Date.now() + 15_000;
    for (;;) {
      const res = probe ? await queryUdp(o.host, o.port, probe, 'SOA', 500) : undefined;
      if (res && (res as { rcode?: string }).rcode === 'NOERROR') break;
      lastRcode = (res as { rcode?: string } | undefined)?.rcode ?? 'timeout';
      if (child.exitCode !== null || Date.now() > deadline) {
        let tail = '';
        try {
          tail = fs.readFileSync(logFile, 'utf8');
        } catch {
          /* none */
        }
        throw new Error(`unbound did not answer for ${probe} (last: ${lastRcode}): ${tail.slice(-1500)}`);
      }
      await sleep(100);
    }
    return { host: o.host, port: o.port, address: `${o.host}:${o.port}`, logFile, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
