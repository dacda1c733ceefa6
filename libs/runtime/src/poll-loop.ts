// The wake/poll loop of the queue's background workers (the scheduler, the
// outbox relay): run a pass; run the next one at once when the pass says
// there is more or someone woke the loop meanwhile (a commit made work
// due); otherwise wait for a wake() or the poll interval (which catches
// what no wake announced: work of another replica, rows left by a crash).
// A failed pass is retried after 250 ms doubling up to 10 s.
import { Part } from './components';

export interface PollLoopOptions {
  /** For errors: `<name> pass failed; retrying`. */
  name: string;
  /** One pass; resolves true when there is more to do at once. */
  pass(): Promise<boolean>;
  /** The wait between passes when idle. */
  intervalMs: number;
  /** A pass failed (the loop retries after its backoff). */
  onError(err: unknown, failures: number): void;
  /**
   * Whether wake() ends the wait after a failed pass (default true). The
   * relay says false: a commit every millisecond must not turn its backoff
   * into a retry per commit while NATS is down.
   */
  wakeDuringBackoff?: boolean;
}

/** Backoff after the n-th consecutive failure, ms. */
export function pollBackoffMs(failures: number): number {
  return Math.min(10_000, 250 * 2 ** failures);
}

export class PollLoop extends Part {
  private stopped = false;
  private woken = false;
  /** Ends the current wait (wake or stop). */
  private wakeUp: (() => void) | undefined;
  private waitingAfterFailure = false;
  private loop: Promise<void> | undefined;

  constructor(private readonly o: PollLoopOptions) {
    super(o.name, {
      start: () => {
        this.loop = this.run();
      },
      drain: async () => {
        this.stopped = true;
        this.wakeUp?.();
        await this.loop;
      },
    });
  }

  /** Between start() and drain(). */
  get running(): boolean {
    return this.state === 'starting' || this.state === 'running';
  }

  /** Run a pass at once (now, or right after the one under way). */
  wake(): void {
    this.woken = true;
    if (this.waitingAfterFailure && this.o.wakeDuringBackoff === false) return;
    this.wakeUp?.();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      this.woken = false;
      let more = false;
      try {
        more = await this.o.pass();
        failures = 0;
      } catch (err) {
        failures++;
        this.o.onError(err, failures);
      }
      if (this.stopped) break;
      if (failures === 0 && (more || this.woken)) continue;
      this.waitingAfterFailure = failures > 0;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, failures ? pollBackoffMs(failures) : this.o.intervalMs);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.wakeUp = done;
      });
      this.wakeUp = undefined;
    }
  }
}
