// Clients of the services admin forwards to, and the mapping of their errors
// to what an operator should see.
import { createClient, grpc, isGrpcError, statusError, type TlsFiles } from '@tern/grpc';
import { errorMessage } from '@tern/runtime';
import { OwnerCallError, OwnerCancelledError, OwnerRefusedAdminError, OwnerTimeoutError, OwnerUnimplementedError, OwnerUnreachableError } from './errors';
import { PolicyServiceClient, QueueServiceClient, WebhookServiceClient } from '@tern/proto';

export type OwnerName = 'queue' | 'policy' | 'webhooks';

/** Trailing-metadata key naming the owner an error came from (the CLI reads it). */
export const OWNER_KEY = 'tern-owner';

export interface Owner {
  name: OwnerName;
  address: string;
  client: grpc.Client;
}

export function connectOwner(name: OwnerName, address: string, deadlineMs: number, tls?: TlsFiles): Owner {
  const client: grpc.Client =
    name === 'queue'
      ? createClient(QueueServiceClient, address, { deadlineMs, tls })
      : name === 'policy'
        ? createClient(PolicyServiceClient, address, { deadlineMs, tls })
        : createClient(WebhookServiceClient, address, { deadlineMs, tls });
  return { name, address, client };
}

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientUnaryCall;
type StreamFn = (req: unknown, md: grpc.Metadata, opts: Partial<grpc.CallOptions>) => grpc.ClientReadableStream<unknown>;

export function unaryMethod(owner: Owner, method: string): UnaryFn {
  const fn = (owner.client as unknown as Record<string, UnaryFn>)[method];
  if (typeof fn !== 'function') throw new Error(`${owner.name} client has no method ${method}`);
  return fn.bind(owner.client);
}

export function streamMethod(owner: Owner, method: string): StreamFn {
  const fn = (owner.client as unknown as Record<string, StreamFn>)[method];
  if (typeof fn !== 'function') throw new Error(`${owner.name} client has no method ${method}`);
  return fn.bind(owner.client);
}

/** Short cause of a transport failure, from grpc-js's details. */
export function transportCause(details: string): string {
  if (/ECONNREFUSED/.test(details)) return 'connection refused';
  if (/ENOTFOUND|EAI_AGAIN|Name resolution failed|DNS resolution failed/i.test(details)) return 'name not resolved';
  if (/EHOSTUNREACH|ENETUNREACH/.test(details)) return 'host unreachable';
  if (/ETIMEDOUT/.test(details)) return 'connection timed out';
  if (/ECONNRESET|Connection dropped|socket hang up/i.test(details)) return 'connection reset';
  if (/certificate|SSL|TLS|handshake/i.test(details)) return `TLS failure: ${details}`;
  return details || 'unavailable';
}

/** Owner codes whose message is for the operator as it stands. */
const PASS_THROUGH = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.OUT_OF_RANGE,
  grpc.status.ABORTED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

/**
 * The error the operator gets for an owner's failure: business errors pass
 * through with the owner's message; transport failures name the owner and
 * its address. Every mapped error carries the owner in trailing metadata.
 */
export function mapOwnerError(owner: Owner, method: string, err: unknown, deadlineMs: number): grpc.ServiceError {
  const tag = (e: grpc.ServiceError) => {
    e.metadata.set(OWNER_KEY, owner.name);
    return e;
  };
  if (!isGrpcError(err)) {
    return tag(new OwnerCallError(owner.name, owner.address, errorMessage(err), err));
  }
  const details = err.details ?? err.message;
  if (PASS_THROUGH.has(err.code)) return tag(statusError(err.code, details));
  const where = `the ${owner.name} service at ${owner.address}`;
  switch (err.code) {
    case grpc.status.UNAVAILABLE:
      return tag(new OwnerUnreachableError(where, transportCause(details)));
    case grpc.status.DEADLINE_EXCEEDED: {
      const state = owner.client.getChannel().getConnectivityState(false);
      if (state !== grpc.connectivityState.READY && state !== grpc.connectivityState.IDLE) {
        return tag(new OwnerUnreachableError(where, `no connection within ${deadlineMs} ms`));
      }
      return tag(new OwnerTimeoutError(where, method, deadlineMs));
    }
    case grpc.status.UNIMPLEMENTED:
      return tag(new OwnerUnimplementedError(where, method, details));
    case grpc.status.CANCELLED:
      return tag(new OwnerCancelledError(where));
    case grpc.status.UNAUTHENTICATED:
    case grpc.status.PERMISSION_DENIED:
      // Admin's own credentials towards the owner were refused: not the operator's token.
      return tag(new OwnerRefusedAdminError(where, grpc.status[err.code], details));
    default:
      return tag(statusError(err.code, `${where}: ${details}`));
  }
}
