// The AdminService handlers: each RPC forwards to its owner (queue or policy)
// with a deadline and passes the response through. Mutating requests get the
// authenticated operator stamped into `operator` (a client's value is
// overwritten) and are logged as one JSON line with operator and reason.
import { redactUrl } from '@tern/config';
import { grpc } from '@tern/grpc';
import { type AdminServiceServer, type AdminServiceService, type ApplyActionRequest, QueueAction } from '@tern/proto';
import type { Logger, Meter } from '@tern/telemetry';
import { deniedReason, operatorOf, roleOf } from './auth';
import { NoOperatorError, OwnerNotConfiguredError, RoleDeniedError } from './errors';
import type { Role } from './tokens';
import { mapOwnerError, type Owner, type OwnerName, streamMethod, unaryMethod } from './owners';

type UnaryName = Exclude<keyof typeof AdminServiceService, 'readBody'>;

interface Route {
  owner: OwnerName;
  mutating: boolean;
  /** The least role that may call it: viewer reads; operator acts on mail; admin changes configuration. */
  role: Role;
}

/** Which owner answers each RPC, whether it changes anything, and who may call it. */
export const ROUTES: Record<UnaryName, Route> = {
  getMessage: { owner: 'queue', mutating: false, role: 'viewer' },
  listMessages: { owner: 'queue', mutating: false, role: 'viewer' },
  queueSummary: { owner: 'queue', mutating: false, role: 'viewer' },
  applyAction: { owner: 'queue', mutating: true, role: 'operator' },
  suspendDestination: { owner: 'queue', mutating: true, role: 'operator' },
  resumeDestination: { owner: 'queue', mutating: true, role: 'operator' },
  listDestinations: { owner: 'queue', mutating: false, role: 'viewer' },
  listRoutes: { owner: 'queue', mutating: false, role: 'viewer' },
  putRoute: { owner: 'queue', mutating: true, role: 'admin' },
  deleteRoute: { owner: 'queue', mutating: true, role: 'admin' },
  listBounceRules: { owner: 'queue', mutating: false, role: 'viewer' },
  putBounceRule: { owner: 'queue', mutating: true, role: 'admin' },
  deleteBounceRule: { owner: 'queue', mutating: true, role: 'admin' },
  listDomains: { owner: 'policy', mutating: false, role: 'viewer' },
  putDomain: { owner: 'policy', mutating: true, role: 'admin' },
  deleteDomain: { owner: 'policy', mutating: true, role: 'admin' },
  listMailboxes: { owner: 'policy', mutating: false, role: 'viewer' },
  putMailbox: { owner: 'policy', mutating: true, role: 'admin' },
  deleteMailbox: { owner: 'policy', mutating: true, role: 'admin' },
  listAliases: { owner: 'policy', mutating: false, role: 'viewer' },
  putAlias: { owner: 'policy', mutating: true, role: 'admin' },
  deleteAlias: { owner: 'policy', mutating: true, role: 'admin' },
  listUsers: { owner: 'policy', mutating: false, role: 'viewer' },
  putUser: { owner: 'policy', mutating: true, role: 'admin' },
  deleteUser: { owner: 'policy', mutating: true, role: 'admin' },
  suppress: { owner: 'policy', mutating: true, role: 'operator' },
  listSuppressions: { owner: 'policy', mutating: false, role: 'viewer' },
  deleteSuppression: { owner: 'policy', mutating: true, role: 'operator' },
  listMilters: { owner: 'policy', mutating: false, role: 'viewer' },
  putMilter: { owner: 'policy', mutating: true, role: 'admin' },
  deleteMilter: { owner: 'policy', mutating: true, role: 'admin' },
  generateDkimKey: { owner: 'policy', mutating: true, role: 'admin' },
  importDkimKey: { owner: 'policy', mutating: true, role: 'admin' },
  listDkimKeys: { owner: 'policy', mutating: false, role: 'viewer' },
  rotateDkimKey: { owner: 'policy', mutating: true, role: 'admin' },
  activateDkimKey: { owner: 'policy', mutating: true, role: 'admin' },
  retireDkimKey: { owner: 'policy', mutating: true, role: 'admin' },
  listRateLimits: { owner: 'policy', mutating: false, role: 'viewer' },
  putRateLimit: { owner: 'policy', mutating: true, role: 'admin' },
  deleteRateLimit: { owner: 'policy', mutating: true, role: 'admin' },
  listRelayRecipients: { owner: 'policy', mutating: false, role: 'viewer' },
  putRelayRecipients: { owner: 'policy', mutating: true, role: 'admin' },
  deleteRelayRecipients: { owner: 'policy', mutating: true, role: 'admin' },
  replaceRelayRecipients: { owner: 'policy', mutating: true, role: 'admin' },
  listVerifiedRecipients: { owner: 'policy', mutating: false, role: 'viewer' },
  // Forgetting a verification only makes the next RCPT ask again: an operator's act, like a suppression.
  flushVerifiedRecipients: { owner: 'policy', mutating: true, role: 'operator' },
  listRewrites: { owner: 'policy', mutating: false, role: 'viewer' },
  putRewrite: { owner: 'policy', mutating: true, role: 'admin' },
  deleteRewrite: { owner: 'policy', mutating: true, role: 'admin' },
  srsStatus: { owner: 'policy', mutating: false, role: 'viewer' },
  createWebhookEndpoint: { owner: 'webhooks', mutating: true, role: 'admin' },
  listWebhookEndpoints: { owner: 'webhooks', mutating: false, role: 'viewer' },
  getWebhookEndpoint: { owner: 'webhooks', mutating: false, role: 'viewer' },
  updateWebhookEndpoint: { owner: 'webhooks', mutating: true, role: 'admin' },
  deleteWebhookEndpoint: { owner: 'webhooks', mutating: true, role: 'admin' },
  resumeWebhookEndpoint: { owner: 'webhooks', mutating: true, role: 'admin' },
  listWebhookDeliveries: { owner: 'webhooks', mutating: false, role: 'viewer' },
};

/** A message's content is more than its envelope: reading it is an operator's act. */
const READ_BODY_ROLE: Role = 'operator';

type Req = Record<string, unknown>;

/** What a mutating call is about, for the log line (never a password). */
export function describeChange(method: UnaryName, req: Req): Record<string, unknown> {
  const r = req as Record<string, Record<string, unknown> | string | boolean | undefined>;
  switch (method) {
    case 'applyAction': {
      const a = req as unknown as ApplyActionRequest;
      return {
        action: QueueAction[a.action]?.replace(/^QUEUE_ACTION_/, '').toLowerCase() ?? String(a.action),
        queueId: a.queueId || undefined,
        filter: a.queueId || a.all ? undefined : a.filter,
        all: a.all || undefined,
        dryRun: a.dryRun,
        reason: a.reason,
      };
    }
    case 'suspendDestination':
      return { destination: r.destination, reason: r.reason, force: r.force || undefined };
    case 'resumeDestination':
      return { destination: r.destination };
    case 'putRoute':
      return { route: r.route };
    case 'deleteRoute':
      return { domain: r.domain };
    case 'putBounceRule':
      return { rule: r.rule };
    case 'deleteBounceRule':
      return { name: r.name };
    case 'putDomain':
      return { domain: r.domain };
    case 'deleteDomain':
      return { name: r.name };
    case 'putMailbox':
      return { mailbox: r.mailbox };
    case 'putAlias':
      return { alias: r.alias };
    case 'deleteMailbox':
    case 'deleteAlias':
      return { address: r.address };
    case 'putUser':
      return { user: r.user, passwordChanged: typeof r.password === 'string' && r.password !== '' };
    case 'deleteUser':
      return { username: r.username };
    case 'suppress':
      return { addresses: ((req.suppressions as { address?: string }[] | undefined) ?? []).map((x) => x.address) };
    case 'deleteSuppression':
      return { address: r.address };
    // Never the private key of an import or rotation.
    case 'generateDkimKey':
    case 'rotateDkimKey':
    case 'importDkimKey':
      return { domain: r.domain, selector: r.selector, algorithm: r.algorithm, afterSeconds: r.afterSeconds, imported: typeof r.privateKeyPem === 'string' && r.privateKeyPem !== '' };
    case 'putRateLimit':
      return { limit: r.limit };
    case 'deleteRateLimit':
      return { kind: r.kind, match: r.match };
    case 'putRelayRecipients': {
      const addresses = (req.addresses as string[] | undefined) ?? [];
      return { entries: addresses.length, addresses: addresses.slice(0, 20), dryRun: r.dryRun };
    }
    case 'deleteRelayRecipients': {
      const addresses = (req.addresses as string[] | undefined) ?? [];
      return { domain: r.domain || undefined, entries: addresses.length || undefined, addresses: addresses.length ? addresses.slice(0, 20) : undefined, dryRun: r.dryRun };
    }
    case 'replaceRelayRecipients': {
      const addresses = (req.addresses as string[] | undefined) ?? [];
      return { domain: r.domain, entries: addresses.length, dryRun: r.dryRun, allowEmpty: r.allowEmpty || undefined };
    }
    case 'flushVerifiedRecipients':
      return { address: r.address };
    case 'putRewrite':
      return { rewrite: r.rewrite };
    case 'deleteRewrite':
      return { kind: r.kind, match: r.match };
    case 'activateDkimKey':
    case 'retireDkimKey':
      return { domain: r.domain, selector: r.selector };
    case 'putMilter':
      return { milter: r.milter };
    case 'deleteMilter':
      return { name: r.name };
    // Never the secret (it is in Create's response, which summarize leaves out).
    // A URL given with a password (refused by webhooks) is logged without it.
    case 'createWebhookEndpoint':
      return { url: typeof r.url === 'string' ? redactUrl(r.url) : r.url, eventTypes: r.eventTypes, batch: r.batch };
    case 'updateWebhookEndpoint':
      return { id: r.id, url: typeof r.url === 'string' ? redactUrl(r.url) : r.url, eventTypes: r.setEventTypes ? r.eventTypes : undefined, batch: r.batch };
    case 'deleteWebhookEndpoint':
    case 'resumeWebhookEndpoint':
      return { id: r.id };
    default:
      return {};
  }
}

export interface AdminServiceDeps {
  /** webhooks is optional (TERN_WEBHOOKS_ADDR). */
  owners: Record<Exclude<OwnerName, 'webhooks'>, Owner> & { webhooks?: Owner };
  deadlineMs: number;
  streamDeadlineMs: number;
  logger: Logger;
  meter: Meter;
}

export function createAdminService(deps: AdminServiceDeps): AdminServiceServer {
  const { owners, logger } = deps;
  const calls = deps.meter.createCounter('tern_admin_calls_total', { description: 'Admin API calls by method and result code' });
  const count = (method: string, code: grpc.status) => calls.add(1, { method, code: grpc.status[code] ?? String(code) });

  const handler = (method: UnaryName): grpc.handleUnaryCall<Req, unknown> => (call, callback) => {
    const operator = operatorOf(call);
    // The interceptor always sets it; refuse rather than forward anonymously.
    if (!operator) {
      count(method, grpc.status.UNAUTHENTICATED);
      callback(new NoOperatorError());
      return;
    }
    const route = ROUTES[method];
    const denied = deniedReason(method, operator, roleOf(call), route.role);
    if (denied) {
      count(method, grpc.status.PERMISSION_DENIED);
      logger.warn({ event: 'admin_denied', method, operator, role: roleOf(call), needed: route.role }, denied);
      callback(new RoleDeniedError(denied));
      return;
    }
    const owner = owners[route.owner];
    if (!owner) {
      const err = new OwnerNotConfiguredError(route.owner, 'TERN_WEBHOOKS_ADDR');
      count(method, err.code);
      callback(err);
      return;
    }
    const request: Req = route.mutating ? { ...call.request, operator } : call.request;
    const started = Date.now();
    unaryMethod(owner, method)(request, new grpc.Metadata(), { deadline: Date.now() + deps.deadlineMs }, (err, res) => {
      const ms = Date.now() - started;
      if (err) {
        const mapped = mapOwnerError(owner, method, err, deps.deadlineMs);
        count(method, mapped.code);
        if (route.mutating) {
          logger.warn(
            { event: 'admin_change', method, operator, ...describeChange(method, request), result: 'error', code: grpc.status[mapped.code], error: mapped.details, ms },
            `${operator} ${method} failed: ${mapped.details}`,
          );
        } else {
          logger.debug({ event: 'admin_call', method, operator, code: grpc.status[mapped.code], error: mapped.details, ms }, `${method} failed`);
        }
        callback(mapped);
        return;
      }
      count(method, grpc.status.OK);
      if (route.mutating) {
        logger.info({ event: 'admin_change', method, operator, ...describeChange(method, request), result: 'ok', response: summarize(res), ms }, `${operator} ${method}`);
      }
      callback(null, res);
    });
  };

  const readBody: grpc.handleServerStreamingCall<Req, unknown> = (call) => {
    const operator = operatorOf(call);
    if (!operator) {
      count('readBody', grpc.status.UNAUTHENTICATED);
      call.emit('error', new NoOperatorError());
      return;
    }
    const denied = deniedReason('readBody', operator, roleOf(call), READ_BODY_ROLE);
    if (denied) {
      count('readBody', grpc.status.PERMISSION_DENIED);
      logger.warn({ event: 'admin_denied', method: 'readBody', operator, role: roleOf(call), needed: READ_BODY_ROLE }, denied);
      call.emit('error', new RoleDeniedError(denied));
      return;
    }
    const owner = owners.queue;
    const upstream = streamMethod(owner, 'readBody')(call.request, new grpc.Metadata(), { deadline: Date.now() + deps.streamDeadlineMs });
    let finished = false;
    call.on('cancelled', () => {
      finished = true;
      upstream.cancel();
    });
    upstream.on('data', (msg: unknown) => {
      if (finished) return;
      if (!call.write(msg)) {
        upstream.pause();
        call.once('drain', () => upstream.resume());
      }
    });
    upstream.on('error', (err: grpc.ServiceError) => {
      if (finished) return;
      finished = true;
      const mapped = mapOwnerError(owner, 'readBody', err, deps.streamDeadlineMs);
      count('readBody', mapped.code);
      call.emit('error', mapped);
    });
    upstream.on('end', () => {
      if (finished) return;
      finished = true;
      count('readBody', grpc.status.OK);
      logger.debug({ event: 'admin_call', method: 'readBody', operator, queueId: call.request.queueId }, 'body read');
      call.end();
    });
  };

  const impl: Record<string, unknown> = { readBody };
  for (const method of Object.keys(ROUTES) as UnaryName[]) impl[method] = handler(method);
  return impl as unknown as AdminServiceServer;
}

/** The interesting numbers of a mutating call's response, for its log line. */
function summarize(res: unknown): Record<string, unknown> | undefined {
  if (typeof res !== 'object' || res === null) return undefined;
  const out: Record<string, unknown> = {};
  for (const key of ['messages', 'recipients', 'dryRun', 'deleted', 'added', 'unchanged', 'removed', 'kept']) {
    if (key in res) out[key] = (res as Record<string, unknown>)[key];
  }
  return Object.keys(out).length > 0 ? out : undefined;
}
