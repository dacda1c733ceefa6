// The queue status gate: before 354 ingress asks whether the queue can take
// a message, and answers 4xx when it is over its high-water mark or cannot
// be reached, rather than buffering (I4). One QueueService.Status answer is
// shared by all sessions, refreshed in the background (app.ts) and when an
// enqueue fails; whether it came is the pod's readiness. The refresh is
// background work, for no one message: it is traced by nobody (untraced), so
// neither ingress nor the queue makes a root trace of every poll.
import type { Reply } from '@tern/smtp';
import { untraced, type Logger } from '@tern/telemetry';
import { call, type QueueClient } from './clients';
import { IngressReplies } from './replies';
import { errorMessage } from '@tern/runtime';

/** QueueService.Status, shared by all sessions, refreshed at most every `ttlMs`. */
export class QueueStatusCache {
  private value: { accepting: boolean; reason: string; reachable: boolean; at: number } | undefined;
  private inflight: Promise<void> | undefined;

  constructor(
    private readonly queue: QueueClient,
    private readonly ttlMs: number,
    private readonly deadlineMs: number,
    private readonly logger: Logger,
  ) {}

  /** Last known reachability (for readiness). */
  get reachable(): boolean {
    return this.value?.reachable ?? true;
  }

  /**
   * One refresh asks twice before calling the queue unreachable: the first
   * call can meet a replica that is gone without a word (a killed pod; the
   * deadline runs out), the second goes to another one.
   */
  refresh(): Promise<void> {
    this.inflight ??= untraced(() => this.ask());
    return this.inflight;
  }

  private ask(): Promise<void> {
    const ask = () => call(this.queue.status, this.queue, {}, this.deadlineMs);
    return ask()
      .catch(ask)
      .then(
        (res) => {
          if (this.value && !this.value.accepting && res.accepting) this.logger.info('queue accepting again');
          if (!res.accepting && (this.value?.accepting ?? true)) this.logger.warn({ reason: res.reason }, 'queue not accepting; answering 452 4.3.1');
          this.value = { accepting: res.accepting, reason: res.reason, reachable: true, at: Date.now() };
        },
        (err: unknown) => {
          if (this.value?.reachable ?? true) this.logger.warn({ err: errorMessage(err) }, 'queue status unreachable; answering 451 4.3.0');
          this.value = { accepting: false, reason: 'unreachable', reachable: false, at: Date.now() };
        },
      )
      .finally(() => {
        this.inflight = undefined;
      });
  }

  async get(): Promise<{ accepting: boolean; reachable: boolean; reason: string }> {
    if (!this.value || Date.now() - this.value.at > this.ttlMs) await this.refresh();
    return this.value!;
  }

  /**
   * The reply to DATA or the first BDAT while the queue cannot take a
   * message (unreachable: 451 4.3.0; not accepting: 452 4.3.1); undefined
   * when it can.
   */
  async gate(): Promise<Reply | undefined> {
    const status = await this.get();
    if (!status.reachable) return IngressReplies.queueUnavailable;
    if (!status.accepting) return IngressReplies.queueFull;
    return undefined;
  }
}
