// Batching of concurrent work: callers add items and wait; a batch is flushed
// when it holds `maxItems` or `delayMs` after its first item, so many
// concurrent callers share one flush: one transaction and fsync (the queue's
// group commit, result batches, outbox deletes) or one JetStream message
// (delivery's results). At most `concurrency` flushes run at once; items
// arriving meanwhile form the next batch. With `delayMs` 0 a batch leaves at
// the end of the current event-loop turn (setImmediate: after the I/O
// callbacks of this turn, so the items of every request read in it go
// together); under load the batches still grow, from the items that arrive
// while `concurrency` flushes are running, without a timer's latency at light
// load.
export interface BatcherOptions<T, R> {
  maxItems: number;
  delayMs: number;
  concurrency?: number;
  /**
   * When a flush ends, nothing else runs and items wait: send them at once
   * (true, the default: a group commit's callers waited a flush already) or
   * only once they hold `maxItems` or their delay has passed (false: every
   * batch gathers for `delayMs`).
   */
  flushWaitingWhenIdle?: boolean;
  /** Returns one result per item, in order (or throws: every item fails). */
  flush(items: T[]): Promise<R[]>;
}

interface Pending<T, R> {
  item: T;
  resolve(r: R): void;
  reject(err: unknown): void;
}

export class Batcher<T, R> {
  private pending: Pending<T, R>[] = [];
  private timer: NodeJS.Timeout | NodeJS.Immediate | undefined;
  private running = 0;
  private readonly idle = new Set<() => void>();

  constructor(private readonly opts: BatcherOptions<T, R>) {}

  add(item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.pending.push({ item, resolve, reject });
      if (this.pending.length >= this.opts.maxItems) this.kick();
      else if (!this.timer) this.arm();
    });
  }

  private arm(): void {
    this.timer = this.opts.delayMs > 0 ? setTimeout(() => this.kick(), this.opts.delayMs) : setImmediate(() => this.kick());
  }

  get size(): number {
    return this.pending.length;
  }

  private kick(): void {
    if (this.timer) {
      if (this.opts.delayMs > 0) clearTimeout(this.timer as NodeJS.Timeout);
      else clearImmediate(this.timer as NodeJS.Immediate);
      this.timer = undefined;
    }
    if (this.running >= (this.opts.concurrency ?? 1) || this.pending.length === 0) return;
    const batch = this.pending.splice(0, this.opts.maxItems);
    this.running++;
    void this.opts
      .flush(batch.map((p) => p.item))
      .then(
        (results) => batch.forEach((p, i) => p.resolve(results[i] as R)),
        (err) => batch.forEach((p) => p.reject(err)),
      )
      .finally(() => {
        this.running--;
        if (this.pending.length) {
          if (this.pending.length >= this.opts.maxItems || (this.running === 0 && this.opts.flushWaitingWhenIdle !== false)) this.kick();
          else if (!this.timer) this.arm();
        } else if (this.running === 0) for (const f of this.idle) f();
      });
  }

  /** Flushes what is waiting and resolves when nothing is pending or running. */
  async drain(): Promise<void> {
    if (this.pending.length === 0 && this.running === 0) return;
    const done = new Promise<void>((resolve) => {
      const f = () => {
        this.idle.delete(f);
        resolve();
      };
      this.idle.add(f);
    });
    this.kick();
    await done;
  }
}
