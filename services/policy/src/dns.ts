// The DNS resolver for SPF, DKIM, DMARC, ARC and DNSBL lookups: the servers
// in TERN_DNS_SERVERS (tests point it at their own DNS server), each query
// bounded by a timeout; `resolve` has the shape mailauth expects.
import { promises as dnsPromises } from 'node:dns';

export type Resolve = (name: string, rrtype: string) => Promise<string[][] | string[]>;

export interface Dns {
  resolve: Resolve;
  resolve4(name: string): Promise<string[]>;
  resolveTxt(name: string): Promise<string[][]>;
}

export function createDns(servers: string[], timeoutMs: number): Dns {
  const resolver = new dnsPromises.Resolver({ timeout: timeoutMs, tries: 2 });
  if (servers.length) resolver.setServers(servers);
  return {
    // node:dns throws ENODATA / ENOTFOUND, which mailauth reads as "no record".
    resolve: async (name, rrtype) => (await resolver.resolve(name, rrtype)) as unknown as string[][] | string[],
    resolve4: (name) => resolver.resolve4(name),
    resolveTxt: (name) => resolver.resolveTxt(name),
  };
}
