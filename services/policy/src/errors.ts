// What policy's calls fail with, by name; each one's gRPC status is its
// base class's (libs/grpc errors.ts), decided there once. Messages say what
// was wrong and, for an operator, what to do next (unchanged from before
// the classes).
import { AlreadyExistsError, FailedPreconditionError, InvalidFieldError, NotFoundError, UnavailableError } from '@tern/grpc';

export { FailedPreconditionError, InvalidFieldError, StatusError } from '@tern/grpc';

/** INVALID_ARGUMENT whose message starts with the offending field, e.g. `domain.name: ...`. */
export const invalid = (field: string, message: string) => new InvalidFieldError(field, message);

export const precondition = (message: string) => new FailedPreconditionError(message);

export class DkimKeyNotFoundError extends NotFoundError {
  override readonly name = 'DkimKeyNotFoundError';
  constructor(domain: string, selector: string) {
    super(`no DKIM key ${selector} for ${domain}; see tern dkim ls ${domain}`);
  }
}

/** A selector is used once: a retired one may still be in resolvers' caches. */
export class DkimSelectorExistsError extends AlreadyExistsError {
  override readonly name = 'DkimSelectorExistsError';
  constructor(domain: string, selector: string, state: string) {
    super(`selector ${selector} of ${domain} exists (${state}); choose a new selector (a retired one is not reused: resolvers may still hold its record)`);
  }
}

/** A row other policy data still points at (Postgres 23503). */
export class StillReferencedError extends FailedPreconditionError {
  override readonly name = 'StillReferencedError';
  constructor(rpc: string, cause?: unknown) {
    super(`${rpc}: still referenced by other policy data`, { cause });
  }
}

/** A call failed on our side (storage, a dependency); its message names the RPC. */
export class RpcFailedError extends UnavailableError {
  override readonly name = 'RpcFailedError';
  constructor(rpc: string, message: string, cause?: unknown) {
    super(`${rpc} failed: ${message}`, { cause });
  }
}
