// Policy's answer at each SMTP stage (PolicyService.Check at connect, HELO,
// MAIL and RCPT, with a deadline), as the reply to give: a refusal passes
// through; an error, a timeout or an answer ingress cannot read is 451 4.3.0,
// never an accept. Accepts that policy marks reusable (cache_ms) are kept in
// a DecisionCache and given again for an identical request without a call.
import { CheckRequest, PolicyAction, type CheckResponse, type CheckStage, type SmtpReply } from '@tern/proto';
import { isPositive, type Reply, type SmtpSession } from '@tern/smtp';
import { context, type Logger } from '@tern/telemetry';
import { call, type PolicyClient } from './clients';
import { sessionInfo } from './envelope';
import type { IngressMetrics } from './metrics';
import { IngressReplies } from './replies';
import { ctxOf } from './session-state';
import { errorMessage } from '@tern/runtime';

export interface PolicyCheckDeps {
  hostname: string;
  logger: Logger;
  policy: PolicyClient;
  metrics: IngressMetrics;
  policyDeadlineMs: number;
  /** Reusable policy accepts; none when absent. */
  decisions?: DecisionCache;
}

/** The reply to give (undefined = the engine's standard accept), whether policy asked to hold, and its answer. */
export interface PolicyDecision {
  reply: Reply | undefined;
  hold: boolean;
  res?: CheckResponse;
}

/**
 * Accepts that policy marked reusable (CheckResponse.cache_ms): they depend
 * only on the request (minus session id and client port) and policy data, so
 * an identical request within cache_ms gets the same answer without a call.
 * Bounded: the oldest entries go first.
 */
export class DecisionCache {
  private readonly entries = new Map<string, { res: CheckResponse; until: number }>();
  hits = 0;

  constructor(private readonly max = 10_000) {}

  /**
   * Every field of the request but session.session_id and
   * session.client_port, in one JSON array (a test fails when a field is
   * added to CheckRequest or SessionInfo and not here). JSON rather than
   * the request's protobuf encoding: the key is built at every stage of
   * every session (docs/performance.md).
   */
  static key(req: CheckRequest): string {
    const s = req.session;
    const t = s?.tls;
    return JSON.stringify([
      req.stage,
      s ? [s.clientAddress, s.clientName, s.heloName, s.listener, t ? [t.used, t.version, t.cipher, t.verified] : null, s.authUser, s.serverName] : null,
      req.sender,
      req.recipient,
      req.recipients,
      req.declaredSize,
      req.smtputf8,
    ]);
  }

  get(key: string, now = Date.now()): CheckResponse | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (e.until <= now) {
      this.entries.delete(key);
      return undefined;
    }
    this.hits++;
    return e.res;
  }

  set(key: string, res: CheckResponse, now = Date.now()): void {
    if (!res.cacheMs || res.action !== PolicyAction.POLICY_ACTION_ACCEPT) return;
    this.entries.delete(key);
    this.entries.set(key, { res, until: now + res.cacheMs });
    while (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!);
  }
}

/** Policy's reply as the engine's; undefined when policy gave none. */
export function toReply(r: SmtpReply | undefined): Reply | undefined {
  if (!r || !r.code) return undefined;
  return { code: r.code, enhanced: r.enhanced || undefined, text: r.text || 'Ok' } as Reply;
}

/** A policy decision as the reply to give (undefined = standard accept). */
export function decisionReply(res: Pick<CheckResponse, 'action' | 'reply'>): { reply: Reply | undefined; hold: boolean } {
  const given = toReply(res.reply);
  switch (res.action) {
    case PolicyAction.POLICY_ACTION_ACCEPT:
      return { reply: given && isPositive(given) ? given : undefined, hold: false };
    case PolicyAction.POLICY_ACTION_HOLD:
      return { reply: given && isPositive(given) ? given : undefined, hold: true };
    case PolicyAction.POLICY_ACTION_REJECT:
      return {
        reply: given && given.code >= 500 && given.code < 600 ? given : { code: 554, enhanced: '5.7.1', text: given?.text ?? 'Rejected by policy' },
        hold: false,
      };
    case PolicyAction.POLICY_ACTION_DEFER:
      return {
        reply: given && given.code >= 400 && given.code < 500 ? given : { code: 450, enhanced: '4.7.1', text: given?.text ?? 'Try again later' },
        hold: false,
      };
    default:
      // An answer we cannot read is not an accept.
      return { reply: IngressReplies.policyUnavailable, hold: false };
  }
}

/** Asks policy (or the DecisionCache) at one stage; counts the decision and logs a refusal. */
export async function checkPolicy(deps: PolicyCheckDeps, stage: CheckStage, stageName: string, s: SmtpSession, extra: Partial<CheckRequest>): Promise<PolicyDecision> {
  const { logger, policy, metrics, hostname } = deps;
  const req = CheckRequest.fromPartial({ stage, session: sessionInfo(s, hostname), ...extra });
  const cache = deps.decisions;
  const key = cache ? DecisionCache.key(req) : '';
  try {
    let res = cache?.get(key);
    if (!res) {
      res = await context.with(ctxOf(s), () => call(policy.check, policy, req, deps.policyDeadlineMs));
      cache?.set(key, res);
    }
    const d = decisionReply(res);
    metrics.decisions.add(1, { stage: stageName, result: d.reply && !isPositive(d.reply) ? String(d.reply.code)[0] + 'xx' : 'accept' });
    if (d.reply && !isPositive(d.reply)) {
      logger.info(
        { event: 'smtp_reject', stage: stageName, session_id: s.id, client: s.clientAddress, reason: res.reason, reply: `${d.reply.code} ${d.reply.enhanced ?? ''}`, sender: extra.sender, recipient: extra.recipient },
        `${stageName} refused by policy`,
      );
    }
    return { ...d, res };
  } catch (err) {
    metrics.decisions.add(1, { stage: stageName, result: 'policy_error' });
    logger.warn({ stage: stageName, session_id: s.id, err: errorMessage(err) }, 'policy check failed; answering 451 4.3.0');
    return { reply: IngressReplies.policyUnavailable, hold: false };
  }
}
