// What a session shares with its server (SessionContext), the session's
// modes, and session ids.
import crypto from 'node:crypto';
import type tls from 'node:tls';
import type { Session } from './session';
import type { SmtpStats } from './stats';
import type { ConnectionLimiter, SmtpHooks, SmtpLimits, SmtpLogger } from './types';

/** What a session needs from its server. */
export interface SessionContext {
  name: string;
  hostname: string;
  banner: string;
  hooks: SmtpHooks;
  limits: SmtpLimits;
  implicitTls: boolean;
  secureContext: (() => tls.SecureContext) | undefined;
  requireTlsForAuth: boolean;
  authRequired: boolean;
  isTrustedProxy: (address: string) => boolean;
  limiter: ConnectionLimiter;
  logger: SmtpLogger | undefined;
  /** The server is shutting down gracefully. */
  closing: () => boolean;
  ended: (s: Session) => void;
  stats: SmtpStats;
}

/** What the session does with the input it reads. */
export const enum Mode {
  Proxy,
  Handshake,
  PreGreeting,
  Command,
  Auth,
  Data,
  Bdat,
  Closing,
  Closed,
}

const idPrefix = crypto.randomBytes(3).toString('hex');
let idCounter = 0;

/** A session id: unique per process run, short, sortable by start within a run. */
export function nextId(): string {
  idCounter = (idCounter + 1) % 0x7fffffff;
  return `${idPrefix}${Date.now().toString(36).slice(-5)}${idCounter.toString(36).padStart(4, '0')}`.toUpperCase();
}
