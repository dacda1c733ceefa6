// What the queue's calls fail with, by name; each one's gRPC status is its
// base class's (libs/grpc errors.ts), decided there once. Messages say what
// was wrong and, for an operator, what to do next.
import { CancelledError, InvalidArgumentError, InvalidFieldError, NotFoundError, ResourceExhaustedError, UnavailableError } from '@tern/grpc';

export { InvalidArgumentError, InvalidFieldError } from '@tern/grpc';

/** An Enqueue stream out of order or inconsistent (a second header, no header first, a commit size that does not match). */
export class EnqueueStreamError extends InvalidArgumentError {
  override readonly name = 'EnqueueStreamError';
}

export class MessageTooLargeError extends ResourceExhaustedError {
  override readonly name = 'MessageTooLargeError';
  constructor(maxBytes: number) {
    super(`message exceeds the maximum size of ${maxBytes} bytes`);
  }
}

/** A stream that ended, was cancelled or failed before its commit: nothing stored. */
export class NotCommittedError extends CancelledError {
  override readonly name = 'NotCommittedError';
}

/** Postgres failed under a commit; the client keeps its copy and tries again. */
export class StorageError extends UnavailableError {
  override readonly name = 'StorageError';
  constructor(message: string, cause?: unknown) {
    super(`queue storage failed: ${message}`, { cause });
  }
}

/** An operator call failed on our side (its message names the RPC). */
export class RpcFailedError extends UnavailableError {
  override readonly name = 'RpcFailedError';
  constructor(rpc: string, message: string, cause?: unknown) {
    super(`${rpc} failed: ${message}`, { cause });
  }
}

/** An operator's queue_id that is no queue id at all (a typo, or a Message-ID pasted instead). */
export class MalformedQueueIdError extends InvalidFieldError {
  override readonly name = 'MalformedQueueIdError';
  constructor(value: string) {
    super('queue_id', `"${value}" is not a queue id (16 letters and digits, as in "250 2.0.0 Ok: queued as 01JD4Z8X2K7Q9M3R"; see tern queue ls)`);
  }
}

export class MessageNotFoundError extends NotFoundError {
  override readonly name = 'MessageNotFoundError';
  constructor(queueId: string) {
    super(`no message with queue id "${queueId}" (tern queue ls --state all lists them)`);
  }
}

export class BodyNotFoundError extends NotFoundError {
  override readonly name = 'BodyNotFoundError';
  constructor(queueId: string) {
    super(`no stored body for queue id "${queueId}" (unknown, or removed after delivery)`);
  }
}

export class BodyReadError extends UnavailableError {
  override readonly name = 'BodyReadError';
  constructor(message: string, cause?: unknown) {
    super(`reading the body failed: ${message}`, { cause });
  }
}

/** A destination the queue never had mail for (most likely a typo); `next` says what to do. */
export class UnknownDestinationError extends NotFoundError {
  override readonly name = 'UnknownDestinationError';
  constructor(name: string, next: string) {
    super(`destination "${name}": the queue has never had mail for it (a typo?); check the name with tern destination ls or tern queue summary${next}`);
  }
}
