// The TLS context for the SMTP listeners, reloaded when the certificate or
// key file changes (cert-manager renews in place). A failed reload keeps
// the last good context and logs why.
import fs from 'node:fs';
import tls from 'node:tls';
import type { Logger } from '@tern/telemetry';

export class TlsContextManager {
  private context: tls.SecureContext;
  private lastStamp: string;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly certFile: string,
    private readonly keyFile: string,
    private readonly logger: Logger,
  ) {
    this.context = this.load();
    this.lastStamp = this.stamp();
  }

  private load(): tls.SecureContext {
    return tls.createSecureContext({
      cert: fs.readFileSync(this.certFile),
      key: fs.readFileSync(this.keyFile),
      minVersion: 'TLSv1.2',
    });
  }

  private stamp(): string {
    try {
      const c = fs.statSync(this.certFile);
      const k = fs.statSync(this.keyFile);
      return `${c.mtimeMs}:${c.size}:${c.ino}/${k.mtimeMs}:${k.size}:${k.ino}`;
    } catch {
      return 'missing';
    }
  }

  /** The context for the next handshake. */
  readonly current = (): tls.SecureContext => this.context;

  /** Reloads now if the files changed; returns whether a new context is in use. */
  reloadIfChanged(): boolean {
    const stamp = this.stamp();
    if (stamp === this.lastStamp) return false;
    this.lastStamp = stamp;
    try {
      this.context = this.load();
      this.logger.info({ cert: this.certFile }, 'TLS certificate reloaded');
      return true;
    } catch (err) {
      this.logger.error({ cert: this.certFile, err: (err as Error).message }, 'TLS certificate reload failed; keeping the previous one');
      return false;
    }
  }

  start(intervalMs: number): void {
    this.timer = setInterval(() => this.reloadIfChanged(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
