// The session's error limits. The client's own errors (4xx/5xx) count
// toward maxErrors, then 421 4.7.0. Our transient failures (replies marked
// ourFault: a dependency down, the queue full) are not the client's errors:
// only a session that gets nothing else for unavailableCloseMs is closed,
// with 421 4.3.0.
import { closing, type Reply } from './reply';
import type { SmtpLimits } from './types';

export class ReplyLimits {
  private errors = 0;
  /** When the current run of ourFault replies (with no 2xx since) began. */
  private unavailableSince: number | undefined;

  constructor(
    private readonly limits: SmtpLimits,
    private readonly hostname: string,
  ) {}

  /** Counts a reply given; when a limit is reached, why and with what to close. */
  count(r: Reply): { reason: string; reply: Reply } | undefined {
    if (r.code < 400) {
      if (r.code < 300) this.unavailableSince = undefined;
      return undefined;
    }
    if (r.code === 421) return undefined;
    if (r.ourFault) {
      const now = Date.now();
      this.unavailableSince ??= now;
      if (now - this.unavailableSince < this.limits.unavailableCloseMs) return undefined;
      return { reason: 'service unavailable', reply: closing(this.hostname, '4.3.0', 'Error: service temporarily unavailable, try again later') };
    }
    this.errors++;
    if (this.errors < this.limits.maxErrors) return undefined;
    return { reason: 'too many errors', reply: closing(this.hostname, '4.7.0', 'Error: too many errors') };
  }
}
