// The TLS context for the SMTP listeners, reloaded when the certificate or
// key file changes (cert-manager renews in place). A failed reload keeps
// the last good context and logs why. The certificate in use has its expiry
// on /metrics, so an alert can say when renewal did not happen.
import crypto from 'node:crypto';
import fs from 'node:fs';
import tls from 'node:tls';
import type { Meter } from '@opentelemetry/api';
import type { Logger } from '@tern/telemetry';
import { errorMessage } from '@tern/runtime';

export class TlsContextManager {
  private context: tls.SecureContext;
  /** notAfter of the certificate in use (the first of the file: the leaf), seconds since the epoch. */
  private expiresAtS: number;
  private lastStamp: string;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly certFile: string,
    private readonly keyFile: string,
    private readonly logger: Logger,
  ) {
    ({ context: this.context, expiresAtS: this.expiresAtS } = this.load());
    this.lastStamp = this.stamp();
  }

  private load(): { context: tls.SecureContext; expiresAtS: number } {
    const cert = fs.readFileSync(this.certFile);
    const context = tls.createSecureContext({ cert, key: fs.readFileSync(this.keyFile), minVersion: 'TLSv1.2' });
    return { context, expiresAtS: Date.parse(new crypto.X509Certificate(cert).validTo) / 1000 };
  }

  /** tern_ingress_tls_certificate_expiry_timestamp_seconds: when the certificate in use expires. */
  observe(meter: Meter): void {
    meter
      .createObservableGauge('tern_ingress_tls_certificate_expiry_timestamp_seconds', {
        description: 'Expiry (notAfter) of the SMTP TLS certificate in use, seconds since the Unix epoch',
        unit: 's',
      })
      .addCallback((r) => r.observe(this.expiresAtS));
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
      ({ context: this.context, expiresAtS: this.expiresAtS } = this.load());
      this.logger.info({ cert: this.certFile, expires: new Date(this.expiresAtS * 1000).toISOString() }, 'TLS certificate reloaded');
      return true;
    } catch (err) {
      this.logger.error({ cert: this.certFile, err: errorMessage(err) }, 'TLS certificate reload failed; keeping the previous one');
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
