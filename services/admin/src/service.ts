// The AdminService handlers: each RPC forwards to its owner (queue or policy)
// with a deadline and passes the response through. Mutating requests get the
// authenticated operator stamped into `operator` (a client's value is
// overwritten) and are logged as one JSON line with operator and reason.
import { grpc, grpcError } from '@tern/grpc';
import { type AdminServiceServer, type AdminServiceService, type ApplyActionRequest, QueueAction } from '@tern/proto';
import type { Logger, Meter } from '@tern/telemetry';
import { operatorOf, UNAUTHENTICATED_MESSAGE } from './auth';
import { mapOwnerError, type Owner, type OwnerName, streamMethod, unaryMethod } from './owners';

type UnaryName = Exclude<keyof typeof AdminServiceService, 'readBody'>;

interface Route {
  owner: OwnerName;
  mutating: boolean;
}

/** Which owner answers each RPC, and whether it changes anything. */
export const ROUTES: Record<UnaryName, Route> = {
  getMessage: { owner: 'queue', mutating: false },
  listMessages: { owner: 'queue', mutating: false },
  queueSummary: { owner: 'queue', mutating: false },
  applyAction: { owner: 'queue', mutating: true },
  suspendDestination: { owner: 'queue', mutating: true },
  resumeDestination: { owner: 'queue', mutating: true },
  listDestinations: { owner: 'queue', mutating: false },
  listRoutes: { owner: 'queue', mutating: false },
  putRoute: { owner: 'queue', mutating: true },
  deleteRoute: { owner: 'queue', mutating: true },
  listDomains: { owner: 'policy', mutating: false },
  putDomain: { owner: 'policy', mutating: true },
  deleteDomain: { owner: 'policy', mutating: true },
  listMailboxes: { owner: 'policy', mutating: false },
  putMailbox: { owner: 'policy', mutating: true },
  deleteMailbox: { owner: 'policy', mutating: true },
  listAliases: { owner: 'policy', mutating: false },
  putAlias: { owner: 'policy', mutating: true },
  deleteAlias: { owner: 'policy', mutating: true },
  listUsers: { owner: 'policy', mutating: false },
  putUser: { owner: 'policy', mutating: true },
  deleteUser: { owner: 'policy', mutating: true },
  suppress: { owner: 'policy', mutating: true },
  listSuppressions: { owner: 'policy', mutating: false },
  deleteSuppression: { owner: 'policy', mutating: true },
};

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
    default:
      return {};
  }
}

export interface AdminServiceDeps {
  owners: Record<OwnerName, Owner>;
  deadlineMs: number;
  streamDeadlineMs: number;
  logger: Logger;
  meter: Meter;
}

export function createAdminService(deps: AdminServiceDeps): AdminServiceServer {
  const { owners, logger } = deps;
  const calls = deps.meter.createCounter('tern_admin_calls_total', { description: 'Admin API calls by method and result code' });
  const count = (method: string, code: grpc.status) => calls.add(1, { method, code: grpc.status[code] ?? String(code) });

  const unauthenticated = () => grpcError(grpc.status.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE);

  const handler = (method: UnaryName): grpc.handleUnaryCall<Req, unknown> => (call, callback) => {
    const operator = operatorOf(call);
    // The interceptor always sets it; refuse rather than forward anonymously.
    if (!operator) {
      count(method, grpc.status.UNAUTHENTICATED);
      callback(unauthenticated());
      return;
    }
    const route = ROUTES[method];
    const owner = owners[route.owner];
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
      call.emit('error', unauthenticated());
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
  for (const key of ['messages', 'recipients', 'dryRun', 'deleted']) {
    if (key in res) out[key] = (res as Record<string, unknown>)[key];
  }
  return Object.keys(out).length > 0 ? out : undefined;
}
