// DNS blocklists (Postfix reject_rbl_client): the client address reversed
// under each zone; an A answer in 127.0.0.0/8 lists it, and the zone's TXT
// record becomes the reply text. Checked at CONNECT for untrusted clients.
import { CheckStage, PolicyAction, type CheckRequest } from '@tern/proto';
import type { Logger } from '@tern/telemetry';
import type { Client } from './engine';
import { parseIp } from './networks';
import { refuse, type Decision } from './replies';
import { errorMessage } from '@tern/runtime';

export interface DnsblZone {
  zone: string;
  /** Only these answers count (e.g. 127.0.0.2); empty = any 127.0.0.0/8 answer. */
  codes: string[];
}

/** "zen.spamhaus.org" or "bl.example=127.0.0.2;127.0.0.4". */
export function parseZones(entries: string[]): DnsblZone[] {
  return entries.map((entry) => {
    const [zone = '', codes = ''] = entry.split('=');
    if (!/^[a-z0-9.-]+$/i.test(zone)) throw new Error(`"${entry}" is not a DNSBL zone`);
    return { zone: zone.toLowerCase().replace(/\.$/, ''), codes: codes.split(';').map((c) => c.trim()).filter(Boolean) };
  });
}

export function reverseName(address: string): string | null {
  const ip = parseIp(address);
  if (!ip) return null;
  if (ip.kind() === 'ipv4') return ip.toByteArray().reverse().join('.');
  const hex = (ip.toByteArray() as number[]).map((b) => b.toString(16).padStart(2, '0')).join('');
  return hex.split('').reverse().join('.');
}

export interface DnsblResolver {
  resolve4(name: string): Promise<string[]>;
  resolveTxt(name: string): Promise<string[][]>;
}

interface Listing {
  zone: string;
  text: string;
}

export class Dnsbl {
  private readonly cache = new Map<string, { at: number; listing: Listing | null }>();

  constructor(
    private readonly zones: DnsblZone[],
    private readonly resolver: DnsblResolver,
    private readonly logger: Logger,
    private readonly cacheMs = 60_000,
  ) {}

  async lookup(address: string): Promise<Listing | null> {
    const rev = reverseName(address);
    if (!rev || this.zones.length === 0) return null;
    const hit = this.cache.get(address);
    if (hit && Date.now() - hit.at < this.cacheMs) return hit.listing;
    const results = await Promise.all(this.zones.map((z) => this.query(rev, z, address)));
    const listing = results.find((r) => r !== null) ?? null;
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(address, { at: Date.now(), listing });
    return listing;
  }

  private async query(rev: string, z: DnsblZone, address: string): Promise<Listing | null> {
    const name = `${rev}.${z.zone}`;
    let answers: string[];
    try {
      answers = await this.resolver.resolve4(name);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code !== 'ENOTFOUND' && code !== 'ENODATA') {
        this.logger.warn({ zone: z.zone, err: errorMessage(err) }, 'DNSBL lookup failed; treating as not listed');
      }
      return null;
    }
    const listed = answers.filter((a) => a.startsWith('127.') && (z.codes.length === 0 || z.codes.includes(a)));
    if (listed.length === 0) return null;
    let text = '';
    try {
      text = (await this.resolver.resolveTxt(name)).map((chunks) => chunks.join('')).join(' ');
    } catch {
      // no TXT: the reply names the zone only
    }
    // Reply text: one line, printable ASCII, bounded; "$addr" in list texts is expanded (Postfix does too).
    text = text.replace(/\$addr|\$client_address/g, address).replace(/[^\x20-\x7e]/g, ' ').slice(0, 400);
    return { zone: z.zone, text };
  }

  /** True when the hook does no lookup for this request (CONNECT of untrusted clients only). */
  pure = (req: CheckRequest, client: Client): boolean => req.stage !== CheckStage.CHECK_STAGE_CONNECT || client.trusted;

  hook = async (req: CheckRequest, client: Client, decision: Decision): Promise<Decision | undefined> => {
    if (decision.action !== PolicyAction.POLICY_ACTION_ACCEPT || this.pure(req, client)) return undefined;
    const listing = await this.lookup(client.address);
    if (!listing) return undefined;
    const d = refuse(
      'dnsbl',
      554,
      '5.7.1',
      `Service unavailable; Client host [${client.address}] blocked using ${listing.zone}${listing.text ? `; ${listing.text}` : ''}`,
    );
    return d;
  };
}
