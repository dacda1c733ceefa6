// The bench's DNS, @tern/devkit's DnsServer: sink.test has MX mx.sink.test,
// which is the sink's address; every other name is NXDOMAIN (so nothing
// resolves to the internet).
import { DnsServer } from '@tern/devkit';

export interface BenchDns {
  address: string; // host:port
  stop(): Promise<void>;
}

export async function startDns(host: string, port: number, domain: string, mxAddress: string): Promise<BenchDns> {
  const dns = new DnsServer({ host, port });
  await dns.start();
  dns.mx(domain, `mx.${domain}`);
  dns.a(`mx.${domain}`, mxAddress);
  return { address: dns.address, stop: () => dns.close() };
}
