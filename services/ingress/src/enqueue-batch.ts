// Whole small messages go to the queue in EnqueueBatch calls: while fewer
// than `maxCalls` calls are in flight a message leaves at once (a batch of
// one: no added latency when the load is light); otherwise it waits for the
// next call, with every message whose end of data came in meanwhile. Under
// load, one gRPC call then carries many messages instead of one client
// stream (HTTP/2 stream, metadata, three requests) each.
import type { EnqueueMessage, EnqueueOutcome } from '@tern/proto';
import { call, type QueueClient } from './clients';

export interface EnqueueBatcherOptions {
  /** EnqueueBatch calls in flight at most. */
  maxCalls: number;
  /** Messages per call at most. */
  maxMessages: number;
  /** Deadline of one call (the commit timeout). */
  deadlineMs: number;
}

interface Waiting {
  message: EnqueueMessage;
  resolve(o: EnqueueOutcome): void;
  reject(err: Error): void;
}

export class EnqueueBatcher {
  private waiting: Waiting[] = [];
  private inFlight = 0;

  constructor(
    private readonly queue: QueueClient,
    private readonly o: EnqueueBatcherOptions,
  ) {}

  /** The message's outcome (stored: queue id; refused: error code and text); rejects when the call fails. */
  add(message: EnqueueMessage): Promise<EnqueueOutcome> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ message, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.waiting.length && this.inFlight < this.o.maxCalls) {
      const batch = this.waiting.splice(0, this.o.maxMessages);
      this.inFlight++;
      call(this.queue.enqueueBatch, this.queue, { messages: batch.map((w) => w.message) }, this.o.deadlineMs)
        .then(
          (res) =>
            batch.forEach((w, i) => {
              const outcome = res.outcomes[i];
              if (outcome) w.resolve(outcome);
              else w.reject(new Error(`EnqueueBatch answered ${res.outcomes.length} outcomes for ${batch.length} messages`));
            }),
          (err: Error) => batch.forEach((w) => w.reject(err)),
        )
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
    }
  }
}
