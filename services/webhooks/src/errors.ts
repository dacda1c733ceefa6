// What WebhookService's calls fail with, by name; each one's gRPC status is
// its base class's (libs/grpc errors.ts), decided there once. A bad field
// is an InvalidArgumentError whose message starts with the field's name.
import { NotFoundError, ResourceExhaustedError, UnavailableError } from '@tern/grpc';

export { InvalidArgumentError, StatusError } from '@tern/grpc';

export class EndpointNotFoundError extends NotFoundError {
  override readonly name = 'EndpointNotFoundError';
  constructor(id: string) {
    super(`no webhook endpoint ${id} (tern webhook ls lists them)`);
  }
}

export class TooManyEndpointsError extends ResourceExhaustedError {
  override readonly name = 'TooManyEndpointsError';
  constructor(max: number) {
    super(`there are already ${max} webhook endpoints (TERN_WEBHOOKS_MAX_ENDPOINTS): remove one first`);
  }
}

/** A call failed on our side (Postgres); its message names the RPC. */
export class RpcFailedError extends UnavailableError {
  override readonly name = 'RpcFailedError';
  constructor(rpc: string, message: string, cause?: unknown) {
    super(`${rpc} failed: ${message}`, { cause });
  }
}
