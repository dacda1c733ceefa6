// Errors of the lifecycle, and the one way to read any caught value's
// message (a catch clause gets `unknown`: a string, a rejection with
// nothing, or an Error).

/** The text of whatever was thrown: an Error's message, else its string form. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  if (typeof err === 'object' && err !== null && typeof (err as { message?: unknown }).message === 'string') return (err as { message: string }).message;
  return String(err);
}

/** A part was asked to start after it was drained or closed: parts are started once (as nats.js refuses a closed connection). */
export class ClosedError extends Error {
  override readonly name = 'ClosedError';
  constructor(readonly part: string) {
    super(`${part} is closed; a part is started once`);
  }
}

/** A part failed to start; `cause` is what it threw. */
export class StartError extends Error {
  override readonly name = 'StartError';
  constructor(
    readonly part: string,
    cause: unknown,
  ) {
    super(`${part} failed to start: ${errorMessage(cause)}`, { cause });
  }
}
