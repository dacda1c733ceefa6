// WebhookService: endpoints (create, list, get, update, delete, resume) and
// their deliveries, for AdminService to forward to. Every bad field is
// refused with INVALID_ARGUMENT naming it; changes are logged with the
// operator. The secret leaves the service once, in the Create answer.
import type { grpc } from '@tern/grpc';
import {
  WebhookDeliveryState,
  WebhookEndpointState,
  type WebhookDelivery,
  type WebhookEndpoint,
  type WebhookServiceServer,
} from '@tern/proto';
import type { Logger, Meter } from '@tern/telemetry';
import { errorMessage } from '@tern/runtime';
import { checkEndpointUrl, type AddressRules } from './address';
import { EndpointNotFoundError, InvalidArgumentError, RpcFailedError, StatusError, TooManyEndpointsError } from './errors';
import { normalizeEventTypes } from './events';
import { newSecret } from './sign';
import type { DeliveryRow, DeliveryState, EndpointRow, WebhookStore } from './store';

export interface ServiceDeps {
  store: WebhookStore;
  rules: AddressRules;
  maxEndpoints: number;
  logger: Logger;
  changes: ReturnType<Meter['createCounter']>;
  /** An endpoint was resumed or changed: look for due deliveries now. */
  wake(): void;
}

const ID = /^wh_[a-z0-9]{20}$/;

function endpointId(value: string): string {
  if (!ID.test(value)) throw new InvalidArgumentError(`id: "${value}" is not a webhook endpoint id (wh_ and 20 letters and digits; tern webhook ls lists them)`);
  return value;
}

function description(value: string): string {
  if (value.length > 500) throw new InvalidArgumentError('description: longer than 500 characters');
  // eslint-disable-next-line no-control-regex -- control characters are what is refused
  if (/[\x00-\x1f\x7f]/.test(value)) throw new InvalidArgumentError('description: holds control characters');
  return value;
}

function eventTypes(value: string[]): string[] {
  try {
    return normalizeEventTypes(value);
  } catch (err) {
    throw new InvalidArgumentError(errorMessage(err), { cause: err });
  }
}

function url(value: string, rules: AddressRules): string {
  try {
    return checkEndpointUrl(value.trim(), rules).href;
  } catch (err) {
    throw new InvalidArgumentError(errorMessage(err), { cause: err });
  }
}

export function toEndpoint(r: EndpointRow): WebhookEndpoint {
  return {
    id: r.id,
    url: r.url,
    description: r.description,
    eventTypes: r.event_types,
    batch: r.batch,
    state: r.state === 'active' ? WebhookEndpointState.WEBHOOK_ENDPOINT_STATE_ACTIVE : WebhookEndpointState.WEBHOOK_ENDPOINT_STATE_SUSPENDED,
    suspendedReason: r.suspended_reason,
    suspendedAt: r.suspended_at ?? undefined,
    consecutiveFailures: r.consecutive_failures,
    lastSuccessAt: r.last_success_at ?? undefined,
    lastError: r.last_error,
    pendingDeliveries: r.pending,
    createdAt: r.created_at,
    createdBy: r.created_by,
  };
}

const DELIVERY_STATES: Record<DeliveryState, WebhookDeliveryState> = {
  pending: WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_PENDING,
  delivered: WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_DELIVERED,
  dropped: WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_DROPPED,
};

function toDelivery(r: DeliveryRow): WebhookDelivery {
  return {
    endpointId: r.endpoint_id,
    eventId: r.event_id,
    eventType: r.event_type,
    queueId: r.queue_id,
    state: DELIVERY_STATES[r.state],
    attempts: r.attempts,
    createdAt: r.created_at,
    nextAttemptAt: r.state === 'pending' ? r.next_attempt_at : undefined,
    expiresAt: r.expires_at,
    finishedAt: r.finished_at ?? undefined,
    lastStatus: r.last_status,
    lastError: r.last_error,
    droppedReason: r.dropped_reason,
  };
}

function deliveryState(s: WebhookDeliveryState): DeliveryState | undefined {
  for (const [name, value] of Object.entries(DELIVERY_STATES)) if (value === s) return name as DeliveryState;
  if (s === WebhookDeliveryState.WEBHOOK_DELIVERY_STATE_UNSPECIFIED) return undefined;
  throw new InvalidArgumentError(`state: unknown delivery state ${s}`);
}

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

export function createWebhookService(deps: ServiceDeps): WebhookServiceServer {
  const { store, logger } = deps;
  const op = (operator: string) => operator.trim() || 'unknown';
  const changed = (action: string, id: string, operator: string, extra: Record<string, unknown> = {}) => {
    deps.changes.add(1, { action });
    logger.info({ event: 'webhook_endpoint_change', action, endpoint_id: id, operator: op(operator), ...extra }, `webhook endpoint ${id} ${action} by ${op(operator)}`);
  };
  const unary =
    <Req, Res>(name: string, fn: (req: Req) => Promise<Res>): Unary<Req, Res> =>
    (call, cb) => {
      fn(call.request).then(
        (res) => cb(null, res),
        (err: unknown) => {
          if (err instanceof StatusError) return cb(err);
          logger.error({ err: err instanceof Error ? err.stack : String(err), rpc: name }, 'webhooks RPC failed');
          cb(new RpcFailedError(name, errorMessage(err), err));
        },
      );
    };
  const notFound = (id: string) => new EndpointNotFoundError(id);

  return {
    createWebhookEndpoint: unary('CreateWebhookEndpoint', async (req) => {
      if (!req.url) throw new InvalidArgumentError('url: required (https://host/path of the receiver)');
      const fields = { url: url(req.url, deps.rules), description: description(req.description), eventTypes: eventTypes(req.eventTypes), batch: req.batch };
      if ((await store.countEndpoints()) >= deps.maxEndpoints) {
        throw new TooManyEndpointsError(deps.maxEndpoints);
      }
      const secret = newSecret();
      const row = await store.createEndpoint({ ...fields, createdBy: op(req.operator), secret: secret.bytes });
      changed('create', row.id, req.operator, { url: row.url, event_types: row.event_types, batch: row.batch });
      return { endpoint: toEndpoint(row), secret: secret.text };
    }),
    listWebhookEndpoints: unary('ListWebhookEndpoints', async () => ({ endpoints: (await store.listEndpoints()).map(toEndpoint) })),
    getWebhookEndpoint: unary('GetWebhookEndpoint', async (req) => {
      const row = await store.getEndpoint(endpointId(req.id));
      if (!row) throw notFound(req.id);
      return { endpoint: toEndpoint(row) };
    }),
    updateWebhookEndpoint: unary('UpdateWebhookEndpoint', async (req) => {
      const id = endpointId(req.id);
      const row = await store.updateEndpoint(id, {
        url: req.url === undefined ? undefined : url(req.url, deps.rules),
        description: req.description === undefined ? undefined : description(req.description),
        eventTypes: req.setEventTypes ? eventTypes(req.eventTypes) : undefined,
        batch: req.batch,
      });
      if (!row) throw notFound(id);
      changed('update', id, req.operator, { url: row.url, event_types: row.event_types, batch: row.batch });
      return { endpoint: toEndpoint(row) };
    }),
    deleteWebhookEndpoint: unary('DeleteWebhookEndpoint', async (req) => {
      const id = endpointId(req.id);
      const deleted = await store.deleteEndpoint(id);
      if (deleted) changed('delete', id, req.operator);
      return { deleted };
    }),
    resumeWebhookEndpoint: unary('ResumeWebhookEndpoint', async (req) => {
      const id = endpointId(req.id);
      const row = await store.resumeEndpoint(id);
      if (!row) throw notFound(id);
      changed('resume', id, req.operator);
      deps.wake();
      return { endpoint: toEndpoint(row) };
    }),
    listWebhookDeliveries: unary('ListWebhookDeliveries', async (req) => {
      const id = endpointId(req.endpointId);
      const limit = req.limit === 0 ? 50 : req.limit;
      if (limit > 1000) throw new InvalidArgumentError('limit: at most 1000');
      let beforeId: number | undefined;
      if (req.pageToken) {
        if (!/^\d{1,18}$/.test(req.pageToken)) throw new InvalidArgumentError(`page_token: "${req.pageToken}" is not a token a previous page gave`);
        beforeId = Number(req.pageToken);
      }
      if (!(await store.getEndpoint(id))) throw notFound(id);
      const rows = await store.listDeliveries({ endpointId: id, state: deliveryState(req.state), limit: limit + 1, beforeId });
      const page = rows.slice(0, limit);
      return { deliveries: page.map(toDelivery), nextPageToken: rows.length > limit ? String(page[page.length - 1]!.id) : '' };
    }),
  };
}
