// Client networks (CIDR lists) and matching an address against them.
import ipaddr from 'ipaddr.js';

export type Network = [ipaddr.IPv4 | ipaddr.IPv6, number];

/** Parses "10.0.0.0/8", "::1/128" or a bare address (a /32 or /128). Throws naming the bad entry. */
export function parseNetworks(entries: string[]): Network[] {
  return entries.map((entry) => {
    try {
      if (entry.includes('/')) return ipaddr.parseCIDR(entry);
      const addr = ipaddr.parse(entry);
      return [addr, addr.kind() === 'ipv4' ? 32 : 128] as Network;
    } catch {
      throw new Error(`"${entry}" is not an address or CIDR network`);
    }
  });
}

/** Parses a client address, unwrapping IPv4-mapped IPv6 (::ffff:1.2.3.4). */
export function parseIp(address: string): ipaddr.IPv4 | ipaddr.IPv6 | null {
  try {
    return ipaddr.process(address.replace(/^\[|\]$/g, '').replace(/^ipv6:/i, ''));
  } catch {
    return null;
  }
}

export function inNetworks(address: string, networks: readonly Network[]): boolean {
  const ip = parseIp(address);
  if (!ip) return false;
  for (const [net, bits] of networks) {
    if (net.kind() !== ip.kind()) continue;
    if (ip.match(net, bits)) return true;
  }
  return false;
}
