// One SMTP listener: accepts connections, applies the session limits and
// runs a Session per connection. Graceful close: stop accepting, tell idle
// sessions 421 4.3.2 at once, let sessions in a transaction finish it within
// the grace period, then 421 4.3.2 to whoever is left.
import net from 'node:net';
import { CidrSet, normalizeIp } from './proxy';
import { closing, formatReply } from './reply';
import { Session, type SessionContext } from './session';
import { SmtpStats } from './stats';
import { ConnectionLimiter, DEFAULT_LIMITS, type SmtpHooks, type SmtpLimits, type SmtpServerOptions } from './types';

export class SmtpServer {
  readonly limits: SmtpLimits;
  readonly limiter: ConnectionLimiter;
  /** Commands and replies of this listener's sessions, for metrics. */
  readonly stats = new SmtpStats();
  private readonly server: net.Server;
  private readonly sessions = new Set<Session>();
  private readonly ctx: SessionContext;
  private closingState = false;
  private drained: (() => void) | undefined;

  constructor(
    readonly options: SmtpServerOptions,
    hooks: SmtpHooks,
  ) {
    if (options.implicitTls && !options.tls) throw new Error('implicitTls needs tls options');
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.limiter = options.limiter ?? new ConnectionLimiter(this.limits.maxSessions, this.limits.maxSessionsPerClient);
    const proxies = new CidrSet(options.proxyProtocolFrom ?? []);
    this.ctx = {
      name: options.name ?? 'smtp',
      hostname: options.hostname,
      banner: options.banner ?? 'ESMTP Tern',
      hooks,
      limits: this.limits,
      implicitTls: options.implicitTls ?? false,
      secureContext: options.tls?.secureContext,
      requireTlsForAuth: options.requireTlsForAuth ?? true,
      authRequired: options.authRequired ?? false,
      isTrustedProxy: (a) => proxies.has(a),
      limiter: this.limiter,
      logger: options.logger,
      closing: () => this.closingState,
      stats: this.stats,
      ended: (s) => {
        this.sessions.delete(s);
        if (this.sessions.size === 0) this.drained?.();
      },
    };
    this.server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => this.accept(socket));
    this.server.on('error', (err) => options.logger?.warn({ err: err.message, listener: this.ctx.name }, 'smtp listener error'));
  }

  private accept(socket: net.Socket): void {
    if (this.closingState) {
      socket.destroy();
      return;
    }
    if (!this.limiter.tryAcquireTotal()) {
      socket.on('error', () => {});
      socket.end(formatReply(closing(this.ctx.hostname, '4.7.0', 'Error: too many connections')));
      setTimeout(() => socket.destroy(), 2_000).unref();
      return;
    }
    const session = new Session(this.ctx, socket);
    this.sessions.add(session);
    this.options.logger?.debug(
      { session: session.info.id, listener: this.ctx.name, remote: normalizeIp(socket.remoteAddress ?? '') },
      'smtp connect',
    );
    session.start();
  }

  /** Starts listening; resolves with the bound port. */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(this.options.port, this.options.host ?? '0.0.0.0', () => {
        this.server.off('error', onError);
        resolve(this.port);
      });
    });
  }

  get port(): number {
    const a = this.server.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  get listening(): boolean {
    return this.server.listening;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  get closing(): boolean {
    return this.closingState;
  }

  /**
   * Graceful close: stop accepting; idle sessions get 421 4.3.2 now, sessions
   * in a transaction may finish it within `graceMs`; then everyone left gets
   * 421 4.3.2 and the connection is closed.
   */
  async close(graceMs = 30_000): Promise<void> {
    this.closingState = true;
    const stopped = new Promise<void>((resolve) => {
      if (!this.server.listening) return resolve();
      this.server.close(() => resolve());
    });
    for (const s of this.sessions) s.shutdown(false);
    if (this.sessions.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        timer.unref();
        this.drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    if (this.sessions.size > 0) {
      for (const s of this.sessions) s.shutdown(true);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          for (const s of this.sessions) s.destroy();
          resolve();
        }, 2_000);
        timer.unref();
        this.drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    await stopped;
  }
}
