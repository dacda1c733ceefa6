// MTA-STS (RFC 8461): the recipient domain's policy, found through the TXT
// record _mta-sts.<domain> and fetched over HTTPS from
// https://mta-sts.<domain>/.well-known/mta-sts.txt (certificate verified,
// no redirects), cached for its max_age and refetched when the TXT id
// changes. Parsing is mailauth's; the fetch is ours so that the resolver,
// the port and the trust anchors are the service's (and a test's).
//
// In "enforce" mode only MX hosts the policy names may be used, and only over
// TLS with a certificate valid for the MX name; a failure is temporary (the
// message waits, it is never sent in clear). "testing" and "none" change
// nothing for delivery.
import https from 'node:https';
import net from 'node:net';
import type { parsePolicy, resolvePolicy } from 'mailauth/lib/mta-sts';
import type { Logger } from '@tern/telemetry';
import type { NextHopResolver } from './nexthop';
import { nameMatches } from './smtp-client';
import { errorMessage } from '@tern/runtime';

/**
 * mailauth's MTA-STS code, loaded at the first MX delivery that asks for a
 * policy, not at start: it brings mailauth's tools (joi, tldts, libmime), 100
 * modules and 4.6 MB of heap a process keeps, which a pod that delivers only
 * through routes with their own TLS policy (a smart host, LMTP) or runs with
 * TERN_MTA_STS=false never needs. That first delivery waits for the load
 * (100-300 ms), once.
 */
let mailauthSts: Promise<{ parsePolicy: typeof parsePolicy; resolvePolicy: typeof resolvePolicy }> | undefined;
const loadMailauthSts = () => (mailauthSts ??= import('mailauth/lib/mta-sts.js').then((m) => ({ parsePolicy: m.parsePolicy, resolvePolicy: m.resolvePolicy })));

export interface StsPolicy {
  id: string;
  mode: 'enforce' | 'testing' | 'none';
  mx: string[];
  /** Epoch ms after which the policy is no longer used. */
  expires: number;
}

export interface MtaStsOptions {
  resolver: NextHopResolver;
  logger: Logger;
  /** HTTPS port of policy hosts (443; tests use another). */
  port?: number;
  /** Trust anchors (PEM) for the policy host's certificate; default Node's bundled CAs. */
  ca?: string | Buffer;
  timeoutMs?: number;
  /** RFC 8461 3.2 recommends at most 64 KiB. */
  maxBytes?: number;
  /** How long the TXT record's answer is reused before it is asked again (a changed id means a new policy). Default 60 s. */
  txtRecheckMs?: number;
}

/** RFC 8461 4.1: the policy's mx patterns ("mail.example.com", "*.example.net") against an MX host name. */
export function mxAllowed(policy: Pick<StsPolicy, 'mx'>, host: string): boolean {
  return policy.mx.some((p) => nameMatches(p, host));
}

export class MtaStsPolicies {
  private readonly cache = new Map<string, StsPolicy>();
  /** Domains whose TXT answer (an id, or none) is recent enough to reuse: domain -> [id or false, checked at]. */
  private readonly txt = new Map<string, [string | false, number]>();
  /** Fetches in progress, so that concurrent jobs to one domain share one. */
  private readonly inflight = new Map<string, Promise<StsPolicy | undefined>>();
  fetches = 0;

  constructor(private readonly o: MtaStsOptions) {}

  /** The policy in force for `domain`, or undefined when it has none (or none could be had and none is cached). */
  async policyFor(domain: string): Promise<StsPolicy | undefined> {
    const d = domain.toLowerCase().replace(/\.$/, '');
    const running = this.inflight.get(d);
    if (running) return running;
    const p = this.lookup(d).finally(() => this.inflight.delete(d));
    this.inflight.set(d, p);
    return p;
  }

  private async lookup(domain: string): Promise<StsPolicy | undefined> {
    const cached = this.cache.get(domain);
    const valid = cached && cached.expires > Date.now() ? cached : undefined;
    if (!valid && cached) this.cache.delete(domain);
    let id: string | false;
    const recent = this.txt.get(domain);
    try {
      if (recent && Date.now() - recent[1] < (this.o.txtRecheckMs ?? 60_000)) id = recent[0];
      else {
        const { resolvePolicy } = await loadMailauthSts();
        id = await resolvePolicy(domain, { resolver: (name: string) => this.o.resolver.resolveTxt(name) });
        this.txt.set(domain, [id, Date.now()]);
        if (this.txt.size > 50_000) this.txt.delete(this.txt.keys().next().value as string);
      }
    } catch (err) {
      // DNS trouble: a cached policy stays in force until it expires (RFC 8461 5.1).
      this.o.logger.info({ domain, err: errorMessage(err) }, 'MTA-STS TXT lookup failed; using the cached policy if any');
      return valid;
    }
    if (!id) return valid; // no TXT record: a cached policy still holds until max_age (RFC 8461 5.1)
    if (valid && valid.id === id) return valid;
    try {
      const policy = await this.fetch(domain, id);
      this.cache.set(domain, policy);
      if (this.cache.size > 50_000) this.cache.delete(this.cache.keys().next().value as string);
      return policy;
    } catch (err) {
      this.o.logger.warn({ domain, err: errorMessage(err) }, 'MTA-STS policy fetch failed; using the cached policy if any');
      return valid;
    }
  }

  private async fetch(domain: string, id: string): Promise<StsPolicy> {
    this.fetches++;
    const host = `mta-sts.${domain}`;
    const addrs = await this.o.resolver.hostAddresses(host);
    if (!addrs.length) throw new Error(`${host} has no address`);
    const timeoutMs = this.o.timeoutMs ?? 60_000;
    const maxBytes = this.o.maxBytes ?? 64 * 1024;
    const text = await new Promise<string>((resolve, reject) => {
      const req = https.request(
        {
          host: addrs[0],
          family: net.isIPv6(addrs[0]!) ? 6 : 4,
          port: this.o.port ?? 443,
          path: '/.well-known/mta-sts.txt',
          method: 'GET',
          servername: host,
          headers: { host },
          ca: this.o.ca,
          rejectUnauthorized: true, // RFC 8461 3.3: the policy host's certificate must be valid for its name
          agent: false,
          timeout: timeoutMs,
        },
        (res) => {
          // RFC 8461 3.3: redirects are not followed; only 200 is a policy.
          if (res.statusCode !== 200) {
            res.resume();
            reject(new Error(`https://${host}/.well-known/mta-sts.txt answered ${res.statusCode}`));
            return;
          }
          const parts: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > maxBytes) req.destroy(new Error(`policy of ${domain} is larger than ${maxBytes} bytes`));
            else parts.push(c);
          });
          res.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`fetching the MTA-STS policy of ${domain} timed out`)));
      req.on('error', reject);
      req.end();
    });
    const { parsePolicy } = await loadMailauthSts();
    const parsed = parsePolicy(text);
    const maxAge = Math.min(Number(parsed.maxAge ?? 0), 31_557_600);
    if (!(maxAge > 0)) throw new Error(`policy of ${domain} has no usable max_age`);
    return { id, mode: parsed.mode, mx: parsed.mx ?? [], expires: Date.now() + maxAge * 1000 };
  }
}
