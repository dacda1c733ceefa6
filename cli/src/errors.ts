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

/** Why a local file could not be read or written, in words (not "ENOENT: no such file or directory, open ..."). */
export function fileProblem(err: unknown): string {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return 'it does not exist';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EISDIR') return 'it is a directory';
  return code ?? (err as Error)?.message ?? String(err);
}

/** grpc-js details without timestamps, resolution notes and line breaks. */
function clean(details: string): string {
  return details
    .replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)\.?\s*Resolution note:[^)]*\)?/g, '')
    .replace(/\.?\s*Resolution note:.*$/s, '')
    .replace(/^No connection established\. Last error: (Error: )?/, '')
    // OpenSSL's "407D...:error:0A00010B:SSL routines:func:reason:file:line:": the reason.
    .replace(/[0-9A-F]{8,}:error:[0-9A-F]+:[^:]+:[^:]+:([^:]+):\S*/g, '$1')
    .replace(/\s+/g, ' ')
    .trim();
}

/** Cause and next step of a failure to reach the admin API. */
export function unreachable(details: string, c: Pick<Connection, 'tls' | 'certFile'>): { cause: string; hint: string } {
  const platform = "Is the platform running? Start it with 'npm start', or set TERN_ADMIN_ADDR.";
  if (/ECONNREFUSED/.test(details)) return { cause: 'connection refused', hint: platform };
  if (/ENOTFOUND|EAI_AGAIN|Name resolution failed|DNS resolution failed/i.test(details)) return { cause: 'name not resolved', hint: 'Check --server / TERN_ADMIN_ADDR.' };
  if (/EHOSTUNREACH|ENETUNREACH/.test(details)) return { cause: 'host unreachable', hint: 'Check --server / TERN_ADMIN_ADDR and the network.' };
  if (/ETIMEDOUT/.test(details)) return { cause: 'connection timed out', hint: 'Check --server / TERN_ADMIN_ADDR and the network.' };
  if (/certificate required/i.test(details)) {
    return { cause: 'the server requires a client certificate', hint: 'Pass --cert-file and --key-file (TERN_ADMIN_CERT_FILE, TERN_ADMIN_KEY_FILE).' };
  }
  if (/self[- ]signed|unable to (get|verify)|certificate verify failed|UNABLE_TO_VERIFY|unknown ca/i.test(details)) {
    return { cause: 'the server certificate is not trusted', hint: 'Pass --ca-file with the CA that signed it (TERN_ADMIN_CA_FILE).' };
  }
  if (/altnames|does not match|ERR_TLS_CERT_ALTNAME/i.test(details)) {
    return { cause: 'the server certificate is for another name', hint: 'Pass --tls-server-name with the name in its certificate.' };
  }
  if (/bad certificate|certificate (revoked|expired|unknown)/i.test(details)) {
    return { cause: 'the server refused the client certificate', hint: 'Check --cert-file / --key-file against the CA the server trusts.' };
  }
  if (/wrong version number|packet length too long|http request/i.test(details)) {
    return { cause: 'the server does not speak TLS', hint: 'Try without --tls / --ca-file (TERN_ADMIN_TLS, TERN_ADMIN_CA_FILE), or check --server / TERN_ADMIN_ADDR.' };
  }
  if (/wrong version number|SSL|TLS|handshake/i.test(details)) {
    return { cause: `TLS failure: ${clean(details)}`, hint: c.tls ? 'Does the admin API use TLS? Try without --tls / --ca-file.' : 'If the admin API uses TLS, pass --tls or --ca-file.' };
  }
  if (/Protocol error|Failed to connect/i.test(details)) {
    // TCP connected but no HTTP/2 came back: another service's port (SMTP, Postgres, metrics), or TLS on one side only.
    return {
      cause: 'the server there does not answer gRPC',
      hint: `Check that --server / TERN_ADMIN_ADDR is the admin API's gRPC port (7000 unless admin's TERN_GRPC_LISTEN says otherwise).${c.tls ? '' : ' If it uses TLS, pass --tls or --ca-file.'}`,
    };
  }
  if (/ECONNRESET|Connection dropped|socket hang up/i.test(details)) return { cause: 'connection reset', hint: c.tls ? platform : `${platform} If it uses TLS, pass --tls or --ca-file.` };
  return { cause: clean(details) || 'unavailable', hint: c.tls ? platform : `${platform} If it uses TLS, pass --tls or --ca-file.` };
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
  // A number past its field's type (uint32, uint64) that no option check caught: grpc-js cannot encode
  // it (nothing was sent), or the admin API cannot decode it. Either way the operator's value is at fault.
  if (err.code === grpc.status.INTERNAL) {
    const encode = /^Request message serialization failure: (.*)$/.exec(details);
    if (encode) return new CliError(`a value given is out of range for the admin API (${encode[1]}), nothing sent: check the numbers in the command (its --help says what each option takes)`, EXIT.USAGE);
    if (/^Error deserializing request/.test(details)) return new CliError(`the admin API could not read the request (${details}): a number given is probably out of range; check the numbers in the command`, EXIT.FAILED);
  }
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
    case grpc.status.UNAVAILABLE: {
      const { cause, hint } = unreachable(details, c);
      return new CliError(`cannot reach the admin API at ${c.address} (${cause}). ${hint}`, EXIT.UNREACHABLE);
    }
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
