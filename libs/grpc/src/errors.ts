// Named errors with their gRPC status, after nats.js v3 (Error subclasses
// with `cause`): a service throws what went wrong (each service's errors.ts
// names its own, extending these), and the status a caller sees is decided
// here, once, by the class. A StatusError is a grpc-js ServiceError (code,
// details, metadata), so a handler passes it to its callback or stream as
// it is; toServiceError turns anything else into the handler's fallback.
import * as grpc from '@grpc/grpc-js';
import { errorMessage } from '@tern/runtime';

export abstract class StatusError extends Error implements grpc.ServiceError {
  abstract readonly code: grpc.status;
  readonly details: string;
  readonly metadata = new grpc.Metadata();

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.details = message;
  }
}

export class InvalidArgumentError extends StatusError {
  override readonly name: string = 'InvalidArgumentError';
  readonly code = grpc.status.INVALID_ARGUMENT;
}

/** INVALID_ARGUMENT naming the field first, e.g. `operator: required`. */
export class InvalidFieldError extends InvalidArgumentError {
  override readonly name: string = 'InvalidFieldError';
  constructor(
    readonly field: string,
    problem: string,
  ) {
    super(`${field}: ${problem}`);
  }
}

export class NotFoundError extends StatusError {
  override readonly name: string = 'NotFoundError';
  readonly code = grpc.status.NOT_FOUND;
}

export class AlreadyExistsError extends StatusError {
  override readonly name: string = 'AlreadyExistsError';
  readonly code = grpc.status.ALREADY_EXISTS;
}

export class FailedPreconditionError extends StatusError {
  override readonly name: string = 'FailedPreconditionError';
  readonly code = grpc.status.FAILED_PRECONDITION;
}

export class ResourceExhaustedError extends StatusError {
  override readonly name: string = 'ResourceExhaustedError';
  readonly code = grpc.status.RESOURCE_EXHAUSTED;
}

export class PermissionDeniedError extends StatusError {
  override readonly name: string = 'PermissionDeniedError';
  readonly code = grpc.status.PERMISSION_DENIED;
}

export class UnauthenticatedError extends StatusError {
  override readonly name: string = 'UnauthenticatedError';
  readonly code = grpc.status.UNAUTHENTICATED;
}

/** Ours, not the caller's, and worth trying again (storage or a dependency failed). */
export class UnavailableError extends StatusError {
  override readonly name: string = 'UnavailableError';
  readonly code = grpc.status.UNAVAILABLE;
}

export class DeadlineExceededError extends StatusError {
  override readonly name: string = 'DeadlineExceededError';
  readonly code = grpc.status.DEADLINE_EXCEEDED;
}

export class CancelledError extends StatusError {
  override readonly name: string = 'CancelledError';
  readonly code = grpc.status.CANCELLED;
}

export class UnimplementedError extends StatusError {
  override readonly name: string = 'UnimplementedError';
  readonly code = grpc.status.UNIMPLEMENTED;
}

export class InternalError extends StatusError {
  override readonly name: string = 'InternalError';
  readonly code = grpc.status.INTERNAL;
}

const BY_CODE: Partial<Record<grpc.status, new (message: string, options?: { cause?: unknown }) => StatusError>> = {
  [grpc.status.INVALID_ARGUMENT]: InvalidArgumentError,
  [grpc.status.NOT_FOUND]: NotFoundError,
  [grpc.status.ALREADY_EXISTS]: AlreadyExistsError,
  [grpc.status.FAILED_PRECONDITION]: FailedPreconditionError,
  [grpc.status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [grpc.status.PERMISSION_DENIED]: PermissionDeniedError,
  [grpc.status.UNAUTHENTICATED]: UnauthenticatedError,
  [grpc.status.UNAVAILABLE]: UnavailableError,
  [grpc.status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [grpc.status.CANCELLED]: CancelledError,
  [grpc.status.UNIMPLEMENTED]: UnimplementedError,
  [grpc.status.INTERNAL]: InternalError,
};

class OtherStatusError extends StatusError {
  override readonly name: string = 'StatusError';
  constructor(
    readonly code: grpc.status,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The named error of a status (for code that only knows the status, e.g. a forwarded answer). */
export function statusError(code: grpc.status, message: string, options?: { cause?: unknown }): StatusError {
  const Named = BY_CODE[code];
  return Named ? new Named(message, options) : new OtherStatusError(code, message, options);
}

/** A grpc-js ServiceError: a StatusError, or what a call to another service failed with. */
export function isGrpcError(err: unknown): err is grpc.ServiceError {
  return typeof err === 'object' && err !== null && 'code' in err && typeof (err as { code: unknown }).code === 'number';
}

/**
 * What a handler answers for `err`: a StatusError (or another service's
 * ServiceError) as it is; anything else is ours and unexpected, answered
 * with `fallback(message)` (a service's named error, e.g. UNAVAILABLE
 * "ListMessages failed: ...").
 */
export function toServiceError(err: unknown, fallback: (message: string, cause: unknown) => StatusError): grpc.ServiceError {
  return isGrpcError(err) ? err : fallback(errorMessage(err), err);
}
