// Recipient checks of relay domains at RCPT (issue 24), after the built-in
// rules accepted the address as a relay domain's:
//   list    - the relay recipient list (relay-recipients.ts): unlisted is
//             550 5.1.1 "User unknown in relay recipient table" (Postfix);
//   callout - recipient address verification (Postfix
//             reject_unverified_recipient): delivery asks the next hop
//             (DeliveryService.VerifyRecipient: EHLO, MAIL FROM, RCPT TO, RSET)
//             and the answer is kept in policy.verify_cache, shared by every
//             policy pod: 2xx for TERN_VERIFY_POSITIVE_TTL_S, 5xx for
//             TERN_VERIFY_NEGATIVE_TTL_S; a temporary failure is not kept.
//             5xx is 550 5.1.1 "undeliverable address", anything else 450
//             4.1.1 "unverified address" (Postfix's unverified_recipient_defer_code).
// Callouts are bounded so that a flood of RCPTs cannot make Tern a dictionary
// attack tool against the next hop: one callout per address at a time per pod
// (others wait for it), at most TERN_VERIFY_MAX_INFLIGHT per pod and
// TERN_VERIFY_MAX_INFLIGHT_PER_DOMAIN per domain and pod, and at most
// TERN_VERIFY_RATE_PER_DOMAIN per domain across every pod (the shared rate
// counters); past a bound the RCPT gets 450 4.1.1 and no callout is made.
import {
  CheckStage,
  PolicyAction,
  VerifyResult,
  type CheckRequest,
  type DeleteRelayRecipientsRequest,
  type DeliveryServiceClient,
  type FlushVerifiedRecipientsRequest,
  type ListRelayRecipientsRequest,
  type ListVerifiedRecipientsRequest,
  type PutRelayRecipientsRequest,
  type ReplaceRelayRecipientsRequest,
  type SmtpReply,
  type VerifiedRecipient,
} from '@tern/proto';
import type { Pool } from '@tern/db';
import { grpc, unary } from '@tern/grpc';
import type { Logger, Meter } from '@tern/telemetry';
import { addressKey, formatAddress, parseAddress } from './address';
import type { Snapshot } from './cache';
import type { Client } from './engine';
import { invalid } from './errors';
import type { Rate } from './ratelimit';
import type { RelayRecipientStore } from './relay-recipients';
import { refuse, type Decision } from './replies';
import { domainName, domainOf, mailboxAddress } from './validate';
import { errorMessage } from '@tern/runtime';

export interface VerifyOptions {
  positiveTtlS: number;
  negativeTtlS: number;
  /** Deadline of one VerifyRecipient call (the RCPT waits that long at most). */
  timeoutMs: number;
  maxInflight: number;
  maxInflightPerDomain: number;
  /** Callouts per domain across every pod; undefined = no rate bound. */
  ratePerDomain?: Rate;
}

/** What the callout (or the cache) said of an address. */
interface Verdict {
  result: 'ok' | 'reject' | 'tempfail';
  /** The next hop's reply, or what went wrong. */
  reply: SmtpReply;
  remoteHost: string;
  /** The command the next hop answered ("rcpt", "mail", "ehlo", "greeting", ...), when it answered. */
  stage?: string;
  /** Not asked now: a cached answer, or a bound that stopped the callout. */
  source: 'cache' | 'callout' | 'limited';
}

interface CacheRow {
  address: string;
  ok: boolean;
  reply_code: number;
  reply_text: string;
  remote_host: string;
  checked_at: Date;
  expires_at: Date;
}

const CACHE_COLS = 'address, ok, reply_code, reply_text, remote_host, checked_at, expires_at';

/** "550 5.1.1 text" back into a reply. */
function replyOf(code: number, text: string): SmtpReply {
  const m = /^(\d\.\d{1,3}\.\d{1,3}) (.*)$/s.exec(text);
  return m ? { code, enhanced: m[1]!, text: m[2]! } : { code, enhanced: '', text };
}
const IN_REPLY_TO: Record<string, string> = { greeting: 'the initial greeting', ehlo: 'EHLO command', starttls: 'STARTTLS command', mail: 'MAIL FROM command', rcpt: 'RCPT TO command' };
const replyText = (r: SmtpReply) => `${r.enhanced ? `${r.enhanced} ` : ''}${r.text}`;

/** policy.verify_cache: definite callout answers, shared by every policy pod. */
export class VerifyCache {
  private sweepTimer?: NodeJS.Timeout;

  constructor(private readonly pool: Pool) {}

  async get(key: string): Promise<CacheRow | undefined> {
    const res = await this.pool.query<CacheRow>(`SELECT ${CACHE_COLS} FROM policy.verify_cache WHERE address = $1 AND expires_at > now()`, [key]);
    return res.rows[0];
  }

  async put(key: string, ok: boolean, reply: SmtpReply, remoteHost: string, ttlS: number): Promise<void> {
    await this.pool.query(
      `INSERT INTO policy.verify_cache (address, domain, ok, reply_code, reply_text, remote_host, checked_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, now(), now() + make_interval(secs => $7))
       ON CONFLICT (address) DO UPDATE SET ok = EXCLUDED.ok, reply_code = EXCLUDED.reply_code, reply_text = EXCLUDED.reply_text,
         remote_host = EXCLUDED.remote_host, checked_at = EXCLUDED.checked_at, expires_at = EXCLUDED.expires_at`,
      [key, domainOf(key), ok, reply.code, replyText(reply).slice(0, 1000), remoteHost.slice(0, 255), ttlS],
    );
  }

  async list(domain: string, limit: number, after: string): Promise<{ recipients: VerifiedRecipient[]; nextPageToken: string }> {
    const d = domain ? domainName('domain', domain) : '';
    const n = Math.min(Math.max(limit || 100, 1), 1000);
    const res = await this.pool.query<CacheRow>(
      `SELECT ${CACHE_COLS} FROM policy.verify_cache WHERE ($1 = '' OR domain = $1) AND address > $2 AND expires_at > now() ORDER BY address LIMIT $3`,
      [d, after, n + 1],
    );
    const page = res.rows.slice(0, n);
    return {
      recipients: page.map((r) => ({
        address: r.address,
        result: r.ok ? VerifyResult.VERIFY_RESULT_OK : VerifyResult.VERIFY_RESULT_REJECT,
        reply: replyOf(r.reply_code, r.reply_text),
        remoteHost: r.remote_host,
        checkedAt: r.checked_at,
        expiresAt: r.expires_at,
      })),
      nextPageToken: res.rows.length > n ? page.at(-1)!.address : '',
    };
  }

  /** Forgets one address ("user@domain") or every address of a domain ("@domain"). */
  async flush(raw: string): Promise<number> {
    const s = raw.trim();
    if (!s) throw invalid('address', 'required: "user@domain", or "@domain" for every address of the domain');
    const res = s.startsWith('@')
      ? await this.pool.query('DELETE FROM policy.verify_cache WHERE domain = $1', [domainName('address', s.slice(1))])
      : await this.pool.query('DELETE FROM policy.verify_cache WHERE address = $1', [mailboxAddress('address', s)]);
    return res.rowCount ?? 0;
  }

  startSweep(intervalMs: number, onError: (err: Error) => void): void {
    this.sweepTimer = setInterval(() => {
      this.pool
        .query('DELETE FROM policy.verify_cache WHERE address IN (SELECT address FROM policy.verify_cache WHERE expires_at <= now() LIMIT 10000)')
        .catch(onError);
    }, intervalMs);
    this.sweepTimer.unref();
  }

  stop(): void {
    clearInterval(this.sweepTimer);
  }
}

export interface RecipientCheckDeps {
  snapshot: () => Snapshot;
  relayRecipients: RelayRecipientStore;
  cache: VerifyCache;
  /** Delivery's VerifyRecipient; undefined when TERN_DELIVERY_ADDR is unset (callout domains then defer). */
  delivery?: Pick<DeliveryServiceClient, 'verifyRecipient'>;
  /** The shared rate counters (ratelimit.ts). */
  counter: { hit(key: string, rate: Rate): Promise<{ exceeded: boolean }> };
  options: VerifyOptions;
  logger: Logger;
  meter: Meter;
}

/** The Check hook of relay domains' recipient checks, with its cache sweep. */
export function recipientCheckHook(deps: RecipientCheckDeps) {
  const { options: o, logger } = deps;
  const counted = deps.meter.createCounter('tern_policy_verify_total', {
    description: 'Recipient verification of relay domains by result: cache_hit_ok, cache_hit_reject, callout_ok, callout_reject, callout_tempfail, limited (no callout: a bound was reached)',
  });
  /** One callout per address at a time on this pod: later RCPTs for it wait for its answer. */
  const pending = new Map<string, Promise<Verdict>>();
  const perDomain = new Map<string, number>();
  let inflight = 0;

  /** The relay domain's mode for this request, when the hook has anything to do. */
  const modeOf = (req: CheckRequest): { mode: 'list' | 'callout'; key: string; domain: string } | undefined => {
    if (req.stage !== CheckStage.CHECK_STAGE_RCPT) return undefined;
    const addr = parseAddress(req.recipient);
    if (!addr) return undefined;
    const d = deps.snapshot().domains.get(addr.domain);
    if (d?.kind !== 'relay' || d.recipientCheck === 'none') return undefined;
    return { mode: d.recipientCheck, key: addressKey(addr), domain: d.name };
  };

  const limited = (why: string): Verdict => ({ result: 'tempfail', reply: { code: 450, enhanced: '4.1.1', text: why }, remoteHost: '', source: 'limited' });

  async function callout(key: string, domain: string): Promise<Verdict> {
    if (!deps.delivery) return limited('recipient verification is not configured (TERN_DELIVERY_ADDR is unset)');
    if (inflight >= o.maxInflight) return limited('too many verifications in progress, try again later');
    if ((perDomain.get(domain) ?? 0) >= o.maxInflightPerDomain) return limited(`too many verifications for ${domain} in progress, try again later`);
    inflight++;
    perDomain.set(domain, (perDomain.get(domain) ?? 0) + 1);
    try {
      if (o.ratePerDomain && (await deps.counter.hit(`verify:domain:${domain}`, o.ratePerDomain)).exceeded) {
        return limited(`verification rate for ${domain} exceeded, try again later`);
      }
      let res;
      try {
        res = await unary(deps.delivery.verifyRecipient.bind(deps.delivery), { address: key }, { deadlineMs: o.timeoutMs });
      } catch (err) {
        const e = err as grpc.ServiceError;
        const why =
          e.code === grpc.status.DEADLINE_EXCEEDED
            ? `the next hop did not answer within ${o.timeoutMs} ms`
            : e.code === grpc.status.RESOURCE_EXHAUSTED
              ? 'too many verifications in progress, try again later'
              : `verification failed: ${e.details || e.message}`;
        return { result: 'tempfail', reply: { code: 450, enhanced: '4.1.1', text: why }, remoteHost: '', source: 'callout' };
      }
      const reply = res.reply ?? { code: 450, enhanced: '4.1.1', text: 'no reply' };
      const result = res.result === VerifyResult.VERIFY_RESULT_OK ? 'ok' : res.result === VerifyResult.VERIFY_RESULT_REJECT ? 'reject' : 'tempfail';
      if (result !== 'tempfail') {
        await deps.cache
          .put(key, result === 'ok', reply, res.remoteHost, result === 'ok' ? o.positiveTtlS : o.negativeTtlS)
          .catch((err: Error) => logger.warn({ err: err.message, address: key }, 'verification result not cached; the next RCPT asks again'));
      }
      return { result, reply, remoteHost: res.remoteHost, stage: res.stage, source: 'callout' };
    } finally {
      inflight--;
      const n = (perDomain.get(domain) ?? 1) - 1;
      if (n > 0) perDomain.set(domain, n);
      else perDomain.delete(domain);
    }
  }

  async function verify(key: string, domain: string): Promise<Verdict> {
    const hit = await deps.cache.get(key);
    if (hit) return { result: hit.ok ? 'ok' : 'reject', reply: replyOf(hit.reply_code, hit.reply_text), remoteHost: hit.remote_host, stage: 'rcpt', source: 'cache' };
    let p = pending.get(key);
    if (!p) {
      p = callout(key, domain).finally(() => pending.delete(key));
      pending.set(key, p);
    }
    return p;
  }

  const hook = async (req: CheckRequest, _client: Client, decision: Decision): Promise<Decision | undefined> => {
    if (decision.action !== PolicyAction.POLICY_ACTION_ACCEPT) return undefined;
    const m = modeOf(req);
    if (!m) return undefined;
    const shown = formatAddress(req.recipient);
    if (m.mode === 'list') {
      let listed: boolean;
      try {
        listed = await deps.relayRecipients.listed(m.key);
      } catch (err) {
        logger.warn({ err: errorMessage(err), recipient: m.key }, 'relay recipient lookup failed');
        return refuse('relay_recipient_lookup_failed', 451, '4.3.0', `${shown}: Temporary lookup failure`);
      }
      if (listed) return { ...decision, reason: 'relay_recipient' };
      return refuse('unknown_relay_recipient', 550, '5.1.1', `${shown}: Recipient address rejected: User unknown in relay recipient table`);
    }
    let v: Verdict;
    try {
      v = await verify(m.key, m.domain);
    } catch (err) {
      // The cache or the rate counters (Postgres) failed: no verdict either way.
      logger.warn({ err: errorMessage(err), recipient: m.key }, 'recipient verification failed');
      v = { result: 'tempfail', reply: { code: 450, enhanced: '4.1.1', text: 'verification state unavailable, try again later' }, remoteHost: '', source: 'limited' };
    }
    counted.add(1, { result: v.source === 'limited' ? 'limited' : `${v.source === 'cache' ? 'cache_hit' : 'callout'}_${v.result}` });
    // Postfix's wording: "host mx.example.com[192.0.2.1] said: 550 5.1.1 ... (in reply to RCPT TO command)".
    const command = v.stage ? IN_REPLY_TO[v.stage] : undefined;
    const said = v.remoteHost ? `host ${v.remoteHost} said: ${v.reply.code} ${replyText(v.reply)}${command ? ` (in reply to ${command})` : ''}` : v.reply.text;
    if (v.result === 'ok') return { ...decision, reason: v.source === 'cache' ? 'verified_cached' : 'verified' };
    if (v.result === 'reject') return refuse('unverified_recipient_reject', 550, '5.1.1', `${shown}: Recipient address rejected: undeliverable address: ${said}`);
    return refuse(v.source === 'limited' ? 'verify_limited' : 'unverified_recipient_defer', 450, '4.1.1', `${shown}: Recipient address rejected: unverified address: ${said}`);
  };

  return Object.assign(hook, {
    /** A relay domain checked by list or callout is never a cacheable accept (its answer reads tables, or counts). */
    pure: (req: CheckRequest) => modeOf(req) === undefined,
  });
}

type UnaryFactory = <Req, Res>(name: string, fn: (req: Req) => Promise<Res>) => (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

/** The management RPCs of the relay recipient list and the verification cache. */
export function relayRecipientHandlers(store: RelayRecipientStore, cache: VerifyCache, unary: UnaryFactory, logger: Logger, meter: Meter) {
  const changes = meter.createCounter('tern_policy_changes_total', { description: 'Policy data changes by entity and action' });
  const op = (operator: string) => operator.trim() || 'unknown';
  const log = (entity: string, action: string, key: string, operator: string, extra: Record<string, unknown>) => {
    changes.add(1, { entity, action });
    logger.info({ event: 'policy_change', entity, action, key, operator: op(operator), ...extra }, `${entity} ${action} ${key}`);
  };
  return {
    listRelayRecipients: unary('ListRelayRecipients', (req: ListRelayRecipientsRequest) => store.list(req)),
    putRelayRecipients: unary('PutRelayRecipients', async (req: PutRelayRecipientsRequest) => {
      const res = await store.put(req, op(req.operator));
      if (!req.dryRun && res.added) log('relay_recipient', 'put', req.addresses.length === 1 ? req.addresses[0]!.trim().toLowerCase() : `${req.addresses.length} entries`, req.operator, res);
      return res;
    }),
    deleteRelayRecipients: unary('DeleteRelayRecipients', async (req: DeleteRelayRecipientsRequest) => {
      const res = await store.delete(req, op(req.operator));
      if (!req.dryRun && res.deleted) log('relay_recipient', 'delete', req.domain ? `@${req.domain}` : req.addresses.join(',').slice(0, 200), req.operator, res);
      return res;
    }),
    replaceRelayRecipients: unary('ReplaceRelayRecipients', async (req: ReplaceRelayRecipientsRequest) => {
      const res = await store.replace(req, op(req.operator));
      if (!req.dryRun && (res.added || res.removed)) log('relay_recipient', 'replace', `@${req.domain.trim().toLowerCase()}`, req.operator, { ...res });
      return res;
    }),
    listVerifiedRecipients: unary('ListVerifiedRecipients', (req: ListVerifiedRecipientsRequest) => cache.list(req.domain, req.limit, req.pageToken)),
    flushVerifiedRecipients: unary('FlushVerifiedRecipients', async (req: FlushVerifiedRecipientsRequest) => {
      const deleted = await cache.flush(req.address);
      log('verified_recipient', 'flush', req.address.trim(), req.operator, { deleted });
      return { deleted };
    }),
  };
}
