// Where webhooks may go (I5, secure by default): https to public addresses.
// An endpoint URL is checked when it is saved, and every address it resolves
// to is checked again when a request connects (the lookup below), so a name
// that later resolves to 10.0.0.5 or 169.254.169.254 (DNS rebinding) is
// refused too. TERN_WEBHOOKS_ALLOW_PRIVATE lifts the address check;
// TERN_WEBHOOKS_ALLOW_HTTP allows http://, and then only to addresses that
// are not public (a receiver inside the cluster, a test's own).
import dns from 'node:dns';
import net from 'node:net';
import { redactUrl } from '@tern/config';

export interface AddressRules {
  allowHttp: boolean;
  allowPrivate: boolean;
}

/** Loopback, private, link-local, shared, reserved, multicast, unspecified: everything that is not the public internet. */
const NOT_PUBLIC = new net.BlockList();
for (const [a, p] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  NOT_PUBLIC.addSubnet(a, p, 'ipv4');
}
for (const [a, p] of [
  ['::', 128],
  ['::1', 128],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  NOT_PUBLIC.addSubnet(a, p, 'ipv6');
}

/** Whether an IP address (v4, v6, v4-mapped v6) is on the public internet. */
export function isPublicAddress(ip: string): boolean {
  const family = net.isIP(ip);
  if (family === 0) return false;
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
    if (mapped) return isPublicAddress(mapped[1]!);
    return !NOT_PUBLIC.check(ip, 'ipv6');
  }
  return !NOT_PUBLIC.check(ip, 'ipv4');
}

/** Why `ip` may not be connected to for a URL of `protocol`, or undefined when it may. */
export function addressRefusal(ip: string, protocol: string, rules: AddressRules): string | undefined {
  const isPublic = isPublicAddress(ip);
  if (protocol === 'http:' && isPublic) return `${ip} is a public address and http:// is allowed only inside the cluster: use https://`;
  if (!isPublic && !rules.allowPrivate) {
    return `${ip} is not a public address (loopback, private, link-local or reserved): refused unless TERN_WEBHOOKS_ALLOW_PRIVATE is set on the webhooks service`;
  }
  return undefined;
}

/** The URL, checked as it is saved; an Error whose message names the field and what to do. */
export function checkEndpointUrl(value: string, rules: AddressRules): URL {
  if (value.length > 2048) throw new Error('url: longer than 2048 characters');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`url: "${redactUrl(value)}" is not a URL (expected https://host/path)`);
  }
  if (url.protocol === 'http:') {
    if (!rules.allowHttp) {
      throw new Error('url: http:// is refused: use https:// (set TERN_WEBHOOKS_ALLOW_HTTP on the webhooks service for a receiver inside the cluster)');
    }
  } else if (url.protocol !== 'https:') {
    throw new Error(`url: ${url.protocol}// is refused: use https:// (e.g. https://app.example.com/tern)`);
  }
  if (url.username || url.password) throw new Error('url: holds a user name or password: leave them out (requests are authenticated by their signature)');
  if (url.hash) throw new Error('url: holds a #fragment: leave it out');
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (net.isIP(host)) {
    const refusal = addressRefusal(host, url.protocol, rules);
    if (refusal) throw new Error(`url: ${refusal}`);
  }
  return url;
}

/** An error of a refused address, told apart from network errors by its code. */
export class RefusedAddressError extends Error {
  readonly code = 'EWEBHOOKADDRESS';
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | dns.LookupAddress[], family?: number) => void;

/**
 * A `lookup` for http(s).request that resolves as usual and refuses the
 * connection when an address is not allowed: the check happens on the very
 * address the socket connects to.
 */
export function guardedLookup(protocol: string, rules: AddressRules) {
  return (hostname: string, options: dns.LookupOptions, callback: LookupCallback): void => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '');
      for (const a of addresses) {
        const refusal = addressRefusal(a.address, protocol, rules);
        if (refusal) return callback(new RefusedAddressError(`${hostname} resolves to ${refusal}`), '');
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0];
      if (!first) return callback(Object.assign(new Error(`${hostname}: no address`), { code: 'ENOTFOUND' }), '');
      callback(null, first.address, first.family);
    });
  };
}
