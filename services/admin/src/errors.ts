// What an operator's call fails with, by name; the gRPC status of each is its
// base class's (libs/grpc errors.ts). Owner errors name the owner and its
// address, so the operator knows which service to look at.
import { CancelledError, DeadlineExceededError, FailedPreconditionError, InternalError, PermissionDeniedError, UnauthenticatedError, UnavailableError, UnimplementedError } from '@tern/grpc';
import { UNAUTHENTICATED_MESSAGE } from './auth';

/** No operator on the call (the interceptor sets one for every valid token or certificate). */
export class NoOperatorError extends UnauthenticatedError {
  override readonly name = 'NoOperatorError';
  constructor() {
    super(UNAUTHENTICATED_MESSAGE);
  }
}

/** The operator's role is below what the method needs; the message says which role and what to do. */
export class RoleDeniedError extends PermissionDeniedError {
  override readonly name = 'RoleDeniedError';
}

/** `where` is "the <owner> service at <address>". */
export class OwnerUnreachableError extends UnavailableError {
  override readonly name = 'OwnerUnreachableError';
  constructor(where: string, why: string) {
    super(`${where} is unreachable (${why})`);
  }
}

export class OwnerTimeoutError extends DeadlineExceededError {
  override readonly name = 'OwnerTimeoutError';
  constructor(where: string, method: string, deadlineMs: number) {
    super(`${where} did not answer ${method} within ${deadlineMs} ms`);
  }
}

/** The owner is of a release without the method. */
export class OwnerUnimplementedError extends UnimplementedError {
  override readonly name = 'OwnerUnimplementedError';
  constructor(where: string, method: string, details: string) {
    super(`${where} does not implement ${method} (${details})`);
  }
}

export class OwnerCancelledError extends CancelledError {
  override readonly name = 'OwnerCancelledError';
  constructor(where: string) {
    super(`${where}: call cancelled`);
  }
}

/** An optional owner (webhooks) whose address admin was not given. */
export class OwnerNotConfiguredError extends FailedPreconditionError {
  override readonly name = 'OwnerNotConfiguredError';
  constructor(owner: string, variable: string) {
    super(`admin has no ${owner} service to forward to: set ${variable} on admin (the chart does when ${owner}.enabled)`);
  }
}

/** The owner refused admin's own credentials: not the operator's fault, so INTERNAL. */
export class OwnerRefusedAdminError extends InternalError {
  override readonly name = 'OwnerRefusedAdminError';
  constructor(where: string, status: string, details: string) {
    super(`${where} refused admin's call (${status}: ${details})`);
  }
}

/** The call failed without a gRPC status (a bug, or the client library). */
export class OwnerCallError extends InternalError {
  override readonly name = 'OwnerCallError';
  constructor(owner: string, address: string, message: string, cause: unknown) {
    super(`${owner} service at ${address}: ${message}`, { cause });
  }
}
