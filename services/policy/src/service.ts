// PolicyService over gRPC: decisions (Check, CheckMessage, Authenticate) and
// the management RPCs for domains, mailboxes, aliases, users and milters.
import { grpc } from '@tern/grpc';
import { errorMessage } from '@tern/runtime';
import {
  CheckStage,
  Listener,
  DomainKind,
  PolicyAction,
  type LookupRecipientRequest,
  type LookupRecipientResponse,
  type CheckMessageRequest,
  type CheckMessageResponse,
  type CheckRequest,
  type CheckResponse,
  type PolicyServiceServer,
} from '@tern/proto';
import type { Logger, Meter } from '@tern/telemetry';

type Counter = ReturnType<Meter['createCounter']>;
type Histogram = ReturnType<Meter['createHistogram']>;
import type { PolicyCache } from './cache';
import { stageName, type Client, type Engine } from './engine';
import { InvalidFieldError, RpcFailedError, StatusError, StillReferencedError } from './errors';
import { hashPassword, verifyPassword } from './passwords';
import { actionName, reply, type Decision } from './replies';
import { dkimKeyHandlers, type DkimKeyStore } from './dkim-keys';
import { rateLimitHandlers, type RateLimitRules } from './limits';
import { rewriteHandlers, type RewriteRules } from './rewrites';
import type { RelayRecipientStore } from './relay-recipients';
import { relayRecipientHandlers, type VerifyCache } from './verify';
import type { Srs } from './srs';
import { milterName, toMilter, validateMilter, type MilterStore } from './milters';
import type { PolicyStore } from './store';
import type { SuppressionStore } from './suppression';
import {
  aliasAddress,
  domainName,
  mailboxAddress,
  toDomain,
  toUser,
  validateAlias,
  validateDomain,
  validateMailbox,
  validatePassword,
  validateUser,
  validateUsername,
} from './validate';

/**
 * Extra checks after the built-in rules (rate limits, DNSBL, greylisting,
 * delegation, SPF). `pure(req, client)` says the hook neither reads nor
 * changes any state for that request (no counter, no lookup): only then may
 * an accept be cached by the caller. A hook without it is never pure.
 */
export type CheckHook = ((req: CheckRequest, client: Client, decision: Decision) => Promise<Decision | undefined>) & {
  pure?: (req: CheckRequest, client: Client) => boolean;
};

export interface MessageChecker {
  check(first: CheckMessageRequest, chunks: AsyncIterable<Buffer>, client: Client): Promise<CheckMessageResponse>;
  /** True when check() would only compare the size with sizeLimit() for this client (no authentication checks). */
  sizeOnly?(client: Client, listener: Listener | undefined): boolean;
  /** The smallest limit among the recipients' domains, else the global one. */
  sizeLimit?(recipients: string[]): number;
}

export interface ServiceDeps {
  store: PolicyStore;
  suppressions: SuppressionStore;
  milters: MilterStore;
  dkimKeys: DkimKeyStore;
  rateLimits: RateLimitRules;
  rewrites: RewriteRules;
  relayRecipients: RelayRecipientStore;
  verifyCache: VerifyCache;
  /** Sender Rewriting Scheme; off when absent. */
  srs?: Srs;
  cache: PolicyCache;
  engine: Engine;
  logger: Logger;
  meter: Meter;
  hooks?: CheckHook[];
  messageChecker?: MessageChecker;
  /** Failed-login accounting per client IP (trusted networks are exempt). */
  authGuard?: { authBlocked(ip: string): Promise<boolean>; authFailed(ip: string): Promise<void> };
  /** CheckResponse.cache_ms for accepts that depend only on the request and policy data (0 = none). */
  decisionCacheMs?: number;
}

export class Metrics {
  readonly decisions: Counter;
  readonly duration: Histogram;
  readonly auth: Counter;
  readonly changes: Counter;

  constructor(meter: Meter) {
    this.decisions = meter.createCounter('tern_policy_decisions_total', { description: 'Policy decisions by stage, action and reason' });
    this.duration = meter.createHistogram('tern_policy_check_duration_seconds', { description: 'Time to decide one Check', unit: 's' });
    this.auth = meter.createCounter('tern_policy_auth_total', { description: 'Authenticate results' });
    this.changes = meter.createCounter('tern_policy_changes_total', { description: 'Policy data changes by entity and action' });
  }
}

function toStatus(err: unknown, logger: Logger, what: string): grpc.ServiceError {
  if (err instanceof StatusError) return err;
  const pgCode = (err as { code?: unknown }).code;
  if (pgCode === '23503') return new StillReferencedError(what, err);
  logger.error({ err: err instanceof Error ? err.stack : String(err), rpc: what }, 'policy RPC failed');
  return new RpcFailedError(what, errorMessage(err), err);
}

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

export function createPolicyService(deps: ServiceDeps): PolicyServiceServer {
  const { store, cache, engine, logger } = deps;
  const metrics = new Metrics(deps.meter);

  const unary =
    <Req, Res>(name: string, fn: (req: Req) => Promise<Res>): Unary<Req, Res> =>
    (call, cb) => {
      fn(call.request).then(
        (res) => cb(null, res),
        (err: unknown) => cb(toStatus(err, logger, name)),
      );
    };

  /** A change is committed: log it, and make this pod's copy reflect it before answering. */
  const changed = async (entity: string, action: string, key: string, operator: string) => {
    metrics.changes.add(1, { entity, action });
    logger.info({ event: 'policy_change', entity, action, key, operator }, `${entity} ${action} ${key}`);
    await cache.reload().catch((err: Error) => logger.warn({ err: err.message }, 'reload after change failed; the listener will catch up'));
  };
  const op = (operator: string) => operator.trim() || 'unknown';

  const record = (req: CheckRequest, client: Client, d: Decision, seconds: number) => {
    const stage = stageName(req.stage);
    const action = actionName(d.action);
    metrics.decisions.add(1, { stage, action, reason: d.reason });
    metrics.duration.record(seconds, { stage });
    // Accepts are the common case (several per message): debug. Refusals,
    // deferrals and holds stay at info (ingress logs each accepted message once).
    const accepted = d.action === PolicyAction.POLICY_ACTION_ACCEPT;
    if (accepted && !logger.isLevelEnabled('debug')) return;
    logger[accepted ? 'debug' : 'info'](
      {
        event: 'policy_decision',
        stage,
        action,
        reason: d.reason,
        reply: d.reply ? `${d.reply.code} ${d.reply.enhanced} ${d.reply.text}`.replace(/ +/g, ' ') : undefined,
        session_id: req.session?.sessionId,
        client: client.address,
        trusted: client.trusted,
        auth_user: client.user?.username,
        sender: req.stage >= 3 ? req.sender : undefined,
        recipient: req.recipient || undefined,
        local_recipient: d.localRecipient || undefined,
        ms: Math.round(seconds * 1000 * 10) / 10,
      },
      `${stage} ${action} ${d.reason}`,
    );
  };

  async function check(req: CheckRequest): Promise<CheckResponse> {
    const t0 = performance.now();
    const client = engine.client(req.session);
    const builtIn = engine.decide(req, client);
    let decision = builtIn;
    for (const hook of deps.hooks ?? []) {
      const next = await hook(req, client, decision);
      if (next) decision = next;
    }
    record(req, client, decision, (performance.now() - t0) / 1000);
    // An accept from the built-in rules (policy data only) with every hook
    // pure for this request is the same for the same request until the data
    // changes: the caller may reuse it briefly (changes still apply within seconds).
    const cacheable =
      (deps.decisionCacheMs ?? 0) > 0 &&
      decision.action === PolicyAction.POLICY_ACTION_ACCEPT &&
      (deps.hooks ?? []).every((h) => h.pure?.(req, client) ?? false);
    // The rewrites are the built-in rules' too, like the expansion below.
    const taken = decision.action === PolicyAction.POLICY_ACTION_ACCEPT || decision.action === PolicyAction.POLICY_ACTION_HOLD;
    return {
      action: decision.action,
      reply: decision.reply,
      reason: decision.reason,
      localRecipient: decision.localRecipient ?? false,
      cacheMs: cacheable ? deps.decisionCacheMs! : 0,
      // The expansion is the built-in rules' (a hook that accepts or holds does not undo it).
      aliasTargets: taken ? (builtIn.aliasTargets ?? []) : [],
      senderRewrite: taken ? (builtIn.senderRewrite ?? '') : '',
      bcc: taken ? (builtIn.bcc ?? []) : [],
      rewriteHeaders: taken ? (builtIn.rewriteHeaders ?? false) : false,
      srsTargets: taken ? (builtIn.srsTargets ?? []) : [],
      srsSender: taken ? (builtIn.srsSender ?? '') : '',
      ...(req.stage === CheckStage.CHECK_STAGE_RCPT && decision.action === PolicyAction.POLICY_ACTION_ACCEPT
        ? endOfData(req, client)
        : { messageCheckSizeOnly: false, maxMessageSize: 0 }),
    };
  }

  /**
   * What CheckMessage would do for this recipient: without a checker it
   * accepts everything; a checker that would only compare sizes for this
   * client lets the caller skip the call (message_check_size_only).
   */
  function endOfData(req: CheckRequest, client: Client): { messageCheckSizeOnly: boolean; maxMessageSize: number } {
    const mc = deps.messageChecker;
    if (!mc) return { messageCheckSizeOnly: true, maxMessageSize: 0 };
    if (!mc.sizeOnly || !mc.sizeLimit) return { messageCheckSizeOnly: false, maxMessageSize: 0 };
    return { messageCheckSizeOnly: mc.sizeOnly(client, req.session?.listener), maxMessageSize: mc.sizeLimit([req.recipient]) };
  }

  return {
    check: unary('Check', check),

    checkMessage(call, cb) {
      const iterator = call[Symbol.asyncIterator]() as AsyncIterator<CheckMessageRequest>;
      let sessionId: string | undefined;
      (async () => {
        const first = await iterator.next();
        if (first.done || !first.value.header) throw new InvalidFieldError('header', 'the first message must carry the header');
        const head = first.value;
        sessionId = head.header?.session?.sessionId;
        const client = engine.client(head.header?.session);
        async function* chunks(): AsyncIterable<Buffer> {
          if (head.chunk.length) yield head.chunk;
          for (;;) {
            const next = await iterator.next();
            if (next.done) return;
            if (next.value.chunk.length) yield next.value.chunk;
          }
        }
        if (!deps.messageChecker) {
          for await (const _ of chunks());
          return { action: PolicyAction.POLICY_ACTION_ACCEPT, reply: undefined, reason: 'ok', addHeaders: [] } as CheckMessageResponse;
        }
        return deps.messageChecker.check(head, chunks(), client);
      })().then(
        (res) => {
          const action = actionName(res.action);
          metrics.decisions.add(1, { stage: 'data', action, reason: res.reason });
          logger[res.action === PolicyAction.POLICY_ACTION_ACCEPT ? 'debug' : 'info'](
            {
              event: 'policy_decision',
              stage: 'data',
              action,
              reason: res.reason,
              reply: res.reply ? `${res.reply.code} ${res.reply.enhanced} ${res.reply.text}` : undefined,
              session_id: sessionId,
            },
            `data ${action} ${res.reason}`,
          );
          cb(null, res);
        },
        (err: unknown) => cb(toStatus(err, logger, 'CheckMessage')),
      );
    },

    lookupRecipient: unary('LookupRecipient', async (req: LookupRecipientRequest): Promise<LookupRecipientResponse> => {
      if (!req.address.trim() || req.address.length > 512) throw new InvalidFieldError('address', 'required, at most 512 characters');
      const r = engine.lookup(req.address, req.expand);
      metrics.decisions.add(1, { stage: req.expand ? 'expn' : 'lookup', action: r.exists ? 'found' : 'not_found', reason: r.domainKind ?? 'foreign' });
      return {
        domainKind: r.domainKind === 'local' ? DomainKind.DOMAIN_KIND_LOCAL : r.domainKind === 'relay' ? DomainKind.DOMAIN_KIND_RELAY : DomainKind.DOMAIN_KIND_UNSPECIFIED,
        exists: r.exists,
        address: r.address,
        targets: r.targets,
      };
    }),

    authenticate: unary('Authenticate', async (req) => {
      const name = req.username.trim().toLowerCase();
      const ip = req.session?.clientAddress ?? '';
      const guarded = deps.authGuard && ip !== '' && !engine.client(req.session).trusted ? deps.authGuard : undefined;
      if (guarded && (await guarded.authBlocked(ip))) {
        metrics.auth.add(1, { result: 'too_many_failures' });
        logger.info({ event: 'policy_auth', result: 'too_many_failures', user: name, client: ip, session_id: req.session?.sessionId }, 'authenticate refused');
        return { ok: false, user: '', reply: reply(454, '4.7.0', 'Too many authentication failures; try again later') };
      }
      const user = name ? cache.snapshot.users.get(name) : undefined;
      const passwordOk = await verifyPassword(req.password, user?.passwordHash);
      const ok = passwordOk && user !== undefined && user.enabled;
      const result = ok ? 'ok' : !user ? 'unknown_user' : !user.enabled ? 'disabled' : 'bad_password';
      if (!ok) await guarded?.authFailed(ip);
      metrics.auth.add(1, { result });
      logger.info(
        { event: 'policy_auth', result, user: name, client: req.session?.clientAddress, session_id: req.session?.sessionId },
        `authenticate ${result}`,
      );
      return ok
        ? { ok: true, user: user.username, reply: reply(235, '2.7.0', 'Authentication successful') }
        : { ok: false, user: '', reply: reply(535, '5.7.8', 'Authentication credentials invalid') };
    }),

    listDomains: unary('ListDomains', async () => ({ domains: (await store.listDomains()).map(toDomain) })),
    putDomain: unary('PutDomain', async (req) => {
      const row = await store.putDomain(validateDomain(req.domain, deps.engine.maxMessageSize), op(req.operator));
      await changed('domain', 'put', row.name, op(req.operator));
      return { domain: toDomain(row) };
    }),
    deleteDomain: unary('DeleteDomain', async (req) => {
      const name = domainName('name', req.name);
      const deleted = await store.deleteDomain(name, op(req.operator));
      if (deleted) await changed('domain', 'delete', name, op(req.operator));
      return { deleted };
    }),

    listMailboxes: unary('ListMailboxes', async (req) => {
      const domain = req.domain ? domainName('domain', req.domain) : '';
      return { mailboxes: (await store.listMailboxes(domain)).map((m) => ({ address: m.address, enabled: m.enabled })) };
    }),
    putMailbox: unary('PutMailbox', async (req) => {
      const row = await store.putMailbox(validateMailbox(req.mailbox), op(req.operator));
      await changed('mailbox', 'put', row.address, op(req.operator));
      return { mailbox: { address: row.address, enabled: row.enabled } };
    }),
    deleteMailbox: unary('DeleteMailbox', async (req) => {
      const address = mailboxAddress('address', req.address);
      const deleted = await store.deleteMailbox(address, op(req.operator));
      if (deleted) await changed('mailbox', 'delete', address, op(req.operator));
      return { deleted };
    }),

    listAliases: unary('ListAliases', async (req) => {
      const domain = req.domain ? domainName('domain', req.domain) : '';
      return { aliases: (await store.listAliases(domain)).map((a) => ({ address: a.address, targets: a.targets })) };
    }),
    putAlias: unary('PutAlias', async (req) => {
      const row = await store.putAlias(validateAlias(req.alias), op(req.operator));
      await changed('alias', 'put', row.address, op(req.operator));
      return { alias: { address: row.address, targets: row.targets } };
    }),
    deleteAlias: unary('DeleteAlias', async (req) => {
      const address = aliasAddress('address', req.address);
      const deleted = await store.deleteAlias(address, op(req.operator));
      if (deleted) await changed('alias', 'delete', address, op(req.operator));
      return { deleted };
    }),

    listUsers: unary('ListUsers', async () => ({ users: (await store.listUsers()).map(toUser) })),
    putUser: unary('PutUser', async (req) => {
      const user = validateUser(req.user);
      validatePassword(req.password);
      const hash = req.password ? await hashPassword(req.password) : undefined;
      const row = await store.putUser(user, hash, op(req.operator));
      await changed('user', 'put', row.username, op(req.operator));
      return { user: toUser(row) };
    }),
    deleteUser: unary('DeleteUser', async (req) => {
      const username = validateUsername('username', req.username);
      const deleted = await store.deleteUser(username, op(req.operator));
      if (deleted) await changed('user', 'delete', username, op(req.operator));
      return { deleted };
    }),

    suppress: unary('Suppress', async (req) => {
      const added = await deps.suppressions.add(req.suppressions, op(req.operator));
      metrics.changes.add(req.suppressions.length, { entity: 'suppression', action: 'put' });
      logger.info(
        { event: 'policy_change', entity: 'suppression', action: 'put', added, addresses: req.suppressions.map((x) => x.address), operator: op(req.operator), queue_id: onlyQueueId(req.suppressions) },
        `suppression put ${req.suppressions.length} (${added} new)`,
      );
      return { added };
    }),
    listSuppressions: unary('ListSuppressions', async (req) => {
      const domain = req.domain ? domainName('domain', req.domain) : '';
      const page = await deps.suppressions.list(domain, req.limit, req.pageToken);
      return { suppressions: page.suppressions, nextPageToken: page.next };
    }),
    deleteSuppression: unary('DeleteSuppression', async (req) => {
      const deleted = await deps.suppressions.delete(req.address);
      if (deleted) await changed('suppression', 'delete', req.address, op(req.operator));
      return { deleted };
    }),

    listMilters: unary('ListMilters', async () => ({ milters: (await deps.milters.list()).map(toMilter) })),
    putMilter: unary('PutMilter', async (req) => {
      const row = await deps.milters.put(validateMilter(req.milter), op(req.operator));
      await changed('milter', 'put', row.name, op(req.operator));
      return { milter: toMilter(row) };
    }),
    deleteMilter: unary('DeleteMilter', async (req) => {
      const name = milterName('name', req.name);
      const deleted = await deps.milters.delete(name, op(req.operator));
      if (deleted) await changed('milter', 'delete', name, op(req.operator));
      return { deleted };
    }),

    ...dkimKeyHandlers(deps.dkimKeys, unary, logger),
    ...rateLimitHandlers(deps.rateLimits, unary, logger),
    ...rewriteHandlers(deps.rewrites, unary, logger),
    ...relayRecipientHandlers(deps.relayRecipients, deps.verifyCache, unary, logger, deps.meter),
    srsStatus: unary('SrsStatus', async () => {
      const srs = deps.srs;
      if (!srs) return { enabled: false, domain: '', secrets: 0, maxAgeDays: 0, hashLength: 0, example: '' };
      return {
        enabled: true,
        domain: srs.domain,
        secrets: srs.opts.secrets.length,
        maxAgeDays: srs.opts.maxAgeDays,
        hashLength: srs.opts.hashLength ?? 4,
        example: srs.forward('user', 'example.com') ?? '',
      };
    }),
  };
}

/** The message a Suppress call is for (bounce sends one per failed message), so its log line carries queue_id; none for an operator's list. */
function onlyQueueId(suppressions: { queueId: string }[]): string | undefined {
  const ids = new Set(suppressions.map((s) => s.queueId).filter(Boolean));
  return ids.size === 1 ? [...ids][0] : undefined;
}
