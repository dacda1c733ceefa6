// Sender Rewriting Scheme, the SRS0/SRS1 addresses of libsrs2 and postsrsd
// (same hash, timestamp and layout, so either side can verify the other's
// addresses given the same secret):
//
//   SRS0=HHHH=TT=domain=local@srs.domain           a sender we forward for
//   SRS1=HHHH=fwd.domain==HHHH=TT=domain=local@... a sender that was already
//                                                  SRS0 at another forwarder
//
// HHHH is HMAC-SHA1 (key: a secret) over the lower-cased fields, base64,
// cut to 4 characters; TT is the day number (days since the epoch, mod 1024)
// in two base32 characters. The first secret signs, every secret verifies
// (rotation: add the new one first, drop the old after the maximum age).
import crypto from 'node:crypto';

export interface SrsOptions {
  /** The domain of the addresses we write (TERN_SRS_DOMAIN); bounces to them come back to our MX. */
  domain: string;
  /** The first signs, all verify (TERN_SRS_SECRETS). */
  secrets: readonly string[];
  /** Days an SRS0 address is honoured (TERN_SRS_MAX_AGE_DAYS). */
  maxAgeDays: number;
  /** Hash characters (libsrs2's default, 4). */
  hashLength?: number;
}

export type SrsReverse =
  | { ok: true; address: string }
  | { ok: false; why: 'syntax' | 'hash' | 'expired' };

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const TIME_SLOTS = 1024;
const DAY_MS = 86_400_000;
/** SRS0 or SRS1 followed by one of libsrs2's separators (it writes "=", accepts "+" and "-" too). */
const SRS_PREFIX = /^srs([01])[=+-]/i;
/** What an SRS local part may carry unquoted (atext and dots). */
const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+$/;

/** Is this local part an SRS address's (SRS0 or SRS1)? */
export const isSrsLocal = (local: string): boolean => SRS_PREFIX.test(local);

export class Srs {
  private readonly hashLength: number;

  constructor(readonly opts: SrsOptions) {
    if (!opts.secrets.length) throw new Error('SRS needs at least one secret');
    this.hashLength = opts.hashLength ?? 4;
  }

  get domain(): string {
    return this.opts.domain;
  }

  private hash(secret: string, ...fields: string[]): string {
    const h = crypto.createHmac('sha1', secret);
    for (const f of fields) h.update(f.toLowerCase());
    return h.digest('base64').slice(0, this.hashLength);
  }

  /** Does `hash` match these fields under one of the secrets? (Case-insensitive: a relay may have lower-cased it.) */
  private verify(hash: string, ...fields: string[]): boolean {
    const want = hash.toLowerCase();
    return this.opts.secrets.some((s) => this.hash(s, ...fields).toLowerCase() === want);
  }

  static timestamp(now: number): string {
    const day = Math.floor(now / DAY_MS) % TIME_SLOTS;
    return BASE32[(day >> 5) & 31]! + BASE32[day & 31]!;
  }

  /** Within the maximum age (libsrs2's check: the day wraps at 1024). */
  private fresh(tt: string, now: number): boolean {
    if (tt.length !== 2) return false;
    const hi = BASE32.indexOf(tt[0]!.toUpperCase());
    const lo = BASE32.indexOf(tt[1]!.toUpperCase());
    if (hi < 0 || lo < 0) return false;
    const then = (hi << 5) | lo;
    let today = Math.floor(now / DAY_MS) % TIME_SLOTS;
    while (today < then) today += TIME_SLOTS;
    return today <= then + this.opts.maxAgeDays;
  }

  /**
   * The SRS address for a sender `local@host` forwarded by us; undefined
   * when the local part cannot go unquoted into one (a quoted local part:
   * the sender is then left as it is).
   */
  forward(local: string, host: string, now = Date.now()): string | undefined {
    if (!ATEXT.test(local) || !host || host.includes('=')) return undefined;
    const secret = this.opts.secrets[0]!;
    const m = SRS_PREFIX.exec(local);
    if (m?.[1] === '1') {
      // SRS1 from another forwarder: keep its first forwarder and SRS0 part, sign anew.
      const rest = local.slice(5);
      const h = rest.indexOf('=');
      const u = h < 0 ? -1 : rest.indexOf('=', h + 1);
      if (u > h + 1) {
        const srsHost = rest.slice(h + 1, u);
        const srsUser = rest.slice(u + 1);
        return `SRS1=${this.hash(secret, srsHost, srsUser)}=${srsHost}=${srsUser}@${this.domain}`;
      }
    } else if (m?.[1] === '0') {
      // SRS0 of the previous forwarder: wrap it (its host stays the way back).
      const srsUser = local.slice(4);
      return `SRS1=${this.hash(secret, host, srsUser)}=${host}=${srsUser}@${this.domain}`;
    }
    const tt = Srs.timestamp(now);
    return `SRS0=${this.hash(secret, tt, host, local)}=${tt}=${host}=${local}@${this.domain}`;
  }

  /**
   * The address an SRS local part (of an address at our SRS domain) stands
   * for: SRS0 gives the original sender, SRS1 the previous forwarder's SRS0
   * address. Refused when the hash does not verify, SRS0's day is past the
   * maximum age, or it is not laid out as SRS.
   */
  reverse(local: string, now = Date.now()): SrsReverse {
    const m = SRS_PREFIX.exec(local);
    if (!m) return { ok: false, why: 'syntax' };
    const rest = local.slice(5);
    if (m[1] === '0') {
      const [hash, tt, host] = rest.split('=', 3);
      const skip = (hash?.length ?? 0) + (tt?.length ?? 0) + (host?.length ?? 0) + 3;
      const user = rest.slice(skip);
      if (!hash || !tt || !host || !user || skip > rest.length) return { ok: false, why: 'syntax' };
      if (!this.verify(hash, tt, host, user)) return { ok: false, why: 'hash' };
      if (!this.fresh(tt, now)) return { ok: false, why: 'expired' };
      return { ok: true, address: `${user}@${host}` };
    }
    const h = rest.indexOf('=');
    const u = h < 0 ? -1 : rest.indexOf('=', h + 1);
    if (h < 1 || u <= h + 1 || u === rest.length - 1) return { ok: false, why: 'syntax' };
    const hash = rest.slice(0, h);
    const srsHost = rest.slice(h + 1, u);
    const srsUser = rest.slice(u + 1);
    if (!this.verify(hash, srsHost, srsUser)) return { ok: false, why: 'hash' };
    return { ok: true, address: `SRS0${srsUser}@${srsHost}` };
  }
}
