// Errors the management RPCs answer with; the service maps them to gRPC status.
import { grpc } from '@tern/grpc';

export class PolicyError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
    this.name = 'PolicyError';
  }
}

/** INVALID_ARGUMENT whose message starts with the offending field, e.g. `domain.name: ...`. */
export const invalid = (field: string, message: string) => new PolicyError(grpc.status.INVALID_ARGUMENT, `${field}: ${message}`);

export const precondition = (message: string) => new PolicyError(grpc.status.FAILED_PRECONDITION, message);
