// What the operator reads when a command fails: one line with the cause and
// the next step, and an exit code a script can branch on.
import { grpc, isGrpcError } from '@tern/grpc';
import type { Connection } from './client';
import { UsageError } from './requests';

export const EXIT = {
  OK: 0,
  /** The API refused or failed the request. */
  FAILED: 1,
  /** Bad command line. */
  USAGE: 2,
  /** The admin API (or a service behind it) cannot be reached or did not answer. */
  UNREACHABLE: 3,
  /** Missing or refused credentials. */
  AUTH: 4,
  NOT_FOUND: 5,
} as const;

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Short cause of a transport failure, from grpc-js's details. */
export function transportCause(details: string): string {
  if (/ECONNREFUSED/.test(details)) return 'connection refused';
  if (/ENOTFOUND|EAI_AGAIN|Name resolution failed|DNS resolution failed/i.test(details)) return 'name not resolved';
  if (/EHOSTUNREACH|ENETUNREACH/.test(details)) return 'host unreachable';
  if (/ETIMEDOUT/.test(details)) return 'connection timed out';
  if (/ECONNRESET|Connection dropped|socket hang up/i.test(details)) return 'connection reset';
  if (/certificate|SSL|TLS|handshake|wrong version number/i.test(details)) return `TLS failure: ${details.replace(/^.*Last error: /, '')}`;
  return details.replace(/^No connection established\. Last error: (Error: )?/, '') || 'unavailable';
}

const tokenHint = (c: Connection) =>
  c.tokenSource === 'none' ? 'Set TERN_ADMIN_TOKEN (or TERN_ADMIN_TOKEN_FILE), or pass --token.' : `Set TERN_ADMIN_TOKEN (the token came from ${c.tokenSource}).`;

/** The one line (without the "tern: " prefix) and exit code for a failed call. */
export function describeError(err: unknown, c: Connection): CliError {
  if (err instanceof CliError) return err;
  if (err instanceof UsageError) return new CliError(err.message, EXIT.USAGE);
  if (!isGrpcError(err)) return new CliError((err as Error)?.message ?? String(err), EXIT.FAILED);
  const details = err.details ?? err.message;
  const name = grpc.status[err.code] ?? String(err.code);
  // Errors the admin API mapped from queue or policy carry the owner's name.
  const owner = err.metadata?.get('tern-owner')[0];
  if (owner !== undefined) {
    switch (err.code) {
      case grpc.status.UNAVAILABLE:
      case grpc.status.DEADLINE_EXCEEDED:
        return new CliError(`the admin API at ${c.address} answered, but ${details} (${name}). Check that the ${owner} service is running.`, EXIT.UNREACHABLE);
      case grpc.status.NOT_FOUND:
        return new CliError(`${details} (NOT_FOUND)`, EXIT.NOT_FOUND);
      case grpc.status.INVALID_ARGUMENT:
        return new CliError(`the ${owner} service refused the request: ${details} (INVALID_ARGUMENT)`, EXIT.FAILED);
      default:
        return new CliError(`${details} (${name})`, EXIT.FAILED);
    }
  }
  switch (err.code) {
    case grpc.status.UNAVAILABLE:
      return new CliError(
        `cannot reach the admin API at ${c.address} (${transportCause(details)}). Is the platform running? Start it with 'npm start', or set TERN_ADMIN_ADDR.`,
        EXIT.UNREACHABLE,
      );
    case grpc.status.DEADLINE_EXCEEDED:
      return new CliError(`the admin API at ${c.address} did not answer within ${c.deadlineMs / 1000}s (DEADLINE_EXCEEDED). Retry, or allow longer with --timeout.`, EXIT.UNREACHABLE);
    case grpc.status.UNAUTHENTICATED:
      return new CliError(
        c.token ? `the admin API refused the token (UNAUTHENTICATED). ${tokenHint(c)}` : `the admin API needs a token (UNAUTHENTICATED). ${tokenHint(c)}`,
        EXIT.AUTH,
      );
    case grpc.status.PERMISSION_DENIED:
      return new CliError(`the admin API refused the operation: ${details} (PERMISSION_DENIED).`, EXIT.AUTH);
    case grpc.status.UNIMPLEMENTED:
      return new CliError(`the admin API at ${c.address} does not offer this call (UNIMPLEMENTED): is it an older version?`, EXIT.FAILED);
    case grpc.status.NOT_FOUND:
      return new CliError(`${details} (NOT_FOUND)`, EXIT.NOT_FOUND);
    default:
      return new CliError(`${details} (${name})`, EXIT.FAILED);
  }
}
