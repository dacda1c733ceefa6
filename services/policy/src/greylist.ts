// Greylisting (RFC 6647) with auto-whitelisting, at RCPT for untrusted,
// unauthenticated clients on the MX listener: the first attempt of a (client
// network, sender, recipient) triplet is deferred; a retry after the delay
// passes, and a client network that passed often enough skips greylisting.
// State is in Postgres, so a retry may land on any pod.
import type { Pool } from '@tern/db';
import { CheckStage, Listener, PolicyAction, type CheckRequest } from '@tern/proto';
import type { Client } from './engine';
import { parseIp } from './networks';
import { refuse, type Decision } from './replies';

export interface GreylistOptions {
  delaySec: number;
  /** An unretried triplet is forgotten after this. */
  retryWindowSec: number;
  /** Passed triplets and whitelisted clients are kept this long after last use. */
  keepSec: number;
  /** Passes after which a client network is whitelisted (0 = never). */
  autoWhitelistAfter: number;
}

/** /24 for IPv4, /64 for IPv6: senders retry from a pool of nearby addresses. */
export function clientNetwork(address: string): string {
  const ip = parseIp(address);
  if (!ip) return address;
  if (ip.kind() === 'ipv4') return ip.toByteArray().slice(0, 3).join('.') + '.0/24';
  const parts = (ip as { parts: number[] }).parts.slice(0, 4).map((p) => p.toString(16));
  return `${parts.join(':')}::/64`;
}

export class Greylist {
  private cleanupTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pool: Pool,
    private readonly opts: GreylistOptions,
  ) {}

  /** Seconds left to wait, or 0 when the triplet (or the client) may pass. */
  async check(clientAddress: string, sender: string, recipient: string): Promise<number> {
    const network = clientNetwork(clientAddress);
    if (this.opts.autoWhitelistAfter > 0) {
      const awl = await this.pool.query(
        `UPDATE policy.greylist_clients SET last_seen = now()
          WHERE network = $1 AND passes >= $2 AND last_seen > now() - make_interval(secs => $3) RETURNING passes`,
        [network, this.opts.autoWhitelistAfter, this.opts.keepSec],
      );
      if (awl.rowCount) return 0;
    }
    const triplet = `${network}|${sender.toLowerCase()}|${recipient.toLowerCase()}`;
    const res = await this.pool.query<{ waited: number; passed: boolean; fresh: boolean }>(
      `INSERT INTO policy.greylist (triplet) VALUES ($1)
       ON CONFLICT (triplet) DO UPDATE SET
         -- an attempt after the retry window starts over
         first_seen = CASE WHEN policy.greylist.passed_at IS NULL AND policy.greylist.first_seen < now() - make_interval(secs => $2)
                           THEN now() ELSE policy.greylist.first_seen END,
         last_seen = now()
       RETURNING extract(epoch FROM now() - first_seen)::float8 AS waited, passed_at IS NOT NULL AS passed, (xmax = 0) AS fresh`,
      [triplet, this.opts.retryWindowSec],
    );
    const row = res.rows[0];
    if (!row) return this.opts.delaySec;
    if (row.passed) return 0;
    if (row.fresh || row.waited < this.opts.delaySec) return Math.max(1, Math.ceil(this.opts.delaySec - row.waited));
    const passed = await this.pool.query('UPDATE policy.greylist SET passed_at = now() WHERE triplet = $1 AND passed_at IS NULL', [triplet]);
    if (passed.rowCount && this.opts.autoWhitelistAfter > 0) {
      await this.pool.query(
        `INSERT INTO policy.greylist_clients (network, passes) VALUES ($1, 1)
         ON CONFLICT (network) DO UPDATE SET passes = policy.greylist_clients.passes + 1, last_seen = now()`,
        [network],
      );
    }
    return 0;
  }

  hook = async (req: CheckRequest, client: Client, decision: Decision): Promise<Decision | undefined> => {
    if (req.stage !== CheckStage.CHECK_STAGE_RCPT || decision.action !== PolicyAction.POLICY_ACTION_ACCEPT) return undefined;
    if (client.trusted || client.user || client.submission) return undefined;
    if (req.session?.listener !== Listener.LISTENER_MX && req.session?.listener !== Listener.LISTENER_UNSPECIFIED) return undefined;
    if (decision.reason === 'postmaster') return undefined;
    const wait = await this.check(client.address, req.sender, req.recipient.trim());
    if (wait === 0) return undefined;
    return refuse('greylisted', 450, '4.2.0', `<${req.recipient.trim()}>: Recipient address rejected: Greylisted, try again in ${wait} seconds (RFC 6647)`);
  };

  startCleanup(intervalMs = 300_000): void {
    this.cleanupTimer = setInterval(() => {
      void this.pool
        .query(
          `DELETE FROM policy.greylist WHERE (passed_at IS NULL AND last_seen < now() - make_interval(secs => $1))
              OR last_seen < now() - make_interval(secs => $2)`,
          [this.opts.retryWindowSec, this.opts.keepSec],
        )
        .catch(() => undefined);
      void this.pool
        .query('DELETE FROM policy.greylist_clients WHERE last_seen < now() - make_interval(secs => $1)', [this.opts.keepSec])
        .catch(() => undefined);
    }, intervalMs);
    this.cleanupTimer.unref();
  }

  stop(): void {
    clearInterval(this.cleanupTimer);
  }
}
