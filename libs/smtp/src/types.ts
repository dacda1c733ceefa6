// The engine's public types: options, session, envelope and the hooks a
// service implements.
import type { Readable } from 'node:stream';
import type tls from 'node:tls';
import type { ParsedAddress } from './address';
import type { MailParams, RcptParams } from './params';
import type { Reply } from './reply';

export interface SmtpLimits {
  /** Longest command line, CR LF included (RFC 5321: 512). AUTH lines may be up to 12288 (RFC 4954). */
  maxCommandLine: number;
  /** Longest message text line, CR LF included (RFC 5321: 1000). */
  maxTextLine: number;
  /** Largest message (octets, after dot-unstuffing); advertised with SIZE. */
  maxMessageSize: number;
  /** Recipients per transaction; more get 452 4.5.3. */
  maxRecipients: number;
  /** 4xx/5xx replies per session before 421 4.7.0 and close (replies marked ourFault do not count). */
  maxErrors: number;
  /** A session that has had only ourFault 4xx replies (no 2xx) for this long is closed with 421 4.3.0 (ms). */
  unavailableCloseMs: number;
  /** Concurrent sessions on this server (or the shared limiter). */
  maxSessions: number;
  /** Concurrent sessions per client IP. */
  maxSessionsPerClient: number;
  /** Idle time waiting for a command (ms); then 421 4.4.2. */
  commandTimeoutMs: number;
  /** Idle time while receiving message data (ms); then 421 4.4.2. */
  dataTimeoutMs: number;
  /** Time allowed for the PROXY header and TLS handshakes (ms). */
  handshakeTimeoutMs: number;
  /** Wait this long before the greeting; a client that talks first is refused (pregreet test). */
  greetingDelayMs: number;
  /** Transactions per session (0 = unlimited). */
  maxTransactions: number;
}

export const DEFAULT_LIMITS: SmtpLimits = {
  maxCommandLine: 512,
  maxTextLine: 1000,
  maxMessageSize: 10_240_000,
  maxRecipients: 100,
  maxErrors: 20,
  unavailableCloseMs: 60_000,
  maxSessions: 2000,
  maxSessionsPerClient: 50,
  commandTimeoutMs: 300_000,
  dataTimeoutMs: 300_000,
  handshakeTimeoutMs: 30_000,
  greetingDelayMs: 0,
  maxTransactions: 0,
};

export interface TlsInfo {
  /** "TLSv1.3" */
  protocol: string;
  /** OpenSSL/IANA cipher name. */
  cipher: string;
  /** Symmetric key bits, when known. */
  bits?: number;
  /** Implicit TLS (port 465) rather than STARTTLS. */
  implicit: boolean;
}

export interface SmtpSession {
  readonly id: string;
  /** Listener name (e.g. "mx", "submission", "submissions"). */
  readonly listener: string;
  readonly startedAt: Date;
  /** Peer of the TCP connection (the load balancer when PROXY protocol is used). */
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
  /** The real client (from the PROXY header when one was received). */
  clientAddress: string;
  clientPort: number;
  proxied: boolean;
  /** Set once TLS is up. */
  tls: TlsInfo | undefined;
  heloName: string | undefined;
  /** EHLO (rather than HELO) was used. */
  esmtp: boolean;
  /** Authenticated user (canonical name returned by onAuth). */
  user: string | undefined;
  /** The transaction in progress, if any. */
  envelope: Envelope | undefined;
  /** Completed transactions in this session. */
  transactions: number;
  /** Free for the service (e.g. reverse DNS name, policy hints). */
  readonly state: Record<string, unknown>;
}

export interface MailFrom {
  /** Canonical reverse-path; "" for the null sender. */
  address: string;
  parsed: ParsedAddress;
  params: MailParams;
}

export interface RcptTo {
  /** Canonical forward-path ("postmaster" for a bare postmaster). */
  address: string;
  parsed: ParsedAddress;
  params: RcptParams;
  /** Free for the service (e.g. policy's "local recipient" flag). */
  state?: Record<string, unknown>;
}

export interface Envelope {
  /** Per-session sequence number of the transaction (1, 2, ...). */
  seq: number;
  mailFrom: MailFrom;
  rcptTo: RcptTo[];
  /** BDAT was used for the body. */
  chunking: boolean;
  /** When the MAIL command was accepted. */
  startedAt: Date;
  /** Free for the service. */
  readonly state: Record<string, unknown>;
}

export interface AuthRequest {
  mechanism: 'PLAIN' | 'LOGIN';
  username: string;
  password: string;
  /** PLAIN authorization identity, "" when not given (must equal username if given). */
  authzid: string;
}

export type AuthResult = { ok: true; user: string } | { ok: false; reply?: Reply };

/**
 * What the service implements. Every hook is async. A hook that returns
 * `undefined` accepts with the engine's standard reply; a returned reply is
 * sent as is (a 2xx accepts, 4xx/5xx refuses). A hook that throws is answered
 * with 451 4.3.0 — never an accept.
 */
export interface SmtpHooks {
  /** After the PROXY header and implicit TLS handshake, before the greeting. A 4xx becomes 421, a 5xx 554, and the session closes. */
  onConnect?(session: SmtpSession): Promise<Reply | undefined>;
  onHelo?(session: SmtpSession, name: string, esmtp: boolean): Promise<Reply | undefined>;
  onMailFrom?(session: SmtpSession, from: MailFrom): Promise<Reply | undefined>;
  onRcptTo?(session: SmtpSession, rcpt: RcptTo, envelope: Envelope): Promise<Reply | undefined>;
  /** AUTH PLAIN/LOGIN. Only offered when this hook exists (and under TLS unless requireTlsForAuth is off). */
  onAuth?(session: SmtpSession, auth: AuthRequest): Promise<AuthResult>;
  /**
   * DATA, or the first BDAT chunk of a transaction, before any message data
   * is taken: a refusal here (e.g. the queue is over its high-water mark)
   * is given instead of 354 (DATA) or after skipping the chunk (BDAT).
   */
  onDataStart?(session: SmtpSession, envelope: Envelope): Promise<Reply | undefined>;
  /**
   * The message body (dot-unstuffed for DATA, concatenated chunks for BDAT)
   * as it arrives. The stream is bounded: when the service stops reading,
   * the engine stops reading the socket. If the engine detects a violation
   * (bare CR/LF, NUL, long line, size) the stream is destroyed with an
   * `SmtpDataError` and the engine replies the violation after the real end
   * of data, whatever the hook returns. Otherwise the hook's reply is the
   * end-of-data reply. The hook must not resolve with a 2xx before the stream
   * has ended.
   */
  onData(session: SmtpSession, envelope: Envelope, stream: Readable): Promise<Reply>;
  /** Called on RSET, EHLO/HELO and STARTTLS when a transaction is dropped. */
  onReset?(session: SmtpSession, envelope: Envelope): void;
  /** VRFY; without it VRFY answers 252. */
  onVrfy?(session: SmtpSession, arg: string): Promise<Reply>;
  /** EXPN; without it EXPN answers 502. */
  onExpn?(session: SmtpSession, arg: string): Promise<Reply>;
  /** ETRN; without it ETRN answers 502. */
  onEtrn?(session: SmtpSession, arg: string): Promise<Reply | undefined>;
  /** Session over (any reason). */
  onClose?(session: SmtpSession, reason: string): void;
}

export interface TlsOptions {
  /** Returns the current context; called per handshake, so certificates can be reloaded. */
  secureContext: () => tls.SecureContext;
}

export interface SmtpLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface SmtpServerOptions {
  /** Listener name in sessions and logs. */
  name?: string;
  host?: string;
  /** 0 = any free port (see `address()` after listen). */
  port: number;
  /** Our name in the greeting, EHLO and 421 replies. */
  hostname: string;
  /** Greeting text after the hostname ("ESMTP" is required; default "ESMTP Tern"). */
  banner?: string;
  /** TLS from the first octet (port 465). Requires `tls`. */
  implicitTls?: boolean;
  /** TLS configuration; STARTTLS is offered when set and not implicit. */
  tls?: TlsOptions;
  /** AUTH only under TLS (default true). */
  requireTlsForAuth?: boolean;
  /** MAIL requires AUTH first (submission). */
  authRequired?: boolean;
  /** CIDRs allowed (and then required) to send a PROXY protocol header. */
  proxyProtocolFrom?: readonly string[];
  limits?: Partial<SmtpLimits>;
  /** Share session counts across several servers (MX, submission, ...). */
  limiter?: ConnectionLimiter;
  logger?: SmtpLogger;
}

/** Counts sessions in total and per client IP, shareable between servers. */
export class ConnectionLimiter {
  private total = 0;
  private readonly perClient = new Map<string, number>();

  constructor(
    readonly maxTotal: number,
    readonly maxPerClient: number,
  ) {}

  get active(): number {
    return this.total;
  }

  tryAcquireTotal(): boolean {
    if (this.total >= this.maxTotal) return false;
    this.total++;
    return true;
  }

  releaseTotal(): void {
    this.total--;
  }

  tryAcquireClient(ip: string): boolean {
    const n = this.perClient.get(ip) ?? 0;
    if (n >= this.maxPerClient) return false;
    this.perClient.set(ip, n + 1);
    return true;
  }

  releaseClient(ip: string): void {
    const n = (this.perClient.get(ip) ?? 1) - 1;
    if (n <= 0) this.perClient.delete(ip);
    else this.perClient.set(ip, n);
  }
}
