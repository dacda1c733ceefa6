// Authentication of the operator API: a server interceptor that runs before
// every handler. It resolves the caller to an operator name (bearer token, or
// a verified client certificate when certificate auth is on) and hands the
// name to the handler in metadata it controls: whatever a client sends under
// that key is dropped first, so the name cannot be spoofed.
import { grpc } from '@tern/grpc';
import type { Logger } from '@tern/telemetry';
import { isRole, roleRank, type Caller, type Role } from './tokens';

/** Metadata keys the interceptor sets for the handlers (never trusted from a client). */
export const OPERATOR_KEY = 'x-tern-operator';
export const ROLE_KEY = 'x-tern-role';

export const UNAUTHENTICATED_MESSAGE = 'missing or invalid bearer token';

/** Paths probes and tooling reach without credentials. */
const EXEMPT = ['/grpc.health.v1.', '/grpc.reflection.'];

export interface AuthOptions {
  lookup(token: string): Caller | undefined;
  /** Accept a verified client certificate's CN as the operator when no token is sent. */
  certAuth: boolean;
  /** The role of an operator known by certificate. */
  certRole: Role;
  logger: Logger;
  onResult?(result: 'ok' | 'missing' | 'invalid'): void;
}

const BEARER = /^Bearer[ \t]+([^\s]+)[ \t]*$/i;

function certificateOperator(call: grpc.ServerInterceptingCallInterface): string | undefined {
  const cert = call.getAuthContext().sslPeerCertificate;
  const cn = cert?.subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  return name ? `cert:${name}` : undefined;
}

export function authInterceptor(opts: AuthOptions): grpc.ServerInterceptor {
  return (method, call) => {
    if (EXEMPT.some((p) => method.path.startsWith(p))) return new grpc.ServerInterceptingCall(call);
    return new grpc.ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, mdNext) {
            metadata.remove(OPERATOR_KEY);
            metadata.remove(ROLE_KEY);
            const values = metadata.get('authorization');
            let operator: Caller | undefined;
            let result: 'ok' | 'missing' | 'invalid' = 'missing';
            if (values.length === 1) {
              const match = BEARER.exec(String(values[0]));
              operator = match ? opts.lookup(match[1]!) : undefined;
              result = operator ? 'ok' : 'invalid';
            } else if (values.length > 1) {
              result = 'invalid';
            } else if (opts.certAuth) {
              const name = certificateOperator(call);
              if (name) {
                operator = { name, role: opts.certRole };
                result = 'ok';
              }
            }
            opts.onResult?.(result);
            if (!operator) {
              opts.logger.warn({ event: 'admin_auth_failed', method: method.path, peer: call.getPeer(), result }, 'admin call refused: missing or invalid bearer token');
              call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: UNAUTHENTICATED_MESSAGE, metadata: new grpc.Metadata() });
              return;
            }
            metadata.remove('authorization');
            metadata.set(OPERATOR_KEY, operator.name);
            metadata.set(ROLE_KEY, operator.role);
            mdNext(metadata);
          },
        });
      },
    });
  };
}

/** The operator the interceptor authenticated for this call, if any. */
export function operatorOf(call: { metadata: grpc.Metadata }): string | undefined {
  const v = call.metadata.get(OPERATOR_KEY);
  return v.length === 1 && typeof v[0] === 'string' && v[0] !== '' ? v[0] : undefined;
}

/** The role of that operator (viewer when the interceptor set none). */
export function roleOf(call: { metadata: grpc.Metadata }): Role {
  const v = call.metadata.get(ROLE_KEY);
  return v.length === 1 && typeof v[0] === 'string' && isRole(v[0]) ? v[0] : 'viewer';
}

/** Why `role` may not call `method`, naming the role needed and the next step; undefined when it may. */
export function deniedReason(method: string, operator: string, role: Role, needed: Role): string | undefined {
  if (roleRank(role) >= roleRank(needed)) return undefined;
  const roles = needed === 'admin' ? 'role admin' : `role ${needed} or admin`;
  return `${method} needs the ${needed} role; ${operator} has ${role} (give ${operator} a token with ${roles}: name:token:${needed} in TERN_ADMIN_TOKENS_FILE)`;
}
